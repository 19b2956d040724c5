package escrow

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestResealVoidsOpenRequests: approvals carry shares of a record as it was sealed; once the
// record is resealed they no longer combine with shares of its new form. A reseal therefore
// cancels the other open requests that name one of its records, recoveries and reseals, and
// destroys their recovery keys, rather than let approvals made before it count after it. The
// case: a 2-of-3 recovery approved by kra-0 and kra-1, a reseal to a 3-of-3 set of the same
// KRAs, then kra-2's approval. A new request recovers the key with the new set.
func TestResealVoidsOpenRequests(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	rid := r.request(t).ID
	r.approve(t, 0, rid)
	r.approve(t, 1, rid)

	rs, err := r.svc.SetRecoverySet(ctx, 3, []string{r.kras[0].serial, r.kras[1].serial, r.kras[2].serial}, "admin")
	if err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	reseal, twin := r.requestReseal(t).ID, r.requestReseal(t).ID
	r.approve(t, 0, reseal)
	r.approve(t, 1, reseal)
	if n, err := r.svc.CompleteReseal(ctx, r.admin, reseal); err != nil || n != 1 {
		t.Fatalf("CompleteReseal: %d, %v; want 1 record", n, err)
	}
	if got := r.records(t, "owner@example.org")[0].Epoch; got != rs.Epoch {
		t.Fatalf("record at epoch %d, want %d", got, rs.Epoch)
	}
	for _, id := range []string{rid, twin} {
		got, err := r.svc.GetRecovery(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != store.RecoveryCancelled {
			t.Errorf("request %s (%s) is %s after the reseal of its record, want cancelled", id, got.Kind, got.State)
		}
	}
	if n := r.keys.live(); n != 0 {
		t.Errorf("%d recovery key(s) left in the token after the reseal", n)
	}
	if _, _, err := r.svc.SharesFor(ctx, r.kraPrincipal(t, 2), rid); !errors.Is(err, policy.ErrRequestClosed) {
		t.Errorf("kra-2 asks for its share after the reseal: %v, want %v", err, policy.ErrRequestClosed)
	}
	decrypts := r.keys.decrypts.Load()
	if _, err := r.svc.Fetch(ctx, r.officer, rid, false); !errors.Is(err, policy.ErrRequestClosed) {
		t.Errorf("Fetch after the reseal: %v, want %v", err, policy.ErrRequestClosed)
	}
	if r.keys.decrypts.Load() != decrypts {
		t.Error("a request voided by the reseal decrypted shares")
	}

	id := r.request(t).ID
	for i := range 3 {
		r.approve(t, i, id)
	}
	if got := r.fetchKey(t, id); !bytes.Equal(got, r.pkcs8) {
		t.Fatal("the key recovered after the reseal is not the archived one")
	}
}
