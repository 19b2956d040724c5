package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"

	"database/sql"
	"errors"
	"testing"
)

// rawExec runs a statement that no method of the Tx runs, on the Tx's connection.
func rawExec(tx store.Tx, query string) (sql.Result, error) {
	ctx, q := tx.(*sqltx.Tx).Raw()
	return q.ExecContext(ctx, query)
}

// TestUnavailable: faults of the storage carry ErrUnavailable, faults of the statement do not.
func TestUnavailable(t *testing.T) {
	db, _ := openTest(t)
	err := db.Update(ctx, func(tx store.Tx) error {
		_, err := rawExec(tx, "INSERT INTO no_such_table VALUES (1)")
		return err
	})
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("a bad statement: got %v, want an error that is not ErrUnavailable", err)
	}

	db.Close()
	for name, err := range map[string]error{
		"update": db.Update(ctx, func(store.Tx) error { return nil }),
		"view":   db.View(ctx, func(store.Tx) error { return nil }),
	} {
		if !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: got %v, want ErrUnavailable wrapping ErrClosed", name, err)
		}
	}
}
