package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"errors"
	"sync"
	"testing"
)

// TestBatchAbandonedIsUnavailable: when the shared write transaction itself breaks (here its
// savepoint is gone, as after SQLite rolled back the whole transaction on an I/O error), every
// request of the batch gets ErrUnavailable: none of them is at fault, and the bulk pipeline
// must retry them rather than fail their items. The next batch works.
func TestBatchAbandonedIsUnavailable(t *testing.T) {
	db, _ := openTest(t)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	start := make(chan struct{})
	// The first function holds the writer until the second is queued, so both share a batch.
	wg.Go(func() {
		errs[0] = db.Update(ctx, func(tx store.Tx) error {
			close(start)
			for db.queueLen() == 0 {
			}
			return nil
		})
	})
	<-start
	wg.Go(func() {
		errs[1] = db.Update(ctx, func(tx store.Tx) error {
			// What an I/O error in the middle of a statement can do: the transaction is gone.
			_, err := rawExec(tx, "ROLLBACK")
			return err
		})
	})
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("request %d of the abandoned batch: %v, want ErrUnavailable", i, err)
		}
	}
	if err := db.Update(ctx, func(tx store.Tx) error { return nil }); err != nil {
		t.Fatalf("the next batch: %v", err)
	}
}
