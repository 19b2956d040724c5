package postgres

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// sqlQuerier is a *sql.Conn (the writer's) or a *sql.Tx (a View's).
type sqlQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// pgQuerier runs the Tx's statements, written with ? placeholders (?N for a numbered one), as
// PostgreSQL's $N, and refuses arguments PostgreSQL cannot store before they reach the
// server: a text with a NUL byte or invalid UTF-8 fails the statement there, which costs a
// round trip and, outside a savepoint, the whole transaction.
type pgQuerier struct{ q sqlQuerier }

func (p pgQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	return p.q.ExecContext(ctx, rebind(query), args...)
}

func (p pgQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	return p.q.QueryContext(ctx, rebind(query), args...)
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
