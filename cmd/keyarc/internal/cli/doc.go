// Package cli is keyarc's client side: the commands that talk to a running appliance over
// HTTPS (enroll, kra enroll, recovery request/approve/fetch, admin pending and recovery-set,
// bulk), and the KRA's work on its own token (making its keys, re-encrypting its shares).
//
// A command connects with --state DIR --as IDENTITY on a development install, or with
// --server URL --cacert FILE and a credential (--cert/--key, or a KRA's token). The request and
// answer bodies are those of package wire, the ones the server uses.
//
// It must not import the server packages (api, ops) nor open the appliance's store or token:
// what it knows of the appliance is the HTTP API. It uses escrow's pure helpers for the
// formats a KRA signs and re-encrypts (escrow.ApprovalDigest still takes a store.Recovery,
// the only reason escrow/store appears here). Refusals of the appliance come back as errors
// naming the HTTP status and the appliance's message.
//
// # Concurrency
//
// Each command runs once per process, on one goroutine; nothing here is shared.
package cli
