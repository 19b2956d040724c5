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
//
// On the writer it also opens the running function's savepoint before its first statement
// (see [savepoints]).
type pgQuerier struct {
	q  sqlQuerier
	sp *savepoints // the writer's; nil in a View
}

func (p pgQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	if err := p.sp.ensure(ctx, p.q); err != nil {
		return nil, err
	}
	return p.q.ExecContext(ctx, rebind(query), args...)
}

func (p pgQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if err := checkArgs(args); err != nil {
		return nil, err
	}
	if err := p.sp.ensure(ctx, p.q); err != nil {
		return nil, err
	}
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
