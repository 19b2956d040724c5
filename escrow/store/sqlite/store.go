package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"
	"github.com/keyarc/keyarc/escrow/store/internal/updates"

	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// MaxBatch bounds the number of Update functions group-committed in one
// transaction.
const MaxBatch = 256

// busyTimeoutMillis is the busy_timeout set on every connection.
const busyTimeoutMillis = 5000

// DB is an open keyarc database. It is safe for concurrent use; see the
// package documentation for the concurrency rules.
type DB struct {
	path string

	w     *sql.DB   // writer pool, MaxOpenConns(1)
	wconn *sql.Conn // the writer connection, owned by the writer goroutine
	stmts *stmtCache
	r     *sql.DB // read-only pool: the Views' connections, and the backups'
	// readers are the Views' connections, each with its prepared statements (see reader).
	readers readerPool

	q *updates.Queue // the Update calls, drained by the writer goroutine

	viewMu     sync.RWMutex // held for reading by every View; Close takes it to stop them
	viewClosed bool

	closeOnce sync.Once
	closeErr  error

	// head caches the last audit entry's seq and hash for the writer, so that appending
	// needs no query; it is touched only by the writer goroutine (see [sqltx.AuditHead]),
	// and dropped when another connection has written (see batch).
	head        sqltx.AuditHead
	dataVersion uint32 // the writer connection's data version after its last COMMIT (see batch)

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

// dsn builds a modernc URI filename for path with the given query.
func dsn(path string, q string) string {
	u := url.URL{Path: filepath.ToSlash(path)}
	return "file:" + u.EscapedPath() + "?" + q
}

// Open opens the database at path, creating it (mode 0600) if it is missing,
// and brings its schema up to date. The directory must exist. A storage fault (a full disk,
// a failing read or write) is wrapped with [store.ErrUnavailable], so that it is not taken
// for a bad file.
//
// A storage fault at open on a file system with almost no room left wraps [store.ErrDiskFull]
// too, and says so: SQLite needs room for the -wal and -shm files beside the database even to
// read it, and reports their failure as a bare "disk I/O error".
func Open(path string) (*DB, error) {
	db, err := open(path)
	return db, explainFull(path, classify(err))
}

func open(path string) (*DB, error) {
	if path == "" {
		return nil, fmt.Errorf("store: open: empty path: %w", store.ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	// Create the file ourselves so that SQLite inherits mode 0600 for it
	// and for its -wal and -shm companions.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}

	// temp_store(MEMORY) keeps the statement journals of the writer's savepoints (one per
	// Update function) in memory: on disk they were the larger part of a batch's writes.
	pragmas := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)&_pragma=temp_store(MEMORY)", busyTimeoutMillis)
	db := &DB{
		path: abs,
		q:    updates.New(),
	}
	ctx := context.Background()

	// The writer keeps SQLite's default page cache (2 MiB). A 32 MiB one halved its page reads
	// under the EST storm (1.8% to 0.9% of keyarc serve's CPU), but SQLite walks the whole
	// cache's hash table at the end of every write transaction (pcache1TruncateUnsafe), which
	// then cost 2.5 to 3%: a net loss.
	db.w, err = sql.Open("sqlite", dsn(abs, pragmas+"&_pragma=journal_mode(WAL)"))
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	db.w.SetMaxOpenConns(1)
	db.w.SetMaxIdleConns(1)
	db.w.SetConnMaxLifetime(0)
	db.w.SetConnMaxIdleTime(0)
	db.wconn, err = db.w.Conn(ctx)
	if err != nil {
		db.w.Close()
		return nil, fmt.Errorf("store: open: %w", err)
	}
	fail := func(err error) (*DB, error) {
		db.wconn.Close()
		db.w.Close()
		if db.r != nil {
			db.r.Close()
		}
		return nil, err
	}
	var mode string
	if err := db.wconn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fail(fmt.Errorf("store: open: %w", err))
	}
	if !strings.EqualFold(mode, "wal") {
		return fail(fmt.Errorf("store: open: journal_mode is %q, want wal (does the file system support WAL?)", mode))
	}
	if err := migrate(ctx, db.wconn); err != nil {
		return fail(err)
	}

	// Readers: mode=ro makes every write fail in SQLite itself; the writer
	// has already switched the file to WAL, which readers inherit.
	db.r, err = sql.Open("sqlite", dsn(abs, "mode=ro&"+pragmas))
	if err != nil {
		return fail(fmt.Errorf("store: open: %w", err))
	}
	// n connections for the Views, which keep theirs, and two for the backups and checks.
	n := max(4, 2*runtime.GOMAXPROCS(0))
	db.r.SetMaxOpenConns(n + 2)
	db.r.SetMaxIdleConns(n + 2)
	db.readers = readerPool{slots: make(chan struct{}, n)}
	if err := db.r.PingContext(ctx); err != nil {
		return fail(fmt.Errorf("store: open read pool: %w", err))
	}

	db.stmts = &stmtCache{conn: db.wconn, m: make(map[string]*sql.Stmt)}
	go db.q.Run(db.batch)
	return db, nil
}

// Path is the database file's absolute path (for tools that read it, and for tests).
func (db *DB) Path() string { return db.path }

// Close stops accepting updates, lets the writer finish every queued update,
// then closes the database. It is safe to call more than once.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.q.Close()
		db.viewMu.Lock() // waits for running Views
		db.viewClosed = true
		db.viewMu.Unlock()
		errs := []error{db.stmts.close(), db.closeReaders(), db.r.Close(), db.wconn.Close(), db.w.Close()}
		if err := errors.Join(errs...); err != nil {
			db.closeErr = fmt.Errorf("store: close: %w", err)
		}
	})
	return db.closeErr
}

// Update runs fn inside a SAVEPOINT of a shared write transaction and returns
// once the COMMIT that contains fn's writes is durable.
//
// Concurrent callers are group-committed: one COMMIT (one fsync) for many
// callers. If fn returns an error, only its savepoint is rolled back and Update
// returns that error (after the batch's COMMIT, since fn may have read writes
// of other functions of the batch). A panic in fn is recovered, its savepoint
// rolled back, and Update returns an error wrapping [ErrPanic]. If the COMMIT
// fails, Update returns that error and fn's writes are lost.
//
// If ctx ends before fn starts, fn never runs and Update returns ctx.Err();
// once fn has started, Update waits for the COMMIT whatever ctx does (fn's
// statements are never interrupted: interrupting a write would roll back the
// whole shared transaction). Update after [DB.Close] returns [ErrClosed]. Storage faults (and
// ErrClosed) are returned wrapped in [ErrUnavailable].
func (db *DB) Update(ctx context.Context, fn func(store.Tx) error) (err error) {
	defer func() { err = classify(err) }()
	if fn == nil {
		return fmt.Errorf("store: update: nil function: %w", store.ErrInvalid)
	}
	return db.q.Submit(ctx, fn)
}

// View runs fn in a read-only transaction on its own connection; it sees a
// consistent snapshot of committed data. Views run concurrently with each
// other and with Update; [DB.Close] waits for running Views, and View after
// Close returns [ErrClosed] (wrapped, like every storage fault, in [ErrUnavailable]). Writes in
// fn fail with [ErrReadOnly]. A panic in fn
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
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: view: %w", err)
	}
	rd, err := db.reader(ctx)
	if err != nil {
		return fmt.Errorf("store: view: %w", err)
	}
	if err := rd.stmts.exec(context.Background(), "BEGIN"); err != nil {
		db.putReader(rd, err)
		return fmt.Errorf("store: view: %w", err)
	}
	tx := sqltx.NewRead(ctx, rd.stmts, dialect)
	defer func() {
		tx.End()
		// read-only: nothing to keep; a connection that cannot roll back is not reused
		db.putReader(rd, rd.stmts.exec(context.Background(), "ROLLBACK"))
	}()
	return fn(tx)
}

// reader is a connection of the read pool that a View holds for its transaction, with the
// statements it prepared: a View's queries skip SQLite's prepare, which cost about half of
// what a View's small query costs (the enrollment code lookup, the OCSP pre-signer's reads).
type reader struct {
	conn  *sql.Conn
	stmts *stmtCache
}

// maxReadStmts bounds the statements a reader keeps prepared: queries built with a varying
// number of placeholders are run without being kept once the cache is full.
const maxReadStmts = 128

// readerPool holds the Views' connections. SQLite drops a connection's whole page cache when
// its next read transaction finds the WAL changed since its last one, so the pool hands out
// the connection used last: when no commit came between two Views, the second finds the
// pages of the first still in its cache. A queue would hand out the connection idle the
// longest, which under a stream of commits has always missed one, and starts cold.
type readerPool struct {
	slots chan struct{} // one token per connection a View holds or may open
	mu    sync.Mutex
	idle  []*reader // open and free, the one used last at the end
}

// reader takes a connection for a View, opening one when none is free and the pool has room;
// putReader gives it back.
func (db *DB) reader(ctx context.Context) (*reader, error) {
	p := &db.readers
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		rd := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return rd, nil
	}
	p.mu.Unlock()
	conn, err := db.r.Conn(ctx)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return &reader{conn: conn, stmts: &stmtCache{conn: conn, m: make(map[string]*sql.Stmt), limit: maxReadStmts}}, nil
}

// putReader gives rd back to the pool, or closes it (leaving its slot free) when err says
// its connection failed.
func (db *DB) putReader(rd *reader, err error) {
	p := &db.readers
	if err != nil {
		rd.stmts.close()
		rd.conn.Close()
	} else {
		p.mu.Lock()
		p.idle = append(p.idle, rd)
		p.mu.Unlock()
	}
	<-p.slots
}

// closeReaders closes the Views' connections; no View runs any more.
func (db *DB) closeReaders() error {
	p := &db.readers
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, rd := range p.idle {
		errs = append(errs, rd.stmts.close(), rd.conn.Close())
	}
	p.idle = nil
	return errors.Join(errs...)
}

// queueLen reports the number of queued (possibly cancelled) requests.
func (db *DB) queueLen() int { return db.q.Len() }

// rollback abandons the writer's transaction, and with it what the audit head cache knew.
func (db *DB) rollback() {
	db.exec("ROLLBACK")
	db.head = sqltx.AuditHead{}
}

// exec runs one of the writer's transaction statements (BEGIN IMMEDIATE, SAVEPOINT u, COMMIT
// and the like), prepared once.
func (db *DB) exec(query string) error {
	return db.stmts.exec(context.Background(), query)
}

// batch runs one write transaction: as many queued functions as are
// waiting (up to MaxBatch), each in its own savepoint, then one COMMIT.
func (db *DB) batch() {
	first := db.q.Next()
	if first == nil {
		return
	}
	if err := db.exec("BEGIN IMMEDIATE"); err != nil {
		first.Answer(fmt.Errorf("%w: store: begin: %w", store.ErrUnavailable, err)) // never the request's fault
		db.commitErrors.Add(1)
		return
	}
	// Another process (a local `keyarc admin` command) may have written since our last
	// transaction: then the connection's data version has moved since our last COMMIT, and the
	// audit head cache is stale.
	if version, err := db.dataVersionNow(); err != nil || version != db.dataVersion {
		db.head = sqltx.AuditHead{}
	}
	batch := make([]*updates.Request, 0, 16)
	ok := 0
	for r := first; r != nil; {
		batch = append(batch, r)
		// The first function of a transaction needs no savepoint of its own: if it fails, the
		// rollback of the transaction undoes it, and nothing else. A savepoint makes SQLite copy
		// every page the function touches into its sub-journal, which for a bulk batch (many
		// rows, random-key indexes) cost the single writer about half its time.
		bare := len(batch) == 1
		if err := db.runOne(r, bare); err != nil {
			// The transaction is in an unknown state: give up on it.
			// Requests still queued are left for the next batch. That is a fault
			// of the storage (SQLite may have rolled the transaction back after an
			// I/O error), not of any request of the batch.
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
	if err := db.exec("COMMIT"); err != nil {
		// A failed COMMIT (for instance a deferred constraint) may leave
		// the transaction open: roll it back so the next BEGIN works.
		db.rollback()
		db.commitErrors.Add(1)
		err = fmt.Errorf("store: commit: %w", mapErr(err))
		for _, b := range batch {
			b.Answer(err)
		}
		return
	}
	db.commits.Add(1)
	if version, err := db.dataVersionNow(); err == nil {
		db.dataVersion = version
	} else {
		db.head = sqltx.AuditHead{}
	}
	for _, b := range batch {
		b.Answer(b.Err)
	}
}

// dataVersionNow reads the writer connection's data version (SQLITE_FCNTL_DATA_VERSION, a
// call into the pager rather than a statement: PRAGMA data_version was one statement more
// in every transaction). It moves with each COMMIT of the connection and whenever the
// connection drops its page cache, which its next transaction (BEGIN IMMEDIATE) does when
// another connection has committed since its last one. A move for another reason costs one
// read of the audit head.
func (db *DB) dataVersionNow() (uint32, error) {
	var v uint32
	err := db.wconn.Raw(func(dc any) error {
		fc, ok := dc.(sqlite.FileControl)
		if !ok {
			return fmt.Errorf("store: the driver's connection (%T) has no file control", dc)
		}
		var err error
		v, err = fc.FileControlDataVersion("main")
		return err
	})
	return v, err
}

// runOne runs r.Fn in a savepoint (bare: directly in the transaction, which the
// caller rolls back if the function fails) and records its result in r.Err. It
// returns an error only if the savepoint machinery itself failed, in which
// case the whole transaction must be abandoned.
func (db *DB) runOne(r *updates.Request, bare bool) error {
	if !bare {
		if err := db.exec("SAVEPOINT u"); err != nil {
			return fmt.Errorf("store: savepoint: %w", err)
		}
	}
	db.updates.Add(1)
	saved := db.head
	tx := sqltx.NewWrite(context.Background(), db.stmts, dialect, &db.head)
	r.Err = updates.Call(r.Fn, tx)
	tx.End()
	if r.Err != nil {
		db.head = saved // the function's entries are rolled back with its savepoint
	}
	if bare {
		// The caller rolls the transaction back if the function failed.
		if r.Err != nil {
			db.failed.Add(1)
		}
		return nil
	}
	if r.Err == nil {
		if err := db.exec("RELEASE u"); err != nil {
			return fmt.Errorf("store: release savepoint: %w", err)
		}
		return nil
	}
	db.failed.Add(1)
	if err := db.exec("ROLLBACK TO u"); err != nil {
		return fmt.Errorf("store: rollback savepoint: %w", err)
	}
	if err := db.exec("RELEASE u"); err != nil {
		return fmt.Errorf("store: release savepoint: %w", err)
	}
	return nil
}

// stmtCache prepares each statement once on one connection: the writer's, used only from the
// writer goroutine, or a reader's, used only by the View that holds it. With a limit, it
// keeps at most that many statements and runs the others unprepared (s is nil).
type stmtCache struct {
	conn  *sql.Conn
	m     map[string]*sql.Stmt
	limit int
}

// statements counts the statements the store's connections ran, in every handle of the
// process: the benchmarks' figures per certificate. The statements that triggers run are
// not among them.
var statements atomic.Int64

func (c *stmtCache) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	statements.Add(1)
	if s, ok := c.m[query]; ok {
		return s, nil
	}
	if c.limit > 0 && len(c.m) >= c.limit {
		return nil, nil
	}
	s, err := c.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.m[query] = s
	return s, nil
}

func (c *stmtCache) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return c.conn.ExecContext(ctx, query, args...)
	}
	return s.ExecContext(ctx, args...)
}

func (c *stmtCache) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return c.conn.QueryContext(ctx, query, args...)
	}
	return s.QueryContext(ctx, args...)
}

// exec runs a statement without arguments (BEGIN, COMMIT, SAVEPOINT) through the cache.
func (c *stmtCache) exec(ctx context.Context, query string) error {
	_, err := c.ExecContext(ctx, query)
	return err
}

func (c *stmtCache) close() error {
	var errs []error
	for _, s := range c.m {
		errs = append(errs, s.Close())
	}
	c.m = nil
	return errors.Join(errs...)
}

// dialect is SQLite's for the shared transaction: rowid numbers the certificates in insertion
// order, and the revocation reads name their index for the planner.
var dialect = &sqltx.Dialect{MapErr: mapErr, Position: "rowid", IndexHints: true}

// mapErr maps SQLite constraint failures to the store's sentinels, keeping
// SQLite's message (which names the table and column, never a value).
func mapErr(err error) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("%w (%w)", store.ErrConflict, err)
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return fmt.Errorf("%w: referenced row missing (%w)", store.ErrNotFound, err)
	case sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_NOTNULL:
		return fmt.Errorf("%w (%w)", store.ErrInvalid, err)
	}
	return err
}

var _ store.Store = (*DB)(nil)
