// Package postgres is keyarc's archive in a PostgreSQL database: the [store.Store] that
// several keyarc nodes share. It holds what escrow/store/sqlite holds (enrollment codes,
// certificates with their revocation state and key identity, sealed escrow records, pending
// requests, recovery sets and recoveries, bulk jobs, the rows of the audit trail, signed CRLs
// and pre-signed OCSP responses), owns its schema and migrations, and knows no cryptography,
// policy or HTTP. Secrets never reach it in clear: enrollment codes are kept only as the hash
// the caller passes in, and escrow records only as the sealed blobs made by escrow/record.
//
// It imports the standard library, github.com/jackc/pgx/v5 (pgxpool, with its database/sql
// adapter stdlib on top, so that it shares the SQLite backend's statements), escrow/store,
// whose contract it implements and whose conformance suite (escrow/store/storetest) it
// passes, and escrow/store/internal/sqltx, the transaction's statements shared with the SQLite
// backend (this package gives them PostgreSQL's dialect, placeholders and savepoints).
//
// # Storage
//
// [Open] takes a libpq connection string or URL. The schema version lives in the one row of
// the keyarc_schema table; migrations are applied in order, all in one transaction that holds
// an advisory lock (pg_advisory_xact_lock), so that nodes starting at once apply each
// migration once. Tables and columns are SQLite's: times are BIGINT unix microseconds in UTC
// (NULL for the zero time), serials canonical lower-case hex ([store.NormalizeSerial]), and
// text columns collate as "C", so that ordering by serial is byte order whatever the
// database's locale. Text arguments holding a NUL byte or invalid UTF-8, which PostgreSQL's
// text type cannot store, are refused with [store.ErrInvalid] before they reach the server.
//
// # Roles
//
// The role that runs the first [Open] (and each upgrade's) creates and migrates the tables and
// owns them. Nodes may run with a role of their own that has only what [Grants] gives it:
// reading every table, and writing only as the store does. The audit trail, its checkpoints,
// recovery sets and approvals are append-only for such a role, so that a node's credentials
// cannot rewrite what was recorded.
//
// # Concurrency
//
// A [DB] is safe for concurrent use. [DB.Update] GROUP-COMMITS as SQLite's does: one writer
// goroutine per DB owns one connection, opens one transaction, runs each queued caller's
// function in its own SAVEPOINT (the first without one), and COMMITs once for all of them.
// Each statement that writes runs in a savepoint of its own too: PostgreSQL aborts the whole
// transaction when a statement fails, where the contract undoes that statement alone. Round
// trips to the server are what a group costs, so the writer pipelines: a write goes out with
// its savepoint and release in one pgx batch, a function's savepoint is opened with its first
// statement and released with the next function's (or by the COMMIT), and BEGIN goes with the
// writer lock. A function that stores one row costs one round trip. A write whose count
// nobody reads and that nothing but a fault can refuse (the audit entry) is held back and goes
// with the next statement of the transaction or with the COMMIT; should it fail all the same,
// the whole group fails with [store.ErrUnavailable]. An EST enrollment (the code's claim and
// the certificate in one statement, then its audit entry) so costs one round trip of its own.
//
// Across nodes, every write transaction first takes the database's writer lock
// (pg_advisory_xact_lock on one key), the equivalent of SQLite's BEGIN IMMEDIATE: write
// transactions of all the nodes run one after the other, each on READ COMMITTED and so on
// everything committed before it took the lock. That makes every check-then-act of the
// contract atomic across nodes without a retry: of two claims of one enrollment code exactly
// one succeeds, a KRA approves a recovery once, recovery set epochs and CRL numbers follow
// each other, and the audit trail stays one linear hash chain ([store.AuditLog.AuditHead] is
// the tail the next entry follows). Row locks (SELECT ... FOR UPDATE) or SERIALIZABLE would
// let unrelated writes of two nodes overlap, but the audit chain, which nearly every write
// extends, serialises them anyway, and SERIALIZABLE would make Update run functions again
// after a serialization failure, which the contract lets no backend do silently. Writes scale
// by group commit: one lock, one transaction and one commit for a whole group of callers.
// Since writers never wait on each other's row locks, they meet no deadlock or serialization
// failure; such an error from the server (like a lost connection, an administrator's
// shutdown, a full disk) wraps [store.ErrUnavailable], and the caller may try again.
//
// [DB.View] runs on the pool in a READ ONLY, REPEATABLE READ transaction: one snapshot of
// committed data, concurrent with Update and other Views. Its statements run on pgx directly,
// and its BEGIN goes out with its first statement. Its ROLLBACK goes out with the next View's
// BEGIN on the same connection, which waits for it at most 20 ms before it is rolled back and
// returned to the pool: a View of one statement takes one round trip.
//
// A [store.Tx] belongs to the function it was passed to: it must not be kept after the function
// returns nor shared with other goroutines. Functions passed to Update run on the writer
// goroutine, so they must be quick, do no I/O other than through the Tx, and never call
// Update or View.
package postgres
