package sqlite

import (
	"bytes"
	"fmt"
	"os"

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

// TestCorruptIsUnavailable: a database whose pages cannot be read back is a fault of the
// storage (the appliance's, answered 503 with Retry-After), not an error of the statement.
// SQLite reports a failed read of a page (EIO) as a malformed database, as it does a damaged
// file.
func TestCorruptIsUnavailable(t *testing.T) {
	db, path := openTest(t)
	mustUpdate(t, db, func(tx store.Tx) error {
		for i := range 400 {
			if err := tx.InsertCertificate(cert(fmt.Sprintf("%04x", 0x1000+i))); err != nil {
				return err
			}
		}
		return nil
	})
	// Closed and opened again: the rows are in the file, not in the WAL.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	// Every page but the first two (the header and the schema) is overwritten.
	junk := bytes.Repeat([]byte{0xa5}, int(fi.Size())-2*4096)
	if _, err := f.WriteAt(junk, 2*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	err = db.View(ctx, func(tx store.Tx) error {
		_, err := tx.ListCertificates(store.Filter{})
		return err
	})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a View of a damaged database: %v, want ErrUnavailable", err)
	}
}
