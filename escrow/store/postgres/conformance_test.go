package postgres

import (
	"context"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
	"github.com/keyarc/keyarc/escrow/store/storetest"
)

// openTest opens a store on a fresh database of srv and closes it when t ends.
func openTest(t *testing.T, srv *pgtest.Server) (*DB, string) {
	t.Helper()
	url := srv.NewDatabase(t)
	db := openURL(t, url)
	return db, url
}

// openURL opens a store on url and closes it when t ends.
func openURL(t *testing.T, url string) *DB {
	t.Helper()
	db, err := Open(context.Background(), url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db
}

// TestConformance runs the storage contract's suite against PostgreSQL, each store on a
// database of its own. The second handle is another pool on the same database, with its own
// writer, as a second keyarc node would have.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	urls := map[store.Store]string{}
	var mu chan struct{} = make(chan struct{}, 1)
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) store.Store {
			db, url := openTest(t, srv)
			mu <- struct{}{}
			urls[db] = url
			<-mu
			return db
		},
		OpenSecond: func(t *testing.T, first store.Store) store.Store {
			mu <- struct{}{}
			url := urls[first]
			<-mu
			return openURL(t, url)
		},
		Waiting:     func(s store.Store) int { return s.(*DB).queueLen() },
		ServerClock: true,
	})
}
