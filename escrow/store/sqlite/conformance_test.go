package sqlite

import (
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/storetest"
)

// TestConformance runs the storage contract's suite against SQLite. The second handle is a
// second Open of the same file, which writes through its own writer as another process would.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) store.Store {
			db, _ := openTest(t)
			return db
		},
		OpenSecond: func(t *testing.T, first store.Store) store.Store {
			db, err := Open(first.(*DB).Path())
			if err != nil {
				t.Fatalf("Open a second handle: %v", err)
			}
			t.Cleanup(func() {
				if err := db.Close(); err != nil {
					t.Errorf("Close the second handle: %v", err)
				}
			})
			return db
		},
		Waiting: func(s store.Store) int { return s.(*DB).queueLen() },
	})
}
