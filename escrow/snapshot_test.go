package escrow

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// countingStore counts the snapshots (View) and transactions (Update) asked of the store: on a
// networked database each is at least one round trip.
type countingStore struct {
	store.Store
	views, updates atomic.Int64
}

func (c *countingStore) View(ctx context.Context, fn func(store.Tx) error) error {
	c.views.Add(1)
	return c.Store.View(ctx, fn)
}

func (c *countingStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	c.updates.Add(1)
	return c.Store.Update(ctx, fn)
}

// count runs fn and returns the Views and Updates it asked for.
func (c *countingStore) count(fn func()) (views, updates int64) {
	v, u := c.views.Load(), c.updates.Load()
	fn()
	return c.views.Load() - v, c.updates.Load() - u
}

// softRecoveryKeys keeps the recovery keys in memory (standard-library RSA keys).
type softRecoveryKeys struct {
	mu   sync.Mutex
	keys map[string]*rsa.PrivateKey
}

func (k *softRecoveryKeys) Generate(label string) (crypto.PublicKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[label] = key
	return &key.PublicKey, nil
}

func (k *softRecoveryKeys) Decrypter(label string) (crypto.Decrypter, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.keys[label]
	if !ok {
		return nil, fmt.Errorf("no recovery key %q", label)
	}
	return key, nil
}

func (k *softRecoveryKeys) Labels(prefix string) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var labels []string
	for l := range k.keys {
		if strings.HasPrefix(l, prefix) {
			labels = append(labels, l)
		}
	}
	slices.Sort(labels)
	return labels, nil
}

func (k *softRecoveryKeys) Destroy(label string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.keys, label)
	return nil
}

// snapshotEnv is a test service over a counting store, with software recovery keys, two
// archived keys of one mailbox and a recovery officer.
type snapshotEnv struct {
	*testEnv
	db      *countingStore
	officer policy.Principal
	admin   policy.Principal
}

func newSnapshotEnv(t *testing.T) *snapshotEnv {
	t.Helper()
	env := newTestService(t)
	db := &countingStore{Store: env.svc.Store}
	env.svc.Store = db
	env.svc.RecoveryKeys = &softRecoveryKeys{keys: map[string]*rsa.PrivateKey{}}
	env.enrollArchived(t, "owner@example.org")
	env.enrollArchived(t, "owner@example.org")
	e := &snapshotEnv{testEnv: env, db: db}
	for _, p := range []*policy.Principal{{Role: policy.RoleOfficer, Name: "olga"}, {Role: policy.RoleAdmin, Name: "ada"}} {
		is, err := env.svc.IssueCredential(context.Background(), p.Role, p.Name, "", newP256(t).Public())
		if err != nil {
			t.Fatalf("IssueCredential: %v", err)
		}
		p.Serial = is.Serial
		if p.Role == policy.RoleOfficer {
			e.officer = *p
		} else {
			e.admin = *p
		}
	}
	return e
}

// kraPrincipal is KRA i as the appliance sees it: its auth certificate's serial.
func (e *snapshotEnv) kraPrincipal(t *testing.T, i int) policy.Principal {
	t.Helper()
	for _, c := range e.certs(t, store.Filter{KRA: e.kras[i].name}) {
		if c.Role == string(policy.RoleKRA) {
			return policy.Principal{Role: policy.RoleKRA, Name: e.kras[i].name, Serial: c.Serial}
		}
	}
	t.Fatalf("no auth certificate for %s", e.kras[i].name)
	return policy.Principal{}
}

// approval is what KRA i's CLI makes of the shares it is shown.
func (e *snapshotEnv) approval(t *testing.T, i int, rec *Recovery, items []ShareForKRA) ([]ApprovedShare, []byte) {
	t.Helper()
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
		pt, err := e.kras[i].unwrap.Decrypt(rand.Reader, it.Share, &rsa.OAEPOptions{Hash: it.OAEPHash})
		if err != nil {
			t.Fatalf("KRA decrypts its share: %v", err)
		}
		ct, err := rsa.EncryptOAEP(to.New(), rand.Reader, pub.(*rsa.PublicKey), pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, ApprovedShare{RecordID: it.RecordID, Share: ct})
	}
	sig, err := ecdsa.SignASN1(rand.Reader, e.kras[i].auth, ApprovalDigest(&rec.Recovery, shares))
	if err != nil {
		t.Fatal(err)
	}
	return shares, sig
}

// TestRecoveryReadsOneSnapshot: each answer about a recovery request (its records, approvals,
// recovery sets, the approvers' and records' certificates, the consistency checks) is read
// from one snapshot, however many records and approvals it has: one View, not one per row.
func TestRecoveryReadsOneSnapshot(t *testing.T) {
	e := newSnapshotEnv(t)
	ctx := context.Background()

	var rec *Recovery
	views, _ := e.db.count(func() {
		var err error
		if rec, err = e.svc.RequestRecovery(ctx, e.officer, "", "owner@example.org", "laptop lost", time.Hour); err != nil {
			t.Fatalf("RequestRecovery: %v", err)
		}
	})
	if len(rec.Items) != 2 {
		t.Fatalf("request has %d records, want 2", len(rec.Items))
	}
	// One snapshot to find and check the records, one to show the stored request.
	if views != 2 {
		t.Errorf("RequestRecovery: %d Views, want 2 (the records, then the stored request)", views)
	}

	for _, i := range []int{0, 2} {
		var (
			shown *Recovery
			items []ShareForKRA
		)
		views, _ = e.db.count(func() {
			var err error
			if shown, items, err = e.svc.SharesFor(ctx, e.kraPrincipal(t, i), rec.ID); err != nil {
				t.Fatalf("SharesFor: %v", err)
			}
		})
		// kraPrincipal reads the store too.
		if views != 2 {
			t.Errorf("SharesFor: %d Views, want 1", views-1)
		}
		shares, sig := e.approval(t, i, shown, items)
		views, _ = e.db.count(func() {
			if _, err := e.svc.SubmitApproval(ctx, e.kraPrincipal(t, i), rec.ID, shares, sig); err != nil {
				t.Fatalf("SubmitApproval: %v", err)
			}
		})
		// The checks before the approval is stored, then the request as it is now.
		if views != 1+2 {
			t.Errorf("SubmitApproval: %d Views, want 2", views-1)
		}
	}

	var got *Recovery
	views, _ = e.db.count(func() {
		var err error
		if got, err = e.svc.GetRecovery(ctx, rec.ID); err != nil {
			t.Fatalf("GetRecovery: %v", err)
		}
	})
	if views != 1 {
		t.Errorf("GetRecovery of a request with %d records and %d approvals: %d Views, want 1", len(got.Items), len(got.Approvals), views)
	}
	if len(got.Items) != 2 || len(got.Approvals) != 2 || got.Have != 2 || got.Need != 2 {
		t.Fatalf("GetRecovery: %d records, approvals %v, %d of %d; want 2 records, 2 approvals, 2 of 2",
			len(got.Items), got.Approvals, got.Have, got.Need)
	}

	var out *Recovered
	views, updates := e.db.count(func() {
		var err error
		if out, err = e.svc.Fetch(ctx, e.officer, rec.ID, false); err != nil {
			t.Fatalf("Fetch: %v", err)
		}
	})
	if len(out.Files) != 2 {
		t.Fatalf("Fetch delivered %d files, want 2", len(out.Files))
	}
	if views != 1 || updates != 1 {
		t.Errorf("Fetch: %d Views and %d Updates, want 1 and 1 (the checked rows, then the request consumed)", views, updates)
	}
}

// TestResealReadsOneSnapshot: a reseal request and its completion each read one snapshot.
func TestResealReadsOneSnapshot(t *testing.T) {
	e := newSnapshotEnv(t)
	ctx := context.Background()
	var serials []string
	for _, k := range e.kras {
		serials = append(serials, k.serial)
	}
	if _, err := e.svc.SetRecoverySet(ctx, 3, serials, "admin"); err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	var rec *Recovery
	views, _ := e.db.count(func() {
		var err error
		if rec, err = e.svc.RequestReseal(ctx, e.admin, "", 0, time.Hour); err != nil {
			t.Fatalf("RequestReseal: %v", err)
		}
	})
	if views != 2 {
		t.Errorf("RequestReseal: %d Views, want 2 (the set and its records, then the stored request)", views)
	}
	for _, i := range []int{0, 1} {
		shown, items, err := e.svc.SharesFor(ctx, e.kraPrincipal(t, i), rec.ID)
		if err != nil {
			t.Fatalf("SharesFor: %v", err)
		}
		shares, sig := e.approval(t, i, shown, items)
		if _, err := e.svc.SubmitApproval(ctx, e.kraPrincipal(t, i), rec.ID, shares, sig); err != nil {
			t.Fatalf("SubmitApproval: %v", err)
		}
	}
	var n int
	views, _ = e.db.count(func() {
		var err error
		if n, err = e.svc.CompleteReseal(ctx, e.admin, rec.ID); err != nil {
			t.Fatalf("CompleteReseal: %v", err)
		}
	})
	if n != 2 {
		t.Fatalf("CompleteReseal resealed %d records, want 2", n)
	}
	if views != 1 {
		t.Errorf("CompleteReseal: %d Views, want 1", views)
	}
}
