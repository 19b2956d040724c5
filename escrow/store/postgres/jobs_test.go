package postgres

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestJobItemsWithoutSavepoint: a job item's reservation and finish each take one statement
// in one round trip, with no savepoint around it; a reservation of an item already present
// gives ErrConflict, of an unknown job ErrNotFound, a second finish ErrConflict, and neither
// costs the function its other writes: it goes on and commits them.
func TestJobItemsWithoutSavepoint(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	err := db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertJob(store.Job{ID: "j", Kind: "enroll", Template: "t", SubmittedBy: "a", Input: "f"})
	})
	if err != nil {
		t.Fatal(err)
	}
	// one runs a write and reports the statements and round trips it took.
	one := func(write func() error) (stmts, trips int64, err error) {
		s, r := Wire()
		err = write()
		s2, r2 := Wire()
		return s2 - s, r2 - r, err
	}
	err = db.Update(ctx, func(tx store.Tx) error {
		if err := insertCode("c1", "a@example.com")(tx); err != nil { // opens the transaction
			return err
		}
		for _, step := range []struct {
			name    string
			write   func() error
			wantErr error
		}{
			{"reserve", func() error { return tx.ReserveJobItem("j", 1, "0a", "r1") }, nil},
			{"reserve again", func() error { return tx.ReserveJobItem("j", 1, "0b", "r2") }, store.ErrConflict},
			{"reserve for no job", func() error { return tx.ReserveJobItem("nojob", 1, "0c", "") }, store.ErrNotFound},
			{"finish", func() error { return tx.FinishJobItem("j", 1, []byte("p12"), []byte("pw")) }, nil},
			{"finish again", func() error { return tx.FinishJobItem("j", 1, nil, nil) }, store.ErrConflict},
			{"reserve a done item", func() error { return tx.ReserveJobItem("j", 1, "0d", "") }, store.ErrConflict},
		} {
			stmts, trips, err := one(step.write)
			if !errors.Is(err, step.wantErr) || (step.wantErr == nil) != (err == nil) {
				return fmt.Errorf("%s: %v, want %v", step.name, err, step.wantErr)
			}
			if err == nil && (stmts != 1 || trips != 1) {
				t.Errorf("%s: %d statements in %d round trips, want 1 in 1 (no savepoint)", step.name, stmts, trips)
			}
		}
		return insertCode("c2", "a@example.com")(tx) // the function goes on
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(ctx, func(tx store.Tx) error {
		for _, id := range []string{"c1", "c2"} {
			if _, err := tx.GetCode(id); err != nil {
				return fmt.Errorf("code %s: %w", id, err)
			}
		}
		return tx.JobItems("j", 0, 0, func(it store.JobItem) error {
			if it.Seq != 1 || it.State != store.ItemDone || it.Serial != "a" || it.RecordID != "r1" || string(it.PKCS12) != "p12" {
				t.Errorf("item %+v, want item 1 done with serial a, record r1 and its PKCS#12", it)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}
