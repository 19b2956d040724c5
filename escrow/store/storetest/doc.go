// Package storetest is the conformance suite of the storage contract of escrow/store: every
// backend ([store.Store]) runs it from its own tests, so that escrow/store/sqlite and the
// backends after it (PostgreSQL) keep one behaviour the engine can rely on.
//
// # What it covers
//
//   - The rules of [store.Store.Update], [store.Store.View] and [store.Tx]: a View is
//     read-only ([store.ErrReadOnly]) and concurrent with Update; a Tx kept after its function
//     returned gives [store.ErrTxDone]; a panicking function gives [store.ErrPanic] without
//     the panic value; a closed store gives [store.ErrClosed].
//   - The state transitions of codes, certificates, records, pending requests, recovery sets,
//     recoveries, approvals, bulk jobs and their items, with the sentinels of each refusal
//     ([store.ErrConflict], [store.ErrNotFound], [store.ErrInvalid], [store.ErrCodeUsed],
//     [store.ErrCodeExpired]); sweeping and expiry.
//   - Serial normalisation at the boundary: every method that takes a serial accepts every
//     spelling [store.NormalizeSerial] accepts and stores the canonical one.
//   - The key-owner rule: a key is archived for one mailbox ([store.ErrKeyArchivedElsewhere]),
//     its fingerprint read from the sealed record's header.
//   - The rows of the audit trail: entries chained by escrow/audit ([audit.Link], checked with
//     [audit.ChainHash]) follow the head or conflict, roll back with their function, and stay
//     one gapless chain under concurrent writers; checkpoints.
//   - Revocation: only an issued certificate is revoked, with a reason of the S/MIME BR set;
//     the one later change, to keyCompromise, keeps the revocation date; key identities are
//     set on every path that stores a DER and find a key's certificates across mailboxes;
//     the revoked, unexpired certificates stream in serial order, complete, and an error of
//     the callback stops them.
//   - CRL numbers only go up, also after older CRLs were deleted.
//   - OCSP responses: stored only for issued or revoked certificates; lookups tell unknown,
//     never-issued and not-yet-signed serials apart; a slower signer never overwrites a
//     newer response; a certificate is due when its response is missing, old, or signed
//     with another status than its current one, and never once expired; due pages visit
//     each certificate once.
//   - The reads of the consistency checker.
//   - Group commit, for any backend: concurrent Updates all commit and are visible once they
//     return; a function that fails or panics among concurrent ones undoes only its own writes;
//     an error a function handles does not undo its other writes; a View is a snapshot, never
//     half of an Update; concurrent writers of one key never both win.
//   - With a second handle on the same database: the handles see each other's commits, and
//     their concurrent writes keep the same guarantees (one audit chain, one winner per key).
//
// Backend-specific behaviour (files and their modes, pragmas, migrations, integrity checks,
// the classification of storage faults, how many functions share a commit) is tested by the
// backend itself.
//
// # Using it
//
// A backend's tests call [Run] with a [Harness]:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Harness{
//			Open: func(t *testing.T) store.Store {
//				db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
//				if err != nil {
//					t.Fatal(err)
//				}
//				t.Cleanup(func() { db.Close() })
//				return db
//			},
//			OpenSecond: ..., // another handle on first's database, if the backend has one
//		})
//	}
//
// Every test opens its own store, and the tests run in parallel. A test of the suite can be
// run alone: go test -run 'TestConformance/GroupCommit/Isolation'.
//
// The package imports testing and is meant to be imported by tests only; no production
// package may import it.
package storetest
