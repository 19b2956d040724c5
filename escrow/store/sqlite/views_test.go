package sqlite

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestViewsLeaveNoSnapshot: the Views keep their connections and prepared statements, but no
// read transaction: after many Views (some failing, some reading several rows, some from
// many goroutines at once), the writer can checkpoint the whole WAL and truncate it, which
// a connection holding a snapshot would prevent; and a View sees a commit made after the
// previous View on the same connection.
func TestViewsLeaveNoSnapshot(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	insert := func(i int) {
		t.Helper()
		if err := db.Update(ctx, func(tx store.Tx) error {
			return tx.InsertCode(store.Code{ID: fmt.Sprintf("C%07d", i), Email: "alice@example.com", Template: "t",
				Hash: []byte("hash"), CreatedAt: now, ExpiresAt: now.AddDate(1, 0, 0)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	errStop := errors.New("stop")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				insert(g*1000 + i)
				err := db.View(ctx, func(tx store.Tx) error {
					if _, err := tx.GetCode(fmt.Sprintf("C%07d", g*1000+i)); err != nil {
						return err
					}
					if i%3 == 0 {
						return errStop
					}
					return nil
				})
				if err != nil && !errors.Is(err, errStop) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Every reader connection has served Views by now; a new commit is visible to each.
	insert(99999)
	for range 2 * cap(db.readers) {
		if err := db.View(ctx, func(tx store.Tx) error {
			_, err := tx.GetCode("C0099999")
			return err
		}); err != nil {
			t.Fatalf("a View does not see the last commit: %v", err)
		}
	}
	var busy, logFrames, done int
	if err := db.wconn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &done); err != nil {
		t.Fatal(err)
	}
	if busy != 0 || logFrames != 0 {
		t.Fatalf("wal_checkpoint(TRUNCATE): busy %d, %d frames left: a View's connection holds a snapshot", busy, logFrames)
	}
}
