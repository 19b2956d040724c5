package postgres

import (
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestViewTrips: a View's BEGIN goes out with its first statement, so that a View of one
// statement takes two round trips (the statement, the ROLLBACK) and each further statement one;
// a View that runs no statement takes none.
func TestViewTrips(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	if err := db.Update(ctx, insertCode("c1", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		statements int
		wantTrips  int64
	}{
		{"none", 0, 0},
		{"one", 1, 2},
		{"three", 3, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := Wire()
			err := db.View(ctx, func(tx store.Tx) error {
				for range tc.statements {
					if _, err := tx.GetCode("c1"); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, after := Wire(); after-before != tc.wantTrips {
				t.Errorf("a View of %d statements took %d round trips, want %d", tc.statements, after-before, tc.wantTrips)
			}
		})
	}
}
