package escrow

import (
	"context"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// TestRecoveryAfterClockStep: a recovery request made while the clock was minutes ahead (a
// node whose clock is off, or this one before NTP stepped it back), then many audit entries
// written at the true time, then the approvals and the fetch. The fetch reads what the request
// said of its certificates from the request's audit entry, found by bisecting the trail by
// time; before, the trail's times went back after the request's entry, the bisection passed
// it, and the fetch was refused as inconsistent ("the audit trail holds no entry").
func TestRecoveryAfterClockStep(t *testing.T) {
	ctx := context.Background()
	for _, n := range []int{1, 7, 40} {
		r := newRecoveryEnv(t)
		now := r.clock.Now()
		r.clock.Set(now.Add(5 * time.Minute))
		rec, err := r.svc.OpenRecovery(ctx, r.officer, RecoveryRequest{Serial: r.serial, Reason: "laptop stolen", Revoke: "superseded", TTL: time.Hour})
		if err != nil {
			t.Fatalf("OpenRecovery: %v", err)
		}
		r.clock.Set(now) // stepped back
		for i := range n {
			err := r.svc.Store.Update(ctx, func(tx store.Tx) error {
				_, err := audit.Append(tx, now.Add(time.Duration(i)*time.Second), audit.KindLoginFailed, "anonymous", "", audit.Details{})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		r.approve(t, 0, rec.ID)
		r.approve(t, 2, rec.ID)
		if _, err := r.svc.Fetch(ctx, r.officer, rec.ID, false); err != nil {
			t.Errorf("%d entries after the request: Fetch: %v", n, err)
			continue
		}
		if row := r.certificate(t, r.serial); row.State != store.StateRevoked || row.RevocationReason != store.ReasonSuperseded {
			t.Errorf("%d entries after the request: certificate %s reason %d after the fetch, want revoked (superseded)", n, row.State, row.RevocationReason)
		}
		var prev time.Time
		err = r.svc.Store.View(ctx, func(tx store.Tx) error {
			last, err := tx.LastAudit()
			if err != nil {
				return err
			}
			for seq := int64(1); seq <= last.Seq; seq++ {
				e, err := tx.GetAudit(seq)
				if err != nil {
					return err
				}
				if e.At.Before(prev) {
					t.Errorf("%d entries after the request: entry %d at %v, before the entry before it (%v)", n, seq, e.At, prev)
				}
				prev = e.At
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// serverClockStore is a store whose lease clock is a server's (as PostgreSQL's is): LeaseNow
// ignores the caller's clock and reads server.
type serverClockStore struct {
	store.Store
	server func() time.Time
}

func (s serverClockStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error { return fn(serverClockTx{tx, s.server}) })
}

func (s serverClockStore) View(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.View(ctx, func(tx store.Tx) error { return fn(serverClockTx{tx, s.server}) })
}

type serverClockTx struct {
	store.Tx
	server func() time.Time
}

func (tx serverClockTx) LeaseNow(time.Time) (time.Time, error) { return tx.server().UTC(), nil }

// TestExpiryByServerClock: a node whose clock is 5 minutes ahead of the database server's
// runs the periodic expiry (every node does): a recovery request and a drill that have two
// minutes left by the server's clock stay open. Before, the node closed them by its own clock,
// for every node, and destroyed their keys.
func TestExpiryByServerClock(t *testing.T) {
	ctx := context.Background()
	d := newDrillEnv(t)
	server := d.clock.Now()
	d.svc.Store = serverClockStore{Store: d.svc.Store, server: func() time.Time { return server }}
	if _, err := d.svc.OpenRecovery(ctx, d.officer, RecoveryRequest{Serial: d.serial, Reason: "laptop stolen", TTL: 2 * time.Minute}); err != nil {
		t.Fatalf("OpenRecovery: %v", err)
	}
	if _, err := d.svc.OpenDrill(ctx, d.admin, "", 2*time.Minute); err != nil {
		t.Fatalf("OpenDrill: %v", err)
	}
	d.clock.Set(server.Add(5 * time.Minute)) // this node's clock, ahead
	if n, err := d.svc.ExpireRecoveries(ctx); n != 0 || err != nil {
		t.Errorf("ExpireRecoveries on the node ahead: %d, %v; want none expired", n, err)
	}
	if n, err := d.svc.ExpireDrills(ctx); n != 0 || err != nil {
		t.Errorf("ExpireDrills on the node ahead: %d, %v; want none expired", n, err)
	}
	// By the server's clock, they expire in their time.
	server = server.Add(2 * time.Minute)
	if n, err := d.svc.ExpireRecoveries(ctx); n != 1 || err != nil {
		t.Errorf("ExpireRecoveries at the request's expiry by the server's clock: %d, %v; want 1", n, err)
	}
	if n, err := d.svc.ExpireDrills(ctx); n == 0 || err != nil {
		t.Errorf("ExpireDrills at the drills' expiry by the server's clock: %d, %v; want them expired", n, err)
	}
}
