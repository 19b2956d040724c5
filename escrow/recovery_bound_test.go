package escrow

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestRecoveryRequestsFull: every open recovery or reseal request holds a key in the appliance
// token, so the requests open at once are bounded, whoever opens them: a request past the
// bound is refused before any key is made, with nothing stored or audited, and requests that
// were cancelled or expired make room again.
func TestRecoveryRequestsFull(t *testing.T) {
	defer func(n int) { maxOpenRequests = n }(maxOpenRequests)
	maxOpenRequests = 3
	r := newRecoveryEnv(t)
	ctx := context.Background()
	requested := func() int {
		var n int
		r.svc.Store.View(ctx, func(tx store.Tx) error {
			es, err := tx.AuditOfKindsFrom([]string{"recovery-requested"}, 1, 100)
			n = len(es)
			return err
		})
		return n
	}
	r.reuseSet(t, 0, 1, 2) // a new epoch: the archived record can be resealed
	r.requestReseal(t)
	first := r.request(t)
	r.request(t)
	keys, entries := r.keys.live(), requested()
	if keys != 3 {
		t.Fatalf("%d token keys with 3 requests open", keys)
	}
	_, err := r.svc.RequestRecovery(ctx, r.officer, r.serial, "", "one more", time.Hour)
	if !errors.Is(err, ErrRequestsFull) {
		t.Fatalf("a fourth request (bound 3): %v, want ErrRequestsFull", err)
	} else if !strings.Contains(err.Error(), "3 recovery requests are open") {
		t.Errorf("refusal %q does not say how many are open", err)
	}
	if _, err := r.svc.RequestReseal(ctx, r.admin, "rotate the KRAs", 0, time.Hour); !errors.Is(err, ErrRequestsFull) {
		t.Fatalf("a reseal past the bound: %v, want ErrRequestsFull", err)
	}
	if r.keys.live() != keys || requested() != entries {
		t.Errorf("after the refusals: %d token keys, %d request entries; want %d and %d", r.keys.live(), requested(), keys, entries)
	}
	if err := r.svc.CancelRecovery(ctx, r.officer, first.ID); err != nil {
		t.Fatalf("CancelRecovery: %v", err)
	}
	r.request(t)
	r.clock.Set(t0.Add(2 * time.Hour))
	r.request(t) // the others expired, even before a sweep closed them
}
