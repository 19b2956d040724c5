package store

import (
	"errors"
	"testing"
)

// TestUnavailable: faults of the storage carry ErrUnavailable, faults of the statement do not.
func TestUnavailable(t *testing.T) {
	db, _ := openTest(t)
	err := db.Update(ctx, func(tx *Tx) error {
		_, err := tx.q.ExecContext(tx.ctx, "INSERT INTO no_such_table VALUES (1)")
		return err
	})
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Errorf("a bad statement: got %v, want an error that is not ErrUnavailable", err)
	}

	db.Close()
	for name, err := range map[string]error{
		"update": db.Update(ctx, func(*Tx) error { return nil }),
		"view":   db.View(ctx, func(*Tx) error { return nil }),
	} {
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: got %v, want ErrUnavailable wrapping ErrClosed", name, err)
		}
	}
}
