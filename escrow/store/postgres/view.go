package postgres

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"
)

// viewBegin starts a View's transaction: one snapshot, taken at its first statement.
const viewBegin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

// viewQuerier runs the statements of one View on a connection of the pool, with pgx's own rows
// rather than database/sql's (see [sqltx.RowsQuerier]), and without round trips of its own for
// the BEGIN and the ROLLBACK. The BEGIN goes out in one pgx batch with the View's first
// statement. The ROLLBACK waits on the connection, parked (see [parking]), for the next View,
// whose first batch carries it before that View's BEGIN. A View of one statement so takes one
// round trip, where database/sql's transaction took three; a View whose function runs no
// statement takes none, and no connection.
type viewQuerier struct {
	db    *DB
	conn  *pgxpool.Conn // nil until the first statement
	begun bool          // the transaction is open on conn
}

var (
	_ sqltx.Querier     = (*viewQuerier)(nil)
	_ sqltx.RowsQuerier = (*viewQuerier)(nil)
)

// errViewSQL: a View runs its statements through QueryRows; database/sql's methods are not
// there (the writes of a View are refused before they reach the Querier).
var errViewSQL = errors.New("store: a View's statements go through QueryRows")

func (v *viewQuerier) ExecContext(context.Context, string, ...any) (sql.Result, error) {
	return nil, errViewSQL
}

func (v *viewQuerier) QueryContext(context.Context, string, ...any) (*sql.Rows, error) {
	return nil, errViewSQL
}

// QueryRows runs a query of the View. The first one goes out with the BEGIN, after the ROLLBACK
// of the View that parked the connection, if it came from the parking. If that batch fails for
// a fault of the server (the connections died with a restart), no statement of the View has
// run yet, and it is tried once more on a new connection of the pool.
func (v *viewQuerier) QueryRows(ctx context.Context, query string, args ...any) (sqltx.Rows, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	q := rebind(query)
	if v.begun {
		sent(1)
		rows, err := v.conn.Query(ctx, q, args...)
		if err != nil {
			return nil, err
		}
		return pgRows{rows}, nil
	}
	for try := 0; ; try++ {
		// After a fault, not a parked connection: they most likely died with the server.
		c, parked, err := v.db.parking.get(ctx, v.db.pool, try == 0)
		if err != nil {
			return nil, err
		}
		v.conn = c
		b := &pgx.Batch{}
		if parked {
			b.Queue("ROLLBACK")
		}
		b.Queue(viewBegin)
		b.Queue(q, args...)
		sent(b.Len())
		br := v.conn.SendBatch(ctx, b)
		for range b.Len() - 1 {
			if _, err = br.Exec(); err != nil {
				break
			}
		}
		if err != nil {
			br.Close()
			v.conn.Release() // destroyed by the pool unless it is idle and sound
			v.conn = nil
			if try > 0 || !isServerFault(err) || ctx.Err() != nil {
				return nil, err
			}
			// The other connections most likely died with this one: dial afresh.
			v.db.parking.discard()
			v.db.pool.Reset()
			continue
		}
		v.begun = true
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return nil, err
		}
		return &batchRows{pgRows{rows}, br}, nil
	}
}

// end ends the View: its connection goes to the parking with the transaction still open (the
// next View's first batch rolls it back), or back to the pool, which drops it if it is not
// idle and sound.
func (v *viewQuerier) end() {
	if v.conn == nil {
		return
	}
	if v.begun {
		v.db.parking.park(v.conn)
	} else {
		v.conn.Release()
	}
	v.conn, v.begun = nil, false
}

// parkFor is how long a parked connection waits for a View before the parking rolls its
// transaction back and returns it to the pool: the longest a View's snapshot outlives it
// (holding back what VACUUM may remove, as any open transaction does). A variable for the
// tests, read by [Open].
var parkFor = 20 * time.Millisecond

// parking holds the connections of ended Views whose read-only transaction is still open, so
// that the ROLLBACK, a round trip of its own before, goes out with the next View's BEGIN. A
// busy node's Views so cost one round trip less each; a quiet node's parked connections are
// rolled back and returned to the pool hold after their View ended, by a timer. While
// anyone waits for a connection of the pool, a View's connection goes back to the pool
// instead, so that parking never starves the writer or another View.
type parking struct {
	hold time.Duration // parkFor, set by Open

	mu     sync.Mutex
	conns  []parked // oldest first
	timer  *time.Timer
	closed bool

	waiting atomic.Int32 // callers waiting for a connection of the pool
}

type parked struct {
	conn *pgxpool.Conn
	at   time.Time
}

// get returns the connection parked last (parked true: its transaction is still to roll back)
// if reuse allows one, or else one of pool. While it waits for the pool it counts as waiting,
// so that a View that ends meanwhile gives its connection back to the pool rather than to the
// parking; one parked just before that is taken the second time it looks.
func (p *parking) get(ctx context.Context, pool *pgxpool.Pool, reuse bool) (c *pgxpool.Conn, parked bool, err error) {
	if reuse {
		if c := p.take(); c != nil {
			return c, true, nil
		}
	}
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	if reuse {
		if c := p.take(); c != nil {
			return c, true, nil
		}
	}
	c, err = pool.Acquire(ctx)
	return c, false, err
}

// waiter counts a caller that takes a connection of pool otherwise than through get
// (database/sql's) as waiting, until the function it returns is called. If every connection
// of the pool is taken, the oldest parked one goes back to it first.
func (p *parking) waiter(pool *pgxpool.Pool) func() {
	p.waiting.Add(1)
	if st := pool.Stat(); st.AcquiredConns() >= st.MaxConns() {
		p.mu.Lock()
		var c *pgxpool.Conn
		if len(p.conns) > 0 {
			c = p.conns[0].conn
			p.conns = p.conns[1:]
		}
		p.mu.Unlock()
		if c != nil {
			rollbackRelease(c)
		}
	}
	return func() { p.waiting.Add(-1) }
}

// take returns the connection parked last (its transaction still to roll back), or nil.
func (p *parking) take() *pgxpool.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	if n == 0 {
		return nil
	}
	c := p.conns[n-1].conn
	p.conns = p.conns[:n-1]
	return c
}

// park keeps c, whose View just ended, for the next View. A connection still busy or outside a
// transaction, or one that someone waits for, goes back to the pool (rolled back first).
func (p *parking) park(c *pgxpool.Conn) {
	if pc := c.Conn().PgConn(); pc.IsBusy() || pc.IsClosed() || pc.TxStatus() != 'T' && pc.TxStatus() != 'E' {
		c.Release()
		return
	}
	if p.waiting.Load() > 0 {
		rollbackRelease(c)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		rollbackRelease(c)
		return
	}
	p.conns = append(p.conns, parked{c, time.Now()})
	if p.timer == nil {
		p.timer = time.AfterFunc(p.hold, p.sweep)
	}
	p.mu.Unlock()
}

// sweep rolls back and returns to the pool the connections parked for hold or longer, and
// sets the timer again for the others.
func (p *parking) sweep() {
	p.mu.Lock()
	cut := time.Now().Add(-p.hold)
	n := 0
	for n < len(p.conns) && !p.conns[n].at.After(cut) {
		n++
	}
	old := append([]parked(nil), p.conns[:n]...)
	p.conns = append(p.conns[:0], p.conns[n:]...)
	p.timer = nil
	if len(p.conns) > 0 && !p.closed {
		p.timer = time.AfterFunc(time.Until(p.conns[0].at.Add(p.hold)), p.sweep)
	}
	p.mu.Unlock()
	for _, c := range old {
		rollbackRelease(c.conn)
	}
}

// discard returns every parked connection to the pool, which drops them (they are in a
// transaction): after a fault of the server, they most likely died with it.
func (p *parking) discard() {
	for _, c := range p.takeAll(false) {
		c.conn.Release()
	}
}

// close stops parking and returns every parked connection, rolled back, to the pool.
func (p *parking) close() {
	for _, c := range p.takeAll(true) {
		rollbackRelease(c.conn)
	}
}

// takeAll empties the parking and returns what it held; with stop, it also parks nothing more.
func (p *parking) takeAll(stop bool) []parked {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stop {
		p.closed = true
		if p.timer != nil {
			p.timer.Stop()
			p.timer = nil
		}
	}
	old := p.conns
	p.conns = nil
	return old
}

// rollbackRelease ends c's View transaction and returns c to the pool, which drops it if the
// ROLLBACK did not leave it idle.
func rollbackRelease(c *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sent(1)
	c.Exec(ctx, "ROLLBACK")
	c.Release()
}

// pgRows are pgx's rows as sqltx reads them.
type pgRows struct{ pgx.Rows }

func (r pgRows) Close() error {
	r.Rows.Close()
	return r.Rows.Err()
}

// batchRows are the rows of a View's first statement, which came in a batch with its BEGIN:
// closing them closes the batch, which frees the connection for the next statement.
type batchRows struct {
	pgRows
	br pgx.BatchResults
}

func (r *batchRows) Close() error {
	return errors.Join(r.pgRows.Close(), r.br.Close())
}
