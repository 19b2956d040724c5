package escrow

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRecoveryByMailboxNormalized: a request by mailbox finds the archived keys whatever the
// case of the domain the officer typed (records are stored with the domain in lower case, as
// enrollment and revocation normalise it), and a value that is not a mailbox is a bad request
// naming the problem, not "no archived key".
func TestRecoveryByMailboxNormalized(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	rec, err := r.svc.RequestRecovery(ctx, r.officer, "", "owner@EXAMPLE.Org", "laptop lost", time.Hour)
	if err != nil {
		t.Fatalf("RequestRecovery by owner@EXAMPLE.Org: %v", err)
	}
	if len(rec.Items) != 1 || rec.Items[0].Serial != r.serial {
		t.Fatalf("request holds %+v, want the key of certificate %s", rec.Items, r.serial)
	}
	for _, bad := range []string{"owner", "owner@example.org\n", "owner@@example.org"} {
		if _, err := r.svc.RequestRecovery(ctx, r.officer, "", bad, "laptop lost", time.Hour); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("RequestRecovery by %q: %v, want %v", bad, err, ErrInvalidRequest)
		}
	}
}
