package postgres

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"
)

// viewBegin starts a View's transaction: one snapshot, taken at its first statement.
const viewBegin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

// viewQuerier runs the statements of one View on a connection of the pool, with pgx's own rows
// rather than database/sql's (see [sqltx.RowsQuerier]), and without a round trip of its own
// for the BEGIN: it goes out in one pgx batch with the View's first statement, so that a View
// of one statement (an enrollee's code, a certificate's status) takes two round trips, the
// statement and the ROLLBACK, where database/sql's transaction took three. A View whose
// function runs no statement takes none, and no connection.
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

// QueryRows runs a query of the View. The first one goes out with the BEGIN; if the BEGIN
// fails for a fault of the server (the pool's connections died with a restart), no statement
// of the View has run yet, and it is tried once more on a new connection.
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
		if v.conn == nil {
			c, err := v.db.pool.Acquire(ctx)
			if err != nil {
				return nil, err
			}
			v.conn = c
		}
		b := &pgx.Batch{}
		b.Queue(viewBegin)
		b.Queue(q, args...)
		sent(2)
		br := v.conn.SendBatch(ctx, b)
		if _, err := br.Exec(); err != nil {
			br.Close()
			v.conn.Release() // destroyed by the pool unless it is idle and sound
			v.conn = nil
			if try > 0 || !isServerFault(err) || ctx.Err() != nil {
				return nil, err
			}
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

// end ends the View: the ROLLBACK (read-only, nothing to keep), and the connection back to the
// pool, which drops it if the ROLLBACK did not leave it idle.
func (v *viewQuerier) end() {
	if v.conn == nil {
		return
	}
	if v.begun {
		sent(1)
		v.conn.Exec(context.Background(), "ROLLBACK")
	}
	v.conn.Release()
	v.conn, v.begun = nil, false
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
