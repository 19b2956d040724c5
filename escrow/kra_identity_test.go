package escrow

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// issueKRAUnchecked issues a KRA's two certificates the way IssueKRA did before it checked
// the keys and the name against what is certified: it makes the archives that an earlier
// version could leave behind.
func (env *testEnv) issueKRAUnchecked(tb testing.TB, name string, unwrap, auth crypto.PublicKey) []*Issued {
	tb.Helper()
	ctx := context.Background()
	u, err := env.svc.issue(ctx, issuance{template: env.svc.Templates[TemplateKRA], pub: unwrap, kra: name,
		subject: &pkix.Name{CommonName: "KRA " + name + " (key recovery)"}})
	if err != nil {
		tb.Fatalf("issue unwrap certificate of %s: %v", name, err)
	}
	a, err := env.svc.issue(ctx, issuance{template: env.svc.Templates[TemplateClientAuth], pub: auth, kra: name,
		role: string(policy.RoleKRA), subject: &pkix.Name{CommonName: "KRA " + name + " (authentication)"}})
	if err != nil {
		tb.Fatalf("issue auth certificate of %s: %v", name, err)
	}
	return []*Issued{u, a}
}

// signProof is the auth key's signature over [KRABinding], ECDSA or RSA as the CLI makes it.
func signProof(tb testing.TB, auth crypto.Signer, name string, unwrap crypto.PublicKey) []byte {
	tb.Helper()
	digest, err := KRABinding(name, unwrap)
	if err != nil {
		tb.Fatal(err)
	}
	var sig []byte
	switch k := auth.(type) {
	case *ecdsa.PrivateKey:
		sig, err = ecdsa.SignASN1(rand.Reader, k, digest)
	case *rsa.PrivateKey:
		sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest)
	}
	if err != nil || sig == nil {
		tb.Fatalf("sign the proof: %v", err)
	}
	return sig
}

// storePendingKRA stores a KRA enrollment request as SubmitKRA stores it, without its checks:
// a request submitted before the checks existed.
func (env *testEnv) storePendingKRA(tb testing.TB, name string, unwrap crypto.PublicKey, auth crypto.Signer) string {
	tb.Helper()
	spki, err := x509.MarshalPKIXPublicKey(unwrap)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := newID()
	if err != nil {
		tb.Fatal(err)
	}
	err = env.svc.Store.Update(context.Background(), func(tx store.Tx) error {
		return tx.InsertPending(store.Pending{ID: id, Template: TemplateKRA, Name: name, Requester: "192.0.2.7:4711", CSR: newCSR(tb, auth, "").Raw,
			PublicKey: spki, State: store.StatePending, CreatedAt: t0})
	})
	if err != nil {
		tb.Fatalf("InsertPending: %v", err)
	}
	return id
}

// TestKRAKeysAndNames: one key pair is one KRA and one KRA name is one key pair. A KRA
// enrollment that offers keys certified to another KRA (one token enrolling twice under two
// names, to hold two shares of a set), keys certified for another purpose or to an operator,
// or new keys under the name of a KRA with valid certificates (a second token taking a KRA's
// place), is refused by SubmitKRA, by IssuePending for a request stored without those checks,
// and by IssueKRA; a renewal with the KRA's own keys is not.
func TestKRAKeysAndNames(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	kra1 := env.kras[1]
	officerKey := newP256(t)
	if _, err := env.svc.IssueCredential(ctx, policy.RoleOfficer, "olga", "", officerKey.Public()); err != nil {
		t.Fatal(err)
	}
	// A KRA whose certificates were revoked leaves its name free.
	gone := rsaKey(t, keySpare2)
	goneAuth := newP256(t)
	for _, is := range env.issueKRAUnchecked(t, "kra-gone", &gone.PublicKey, goneAuth.Public()) {
		if err := env.svc.Store.Update(ctx, func(tx store.Tx) error { return tx.RevokeCertificate(is.Serial, store.ReasonUnspecified, t0) }); err != nil {
			t.Fatal(err)
		}
	}
	spare := rsaKey(t, keySpare)
	oneKey := rsaKey(t, keySubject)

	tests := []struct {
		name    string
		kra     string
		unwrap  crypto.PublicKey
		auth    crypto.Signer
		wantErr error
	}{
		{name: "another name with a KRA's two keys", kra: "kra-9", unwrap: &kra1.unwrap.PublicKey, auth: kra1.auth, wantErr: ErrKeyInUse},
		{name: "another name with a KRA's unwrap key", kra: "kra-9", unwrap: &kra1.unwrap.PublicKey, auth: newP256(t), wantErr: ErrKeyInUse},
		{name: "another name with a KRA's auth key", kra: "kra-9", unwrap: &spare.PublicKey, auth: kra1.auth, wantErr: ErrKeyInUse},
		{name: "a revoked KRA's keys under another name", kra: "kra-9", unwrap: &gone.PublicKey, auth: goneAuth, wantErr: ErrKeyInUse},
		{name: "an officer's key as auth key", kra: "kra-9", unwrap: &spare.PublicKey, auth: officerKey, wantErr: ErrKeyInUse},
		{name: "a KRA's name with new keys", kra: kra1.name, unwrap: &spare.PublicKey, auth: newP256(t), wantErr: ErrKRANameTaken},
		{name: "a KRA's name and unwrap key with a new auth key", kra: kra1.name, unwrap: &kra1.unwrap.PublicKey, auth: newP256(t), wantErr: ErrKRANameTaken},
		{name: "a KRA's name and auth key with a new unwrap key", kra: kra1.name, unwrap: &spare.PublicKey, auth: kra1.auth, wantErr: ErrKRANameTaken},
		{name: "one key to decrypt and to sign", kra: "kra-9", unwrap: &oneKey.PublicKey, auth: oneKey, wantErr: ErrInvalidRequest},
		{name: "a revoked KRA's name with new keys", kra: "kra-gone", unwrap: &spare.PublicKey, auth: newP256(t)},
		{name: "a renewal with the KRA's own keys", kra: kra1.name, unwrap: &kra1.unwrap.PublicKey, auth: kra1.auth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(env.certs(t, store.Filter{}))
			refused := func(path string, err error) {
				t.Helper()
				if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
					t.Fatalf("%s: err %v, want %v", path, err, tt.wantErr)
				}
				if tt.wantErr == nil {
					return
				}
				if n := len(env.certs(t, store.Filter{})); n != before {
					t.Errorf("%s: refused, but %d certificate rows were added", path, n-before)
				}
			}

			_, err := env.svc.SubmitKRA(ctx, KRARequest{Name: tt.kra, UnwrapKey: tt.unwrap, AuthCSR: newCSR(t, tt.auth, ""),
				Proof: signProof(t, tt.auth, tt.kra, tt.unwrap), Requester: "192.0.2.7:4711"})
			refused("SubmitKRA", err)

			_, err = env.svc.IssuePending(ctx, env.storePendingKRA(t, tt.kra, tt.unwrap, tt.auth), "ada")
			refused("IssuePending of a request stored without the checks", err)

			_, err = env.svc.IssueKRA(ctx, tt.kra, tt.unwrap, tt.auth.Public())
			refused("IssueKRA", err)
		})
	}
}

// TestSetRecoverySetOneKeyTwice: a recovery set refuses two members whose unwrap certificates
// are for one key, even under two names (certificates an earlier version issued): whoever holds
// the key would hold two shares.
func TestSetRecoverySetOneKeyTwice(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	kra1 := env.kras[1]
	again := env.issueKRAUnchecked(t, "kra-9", &kra1.unwrap.PublicKey, newP256(t).Public())
	before, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.svc.SetRecoverySet(ctx, 2, []string{env.kras[0].serial, kra1.serial, again[0].Serial}, "admin")
	if !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("SetRecoverySet with kra-1's unwrap key under two names: %v, want ErrInvalidRequest", err)
	}
	if cur, err := env.svc.CurrentRecoverySet(ctx); err != nil || cur.Epoch != before.Epoch {
		t.Fatalf("the refused set changed the current set: %v, %v", cur, err)
	}
}

// TestRecoveryOneTokenTwoNames: a set stored before the checks, with one KRA's unwrap key
// under two names (kra-1 and kra-9), lets that one KRA approve twice; the quorum is never met
// by it, whatever the names say.
func TestRecoveryOneTokenTwoNames(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	kra1 := r.kras[1]
	// kra-9: kra-1's unwrap key in the token, kra-1's auth key.
	out := r.issueKRAUnchecked(t, "kra-9", r.unwrap[kra1.name].Public(), kra1.auth.Public())
	r.kras = append(r.kras, kra{name: "kra-9", auth: kra1.auth, cert: out[0].Certificate, serial: out[0].Serial})
	r.unwrap["kra-9"] = r.unwrap[kra1.name]
	err := r.svc.Store.Update(ctx, func(tx store.Tx) error {
		_, err := tx.InsertRecoverySet(store.RecoverySet{Quorum: 2, KRASerials: []string{r.kras[0].serial, kra1.serial, out[0].Serial},
			CreatedAt: t0, CreatedBy: "admin"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	issued, _ := r.enrollArchived(t, "victim@example.org")
	rec, err := r.svc.RequestRecovery(ctx, r.officer, issued.Serial, "", "test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r.approve(t, 1, rec.ID) // as kra-1
	if shares, sig := r.approval(t, 3, rec.ID); len(shares) > 0 {
		r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 3), rec.ID, shares, sig) // as kra-9
	}
	got, err := r.svc.Fetch(ctx, r.officer, rec.ID, false)
	if err == nil {
		t.Fatalf("one KRA recovered a 2-of-3 key alone (%d files)", len(got.Files))
	}
	if !errors.Is(err, policy.ErrInvalidSet) && !errors.Is(err, policy.ErrQuorum) {
		t.Fatalf("Fetch: %v, want the set refused (policy.ErrInvalidSet) or no quorum", err)
	}
	if n := r.keys.decrypts.Load(); n != 0 {
		t.Errorf("%d shares were decrypted", n)
	}
}

// TestRecoveryImpostorUnderKRAName: a second token issued under kra-0's name from an
// enrollment request (before the checks) is not kra-0: it is given no share and its approval
// is refused, so it cannot take kra-0's place; kra-0 itself, issued directly with no request,
// still approves, and the key is recovered.
func TestRecoveryImpostorUnderKRAName(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	evilUnwrap := kraUnwrapKey(t, r.kraTok, "evil")
	evilAuth := newP256(t)
	pid := r.storePendingKRA(t, "kra-0", evilUnwrap.Public(), evilAuth)
	out := r.issueKRAUnchecked(t, "kra-0", evilUnwrap.Public(), evilAuth.Public())
	if err := r.svc.Store.Update(ctx, func(tx store.Tx) error {
		return tx.DecidePendingAt(pid, store.StateIssued, "ada", out[0].Serial, t0)
	}); err != nil {
		t.Fatal(err)
	}
	evil := policy.Principal{Role: policy.RoleKRA, Name: "kra-0", Serial: out[1].Serial}

	rec := r.request(t)
	if _, items, err := r.svc.SharesFor(ctx, evil, rec.ID); !errors.Is(err, ErrForbidden) {
		t.Fatalf("SharesFor the impostor: %v (%d items), want ErrForbidden", err, len(items))
	}
	junk := make([]byte, 256)
	rand.Read(junk)
	shares := []ApprovedShare{{RecordID: rec.Items[0].RecordID, Share: junk}}
	sig, err := ecdsa.SignASN1(rand.Reader, evilAuth, ApprovalDigest(&rec.Recovery, shares))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.SubmitApproval(ctx, evil, rec.ID, shares, sig); !errors.Is(err, ErrForbidden) {
		t.Fatalf("SubmitApproval by the impostor: %v, want ErrForbidden", err)
	}
	r.approve(t, 0, rec.ID) // the real kra-0: its credential has no enrollment request
	r.approve(t, 1, rec.ID)
	got, err := r.svc.Fetch(ctx, r.officer, rec.ID, false)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if len(got.Files) != 1 || got.Files[0].Serial != r.serial {
		t.Fatalf("files %+v, want one for %s", got.Files, r.serial)
	}
}
