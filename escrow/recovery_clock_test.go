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
