package escrow

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
)

// labelKeys records which token keys the engine decrypts with.
type labelKeys struct {
	RecoveryKeys
	mu       sync.Mutex
	decrypts map[string]int // by label
}

func (k *labelKeys) Decrypter(label string) (crypto.Decrypter, error) {
	d, err := k.RecoveryKeys.Decrypter(label)
	if err != nil {
		return nil, err
	}
	return labelDecrypter{d, k, label}, nil
}

func (k *labelKeys) count() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]int{}
	for l, n := range k.decrypts {
		out[l] = n
	}
	return out
}

type labelDecrypter struct {
	crypto.Decrypter
	k     *labelKeys
	label string
}

func (d labelDecrypter) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	d.k.mu.Lock()
	d.k.decrypts[d.label]++
	d.k.mu.Unlock()
	return d.Decrypter.Decrypt(r, msg, opts)
}

type drillEnv struct {
	*recoveryEnv
	labels *labelKeys
}

func newDrillEnv(t *testing.T) *drillEnv {
	t.Helper()
	r := newRecoveryEnv(t)
	lk := &labelKeys{RecoveryKeys: r.svc.RecoveryKeys, decrypts: map[string]int{}}
	r.svc.RecoveryKeys = lk
	return &drillEnv{recoveryEnv: r, labels: lk}
}

// answer is what KRA i's `keyarc kra drill` does: fetch the drill, decrypt each canary share
// with its unwrap key, check it against the commitment, re-encrypt it to the drill key and
// sign the drill digest with its auth key.
func (d *drillEnv) answer(t *testing.T, i int, id string) (*Drill, []ProvenShare, []byte) {
	t.Helper()
	dr, items, err := d.svc.DrillFor(context.Background(), d.kraPrincipal(t, i), id)
	if err != nil {
		t.Fatalf("DrillFor: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(dr.KeySPKI)
	if err != nil {
		t.Fatal(err)
	}
	to, err := hashByName(dr.OAEPHash)
	if err != nil {
		t.Fatal(err)
	}
	var shares []ProvenShare
	for _, it := range items {
		pt, err := d.unwrap[d.kras[i].name].Decrypt(rand.Reader, it.Share, &rsa.OAEPOptions{Hash: it.OAEPHash, MGFHash: it.OAEPHash})
		if err != nil {
			t.Fatalf("KRA decrypts its canary share: %v", err)
		}
		if !bytes.Equal(CanaryCommitment(it.Epoch, it.KeyID, pt), it.Commitment) {
			t.Fatalf("epoch %d: the plain canary share does not match its commitment", it.Epoch)
		}
		re, err := rsa.EncryptOAEP(to.New(), rand.Reader, pub.(*rsa.PublicKey), pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, ProvenShare{Epoch: it.Epoch, Share: re})
	}
	sig, err := ecdsa.SignASN1(rand.Reader, d.kras[i].auth, DrillDigest(dr, shares))
	if err != nil {
		t.Fatal(err)
	}
	return dr, shares, sig
}

func (d *drillEnv) prove(t *testing.T, i int, id string) {
	t.Helper()
	_, shares, sig := d.answer(t, i, id)
	if _, err := d.svc.SubmitDrillProof(context.Background(), d.kraPrincipal(t, i), id, shares, sig); err != nil {
		t.Fatalf("SubmitDrillProof by %s: %v", d.kras[i].name, err)
	}
}

func (d *drillEnv) campaign(t *testing.T) map[string]string {
	t.Helper()
	drills, err := d.svc.OpenDrill(context.Background(), d.admin, "", time.Hour)
	if err != nil {
		t.Fatalf("OpenDrill: %v", err)
	}
	out := map[string]string{}
	for _, dr := range drills {
		out[dr.KRA] = dr.ID
	}
	return out
}

func (d *drillEnv) health(t *testing.T) map[uint32]EpochHealth {
	t.Helper()
	hs, err := d.svc.RecoveryHealth(context.Background(), 0, -1)
	if err != nil {
		t.Fatalf("RecoveryHealth: %v", err)
	}
	out := map[uint32]EpochHealth{}
	for _, h := range hs {
		out[h.Epoch] = h
	}
	return out
}

// TestDrillCampaign: a campaign opens one drill per KRA; two of three KRAs prove, which
// reaches the 2-of-3 quorum; the appliance decrypts nothing but drill keys' ciphertexts.
func TestDrillCampaign(t *testing.T) {
	d := newDrillEnv(t)
	h := d.health(t)[1]
	if h.Records != 1 || h.Proven != 0 || !h.AtRisk || h.NeedsReseal || h.Advice == "" {
		t.Fatalf("before any drill: %+v; want 1 record, 0 proven, at risk, no reseal (the current epoch)", h)
	}
	ids := d.campaign(t)
	if len(ids) != 3 {
		t.Fatalf("campaign opened %d drills, want 3", len(ids))
	}
	d.prove(t, 0, ids["kra-0"])
	if h := d.health(t)[1]; h.Proven != 1 || !h.AtRisk {
		t.Fatalf("after one proof: %+v, want 1 proven, still at risk", h)
	}
	d.prove(t, 1, ids["kra-1"])
	h = d.health(t)[1]
	if h.Proven != 2 || h.AtRisk || h.Advice != "" || !h.Canary {
		t.Fatalf("after two proofs: %+v, want 2 proven, not at risk", h)
	}
	for _, k := range h.KRAs {
		if proven := k.Name != "kra-2"; k.Proven != proven || k.LastProof.IsZero() == proven {
			t.Errorf("KRA %s: proven %v at %v", k.Name, k.Proven, k.LastProof)
		}
	}
	for label, n := range d.labels.count() {
		if !strings.HasPrefix(label, "drill-") {
			t.Errorf("the appliance decrypted %d times with %q during drills; only drill keys may be used", n, label)
		}
	}
	if got := d.labels.count(); got[drillKeyLabel(ids["kra-0"])] != 1 || got[drillKeyLabel(ids["kra-1"])] != 1 {
		t.Errorf("decryptions by label: %v, want one per proven drill", got)
	}
	if d.keys.live() != 1 {
		t.Errorf("%d token keys live, want 1 (the unanswered drill's)", d.keys.live())
	}
	// The proofs are in the audit trail, with the KRAs' signatures.
	var proofs int
	d.svc.Store.View(context.Background(), func(tx store.Tx) error {
		es, err := tx.AuditOfKindsFrom([]string{string(KindDrillProof)}, 1, 100)
		proofs = len(es)
		return err
	})
	if proofs != 2 {
		t.Errorf("%d drill-proof audit entries, want 2", proofs)
	}
	// Proven drills are closed.
	if _, _, err := d.svc.DrillFor(context.Background(), d.kraPrincipal(t, 0), ids["kra-0"]); !errors.Is(err, ErrDrillClosed) {
		t.Errorf("DrillFor a proven drill: %v, want ErrDrillClosed", err)
	}
}

// TestCanaryIsNoRecord: the canary is sealed like a record, opens with m shares, and its
// header can never be a user's record's.
func TestCanaryIsNoRecord(t *testing.T) {
	d := newDrillEnv(t)
	if _, err := d.svc.EnsureCanaries(context.Background()); err != nil {
		t.Fatal(err)
	}
	var c *canaryRow
	d.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		c, err = getCanary(tx, 1)
		return err
	})
	if c == nil {
		t.Fatal("no canary for epoch 1")
	}
	sealed, err := record.Parse(c.Record)
	if err != nil {
		t.Fatal(err)
	}
	if !IsCanary(sealed.Header) || sealed.Header.M != 2 || sealed.Header.N != 3 || sealed.Header.Epoch != 1 {
		t.Fatalf("canary header %+v", sealed.Header)
	}
	var shares [][]byte
	for i := range 2 {
		_, ct, err := sealed.ShareFor(record.KeyID(d.kras[i].cert))
		if err != nil {
			t.Fatal(err)
		}
		pt, err := record.DecryptShare(d.unwrap[d.kras[i].name], sealed.Header.OAEPHash, ct)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(CanaryCommitment(1, c.KRAs[i].KeyID, pt), c.KRAs[i].Commitment) {
			t.Fatalf("KRA %d's share does not match its commitment", i)
		}
		shares = append(shares, pt)
	}
	secret, err := record.Open(sealed, shares)
	if err != nil || len(secret) != 32 {
		t.Fatalf("open the canary with 2 of 3 shares: %d bytes, %v", len(secret), err)
	}
	if _, err := record.Open(sealed, shares[:1]); !errors.Is(err, record.ErrOpen) {
		t.Fatalf("open the canary with 1 share of a 2-of-3: %v, want record.ErrOpen", err)
	}
	// A user record's header is never a canary's.
	r := d.records(t, "owner@example.org")[0]
	user, err := record.Parse(r.Blob)
	if err != nil {
		t.Fatal(err)
	}
	if IsCanary(user.Header) {
		t.Fatal("a user's record passes for a canary")
	}
	// A second call seals nothing more.
	if n, err := d.svc.EnsureCanaries(context.Background()); n != 0 || err != nil {
		t.Fatalf("EnsureCanaries again: %d, %v", n, err)
	}
}

// TestDrillProofRefused: proofs that are not the KRA's own answer to this drill are refused:
// a share that is not the canary's (a token that lost its key), another drill's proof, an
// approval's signature, another KRA's drill.
func TestDrillProofRefused(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	first := d.campaign(t)
	second := d.campaign(t)
	a, b := first["kra-0"], second["kra-0"]
	dr, shares, sig := d.answer(t, 0, a)

	// Another drill (another campaign) of the same KRA: the digest names drill a, and the
	// shares are encrypted to a's key.
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), b, shares, sig); !errors.Is(err, ErrBadDrillProof) {
		t.Errorf("drill a's proof submitted to drill b: %v, want ErrBadDrillProof", err)
	}
	// Drill b's digest signed over drill a's shares: the shares do not open with b's key.
	drB, _, _ := d.answer(t, 0, b)
	sigB, _ := ecdsa.SignASN1(rand.Reader, d.kras[0].auth, DrillDigest(drB, shares))
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), b, shares, sigB); !errors.Is(err, ErrBadDrillProof) {
		t.Errorf("drill a's shares re-signed for drill b: %v, want ErrBadDrillProof", err)
	}
	// A share that is not the canary's: what a KRA whose token lost its unwrap key could send.
	pub, _ := x509.ParsePKIXPublicKey(dr.KeySPKI)
	junk := make([]byte, record.ShareSize)
	rand.Read(junk)
	ct, _ := rsa.EncryptOAEP(crypto.SHA1.New(), rand.Reader, pub.(*rsa.PublicKey), junk, nil)
	bad := []ProvenShare{{Epoch: 1, Share: ct}}
	badSig, _ := ecdsa.SignASN1(rand.Reader, d.kras[0].auth, DrillDigest(dr, bad))
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), a, bad, badSig); !errors.Is(err, ErrBadDrillProof) {
		t.Errorf("a share that is not the canary's: %v, want ErrBadDrillProof", err)
	}
	// An approval's digest over the same bytes does not pass for a drill proof.
	req := &store.Recovery{ID: dr.ID, KeySPKI: dr.KeySPKI, ExpiresAt: dr.ExpiresAt, Records: []string{"1"}}
	appSig, _ := ecdsa.SignASN1(rand.Reader, d.kras[0].auth, ApprovalDigest(req, []ApprovedShare{{RecordID: "1", Share: shares[0].Share}}))
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), a, shares, appSig); !errors.Is(err, ErrBadDrillProof) {
		t.Errorf("an approval's signature as a drill proof: %v, want ErrBadDrillProof", err)
	}
	// Another KRA cannot answer kra-0's drill.
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 1), a, shares, sig); !errors.Is(err, ErrForbidden) {
		t.Errorf("kra-1 answers kra-0's drill: %v, want ErrForbidden", err)
	}
	if h := d.health(t)[1]; h.Proven != 0 {
		t.Fatalf("refused proofs counted: %+v", h)
	}
	// The real proof passes once; its replay finds the drill closed.
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), a, shares, sig); err != nil {
		t.Fatalf("the real proof: %v", err)
	}
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), a, shares, sig); !errors.Is(err, ErrDrillClosed) {
		t.Errorf("replayed proof: %v, want ErrDrillClosed", err)
	}
	// A KRA opens drills for itself only.
	if _, err := d.svc.OpenDrill(ctx, d.kraPrincipal(t, 1), "kra-0", time.Hour); !errors.Is(err, ErrForbidden) {
		t.Errorf("kra-1 opens kra-0's drill: %v, want ErrForbidden", err)
	}
	if _, err := d.svc.OpenDrill(ctx, d.officer, "", time.Hour); !errors.Is(err, ErrForbidden) {
		t.Errorf("an officer opens a campaign: %v, want ErrForbidden", err)
	}
}

// TestDrillHealthReseal: after a new set, the old epoch still holds the record; when its KRAs'
// proofs age out of the window it needs a reseal; the KRAs still standing reseal it to the
// new set, the old epoch drops out and the new one is proven by drills.
func TestDrillHealthReseal(t *testing.T) {
	d := newDrillEnv(t)
	ids := d.campaign(t)
	d.prove(t, 0, ids["kra-0"])
	d.prove(t, 1, ids["kra-1"])
	e2 := d.reuseSet(t, 0, 1)
	if h := d.health(t); len(h) != 2 || h[1].AtRisk || !h[e2].Current || h[e2].Records != 0 {
		t.Fatalf("after a new set: %+v", h)
	}
	d.clock.Set(t0.Add(DefaultProofWindow + 24*time.Hour))
	h := d.health(t)
	if !h[1].NeedsReseal || h[1].Proven != 0 || !strings.Contains(h[1].Advice, "reseal") {
		t.Fatalf("old epoch past the window: %+v, want needs reseal", h[1])
	}
	// The standing KRAs prove again (a drill covers both epochs), then reseal.
	ids = d.campaign(t)
	dr, _, _ := d.answer(t, 0, ids["kra-0"])
	if len(dr.Epochs) != 2 {
		t.Fatalf("drill epochs %v, want both live epochs", dr.Epochs)
	}
	d.prove(t, 0, ids["kra-0"])
	d.reseal(t)
	h = d.health(t)
	if _, ok := h[1]; ok || h[e2].Records != 1 || h[e2].Proven != 1 || !h[e2].AtRisk {
		t.Fatalf("after the reseal: %+v; want epoch 1 gone, epoch %d with the record, 1 proven", h, e2)
	}
	d.prove(t, 1, ids["kra-1"])
	if h := d.health(t)[e2]; h.AtRisk || h.Proven != 2 {
		t.Fatalf("after kra-1's proof: %+v", h)
	}
}

// TestDrillExpiry: an unanswered drill expires, its key is destroyed, and it cannot be
// answered any more.
func TestDrillExpiry(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	drills, err := d.svc.OpenDrill(ctx, d.kraPrincipal(t, 2), "", time.Hour)
	if err != nil || len(drills) != 1 || drills[0].KRA != "kra-2" {
		t.Fatalf("a KRA opens its own drill: %v, %v", drills, err)
	}
	_, shares, sig := d.answer(t, 2, drills[0].ID)
	d.clock.Set(t0.Add(2 * time.Hour))
	if n, err := d.svc.ExpireDrills(ctx); n != 1 || err != nil {
		t.Fatalf("ExpireDrills: %d, %v", n, err)
	}
	if d.keys.live() != 0 {
		t.Errorf("%d token keys live after expiry", d.keys.live())
	}
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 2), drills[0].ID, shares, sig); !errors.Is(err, ErrDrillClosed) {
		t.Errorf("answer an expired drill: %v, want ErrDrillClosed", err)
	}
	var kinds []string
	d.svc.Store.View(ctx, func(tx store.Tx) error {
		es, err := tx.AuditOfKindsFrom([]string{string(KindDrillOpened), string(KindDrillExpired), string(KindCanarySealed)}, 1, 100)
		for _, e := range es {
			kinds = append(kinds, e.Kind)
		}
		return err
	})
	if strings.Join(kinds, ",") != "canary-sealed,drill-opened,drill-expired" {
		t.Errorf("audit kinds %v", kinds)
	}
}

// TestDrillPartialProof: a KRA proves the epochs it can (its unwrap key of an older epoch may
// be gone); each is checked, only those are recorded, and shares out of the drill's order, twice
// for one epoch or for an epoch the drill does not ask are refused.
func TestDrillPartialProof(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	e2 := d.reuseSet(t, 0, 1)
	ids := d.campaign(t)
	dr, shares, _ := d.answer(t, 0, ids["kra-0"])
	if len(dr.Epochs) != 2 || len(shares) != 2 {
		t.Fatalf("drill epochs %v, shares %d; want both live epochs", dr.Epochs, len(shares))
	}
	sign := func(sh []ProvenShare) []byte {
		sig, err := ecdsa.SignASN1(rand.Reader, d.kras[0].auth, DrillDigest(dr, sh))
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	for _, tt := range []struct {
		name   string
		shares []ProvenShare
	}{
		{"out of order", []ProvenShare{shares[1], shares[0]}},
		{"one epoch twice", []ProvenShare{shares[0], shares[0]}},
		{"an epoch not asked", []ProvenShare{{Epoch: 99, Share: shares[0].Share}}},
		{"another epoch's share", []ProvenShare{{Epoch: shares[0].Epoch, Share: shares[1].Share}}},
		{"a share past 1 KiB", []ProvenShare{{Epoch: shares[0].Epoch, Share: make([]byte, 1025)}}},
		// Ciphertexts the token refuses (a wrong length, a bad padding): the client's error,
		// not a token fault, and the token goes on.
		{"a 1-byte share", []ProvenShare{{Epoch: shares[0].Epoch, Share: []byte{1}}}},
		{"256 bytes of garbage", []ProvenShare{{Epoch: shares[0].Epoch, Share: bytes.Repeat([]byte{0x5a}, 256)}}},
		{"none", nil},
	} {
		if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), dr.ID, tt.shares, sign(tt.shares)); !errors.Is(err, ErrBadDrillProof) {
			t.Errorf("%s: %v, want ErrBadDrillProof", tt.name, err)
		}
		// Each refusal counts against the KRA: keep under the lock-out (5 in its window).
		d.clock.Set(d.clock.Now().Add(approvalWindow / 4))
	}
	only := shares[1:]
	got, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), dr.ID, only, sign(only))
	if err != nil {
		t.Fatalf("a proof of epoch %d alone: %v", e2, err)
	}
	if len(got.Proven) != 1 || got.Proven[0] != e2 {
		t.Errorf("proven epochs %v, want [%d]", got.Proven, e2)
	}
	h := d.health(t)
	for _, k := range h[1].KRAs {
		if k.Name == "kra-0" && k.Proven {
			t.Error("kra-0 counted as proven for epoch 1, which it did not prove")
		}
	}
	if h[e2].Proven != 1 {
		t.Errorf("epoch %d proven %d, want 1", e2, h[e2].Proven)
	}
}

// TestHealthCertMargin: KRAs proven but whose certificates expire within the margin do not
// count: an epoch whose valid KRAs fall below its quorum is at risk, and an older one needs a
// reseal.
func TestHealthCertMargin(t *testing.T) {
	d := newDrillEnv(t)
	ids := d.campaign(t)
	d.prove(t, 0, ids["kra-0"])
	d.prove(t, 1, ids["kra-1"])
	long := 100 * 365 * 24 * time.Hour // proofs never age out here: only the certificates count
	hs, err := d.svc.RecoveryHealth(context.Background(), long, -1)
	if err != nil || len(hs) != 1 || hs[0].AtRisk || hs[0].Valid != 3 {
		t.Fatalf("now: %+v, %v", hs, err)
	}
	d.clock.Set(d.kras[0].cert.NotAfter.Add(-10 * 24 * time.Hour))
	hs, err = d.svc.RecoveryHealth(context.Background(), long, -1)
	if err != nil {
		t.Fatal(err)
	}
	if h := hs[0]; !h.AtRisk || h.Valid != 0 || h.Proven != 2 || !strings.Contains(h.Advice, "certificates valid") {
		t.Fatalf("10 days before the KRA certificates expire, the default margin: %+v", h)
	}
	// recovery.cert_margin: 0 (allowed by the config) is no margin, not the default one: the
	// certificates still count until they expire.
	hs, err = d.svc.RecoveryHealth(context.Background(), long, 0)
	if err != nil {
		t.Fatal(err)
	}
	if h := hs[0]; h.AtRisk || h.Valid != 3 {
		t.Fatalf("10 days before the KRA certificates expire, no margin: %+v", h)
	}
}

// TestDrillDigestKnownAnswers pins what a KRA signs and what it commits to, so that a KRA's CLI
// and an appliance of other versions agree: the values were computed independently of this
// package from the field layout in the docs of DrillDigest and CanaryCommitment (SHA-256 over
// fields each prefixed by its 4-byte big-endian length).
func TestDrillDigestKnownAnswers(t *testing.T) {
	d := &Drill{ID: "00112233aabbccdd", Campaign: "c0ffee", KRA: "kra1", Epochs: []uint32{1, 3}, KeySPKI: []byte("spki"),
		ExpiresAt: time.Date(2026, 12, 5, 4, 0, 0, 123456000, time.UTC)}
	for _, tt := range []struct {
		name string
		got  []byte
		want string
	}{
		{"both epochs", DrillDigest(d, []ProvenShare{{Epoch: 1, Share: []byte("s1")}, {Epoch: 3, Share: []byte("s3")}}),
			"aa9ee524d886ea87457cea89c8ff1a2d7657f7d5939feb3f3871f3038b445867"},
		{"epoch 3 alone", DrillDigest(d, []ProvenShare{{Epoch: 3, Share: []byte("s3")}}),
			"09f1b32cef09282afe9d797c69fb6ba7ba0b54bd81a1214491deb92f47f6a318"},
		{"commitment", CanaryCommitment(7, []byte("key-id"), []byte("share")),
			"88049bb7cb6ae97c71ec3d33681de16e313301617c3ac2135d1068011cf7f19f"},
	} {
		if got := hex.EncodeToString(tt.got); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestDrillsFull: every open drill holds a token key, so the drills open at once are bounded,
// whoever opens them: a campaign or a drill past the bound is refused before any key is made,
// with nothing stored or audited, and drills that expired make room again.
func TestDrillsFull(t *testing.T) {
	defer func(n int) { maxOpenDrills = n }(maxOpenDrills)
	maxOpenDrills = 4
	d := newDrillEnv(t)
	ctx := context.Background()
	opened := func() int {
		var n int
		d.svc.Store.View(ctx, func(tx store.Tx) error {
			es, err := tx.AuditOfKindsFrom([]string{string(KindDrillOpened)}, 1, 100)
			n = len(es)
			return err
		})
		return n
	}
	if ids := d.campaign(t); len(ids) != 3 {
		t.Fatalf("campaign opened %d drills, want 3", len(ids))
	}
	if _, err := d.svc.OpenDrill(ctx, d.admin, "", time.Hour); !errors.Is(err, ErrDrillsFull) {
		t.Fatalf("a second campaign (6 drills, bound 4): %v, want ErrDrillsFull", err)
	} else if !strings.Contains(err.Error(), "3 drills are open") {
		t.Errorf("refusal %q does not say how many are open", err)
	}
	if _, err := d.svc.OpenDrill(ctx, d.admin, "kra-0", time.Hour); err != nil {
		t.Fatalf("a fourth drill, within the bound: %v", err)
	}
	_, err := d.svc.OpenDrill(ctx, d.admin, "kra-1", time.Hour)
	if !errors.Is(err, ErrDrillsFull) {
		t.Fatalf("a fifth drill: %v, want ErrDrillsFull", err)
	}
	if d.keys.live() != 4 || opened() != 4 {
		t.Errorf("after the refusals: %d token keys, %d drill-opened entries; want 4 and 4", d.keys.live(), opened())
	}
	if all, err := d.svc.ListDrills(ctx, "", "", false); err != nil || len(all) != 4 {
		t.Errorf("drills listed: %d, %v; want 4", len(all), err)
	}
	d.clock.Set(t0.Add(2 * time.Hour))
	if _, err := d.svc.OpenDrill(ctx, d.admin, "", time.Hour); err != nil {
		t.Errorf("a campaign once the others expired: %v", err)
	}
}
