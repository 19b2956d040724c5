package escrow

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

// approveGarbage is KRA i approving request id with a share that is not its share: 33 random
// bytes, RSA-OAEP encrypted to the request's recovery key and validly signed. The appliance
// cannot tell it from an honest approval until it combines the shares.
func (r *recoveryEnv) approveGarbage(t *testing.T, i int, id string) {
	t.Helper()
	rec, items, err := r.svc.SharesFor(context.Background(), r.kraPrincipal(t, i), id)
	if err != nil {
		t.Fatalf("SharesFor: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(rec.KeySPKI)
	if err != nil {
		t.Fatal(err)
	}
	to, err := hashByName(rec.OAEPHash)
	if err != nil {
		t.Fatal(err)
	}
	var shares []ApprovedShare
	for _, it := range items {
		if it.Share == nil {
			continue
		}
		junk := make([]byte, record.ShareSize)
		rand.Read(junk)
		ct, err := rsa.EncryptOAEP(to.New(), rand.Reader, pub.(*rsa.PublicKey), junk, nil)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, ApprovedShare{RecordID: it.RecordID, Share: ct})
	}
	sig, err := ecdsa.SignASN1(rand.Reader, r.kras[i].auth, ApprovalDigest(&rec.Recovery, shares))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.SubmitApproval(context.Background(), r.kraPrincipal(t, i), id, shares, sig); err != nil {
		t.Fatalf("SubmitApproval of %s's garbage share: %v", r.kras[i].name, err)
	}
}

// TestFetchAroundABadShare: one KRA's bad share does not make a recovery unfetchable when an
// honest quorum approved too: the fetch tries the other quorums of the approvals, and the
// record's authentication tells the one that opens it. kra-0 sorts first, so the quorum tried
// first holds its bad share.
func TestFetchAroundABadShare(t *testing.T) {
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approveGarbage(t, 0, id)
	r.approve(t, 1, id)
	r.approve(t, 2, id)
	if got := r.fetchKey(t, id); !bytes.Equal(got, r.pkcs8) {
		t.Fatal("the key recovered around the bad share is not the archived one")
	}
	if n := r.keys.live(); n != 0 {
		t.Errorf("%d recovery key(s) left in the token after delivery", n)
	}
}

// TestResealAroundABadShare: the same for a reseal: the record moves to the new set, and the
// new set's KRAs recover the very key.
func TestResealAroundABadShare(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	epoch := r.newSet(t, "kra-3", "kra-4")
	id := r.requestReseal(t).ID
	r.approveGarbage(t, 0, id)
	r.approve(t, 1, id)
	r.approve(t, 2, id)
	if n, err := r.svc.CompleteReseal(ctx, r.admin, id); err != nil || n != 1 {
		t.Fatalf("CompleteReseal: %d, %v; want 1 record", n, err)
	}
	recs := r.records(t, "owner@example.org")
	if recs[0].Epoch != epoch {
		t.Fatalf("record at epoch %d, want %d", recs[0].Epoch, epoch)
	}
	rid := r.request(t).ID
	r.approve(t, 3, rid)
	r.approve(t, 4, rid)
	if got := r.fetchKey(t, rid); !bytes.Equal(got, r.pkcs8) {
		t.Fatal("the key recovered after the reseal is not the archived one")
	}
}

// TestFetchWithNoQuorumOfGoodShares: when no quorum of the approved shares opens the record,
// the fetch is refused as such (ErrSharesDoNotOpen, naming the KRAs that approved), not as a
// fault of the appliance, and the request stays open for other KRAs to approve.
func TestFetchWithNoQuorumOfGoodShares(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approveGarbage(t, 0, id)
	r.approveGarbage(t, 1, id)
	_, err := r.svc.Fetch(ctx, r.officer, id, false)
	if !errors.Is(err, ErrSharesDoNotOpen) {
		t.Fatalf("Fetch: %v, want %v", err, ErrSharesDoNotOpen)
	}
	if errors.Is(err, ErrRecoveryKey) || errors.Is(err, ErrIntegrity) {
		t.Errorf("Fetch: %v is reported as a fault of the appliance", err)
	}
	for _, name := range []string{"kra-0", "kra-1"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("Fetch: %q does not name %s, who approved", err, name)
		}
	}
	if got, _ := r.svc.GetRecovery(ctx, id); got.State != store.RecoveryOpen {
		t.Fatalf("request is %s after the refused fetch, want open", got.State)
	}

	// One honest share with them is still no quorum that opens the record.
	r.approve(t, 2, id)
	if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, ErrSharesDoNotOpen) {
		t.Fatalf("Fetch with one honest share: %v, want %v", err, ErrSharesDoNotOpen)
	}
}

// TestNextCombination: every k-subset of n, once each, in lexicographic order, the first one
// first.
func TestNextCombination(t *testing.T) {
	for _, tc := range []struct{ n, k, want int }{{3, 2, 3}, {5, 3, 10}, {4, 4, 1}, {6, 1, 6}} {
		c := make([]int, tc.k)
		for i := range c {
			c[i] = i
		}
		seen := map[string]bool{}
		prev := ""
		for {
			key := fmt.Sprint(c)
			if seen[key] || key <= prev && prev != "" {
				t.Fatalf("C(%d,%d): %v again or out of order after %s", tc.n, tc.k, c, prev)
			}
			seen[key], prev = true, key
			if !nextCombination(c, tc.n) {
				break
			}
		}
		if len(seen) != tc.want {
			t.Errorf("C(%d,%d): %d subsets, want %d", tc.n, tc.k, len(seen), tc.want)
		}
	}
}

// TestFetchTokenFaultMidOpen: the token failing after it decrypted one approved share (gone,
// or its session pool exhausted) is the appliance's fault, not a KRA's wrong share: the fetch
// answers with the token's error, never ErrSharesDoNotOpen (a 409 that blames the approving
// KRAs), consumes nothing, and succeeds once the token answers again.
func TestFetchTokenFaultMidOpen(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fault error
	}{
		{"token gone", fmt.Errorf("%w: pkcs11: 0x32: CKR_DEVICE_REMOVED", hsm.ErrTokenGone)},
		{"session pool exhausted", fmt.Errorf("%w: resource pool timed out", hsm.ErrPoolExhausted)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			id := r.request(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			fk := &faultKeys{RecoveryKeys: r.svc.RecoveryKeys}
			r.svc.RecoveryKeys = fk
			var decrypts atomic.Int32
			fk.hook = func(stage, _ string) {
				// The first share decrypts; the token fails from the second decryption on.
				if stage == "decrypt" && decrypts.Add(1) == 2 {
					fk.fail.Store(&tt.fault)
				}
			}
			_, err := r.svc.Fetch(context.Background(), r.officer, id, false)
			if errors.Is(err, ErrSharesDoNotOpen) || !errors.Is(err, tt.fault) {
				t.Fatalf("Fetch while the token fails: %v; want the token's error, not %v", err, ErrSharesDoNotOpen)
			}
			if got, err := r.svc.GetRecovery(context.Background(), id); err != nil || got.State != store.RecoveryOpen {
				t.Fatalf("after the failed fetch: %v, %v; want the request open", got, err)
			}
			fk.hook = nil
			fk.fail.Store(nil)
			if got := r.fetchKey(t, id); !bytes.Equal(got, r.pkcs8) {
				t.Fatal("the key fetched once the token is back is not the archived one")
			}
		})
	}
}

// TestFetchClosedMeanwhile: a request cancelled while its fetch runs (its recovery key
// destroyed under the fetch) is answered as closed (policy.ErrRequestClosed, a 409), not as
// an unusable recovery key (a 500 that sends an administrator to the log), and delivers
// nothing.
func TestFetchClosedMeanwhile(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	id := r.request(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	fk := &faultKeys{RecoveryKeys: r.svc.RecoveryKeys}
	r.svc.RecoveryKeys = fk
	var once sync.Once
	fk.hook = func(stage, _ string) {
		if stage == "find" {
			once.Do(func() {
				if err := r.svc.CancelRecovery(ctx, r.officer, id); err != nil {
					t.Errorf("CancelRecovery during the fetch: %v", err)
				}
			})
		}
	}
	out, err := r.svc.Fetch(ctx, r.officer, id, false)
	if !errors.Is(err, policy.ErrRequestClosed) || errors.Is(err, ErrRecoveryKey) {
		t.Fatalf("Fetch of a request cancelled meanwhile: %v, %v; want %v", out, err, policy.ErrRequestClosed)
	}
}

// TestFetchRefusedForSharesIsAudited: a fetch refused because no quorum of the approved shares
// opens the record is the only sign that a KRA sent a share that is not its share (a damaged
// token, or a KRA working against the recovery): it leaves an approval-refused entry in the
// trail, naming the request, the record and the KRAs, and never a share.
func TestFetchRefusedForSharesIsAudited(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approveGarbage(t, 0, id)
	r.approve(t, 1, id)
	if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, ErrSharesDoNotOpen) {
		t.Fatalf("Fetch: %v, want %v", err, ErrSharesDoNotOpen)
	}
	var found bool
	err := r.svc.Store.View(ctx, func(tx store.Tx) error {
		es, err := tx.AuditOfKindsFrom([]string{"approval-refused"}, 1, 100)
		for _, e := range es {
			s := fmt.Sprintf("%+v", e)
			if strings.Contains(s, id) && strings.Contains(s, "kra-0") && strings.Contains(s, "kra-1") {
				found = true
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("the refused fetch left no approval-refused entry naming the request and its approving KRAs")
	}
}
