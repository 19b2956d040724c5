package postgres

import (
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"

	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// dialect is PostgreSQL's for the shared transaction: the identity column pos numbers the
// certificates in insertion order, the planner needs no index hints, and the statements that
// store certificates and responses keep ocsp_due themselves (migration 8 dropped the
// triggers). Leases are measured on the server's clock.
var dialect = &sqltx.Dialect{MapErr: mapErr, Position: "pos", KeepsDue: true, Clock: serverClock}

// serverClock is the server's clock in unix microseconds, the one clock of every node's leases
// (store.Leases.LeaseNow). clock_timestamp(), not now(): a write transaction may have waited for
// the writer lock since it began.
const serverClock = `(extract(epoch FROM clock_timestamp()) * 1000000)::bigint`

// wire counts the statements the store sends to servers and the round trips they take, over
// every handle of the process: the figures per certificate of the benchmarks.
// busy is the time the writers spent in their write transactions, from the BEGIN to the
// answer of the COMMIT.
var wire struct{ statements, trips, busy atomic.Int64 }

// Wire returns the statements the store has sent to servers so far and the round trips they
// took, over every handle of the process: a benchmark's figures of the work per item (see
// escrow/bulk's and this package's benchmarks).
func Wire() (statements, trips int64) { return wire.statements.Load(), wire.trips.Load() }

// WriterBusy returns the time the writers of every handle of the process have spent in write
// transactions so far (from the BEGIN to the COMMIT's answer). Over a benchmark's run, its
// share of the elapsed time tells whether the one writer is what bounds the rate.
func WriterBusy() time.Duration { return time.Duration(wire.busy.Load()) }

// sent counts n statements sent in one round trip.
func sent(n int) {
	wire.statements.Add(int64(n))
	wire.trips.Add(1)
}

// sqlQuerier is a *sql.Conn (the writer's) or a *sql.Tx (a View's).
type sqlQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// pgQuerier runs the Tx's statements (see [sqltx.Querier]), written with ? placeholders (?N
// for a numbered one), as PostgreSQL's $N, and refuses arguments PostgreSQL cannot store
// before they reach the server: a text with a NUL byte or invalid UTF-8 fails the statement
// there, which costs a round trip and, outside a savepoint, the whole transaction.
//
// On the writer it also opens the running function's savepoint before its first statement
// (see [savepoints]), and runs each write in a savepoint of its own (see
// [pgQuerier.execPipelined]).
type pgQuerier struct {
	q      sqlQuerier
	sp     *savepoints // the writer's; nil in a View
	writer *sql.Conn   // the writer's connection (nil in a View), for pipelined statements
	later  *heldBack   // the writer's held-back writes (nil in a View)
}

// heldBack holds the writes of the writer's transaction that wait for its next round trip
// (see [pgQuerier.ExecLater]). They are sent, in order, before the next statement of any
// function of the transaction (in the same pgx batch when that is a write), or with the
// COMMIT. A function that fails with its savepoint open drops its own (the savepoint is rolled
// back anyway), and a rollback of the transaction drops them all.
type heldBack struct {
	stmts []heldStmt
	// failed is the error of a held-back write that failed on the server: the transaction is
	// aborted, and every function of it fails (see DB.runOne).
	failed error
}

type heldStmt struct {
	query string // rebound; empty for a row (see ExecLaterRow)
	args  []any
	// head and width are those of the INSERT of one row held back by ExecLaterRow: the rows
	// held back one after the other with the same head go out as multi-row INSERTs.
	head  string
	width int
}

// maxHeldBack bounds the writes held back: beyond it, the next one goes out at once with the
// others.
const maxHeldBack = 256

// reset forgets the held-back writes and the failure of one.
func (h *heldBack) reset() { h.stmts, h.failed = h.stmts[:0], nil }

// errHeldBack is the error of a statement that could not run because a write held back before
// it failed: the writer's transaction is lost, for a fault of the server or the connection
// (those writes cannot fail for their values: see sqltx's execLater).
var errHeldBack = errors.New("store: an earlier write of the transaction failed")

// heldErr is the error of every function of a transaction whose held-back write failed with
// err: a fault ([store.ErrUnavailable]), whatever err says of the statement (its text only is
// kept: no statement of the caller's was refused).
func heldErr(err error) error {
	return fmt.Errorf("%w: %w: %v", store.ErrUnavailable, errHeldBack, err)
}

// ExecContext runs a write statement. On the writer it runs inside a savepoint of its own:
// PostgreSQL aborts the whole transaction when a statement fails, where the contract wants
// only that statement undone (fn may handle a Tx method's error and go on, and the other
// functions of its group must not be affected); the savepoint is rolled back on failure,
// which leaves the transaction as it was before the statement.
func (p pgQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	if p.writer != nil {
		return p.execPipelined(ctx, query, args, true)
	}
	if err := p.sp.ensure(ctx, p.q); err != nil {
		return nil, err
	}
	sent(1)
	return p.q.ExecContext(ctx, rebind(query), args...)
}

// ExecBare runs a write that no constraint can refuse (see sqltx's execBare) without a
// savepoint of its own: on the writer, the statement alone goes out (with the function's
// savepoint when it is its first). Should it fail all the same, the server aborts the
// function's savepoint (or, for the first function of a transaction, the transaction): the
// function's writes are undone when it returns, and if it returns no error, Update reports
// the aborted transaction (see runOne).
func (p pgQuerier) ExecBare(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	if p.writer != nil {
		return p.execPipelined(ctx, query, args, false)
	}
	return p.ExecContext(ctx, query, args...)
}

// ExecLater holds a write back until the writer's next round trip (see sqltx's execLater): it
// goes out in the same pgx batch as the next write, before the next read, or with the COMMIT.
// A function's first statement, which opens its savepoint, goes out at once (as ExecBare).
func (p pgQuerier) ExecLater(ctx context.Context, query string, args ...any) error {
	if err := checkArgs(args); err != nil {
		return err
	}
	if p.writer == nil || p.later == nil || p.sp.prefix() != nil || len(p.later.stmts) >= maxHeldBack {
		_, err := p.ExecBare(ctx, query, args...)
		return err
	}
	if p.later.failed != nil {
		return heldErr(p.later.failed)
	}
	p.later.stmts = append(p.later.stmts, heldStmt{query: rebind(query), args: args})
	return nil
}

// ExecLaterRow is ExecLater for the INSERT of one row (see sqltx's execLaterRow): the rows held
// back one after the other with the same head go out as multi-row INSERTs of up to
// sqltx.RowsPerInsert rows.
func (p pgQuerier) ExecLaterRow(ctx context.Context, head string, width int, args ...any) error {
	if err := checkArgs(args); err != nil {
		return err
	}
	if p.writer == nil || p.later == nil || p.sp.prefix() != nil || len(p.later.stmts) >= maxHeldBack {
		_, err := p.ExecBare(ctx, sqltx.MultiRowInsert(head, width, 1), args...)
		return err
	}
	if p.later.failed != nil {
		return heldErr(p.later.failed)
	}
	p.later.stmts = append(p.later.stmts, heldStmt{args: args, head: head, width: width})
	return nil
}

// queueHeld queues the held-back writes, if any, in b (the rows of one head that follow each
// other merged into multi-row INSERTs), and returns the number of statements queued.
func (p pgQuerier) queueHeld(b *pgx.Batch) int {
	if p.later == nil || len(p.later.stmts) == 0 {
		return 0
	}
	held := p.later.stmts
	n := 0
	for i := 0; i < len(held); {
		h := held[i]
		if h.head == "" {
			b.Queue(h.query, h.args...)
			n, i = n+1, i+1
			continue
		}
		j := i + 1
		for j < len(held) && held[j].head == h.head && held[j].width == h.width && j-i < sqltx.RowsPerInsert {
			j++
		}
		// At most RowsPerInsert rows, in a statement of as many rows as there are: the shapes
		// are few, each prepared once per connection.
		k := sqltx.RowsPerInsert
		for k > j-i {
			k /= 2
		}
		args := make([]any, 0, k*h.width)
		for _, r := range held[i : i+k] {
			args = append(args, r.args...)
		}
		b.Queue(rebind(sqltx.MultiRowInsert(h.head, h.width, k)), args...)
		n, i = n+1, i+k
	}
	clear(held) // the batch holds the statements now
	p.later.stmts = held[:0]
	return n
}

// readHeld reads the results of the n held-back writes queued first in a batch. A failure is
// the transaction's: it is kept in p.later.failed, and errHeldBack is returned.
func (p pgQuerier) readHeld(br pgx.BatchResults, n int) error {
	for range n {
		if _, err := br.Exec(); err != nil {
			p.later.failed = err
			return heldErr(err)
		}
	}
	return nil
}

// flush sends the held-back writes and the running function's savepoint prefix, if any, in
// one round trip: what must precede a read.
func (p pgQuerier) flush(ctx context.Context) error {
	if p.later != nil && p.later.failed != nil {
		return heldErr(p.later.failed)
	}
	if p.writer == nil || p.later == nil || len(p.later.stmts) == 0 {
		return p.sp.ensure(ctx, p.q)
	}
	return p.onWriter(func(c *pgx.Conn) error {
		br, err := p.sendBatch(ctx, c, nil)
		if err != nil {
			return err
		}
		return br.Close()
	})
}

// onWriter runs fn on the writer's pgx connection.
func (p pgQuerier) onWriter(fn func(c *pgx.Conn) error) error {
	return p.writer.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		return fn(c.Conn())
	})
}

// sendBatch sends on c, in one round trip, the writes held back, the savepoint the function
// has not opened yet and what queue adds (nil: nothing). It reads the results of the first
// two and returns the batch's results from queue's statements on, which the caller reads and
// closes.
func (p pgQuerier) sendBatch(ctx context.Context, c *pgx.Conn, queue func(b *pgx.Batch)) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	held := p.queueHeld(b)
	pre := p.sp.prefix()
	for _, q := range pre {
		b.Queue(q)
	}
	if queue != nil {
		queue(b)
	}
	sent(b.Len())
	br := c.SendBatch(ctx, b)
	if err := p.readHeld(br, held); err != nil {
		br.Close() // the batch's error is the held-back write's
		return nil, err
	}
	for range pre {
		if _, err := br.Exec(); err != nil {
			return nil, errors.Join(err, br.Close())
		}
	}
	if pre != nil {
		p.sp.opened()
	}
	return br, nil
}

// execPipelined runs a write on the writer's connection in one round trip to the server: the
// writes held back (see ExecLater), the savepoint, the statement and the release go out
// together (a pgx batch), and only a failed statement costs a second one, to roll its
// savepoint back. Unguarded, the statement goes without the savepoint and the release.
func (p pgQuerier) execPipelined(ctx context.Context, query string, args []any, guard bool) (sql.Result, error) {
	if p.later != nil && p.later.failed != nil {
		return nil, heldErr(p.later.failed)
	}
	var (
		tag     pgconn.CommandTag
		stmtErr error
	)
	err := p.onWriter(func(c *pgx.Conn) error {
		br, err := p.sendBatch(ctx, c, func(b *pgx.Batch) {
			if guard {
				b.Queue("SAVEPOINT s")
			}
			b.Queue(rebind(query), args...)
			if guard {
				b.Queue("RELEASE SAVEPOINT s")
			}
		})
		if err != nil {
			return err
		}
		if guard {
			_, err = br.Exec()
		}
		if err == nil {
			tag, stmtErr = br.Exec()
			if stmtErr == nil && guard {
				_, err = br.Exec()
			}
		}
		err = errors.Join(err, br.Close())
		if stmtErr != nil && !guard {
			return nil // the function's savepoint, or the transaction, is aborted: see ExecBare
		}
		if stmtErr != nil {
			// The statement failed and aborted the transaction: back to before it.
			sent(2)
			_, rerr := c.Exec(ctx, "ROLLBACK TO SAVEPOINT s; RELEASE SAVEPOINT s")
			return rerr
		}
		return err
	})
	if err != nil {
		return nil, errors.Join(stmtErr, err)
	}
	if stmtErr != nil {
		return nil, stmtErr
	}
	return rowsAffected(tag.RowsAffected()), nil
}

// rowsAffected is the sql.Result of a pipelined statement.
type rowsAffected int64

func (n rowsAffected) LastInsertId() (int64, error) {
	return 0, errors.New("store: no insert id in PostgreSQL")
}
func (n rowsAffected) RowsAffected() (int64, error) { return int64(n), nil }

func (p pgQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	if err := p.flush(ctx); err != nil {
		return nil, err
	}
	sent(1)
	return p.q.QueryContext(ctx, rebind(query), args...)
}

// savepoints tracks savepoint u, the one each function of a group (but the first) runs in. It
// is opened lazily, with the function's first statement (in the same round trip when that is
// a pipelined write), so a function that stores one row costs one round trip; and the
// savepoint of a function that succeeded is released only when the next one opens its own,
// or by the COMMIT.
type savepoints struct {
	pending bool // the running function needs u and has not opened it yet
	open    bool // a u is open on the server
	mine    bool // the open u is the running function's
}

// prefix returns the statements that open the running function's savepoint, if it is pending.
func (s *savepoints) prefix() []string {
	switch {
	case s == nil || !s.pending:
		return nil
	case s.open:
		return []string{"RELEASE SAVEPOINT u", "SAVEPOINT u"}
	}
	return []string{"SAVEPOINT u"}
}

// opened records that the prefix ran.
func (s *savepoints) opened() { s.pending, s.open, s.mine = false, true, true }

// ensure runs the prefix, if any, on q.
func (s *savepoints) ensure(ctx context.Context, q sqlQuerier) error {
	pre := s.prefix()
	if pre == nil {
		return nil
	}
	sent(len(pre))
	if _, err := q.ExecContext(ctx, strings.Join(pre, "; ")); err != nil {
		return err
	}
	s.opened()
	return nil
}

// checkArgs refuses a text argument that PostgreSQL's text type cannot hold.
func checkArgs(args []any) error {
	for i, a := range args {
		s, ok := a.(string)
		if !ok {
			continue
		}
		if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
			return fmt.Errorf("argument %d is not valid UTF-8 text without NUL: %w", i+1, store.ErrInvalid)
		}
	}
	return nil
}

var rebound sync.Map // query → rebound query

// rebind turns ? placeholders into $1, $2, ... in order, and ?N into $N. The statements of
// this package hold no ? inside string literals or identifiers.
func rebind(query string) string {
	if q, ok := rebound.Load(query); ok {
		return q.(string)
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for i := 0; i < len(query); i++ {
		c := query[i]
		if c != '?' {
			b.WriteByte(c)
			continue
		}
		j := i + 1
		for j < len(query) && '0' <= query[j] && query[j] <= '9' {
			j++
		}
		b.WriteByte('$')
		if j > i+1 {
			b.WriteString(query[i+1 : j])
			i = j - 1
			continue
		}
		n++
		b.WriteString(strconv.Itoa(n))
	}
	q := b.String()
	rebound.Store(query, q)
	return q
}
