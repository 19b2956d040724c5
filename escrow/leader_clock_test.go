package escrow

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// skewed is a node's wall clock that runs by off from the others'.
func skewed(off time.Duration) func() time.Time {
	return func() time.Time { return time.Now().Add(off) }
}

// TestLeaderClockSkew: two nodes on one PostgreSQL database, one of whose clocks is minutes
// ahead of or behind the other's (NTP broken on one machine). The node that leads keeps
// leading, and the other neither takes the lease while it is renewed nor leads alongside it
// (before, a node ahead found every other node's lease expired and took it, and a node behind
// stored leases the others found expired at once: both led). Once the leader stops, the other
// leads, whatever its clock.
func TestLeaderClockSkew(t *testing.T) {
	srv := pgtest.Start(t)
	const skew, ttl = 5 * time.Minute, time.Minute
	for _, tt := range []struct {
		name          string
		first, second time.Duration // each node's clock, off true time
	}{
		{"second ahead", 0, skew},
		{"second behind", 0, -skew},
		{"first ahead", skew, 0},
		{"first behind", -skew, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := srv.NewDatabase(t)
			open := func() store.Store {
				db, err := postgres.Open(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				return db
			}
			ctx := context.Background()
			a := &Leader{Store: open(), Node: "node-a", TTL: ttl, Now: skewed(tt.first)}
			b := &Leader{Store: open(), Node: "node-b", TTL: ttl, Now: skewed(tt.second)}
			for round := range 2 {
				if err := a.Try(ctx); err != nil {
					t.Fatal(err)
				}
				if err := b.Try(ctx); err != nil {
					t.Fatal(err)
				}
				if !a.Leads() || b.Leads() {
					t.Fatalf("round %d: first leads %v, second leads %v; want the first alone", round, a.Leads(), b.Leads())
				}
			}
			var l *store.Lease
			if err := b.Store.View(ctx, func(tx store.Tx) (err error) { l, err = tx.GetLease(LeaderLease); return err }); err != nil {
				t.Fatal(err)
			}
			if l.Holder != "node-a" || l.Token != 1 {
				t.Errorf("leader lease %+v, want node-a's first", l)
			}
			// The first stops (its Run releases the lease): the second leads at its next try.
			actx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { a.Run(actx); close(done) }()
			stop()
			<-done
			if err := b.Try(ctx); err != nil || !b.Leads() || a.Leads() {
				t.Errorf("after the first stopped: %v, second leads %v, first %v; want the second alone", err, b.Leads(), a.Leads())
			}
		})
	}
}

// TestLeaderClockOffset: the leader reports how far the database's clock is from this node's
// at each try, and warns once while it is beyond MaxClockOffset, then once more when the clocks
// agree again. On SQLite the database's clock is this node's: always 0.
func TestLeaderClockOffset(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	db, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var logs syncLog
	var off atomic.Int64
	var skew atomic.Int64
	l := &Leader{Store: db, Node: "node-a", TTL: time.Minute, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Now:      func() time.Time { return time.Now().Add(time.Duration(skew.Load())) },
		OnOffset: func(d time.Duration) { off.Store(int64(d)) }}
	near := func(got, want time.Duration) bool { return got-want < 2*time.Second && want-got < 2*time.Second }
	for _, s := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
		skew.Store(int64(s))
		for range 2 {
			if err := l.Try(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if got := time.Duration(off.Load()); !near(got, -s) {
			t.Errorf("clock %v off: offset reported %v, want about %v", s, got, -s)
		}
		skew.Store(0)
		if err := l.Try(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := time.Duration(off.Load()); !near(got, 0) {
			t.Errorf("clock right again: offset reported %v, want about 0", got)
		}
	}
	if n := strings.Count(logs.String(), "clock is off the database server's"); n != 2 {
		t.Errorf("%d warnings of a clock off, want one per episode (2):\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "agrees with the database server's again"); n != 2 {
		t.Errorf("%d notes of the clocks agreeing again, want 2:\n%s", n, logs.String())
	}

	lite, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lite.Close() })
	off.Store(1)
	one := &Leader{Store: lite, Node: "node-a", Now: skewed(5 * time.Minute), OnOffset: func(d time.Duration) { off.Store(int64(d)) }}
	if err := one.Try(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := off.Load(); got != 0 {
		t.Errorf("SQLite: offset %v, want 0 (the database is this machine's)", time.Duration(got))
	}
}

// syncLog is a log sink safe for concurrent writers.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
