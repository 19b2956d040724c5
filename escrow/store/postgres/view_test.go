package postgres

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestViewTrips: a View's BEGIN goes out with its first statement, and its ROLLBACK with the
// next View's BEGIN, so that a View takes one round trip per statement; a View that runs no
// statement takes none.
func TestViewTrips(t *testing.T) {
	parkFor = time.Hour // no ROLLBACK of the parking's own in between
	t.Cleanup(func() { parkFor = 20 * time.Millisecond })
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
		{"one", 1, 1},
		{"one again", 1, 1},
		{"three", 3, 3},
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

// TestViewSnapshotEnds: a View's transaction, left open for the next View, is rolled back
// parkFor after it ended when no View comes: no session of the store stays idle in a
// transaction, holding its snapshot.
func TestViewSnapshotEnds(t *testing.T) {
	srv := pgtest.Start(t)
	t.Cleanup(func() { parkFor = 20 * time.Millisecond })
	for _, park := range []time.Duration{50 * time.Millisecond, time.Hour} {
		parkFor = park // read by Open
		name := srv.CreateDatabase(t)
		db := openURL(t, srv.URL(name))
		if err := db.Update(ctx, insertCode("c1", "a@example.com")); err != nil {
			t.Fatal(err)
		}
		if err := db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("c1"); return err }); err != nil {
			t.Fatal(err)
		}
		open := idleInTransaction(t, srv, name)
		for deadline := time.Now().Add(5 * time.Second); park < time.Hour && open > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			open = idleInTransaction(t, srv, name)
		}
		switch {
		case park == time.Hour && open != 1:
			t.Fatalf("parked for an hour: %d sessions idle in a transaction, want the View's", open)
		case park < time.Hour && open != 0:
			t.Errorf("parked for %v: %d sessions still idle in a transaction 5 s later", park, open)
		}
	}
}

// TestParkingStarvesNoOne: while Views' connections are parked, the others who need one of the
// pool get one at once, even when the parking holds all the pool has (here the writer's and
// one View's).
func TestParkingStarvesNoOne(t *testing.T) {
	parkFor = time.Hour
	t.Cleanup(func() { parkFor = 20 * time.Millisecond })
	srv := pgtest.Start(t)
	db := openURL(t, srv.NewDatabase(t)+" pool_max_conns=2")
	if err := db.Update(ctx, insertCode("c1", "a@example.com")); err != nil { // the writer takes one
		t.Fatal(err)
	}
	if err := db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("c1"); return err }); err != nil {
		t.Fatal(err) // parks the other
	}
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.Check(c); err != nil {
		t.Fatalf("Check with the pool's last connection parked: %v", err)
	}
	if err := db.View(c, func(tx store.Tx) error { _, err := tx.GetCode("c1"); return err }); err != nil {
		t.Fatalf("View after: %v", err)
	}
}

// idleInTransaction counts the store's sessions on database name that are idle in a
// transaction.
func idleInTransaction(t *testing.T, srv *pgtest.Server, name string) int {
	t.Helper()
	c, err := pgconn.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rs, err := c.Exec(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = '`+name+
		`' AND application_name = 'keyarc' AND state LIKE 'idle in transaction%'`).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(string(rs[0].Rows[0][0]))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPoolSize: the pool's size is the default unless the connection string sets it, as a URL
// or as key=value.
func TestPoolSize(t *testing.T) {
	for _, tc := range []struct {
		conn string
		want bool
	}{
		{"postgres:///keyarc?host=/run/postgresql", false},
		{"postgres:///keyarc?host=/run/postgresql&pool_max_conns=3", true},
		{"postgresql://db.example.org/pool_max_conns?sslmode=verify-full", false},
		{"host=/tmp dbname=keyarc", false},
		{"host=/tmp dbname=keyarc pool_max_conns=3", true},
		{"host=/tmp dbname=pool_max_conns", false},
	} {
		if got := setsPoolSize(tc.conn); got != tc.want {
			t.Errorf("setsPoolSize(%q) = %v, want %v", tc.conn, got, tc.want)
		}
	}
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	if got, want := openURL(t, url).pool.Config().MaxConns, defaultMaxConns(); got != want {
		t.Errorf("default pool: %d connections, want %d", got, want)
	}
	if got := openURL(t, url+" pool_max_conns=3").pool.Config().MaxConns; got != 3 {
		t.Errorf("pool_max_conns=3: %d connections", got)
	}
}
