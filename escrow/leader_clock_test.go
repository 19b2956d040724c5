package escrow

import (
	"context"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
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
