// Package sqlite is keyarc's embedded archive: the [store.Store] of one node, in one
// SQLite file holding enrollment codes, certificates (with their revocation state and key
// identity), sealed escrow records, pending (manual-approval) requests, recovery sets, bulk
// jobs, the rows of the audit trail, signed CRLs and pre-signed OCSP responses. It owns the database file, its schema
// and its migrations, and nothing else: it knows no cryptography, no policy and no HTTP.
// Secrets are never stored in clear: enrollment codes are kept only as the hash the
// caller passes in, and escrow records only as the sealed blobs made by escrow/record.
//
// It imports only the standard library, modernc.org/sqlite (pure Go, driver name
// "sqlite"), escrow/store, whose contract it implements and whose conformance suite
// (escrow/store/storetest) it passes, and escrow/store/internal/sqltx, the transaction's
// statements it shares with the PostgreSQL backend (this package gives them SQLite's
// dialect and runs them on its writer or a read-only connection).
//
// # Storage
//
// [Open] creates the file if it is missing (mode 0600; SQLite gives the -wal and
// -shm files the same mode) and sets on every connection journal_mode=WAL,
// synchronous=FULL, foreign_keys=ON and busy_timeout=5000. The schema version
// lives in PRAGMA user_version; migrations are applied in order, all in one
// transaction, each an SQL script optionally followed by a step in Go for what SQL cannot
// do (migration 8 computes the key identities of the certificates stored before it). Times are stored as INTEGER unix microseconds in UTC (years 1 to
// 9999 fit, so a NotAfter of 9999-12-31 does too; nanoseconds would overflow in
// 2262); zero times are stored as NULL. Certificate serials are stored in one
// canonical form, see [store.NormalizeSerial]; every method that takes a serial
// normalises it first.
//
// # Concurrency
//
// A [DB] is safe for concurrent use. [DB.Update] serialises every write
// through one writer goroutine that owns the only read-write connection and
// GROUP-COMMITS: it opens one BEGIN IMMEDIATE transaction, runs each queued
// caller's function inside its own SAVEPOINT, takes every caller that is
// waiting (up to [MaxBatch]) and then COMMITs once, so a single fsync makes a
// whole batch durable. Update returns only after that COMMIT. A function that
// fails (or panics) has its own savepoint rolled back and gets its own error;
// the others in the batch are not affected. The first function of a
// transaction runs without a savepoint (a failure rolls the transaction back,
// which holds nothing else, and the next callers get a new one): a savepoint
// copies every page its function touches into SQLite's sub-journal, and for
// a bulk batch that was half the writer's time. If the COMMIT fails, every
// caller of the batch gets that error and nothing of the batch is stored.
//
// [DB.View] runs on a separate pool of read-only connections and is fully
// concurrent with Update and with other Views; it sees the data committed
// before it started (a WAL snapshot). It takes the connection used last: SQLite
// drops a connection's page cache at its first read after another connection's
// commit, so the one used last is the one most likely to find its pages cached.
//
// A [store.Tx] belongs to the function it was passed to: it must not be kept after
// the function returns nor shared with other goroutines. Functions passed to
// Update run on the writer goroutine, so they must be quick, do no I/O other
// than through the Tx, and never call Update or View (that deadlocks or
// stalls every writer).
package sqlite
