package escrow

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

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
	r, first, second, current := threeEpochs(t)

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

// TestResealOneEpoch: a reseal request can name the older epoch it takes. An epoch that can no
// longer reach its quorum may hold a full batch of records, the oldest, which every request
// for all epochs would take first: naming another epoch moves that epoch's records past it.
// The current epoch, an epoch yet to come and an epoch without active records are refused
// with what is wrong.
func TestResealOneEpoch(t *testing.T) {
	ctx := context.Background()
	r, first, second, current := threeEpochs(t)

	rec, err := r.svc.RequestReseal(ctx, r.admin, "", 2, time.Hour)
	if err != nil {
		t.Fatalf("RequestReseal of epoch 2: %v", err)
	}
	if len(rec.Items) != 1 || rec.Items[0].RecordID != second {
		t.Fatalf("the reseal of epoch 2 takes %+v, want record %s alone", rec.Items, second)
	}
	r.approve(t, 3, rec.ID)
	r.approve(t, 4, rec.ID)
	if n, err := r.svc.CompleteReseal(ctx, r.admin, rec.ID); err != nil || n != 1 {
		t.Fatalf("CompleteReseal of epoch 2: %d, %v; want 1", n, err)
	}
	if got := r.record(t, second).Epoch; got != current {
		t.Errorf("epoch 2's record is at epoch %d, want %d", got, current)
	}
	if got := r.record(t, first).Epoch; got != 1 {
		t.Errorf("epoch 1's record is at epoch %d, want 1 (not named)", got)
	}

	for _, tt := range []struct {
		epoch uint32
		want  error
		words string
	}{
		{current, ErrInvalidRequest, "not older than the current"},
		{current + 5, ErrInvalidRequest, "not older than the current"},
		{2, policy.ErrNothingToRecover, "no active record is sealed under epoch 2"},
	} {
		if _, err := r.svc.RequestReseal(ctx, r.admin, "", tt.epoch, time.Hour); !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.words) {
			t.Errorf("RequestReseal of epoch %d: %v, want %v saying %q", tt.epoch, err, tt.want, tt.words)
		}
	}
	if rec, err := r.svc.RequestReseal(ctx, r.admin, "", 1, time.Hour); err != nil || len(rec.Items) != 1 || rec.Items[0].RecordID != first {
		t.Fatalf("RequestReseal of epoch 1: %+v, %v; want record %s", rec, err, first)
	}
}

// threeEpochs is a recovery environment with a record under each of two older epochs: first
// under epoch 1 (KRAs 0 to 2), second under epoch 2 (KRAs 3 to 5), and current, the epoch of
// a third set (KRAs 6 and 7), holding none.
func threeEpochs(t *testing.T) (r *recoveryEnv, first, second string, current uint32) {
	t.Helper()
	r = newRecoveryEnv(t)
	first = r.records(t, "owner@example.org")[0].ID
	r.newSet(t, "kra-3", "kra-4", "kra-5")
	r.enrollArchived(t, "second@example.org")
	second = r.records(t, "second@example.org")[0].ID
	current = r.newSet(t, "kra-6", "kra-7")
	return r, first, second, current
}
