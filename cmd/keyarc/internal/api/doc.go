// Package api is the appliance's HTTP side: the routes (EST under /.well-known/est/, the JSON
// API under /api/v1/, health and readiness, and the enrollment page of package web at / and
// /web/), authentication of a caller to a policy.Principal
// (TLS client certificate, or HTTP Basic with an enrollment code), the one function that maps
// errors to HTTP statuses (status, in http.go), login throttling, content-type and cross-origin checks,
// the Prometheus series, and the running parts of a server: audit checkpoints, the periodic
// consistency check, the bulk job manager and the token's health.
//
// Authorization is not decided here: every route names its policy.Action and policy.Authorize
// decides. The request and answer bodies are those of package wire, which the client commands
// share. The server is assembled by package main ([Parts], [New]); api must not import the
// client commands (cli), the local operations (ops) or package main.
//
// # Errors
//
// Errors of the engine map to 4xx by errors.Is / errors.As on the sentinels of escrow, policy,
// hsm and store; faults of the appliance are 503 (storage, token) or a 500 that names its class
// (an archive that fails its consistency check: escrow.ErrIntegrity, escrow.ErrRecordMismatch,
// check.ErrInconsistent); anything else is a 500 whose details go to the log only. Readiness
// (/readyz) follows the token and the store (storage_health.go).
//
// # Concurrency
//
// A [Server] serves requests concurrently; its handlers share only the engine (safe for
// concurrent use), the login throttle and the token and storage health (each behind its own lock or
// atomic). [Server.Serve] is called once; [Server.Close] once, after Serve returned.
package api
