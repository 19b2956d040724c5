// Package ops is keyarc's local operations on a state folder, run on the appliance host
// without a running server: init (tokens' keys, CA, configuration; --dev makes SoftHSM tokens,
// the recovery set and development credentials), backup and restore (refusing a backup older
// than the audit trail), check (the archive's consistency), audit verify, and the two admin
// commands that work on the database directly (enrollment codes, operator credentials).
//
// They open the state folder's token and store themselves; a restore takes the state lock, so
// it refuses to run beside `keyarc serve`. ops must not import the HTTP server (api); it uses
// cli only for the KRA-side key helpers that init --dev runs on the development KRA tokens.
//
// # Concurrency
//
// Each command runs once per process, on one goroutine.
package ops
