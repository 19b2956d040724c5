package escrow

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/keyarc/keyarc/policy"
)

// TestResealLeavesADeadEpoch: two older epochs, and one of them can no longer reach its
// quorum (only kra-3 of epoch 2 can approve: kra-4's token is lost). The reseal moves the
// records of epoch 1, which its quorum approved, reports epoch 2's record as left where it is,
// and a second reseal can still move epoch 2's record once its quorum approves. One dead epoch
// used to keep every other epoch's records where they were: the completion failed with a
// quorum error for the dead epoch's record.
func TestResealLeavesADeadEpoch(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	first := r.records(t, "owner@example.org")[0].ID
	r.newSet(t, "kra-3", "kra-4", "kra-5")
	r.enrollArchived(t, "second@example.org")
	second := r.records(t, "second@example.org")[0].ID
	current := r.newSet(t, "kra-6", "kra-7")

	id := r.requestReseal(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	r.approve(t, 3, id)
	res, err := r.svc.CompleteResealReport(ctx, r.admin, id)
	if err != nil {
		t.Fatalf("CompleteReseal: %v", err)
	}
	if res.Resealed != 1 || len(res.Left) != 1 || res.Left[0].RecordID != second || res.Left[0].Epoch != 2 ||
		res.Left[0].Have != 1 || res.Left[0].Need != 2 {
		t.Fatalf("reseal result %+v, want 1 resealed and record %s of epoch 2 left with 1 of 2 approvals", res, second)
	}
	if got := r.record(t, first).Epoch; got != current {
		t.Errorf("epoch 1's record is at epoch %d, want %d", got, current)
	}
	if got := r.record(t, second).Epoch; got != 2 {
		t.Errorf("epoch 2's record is at epoch %d, want 2 (left where it is)", got)
	}

	// The record left is still recoverable by its own set, and resealed once its quorum
	// approves a new request.
	id = r.requestReseal(t).ID
	if _, err := r.svc.CompleteReseal(ctx, r.admin, id); !errors.Is(err, policy.ErrQuorum) {
		t.Fatalf("CompleteReseal with no approval: %v, want %v", err, policy.ErrQuorum)
	}
	r.approve(t, 3, id)
	r.approve(t, 5, id)
	if n, err := r.svc.CompleteReseal(ctx, r.admin, id); err != nil || n != 1 {
		t.Fatalf("CompleteReseal of epoch 2: %d, %v; want 1", n, err)
	}
	rec := r.request(t)
	r.approve(t, 6, rec.ID)
	r.approve(t, 7, rec.ID)
	if got := r.fetchKey(t, rec.ID); !bytes.Equal(got, r.pkcs8) {
		t.Fatal("the key of epoch 1's record recovered after the reseal is not the archived one")
	}
}
