package postgres

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"
	"github.com/keyarc/keyarc/escrow/store/internal/updates"

	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// MaxBatch bounds the number of Update functions group-committed in one transaction.
const MaxBatch = 256

// Timeouts of the writer's session, so that one node cannot stop the others' writes by
// holding the writer lock: a transaction left idle longer than writerIdleTimeout (its node
// paused, or stuck between two statements) is ended by the server, which releases the lock,
// and the paused node finds its connection gone when it wakes (its group fails with
// ErrUnavailable, nothing of it stored); and a writer that waits longer than
// writerLockTimeout for the lock gives up with ErrUnavailable instead of hanging. Variables
// for the tests.
var (
	writerIdleTimeout = 10 * time.Second
	writerLockTimeout = time.Minute
)

// DB is a keyarc archive in a PostgreSQL database. It is safe for concurrent use; see the
// package documentation for the concurrency rules.
type DB struct {
	pool *pgxpool.Pool
	db   *sql.DB // database/sql over pool

	// wconn is the writer's connection, owned by the writer goroutine; nil until the first
	// batch, and again after a fault of the connection (the next batch takes a new one).
	wconn *sql.Conn

	q *updates.Queue // the Update calls, drained by the writer goroutine

	parking parking // the connections of ended Views, their ROLLBACK still to send

	viewMu     sync.RWMutex // held for reading by every View; Close takes it to stop them
	viewClosed bool

	closeOnce sync.Once
	closeErr  error

	// sp is the state of the savepoint of the writer's running function.
	sp savepoints

	// later holds the writes of the writer's transaction that wait for its next round trip
	// (see [pgQuerier.ExecLater]).
	later heldBack

	// head caches the last audit entry's seq and hash during one write transaction (it is
	// touched only by the writer goroutine, see [sqltx.AuditHead]); every transaction starts
	// without it, since another node may have appended since the last one.
	head sqltx.AuditHead

	updates      atomic.Uint64
	failed       atomic.Uint64
	commits      atomic.Uint64
	commitErrors atomic.Uint64
	maxBatch     atomic.Int64
}

// Stats returns the writer's counters.
func (db *DB) Stats() store.Stats {
	return store.Stats{
		Updates:      db.updates.Load(),
		Failed:       db.failed.Load(),
		Commits:      db.commits.Load(),
		CommitErrors: db.commitErrors.Load(),
		MaxBatch:     int(db.maxBatch.Load()),
	}
}

// Open connects to the PostgreSQL database of connString (a postgres:// URL or a key=value
// string, as libpq takes them, with pgxpool's pool_max_conns and the like; the pool holds
// 1 + max(8, 4 × NumCPU) connections by default, one of them the writer's) and brings its
// schema up to date. The database must exist; the user needs to create tables in it on the first Open
// and whenever a migration is due. A server that cannot be reached gives an error wrapping
// [store.ErrUnavailable].
func Open(ctx context.Context, connString string) (*DB, error) {
	if connString == "" {
		return nil, fmt.Errorf("store: open: empty connection string: %w", store.ErrInvalid)
	}
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		// pgx's message may quote the string, with its password: say only that it is malformed.
		return nil, fmt.Errorf("store: open: malformed PostgreSQL connection string: %w", store.ErrInvalid)
	}
	if !setsPoolSize(connString) {
		cfg.MaxConns = defaultMaxConns()
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "keyarc"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, classify(fmt.Errorf("store: open: %w", err))
	}
	db := &DB{
		pool:    pool,
		db:      stdlib.OpenDBFromPool(pool),
		q:       updates.New(),
		parking: parking{hold: parkFor},
	}
	fail := func(err error) (*DB, error) {
		db.db.Close()
		pool.Close()
		return nil, classify(err)
	}
	conn, err := db.db.Conn(ctx)
	if err != nil {
		return fail(fmt.Errorf("store: open: %w", err))
	}
	err = migrate(ctx, conn)
	conn.Close()
	if err != nil {
		return fail(err)
	}
	go db.q.Run(db.batch)
	return db, nil
}

// defaultMaxConns is the pool's size unless the connection string sets pool_max_conns: the
// writer's connection, and one for each View that may run at once, a few per core (a View
// waits on the server most of its time).
func defaultMaxConns() int32 { return int32(1 + max(8, 4*runtime.NumCPU())) }

// setsPoolSize reports whether connString, a URL or a key=value string, sets pool_max_conns.
func setsPoolSize(connString string) bool {
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		return u.Query().Has("pool_max_conns")
	}
	for _, f := range strings.Fields(connString) {
		if strings.HasPrefix(f, "pool_max_conns=") {
			return true
		}
	}
	return false
}

// Close stops accepting updates, lets the writer finish every queued update, waits for the
// running Views, then closes the connections. It is safe to call more than once.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.q.Close()
		db.viewMu.Lock() // waits for running Views
		db.viewClosed = true
		db.viewMu.Unlock()
		db.parking.close()
		var errs []error
		if db.wconn != nil {
			errs = append(errs, db.wconn.Close())
		}
		errs = append(errs, db.db.Close())
		db.pool.Close()
		if err := errors.Join(errs...); err != nil && !errors.Is(err, sql.ErrConnDone) {
			db.closeErr = fmt.Errorf("store: close: %w", err)
		}
	})
	return db.closeErr
}

// Update runs fn inside a savepoint of a shared write transaction and returns once the COMMIT
// that contains fn's writes is durable.
//
// Concurrent callers are group-committed: one COMMIT for many callers. If fn returns an
// error, only its savepoint is rolled back and Update returns that error. A panic in fn is
// recovered, its savepoint rolled back, and Update returns an error wrapping
// [store.ErrPanic]. If the COMMIT fails, Update returns that error and fn's writes are lost.
// fn runs once: Update never retries it.
//
// If ctx ends before fn starts, fn never runs and Update returns ctx.Err(); once fn has
// started, Update waits for the COMMIT whatever ctx does. Update after [DB.Close] returns
// [store.ErrClosed]. Faults of the server or the connection (and ErrClosed) are returned
// wrapped in [store.ErrUnavailable].
func (db *DB) Update(ctx context.Context, fn func(store.Tx) error) (err error) {
	defer func() { err = classify(err) }()
	if fn == nil {
		return fmt.Errorf("store: update: nil function: %w", store.ErrInvalid)
	}
	return db.q.Submit(ctx, fn)
}

// View runs fn in a read-only REPEATABLE READ transaction on a connection of the pool: it sees
// one snapshot of committed data, taken at its first statement (with which the BEGIN goes
// out, in one round trip, and the ROLLBACK goes with the next View's: see [viewQuerier]). Views run concurrently with
// each other and with Update; [DB.Close] waits for running Views, and View after Close
// returns [store.ErrClosed] (wrapped, like every fault of the server, in
// [store.ErrUnavailable]). Writes in fn fail with [store.ErrReadOnly]. A panic in fn
// propagates to the caller (the transaction is rolled back first).
func (db *DB) View(ctx context.Context, fn func(store.Tx) error) (err error) {
	defer func() { err = classify(err) }()
	if fn == nil {
		return fmt.Errorf("store: view: nil function: %w", store.ErrInvalid)
	}
	db.viewMu.RLock()
	defer db.viewMu.RUnlock()
	if db.viewClosed {
		return store.ErrClosed
	}
	v := &viewQuerier{db: db}
	tx := sqltx.NewRead(ctx, v, dialect)
	defer func() {
		tx.End()
		v.end()
	}()
	return fn(tx)
}

// queueLen reports the number of queued (possibly cancelled) requests.
func (db *DB) queueLen() int { return db.q.Len() }

func (db *DB) exec(query string, args ...any) error {
	sent(strings.Count(query, ";") + 1)
	_, err := db.wconn.ExecContext(context.Background(), query, args...)
	return err
}

// rollback abandons the writer's transaction. When even that fails the connection is in an
// unknown state: it is dropped, and the next batch takes another.
func (db *DB) rollback() {
	db.head = sqltx.AuditHead{}
	db.later.reset()
	if err := db.exec("ROLLBACK"); err != nil {
		db.dropConn()
	}
}

// dropConn closes the writer's connection after a fault, so that the next batch starts on a
// fresh one (the pool dials again).
func (db *DB) dropConn() {
	if db.wconn != nil {
		// Raw lets the pgx connection be closed for good rather than returned to the pool.
		db.wconn.Raw(func(dc any) error {
			if c, ok := dc.(*stdlib.Conn); ok {
				c.Conn().Close(context.Background())
			}
			return nil
		})
		db.wconn.Close()
		db.wconn = nil
	}
	db.head = sqltx.AuditHead{}
	db.later.reset()
}

// txStatus returns the server's transaction status of the writer's connection, as the last
// message from the server gave it: 'I' idle, 'T' in a transaction, 'E' in a failed one.
func (db *DB) txStatus() byte {
	status := byte('?')
	db.wconn.Raw(func(dc any) error {
		if c, ok := dc.(*stdlib.Conn); ok {
			status = c.Conn().PgConn().TxStatus()
		}
		return nil
	})
	return status
}

// begin starts the writer's transaction, on a new connection if it has none, and takes the
// database's writer lock. A connection kept from an earlier batch may have died meanwhile (a
// server restart, a connection an administrator or the network ended): BEGIN then fails
// before any function ran, and begin tries once more on a new connection.
func (db *DB) begin() error {
	ctx := context.Background()
	db.head, db.sp = sqltx.AuditHead{}, savepoints{}
	db.later.reset()
	for try := 0; ; try++ {
		reused := db.wconn != nil
		if !reused {
			done := db.parking.waiter(db.pool)
			c, err := db.db.Conn(ctx)
			done()
			if err != nil {
				return err
			}
			db.wconn = c
			if err := db.exec(fmt.Sprintf("SET idle_in_transaction_session_timeout = %d; SET lock_timeout = %d",
				writerIdleTimeout.Milliseconds(), writerLockTimeout.Milliseconds())); err != nil {
				db.dropConn()
				return err
			}
		}
		err := db.beginLocked()
		if err == nil {
			return nil
		}
		db.dropConn()
		if !reused || try > 0 || !isServerFault(err) || isLockTimeout(err) {
			return err
		}
		// The pool's idle connections most likely died with this one: dial afresh.
		db.pool.Reset()
	}
}

// beginQuery starts the writer's transaction, takes the writer lock and reads the audit head
// the transaction appends to (every Update that audits needs it, and no other node can move it
// while the lock is held): one round trip, in the simple protocol, which takes the three
// statements at once (the key is our constant).
var beginQuery = fmt.Sprintf(`BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock(%d);
	SELECT seq, hash, at FROM audit ORDER BY seq DESC LIMIT 1`, lockWriter)

// beginLocked runs beginQuery and keeps the head it read in db.head. A head it cannot read
// (an unexpected text form) is left unknown: the first AuditHead reads it again.
func (db *DB) beginLocked() error {
	sent(3)
	return db.wconn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("store: begin: unexpected driver connection %T", dc)
		}
		rs, err := c.Conn().PgConn().Exec(context.Background(), beginQuery).ReadAll()
		if err != nil {
			return err
		}
		if len(rs) != 3 {
			return nil
		}
		switch rows := rs[2].Rows; len(rows) {
		case 0:
			db.head = sqltx.KnownHead(0, nil, 0)
		case 1:
			seq, err := strconv.ParseInt(string(rows[0][0]), 10, 64)
			text, isHex := strings.CutPrefix(string(rows[0][1]), `\x`)
			hash, herr := hex.DecodeString(text)
			at, aerr := strconv.ParseInt(string(rows[0][2]), 10, 64)
			if err == nil && isHex && herr == nil && aerr == nil {
				db.head = sqltx.KnownHead(seq, hash, at)
			}
		}
		return nil
	})
}

// isLockTimeout reports whether err is the server's lock_timeout: the writer lock is held
// elsewhere, and trying again at once would wait as long again.
func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

// commit commits the writer's transaction, with the writes held back until then (see
// [pgQuerier.ExecLater]) in the same round trip. PostgreSQL answers a COMMIT of a failed
// transaction with ROLLBACK and no error: the status is checked first, and the command tag
// after.
func (db *DB) commit() error {
	if s := db.txStatus(); s != 'T' {
		return fmt.Errorf("store: commit: the transaction failed earlier (status %q)", s)
	}
	if db.later.failed != nil {
		return heldErr(db.later.failed)
	}
	var tag string
	err := db.wconn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("store: commit: unexpected driver connection %T", dc)
		}
		ctx := context.Background()
		if len(db.later.stmts) == 0 {
			sent(1)
			ct, err := c.Conn().Exec(ctx, "COMMIT")
			tag = ct.String()
			return err
		}
		b := &pgx.Batch{}
		q := pgQuerier{later: &db.later}
		n := q.queueHeld(b)
		b.Queue("COMMIT")
		sent(b.Len())
		br := c.Conn().SendBatch(ctx, b)
		if err := q.readHeld(br, n); err != nil {
			br.Close() // the batch's error is the held-back write's
			return err
		}
		ct, err := br.Exec()
		tag = ct.String()
		return errors.Join(err, br.Close())
	})
	if err != nil {
		return err
	}
	if tag != "COMMIT" {
		return fmt.Errorf("store: commit: the server rolled the transaction back")
	}
	return nil
}

// batch runs one write transaction: as many queued functions as are waiting (up to
// MaxBatch), each in its own savepoint, then one COMMIT.
func (db *DB) batch() {
	first := db.q.Next()
	if first == nil {
		return
	}
	start := time.Now()
	defer func() { wire.busy.Add(int64(time.Since(start))) }()
	if err := db.begin(); err != nil {
		first.Answer(fmt.Errorf("%w: store: begin: %w", store.ErrUnavailable, err)) // never the request's fault
		db.commitErrors.Add(1)
		return
	}
	batch := make([]*updates.Request, 0, 16)
	ok := 0
	for r := first; r != nil; {
		batch = append(batch, r)
		// The first function of a transaction needs no savepoint of its own: if it fails, the
		// rollback of the transaction undoes it, and nothing else.
		bare := len(batch) == 1
		if err := db.runOne(r, bare); err != nil {
			// The transaction is in an unknown state: give up on it. Requests still queued
			// are left for the next batch. That is a fault of the server or the connection,
			// not of any request of the batch.
			err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
			db.rollback()
			db.commitErrors.Add(1)
			for _, b := range batch {
				b.Answer(err)
			}
			return
		}
		if bare && r.Err != nil {
			// The transaction holds this function's writes alone: roll it back and answer.
			db.rollback()
			r.Answer(r.Err)
			return
		}
		if r.Err == nil {
			ok++
		}
		if len(batch) >= MaxBatch {
			break
		}
		r = db.q.Next()
	}
	if int64(len(batch)) > db.maxBatch.Load() {
		db.maxBatch.Store(int64(len(batch)))
	}
	if ok == 0 {
		// Nothing to keep: no need to pay for a COMMIT.
		db.rollback()
		for _, b := range batch {
			b.Answer(b.Err)
		}
		return
	}
	if err := db.commit(); err != nil {
		db.rollback()
		db.commitErrors.Add(1)
		err = classify(fmt.Errorf("store: commit: %w", mapErr(err)))
		for _, b := range batch {
			b.Answer(err)
		}
		return
	}
	db.commits.Add(1)
	for _, b := range batch {
		b.Answer(b.Err)
	}
}

// runOne runs r.Fn in a savepoint (bare: directly in the transaction, which the caller rolls
// back if the function fails) and records its result in r.Err. It returns an error only if
// the transaction itself failed, in which case it must be abandoned.
func (db *DB) runOne(r *updates.Request, bare bool) error {
	db.sp.pending, db.sp.mine = !bare, false // opened with fn's first statement
	db.updates.Add(1)
	saved := db.head
	q := pgQuerier{q: db.wconn, sp: &db.sp, writer: db.wconn, later: &db.later}
	tx := &writeTx{Tx: sqltx.NewWrite(context.Background(), q, dialect, &db.head), q: q}
	r.Err = updates.Call(r.Fn, tx)
	tx.end()
	db.sp.pending = false
	if err := db.later.failed; err != nil {
		// A write held back (this function's or an earlier one's) failed on the server: the
		// transaction is aborted, and so are the writes of every function of it.
		r.Err = heldErr(err)
		db.failed.Add(1)
		return heldErr(err)
	}
	if r.Err == nil && db.txStatus() == 'E' {
		// A statement failed outside its own savepoint (a read the server refused) and fn
		// went on: its writes cannot be kept.
		r.Err = fmt.Errorf("%w: store: update: a statement failed and the transaction was aborted", store.ErrUnavailable)
	}
	if r.Err != nil {
		db.head = saved // the function's entries are rolled back with its savepoint
		db.failed.Add(1)
	}
	if bare {
		return nil // the caller rolls the transaction back if the function failed
	}
	if !db.sp.mine && db.txStatus() == 'E' {
		// The transaction failed before the function's savepoint was opened (a fault while
		// opening it): nothing can bring it back.
		return errors.New("store: the transaction was aborted outside any savepoint")
	}
	if r.Err == nil || !db.sp.mine {
		// Kept: its savepoint is released by the next function's or by the COMMIT. Or
		// failed before any statement: nothing to undo.
		return nil
	}
	db.sp.open, db.sp.mine = false, false
	db.later.stmts = db.later.stmts[:0] // its own, all made since its savepoint opened: undone anyway
	if err := db.exec("ROLLBACK TO SAVEPOINT u; RELEASE SAVEPOINT u"); err != nil {
		return fmt.Errorf("store: rollback savepoint: %w", err)
	}
	return nil
}

var _ store.Store = (*DB)(nil)

// Check reports whether the database answers and holds the schema this program writes:
// [store.ErrUnavailable] when the server does not answer, [store.ErrSchema] when another
// node migrated it further meanwhile. The pages themselves are the server's to check (data
// checksums, amcheck), not a client's.
func (db *DB) Check(ctx context.Context) error {
	db.viewMu.RLock()
	defer db.viewMu.RUnlock()
	if db.viewClosed {
		return classify(store.ErrClosed)
	}
	var v int
	done := db.parking.waiter(db.pool)
	err := db.db.QueryRowContext(ctx, `SELECT version FROM keyarc_schema`).Scan(&v)
	done()
	if err != nil {
		return classify(fmt.Errorf("store: check: %w", err))
	}
	if v != len(migrations) {
		return fmt.Errorf("store: check: database schema version %d, this program's is %d: %w", v, len(migrations), store.ErrSchema)
	}
	return nil
}
