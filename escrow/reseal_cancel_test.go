package escrow

import (
	"context"
	"errors"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestCancelReseal: the admin who requested a reseal cancels it, approved or not, and its
// recovery key is destroyed; it can no longer be completed. Nobody else cancels it: not
// another admin, not an officer. And an admin does not cancel an officer's recovery.
func TestCancelReseal(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	r.newSet(t, "kra-3", "kra-4")
	id := r.requestReseal(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	for _, p := range []policy.Principal{r.credential(t, policy.RoleAdmin, "adam", ""), r.officer} {
		if err := r.svc.CancelRecovery(ctx, p, id); !errors.Is(err, ErrForbidden) {
			t.Errorf("%s %s cancels the reseal: %v, want %v", p.Role, p.Name, err, ErrForbidden)
		}
	}
	if err := r.svc.CancelRecovery(ctx, r.admin, id); err != nil {
		t.Fatalf("the requesting admin cancels the reseal: %v", err)
	}
	if got, _ := r.svc.GetRecovery(ctx, id); got.State != store.RecoveryCancelled {
		t.Errorf("reseal is %s after cancel, want cancelled", got.State)
	}
	if n := r.keys.live(); n != 0 {
		t.Errorf("%d recovery key(s) left in the token after cancel", n)
	}
	if _, err := r.svc.CompleteReseal(ctx, r.admin, id); !errors.Is(err, policy.ErrRequestClosed) {
		t.Errorf("CompleteReseal after cancel: %v, want %v", err, policy.ErrRequestClosed)
	}
	if n := r.keys.decrypts.Load(); n != 0 {
		t.Errorf("%d share(s) decrypted for a cancelled reseal", n)
	}

	rid := r.request(t).ID
	if err := r.svc.CancelRecovery(ctx, r.admin, rid); !errors.Is(err, ErrForbidden) {
		t.Errorf("an admin cancels an officer's recovery: %v, want %v", err, ErrForbidden)
	}
}
