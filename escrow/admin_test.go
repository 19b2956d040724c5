package escrow

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// kraRequest is a correct KRA enrollment for name: the spare RSA unwrap key, a fresh P-256 auth
// key, its CSR (no mailbox) and the proof.
func kraRequest(tb testing.TB, name string) (KRARequest, *ecdsa.PrivateKey) {
	tb.Helper()
	auth := newP256(tb)
	unwrap := &rsaKey(tb, keySpare).PublicKey
	return KRARequest{Name: name, UnwrapKey: unwrap, AuthCSR: newCSR(tb, auth, ""), Proof: kraProof(tb, auth, name, unwrap),
		Requester: "192.0.2.7:4711"}, auth
}

func kraProof(tb testing.TB, auth *ecdsa.PrivateKey, name string, unwrap crypto.PublicKey) []byte {
	tb.Helper()
	digest, err := KRABinding(name, unwrap)
	if err != nil {
		tb.Fatalf("KRABinding: %v", err)
	}
	sig, err := ecdsa.SignASN1(rand.Reader, auth, digest)
	if err != nil {
		tb.Fatal(err)
	}
	return sig
}

// insertPendingKRA stores a pending KRA request as SubmitKRA stores it, without its checks.
func (env *testEnv) insertPendingKRA(tb testing.TB, name string) (id string, unwrap *rsa.PublicKey, auth *ecdsa.PrivateKey) {
	tb.Helper()
	req, auth := kraRequest(tb, name)
	spki, err := x509.MarshalPKIXPublicKey(req.UnwrapKey)
	if err != nil {
		tb.Fatal(err)
	}
	id, err = newID()
	if err != nil {
		tb.Fatal(err)
	}
	err = env.svc.Store.Update(context.Background(), func(tx store.Tx) error {
		return tx.InsertPending(store.Pending{ID: id, Template: TemplateKRA, Name: name, Requester: req.Requester,
			CSR: req.AuthCSR.Raw, PublicKey: spki, State: store.StatePending, CreatedAt: t0})
	})
	if err != nil {
		tb.Fatalf("InsertPending: %v", err)
	}
	return id, req.UnwrapKey.(*rsa.PublicKey), auth
}

func (env *testEnv) pending(tb testing.TB, id string) *store.Pending {
	tb.Helper()
	var p *store.Pending
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		p, err = tx.GetPending(id)
		return err
	})
	if err != nil {
		tb.Fatalf("GetPending(%s): %v", id, err)
	}
	return p
}

func TestSubmitKRA(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		change  func(tb testing.TB, r *KRARequest, auth *ecdsa.PrivateKey)
		wantErr error
	}{
		{name: "valid"},
		{name: "proof by another key", wantErr: ErrInvalidRequest, change: func(tb testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) {
			r.Proof = kraProof(tb, newP256(tb), r.Name, r.UnwrapKey)
		}},
		{name: "proof for another name", wantErr: ErrInvalidRequest, change: func(tb testing.TB, r *KRARequest, auth *ecdsa.PrivateKey) {
			r.Proof = kraProof(tb, auth, "someone-else", r.UnwrapKey)
		}},
		{name: "proof for another unwrap key", wantErr: ErrInvalidRequest, change: func(tb testing.TB, r *KRARequest, auth *ecdsa.PrivateKey) {
			r.Proof = kraProof(tb, auth, r.Name, &rsaKey(tb, keySubject).PublicKey)
		}},
		{name: "no proof", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.Proof = nil }},
		{name: "EC unwrap key", wantErr: ErrInvalidRequest, change: func(tb testing.TB, r *KRARequest, auth *ecdsa.PrivateKey) {
			r.UnwrapKey = newP256(tb).Public()
			r.Proof = kraProof(tb, auth, r.Name, r.UnwrapKey)
		}},
		{name: "no unwrap key", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.UnwrapKey = nil }},
		{name: "no auth CSR", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.AuthCSR = nil }},
		{name: "upper-case name", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.Name = "Alice" }},
		{name: "empty name", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.Name = "" }},
		{name: "name with space", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.Name = "kra one" }},
		{name: "name starting with a dash", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.Name = "-kra" }},
		{name: "name of 65 characters", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) {
			r.Name = strings.Repeat("k", 65)
		}},
		{name: "name with a newline", wantErr: ErrInvalidRequest, change: func(_ testing.TB, r *KRARequest, _ *ecdsa.PrivateKey) { r.Name = "kra\n" }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, auth := kraRequest(t, fmt.Sprintf("agent-%d", i))
			if tt.change != nil {
				tt.change(t, &req, auth)
			}
			before, err := env.svc.ListPending(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			id, err := env.svc.SubmitKRA(ctx, req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("SubmitKRA: err %v, want %v", err, tt.wantErr)
			}
			after, lerr := env.svc.ListPending(ctx, "")
			if lerr != nil {
				t.Fatal(lerr)
			}
			if err != nil {
				if len(after) != len(before) {
					t.Errorf("refused request left %d pending row(s)", len(after)-len(before))
				}
				return
			}
			if id == "" || len(after) != len(before)+1 {
				t.Fatalf("SubmitKRA returned %q; %d pending rows, want %d", id, len(after), len(before)+1)
			}
			p := env.pending(t, id)
			if p.Name != req.Name || p.Template != TemplateKRA || p.State != store.StatePending || p.Requester != req.Requester ||
				!bytes.Equal(p.CSR, req.AuthCSR.Raw) || !p.CreatedAt.Equal(t0) {
				t.Errorf("stored pending request %+v", p)
			}
		})
	}
}

// TestKRAFlow runs a KRA enrollment end to end: submit, list, issue, then use the new KRA.
func TestKRAFlow(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	req, auth := kraRequest(t, "kra-new")
	id, err := env.svc.SubmitKRA(ctx, req)
	if err != nil {
		t.Fatalf("SubmitKRA: %v", err)
	}
	list, err := env.svc.ListPending(ctx, store.StatePending)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list, func(p Pending) bool { return p.ID == id })
	if i < 0 {
		t.Fatalf("ListPending does not show %s", id)
	}
	want := []string{PublicKeyFingerprint(req.UnwrapKey), PublicKeyFingerprint(auth.Public())}
	if !slices.Equal(list[i].Fingerprints, want) {
		t.Errorf("fingerprints %v, want %v", list[i].Fingerprints, want)
	}
	out, err := env.svc.IssuePending(ctx, id, "admin-1")
	if err != nil {
		t.Fatalf("IssuePending: %v", err)
	}
	checkKRACerts(t, env, "kra-new", out, req.UnwrapKey, auth.Public())
	p := env.pending(t, id)
	if p.State != store.StateIssued || p.Serial != out[0].Serial || p.DecidedBy != "admin-1" {
		t.Errorf("pending after issue: state %s, serial %s, by %q", p.State, p.Serial, p.DecidedBy)
	}
	if _, err := env.svc.IssuePending(ctx, id, "admin-1"); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("second IssuePending: err %v, want ErrInvalidRequest", err)
	}
	// The new KRA can join a recovery set.
	if _, err := env.svc.SetRecoverySet(ctx, 2, []string{env.kras[0].serial, out[0].Serial}, "admin-1"); err != nil {
		t.Errorf("SetRecoverySet with the new KRA: %v", err)
	}
}

// checkKRACerts checks the unwrap and auth certificates IssueKRA or IssuePending made.
func checkKRACerts(tb testing.TB, env *testEnv, name string, out []*Issued, unwrap, auth crypto.PublicKey) {
	tb.Helper()
	if len(out) != 2 {
		tb.Fatalf("%d certificates, want unwrap and auth", len(out))
	}
	u, a := out[0].Certificate, out[1].Certificate
	if !publicKeysEqual(u.PublicKey, unwrap) || !publicKeysEqual(a.PublicKey, auth) {
		tb.Errorf("certificates do not certify the requested keys")
	}
	if u.KeyUsage != x509.KeyUsageKeyEncipherment {
		tb.Errorf("unwrap key usage %v, want keyEncipherment", u.KeyUsage)
	}
	if len(u.ExtKeyUsage) != 0 || len(u.UnknownExtKeyUsage) != 1 || !u.UnknownExtKeyUsage[0].Equal(policy.OIDKeyRecovery) {
		tb.Errorf("unwrap EKU %v %v, want only keyRecovery %v", u.ExtKeyUsage, u.UnknownExtKeyUsage, policy.OIDKeyRecovery)
	}
	if !slices.Equal(a.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(a.UnknownExtKeyUsage) != 0 {
		tb.Errorf("auth EKU %v %v, want clientAuth", a.ExtKeyUsage, a.UnknownExtKeyUsage)
	}
	if a.KeyUsage != x509.KeyUsageDigitalSignature {
		tb.Errorf("auth key usage %v, want digitalSignature", a.KeyUsage)
	}
	if !strings.Contains(u.Subject.CommonName, name) || !strings.Contains(a.Subject.CommonName, name) {
		tb.Errorf("subjects %q, %q do not name %s", u.Subject, a.Subject, name)
	}
	for _, c := range []*x509.Certificate{u, a} {
		if err := c.CheckSignatureFrom(env.svc.Issuer.Certificate()); err != nil {
			tb.Errorf("%s not signed by the CA: %v", c.Subject, err)
		}
		if len(c.EmailAddresses) != 0 {
			tb.Errorf("%s names mailboxes %v", c.Subject, c.EmailAddresses)
		}
	}
	ur, ar := env.certificate(tb, out[0].Serial), env.certificate(tb, out[1].Serial)
	if ur.Template != TemplateKRA || ur.KRA != name || ur.State != store.StateIssued || ur.Role != "" {
		tb.Errorf("unwrap row: template %s, kra %q, state %s, role %q", ur.Template, ur.KRA, ur.State, ur.Role)
	}
	if ar.Template != TemplateClientAuth || ar.KRA != name || ar.State != store.StateIssued || ar.Role != string(policy.RoleKRA) {
		tb.Errorf("auth row: template %s, kra %q, state %s, role %q", ar.Template, ar.KRA, ar.State, ar.Role)
	}
}

// TestPendingDecisions covers IssuePending and DenyPending on requests stored directly, so that
// they are tested whatever SubmitKRA does.
func TestPendingDecisions(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	issuedID, unwrap, auth := env.insertPendingKRA(t, "kra-issued")
	deniedID, _, _ := env.insertPendingKRA(t, "kra-denied")
	otherID, _, _ := env.insertPendingKRA(t, "kra-other")

	list, err := env.svc.ListPending(ctx, store.StatePending)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("ListPending: %d requests, want 3", len(list))
	}
	for _, p := range list {
		if len(p.Fingerprints) != 2 {
			t.Errorf("request %s has %d fingerprints, want 2", p.ID, len(p.Fingerprints))
		}
	}

	steps := []struct {
		name    string
		do      func() error
		wantErr error
	}{
		{name: "issue", do: func() error {
			out, err := env.svc.IssuePending(ctx, issuedID, "admin")
			if err == nil {
				checkKRACerts(t, env, "kra-issued", out, unwrap, auth.Public())
			}
			return err
		}},
		{name: "issue again", wantErr: ErrInvalidRequest, do: func() error { _, err := env.svc.IssuePending(ctx, issuedID, "admin"); return err }},
		{name: "deny issued", wantErr: ErrInvalidRequest, do: func() error { return env.svc.DenyPending(ctx, issuedID, "admin") }},
		{name: "deny", do: func() error { return env.svc.DenyPending(ctx, deniedID, "admin-2") }},
		{name: "deny again", wantErr: ErrInvalidRequest, do: func() error { return env.svc.DenyPending(ctx, deniedID, "admin") }},
		{name: "issue denied", wantErr: ErrInvalidRequest, do: func() error { _, err := env.svc.IssuePending(ctx, deniedID, "admin"); return err }},
		{name: "issue unknown", wantErr: ErrNotFound, do: func() error { _, err := env.svc.IssuePending(ctx, "0123456789abcdef", "admin"); return err }},
		{name: "deny unknown", wantErr: ErrNotFound, do: func() error { return env.svc.DenyPending(ctx, "0123456789abcdef", "admin") }},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := st.do(); !errors.Is(err, st.wantErr) {
				t.Fatalf("err %v, want %v", err, st.wantErr)
			}
		})
	}
	for id, want := range map[string]string{issuedID: store.StateIssued, deniedID: store.StateDenied, otherID: store.StatePending} {
		if p := env.pending(t, id); p.State != want {
			t.Errorf("request %s (%s) is %s, want %s", id, p.Name, p.State, want)
		}
	}
	if p := env.pending(t, deniedID); p.DecidedBy != "admin-2" || p.Serial != "" {
		t.Errorf("denied request: by %q, serial %q", p.DecidedBy, p.Serial)
	}
	if rows := env.certs(t, store.Filter{KRA: "kra-denied"}); len(rows) != 0 {
		t.Errorf("denied KRA has %d certificates", len(rows))
	}
	if rows := env.certs(t, store.Filter{KRA: "kra-issued"}); len(rows) != 2 {
		t.Errorf("issued KRA has %d certificates, want 2", len(rows))
	}
}

// TestPendingDecidedAtServiceClock: the decision time comes from Service.Now like every other
// time the engine writes.
func TestPendingDecidedAtServiceClock(t *testing.T) {
	env := newTestService(t)
	id, _, _ := env.insertPendingKRA(t, "kra-clock")
	if _, err := env.svc.IssuePending(context.Background(), id, "admin"); err != nil {
		t.Fatalf("IssuePending: %v", err)
	}
	if got := env.pending(t, id).DecidedAt; !got.Equal(t0) {
		t.Errorf("decided at %s, want the service clock %s", got, t0)
	}
}

// TestIssuePendingConcurrent: two admins issuing the same request at once must not both get
// certificates.
func TestIssuePendingConcurrent(t *testing.T) {
	env := newTestService(t)
	id, _, _ := env.insertPendingKRA(t, "kra-twice")
	errs := make([]error, 2)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			<-start
			_, errs[i] = env.svc.IssuePending(context.Background(), id, fmt.Sprintf("admin-%d", i))
		})
	}
	close(start)
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrInvalidRequest):
			t.Errorf("losing IssuePending: err %v, want ErrInvalidRequest", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d IssuePending calls succeeded, want 1", ok)
	}
	if rows := env.certs(t, store.Filter{KRA: "kra-twice", State: store.StateIssued}); len(rows) != 2 {
		t.Errorf("KRA kra-twice has %d issued certificates, want 2 (one unwrap, one auth)", len(rows))
	}
}

func TestIssueKRA(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		unwrap  crypto.PublicKey
		auth    crypto.PublicKey
		wantErr error
	}{
		{name: "ok", unwrap: &rsaKey(t, keySpare).PublicKey, auth: newP256(t).Public()},
		{name: "RSA auth key", unwrap: &rsaKey(t, keySpare2).PublicKey, auth: &rsaKey(t, keySubject).PublicKey},
		{name: "EC unwrap key", unwrap: newP256(t).Public(), auth: newP256(t).Public(), wantErr: policy.ErrRejected},
		{name: "weak unwrap key", unwrap: &rsa1024.PublicKey, auth: newP256(t).Public(), wantErr: policy.ErrRejected},
		{name: "weak auth key", unwrap: &rsaKey(t, keySpare).PublicKey, auth: &rsa1024.PublicKey, wantErr: policy.ErrRejected},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("direct-%d", i)
			out, err := env.svc.IssueKRA(ctx, name, tt.unwrap, tt.auth)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("IssueKRA: err %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if rows := env.certs(t, store.Filter{KRA: name}); len(rows) != 0 {
					t.Errorf("refused IssueKRA left %d certificate rows", len(rows))
				}
				return
			}
			checkKRACerts(t, env, name, out, tt.unwrap, tt.auth)
		})
	}
}

func TestIssueCredential(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		role    policy.Role
		who     string
		mailbox string
		pub     crypto.PublicKey
		wantErr error
	}{
		{name: "admin", role: policy.RoleAdmin, who: "ada", pub: newP256(t).Public()},
		{name: "officer", role: policy.RoleOfficer, who: "otto.o", mailbox: "otto@Example.ORG", pub: newP256(t).Public()},
		{name: "bad mailbox", role: policy.RoleOfficer, who: "otto.x", mailbox: "otto at example", pub: newP256(t).Public(), wantErr: ErrInvalidRequest},
		{name: "auditor RSA", role: policy.RoleAuditor, who: "audrey_1", pub: &rsaKey(t, keySubject).PublicKey},
		{name: "kra role", role: policy.RoleKRA, who: "kay", pub: newP256(t).Public(), wantErr: ErrInvalidRequest},
		{name: "unknown role", role: policy.Role("root"), who: "rooty", pub: newP256(t).Public(), wantErr: ErrInvalidRequest},
		{name: "bad name", role: policy.RoleAdmin, who: "Ada Lovelace", pub: newP256(t).Public(), wantErr: ErrInvalidRequest},
		{name: "weak key", role: policy.RoleAdmin, who: "weak", pub: &rsa1024.PublicKey, wantErr: policy.ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			issued, err := env.svc.IssueCredential(ctx, tt.role, tt.who, tt.mailbox, tt.pub)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("IssueCredential: err %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			c := issued.Certificate
			if c.Subject.CommonName != tt.who || !slices.Equal(c.Subject.OrganizationalUnit, []string{string(tt.role)}) {
				t.Errorf("subject %s, want CN=%s OU=%s", c.Subject, tt.who, tt.role)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || c.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("usage %v / %v, want digitalSignature / clientAuth", c.KeyUsage, c.ExtKeyUsage)
			}
			wantMail := strings.Replace(tt.mailbox, "Example.ORG", "example.org", 1)
			if wantMail != "" && !slices.Equal(c.EmailAddresses, []string{wantMail}) {
				t.Errorf("mailboxes %v, want %s", c.EmailAddresses, wantMail)
			}
			row := env.certificate(t, issued.Serial)
			if row.Email != wantMail {
				t.Errorf("row email %q, want %q", row.Email, wantMail)
			}
			if row.Role != string(tt.role) || row.Template != TemplateClientAuth || row.State != store.StateIssued || row.KRA != "" {
				t.Errorf("row: role %q, template %s, state %s, kra %q", row.Role, row.Template, row.State, row.KRA)
			}
		})
	}
}

func TestSetRecoverySet(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	k0, k1, k2 := env.kras[0].serial, env.kras[1].serial, env.kras[2].serial
	// A second unwrap certificate of kra-0 (a renewal: the same keys), a revoked KRA, a KRA
	// that expires early (issued a year before the others, so it expires a year earlier) and
	// a non-KRA certificate.
	renewed, err := env.svc.IssueKRA(ctx, "kra-0", &env.kras[0].unwrap.PublicKey, env.kras[0].auth.Public())
	if err != nil {
		t.Fatalf("IssueKRA(kra-0) again with its own keys: %v", err)
	}
	dup := renewed[0].Serial
	revoked := env.addKRA(t, "kra-revoked", rsaKey(t, keySpare)).serial
	if err := env.svc.Store.Update(ctx, func(tx store.Tx) error { return tx.RevokeCertificate(revoked, store.ReasonUnspecified, t0) }); err != nil {
		t.Fatal(err)
	}
	env.kras = env.kras[:3]
	smime := env.certs(t, store.Filter{Email: "", Template: TemplateClientAuth, KRA: "kra-1"})
	if len(smime) != 1 {
		t.Fatalf("kra-1 has %d auth certificates", len(smime))
	}
	authSerial := smime[0].Serial
	issued, err := env.svc.Enroll(ctx, env.enrollee(t, "sig@example.org", policy.TemplateSMIMESignature),
		EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: goodCSR(t, "sig@example.org")})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		quorum  int
		serials []string
		clock   time.Duration
		wantErr error
	}{
		{name: "1 of 1", quorum: 1, serials: []string{k0}},
		{name: "3 of 3", quorum: 3, serials: []string{k0, k1, k2}},
		{name: "2 of 3 upper-case serials", quorum: 2, serials: []string{strings.ToUpper(k2), "0x" + k1, k0}},
		{name: "quorum 0", quorum: 0, serials: []string{k0, k1, k2}, wantErr: ErrInvalidRequest},
		{name: "negative quorum", quorum: -1, serials: []string{k0, k1, k2}, wantErr: ErrInvalidRequest},
		{name: "quorum above n", quorum: 4, serials: []string{k0, k1, k2}, wantErr: ErrInvalidRequest},
		{name: "no KRA", quorum: 1, serials: nil, wantErr: ErrInvalidRequest},
		{name: "unknown serial", quorum: 2, serials: []string{k0, k1, "123456789abcdef"}, wantErr: ErrInvalidRequest},
		{name: "malformed serial", quorum: 2, serials: []string{k0, k1, "not-a-serial"}, wantErr: ErrInvalidRequest},
		{name: "non-KRA certificate", quorum: 2, serials: []string{k0, k1, issued.Serial}, wantErr: ErrInvalidRequest},
		{name: "KRA auth certificate", quorum: 2, serials: []string{k0, authSerial}, wantErr: ErrInvalidRequest},
		{name: "two certificates of one KRA", quorum: 2, serials: []string{k0, k1, dup}, wantErr: ErrInvalidRequest},
		{name: "one certificate twice", quorum: 2, serials: []string{k0, k1, k0}, wantErr: ErrInvalidRequest},
		{name: "revoked KRA certificate", quorum: 2, serials: []string{k0, k1, revoked}, wantErr: ErrInvalidRequest},
		{name: "expired KRA certificates", quorum: 2, serials: []string{k0, k1, k2}, clock: 731 * 24 * time.Hour, wantErr: ErrInvalidRequest},
		{name: "2 of 2", quorum: 2, serials: []string{k1, k2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := env.svc.CurrentRecoverySet(ctx)
			if err != nil {
				t.Fatal(err)
			}
			env.clock.Set(t0.Add(tt.clock))
			rs, err := env.svc.SetRecoverySet(ctx, tt.quorum, tt.serials, "admin")
			env.clock.Set(t0)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("SetRecoverySet: err %v, want %v", err, tt.wantErr)
			}
			cur, cerr := env.svc.CurrentRecoverySet(ctx)
			if cerr != nil {
				t.Fatal(cerr)
			}
			if err != nil {
				if cur.Epoch != before.Epoch {
					t.Errorf("refused change moved the epoch from %d to %d", before.Epoch, cur.Epoch)
				}
				return
			}
			if rs.Epoch != before.Epoch+1 || cur.Epoch != rs.Epoch {
				t.Errorf("epoch %d (current %d), want %d", rs.Epoch, cur.Epoch, before.Epoch+1)
			}
			if rs.Quorum != tt.quorum || len(rs.KRAs) != len(tt.serials) || len(rs.Names) != len(tt.serials) {
				t.Errorf("set is %d of %d (%d names), want %d of %d", rs.Quorum, len(rs.KRAs), len(rs.Names), tt.quorum, len(tt.serials))
			}
			for i, s := range tt.serials {
				want, _ := store.NormalizeSerial(s)
				if i < len(rs.KRAs) && store.FormatSerial(rs.KRAs[i].SerialNumber) != want {
					t.Errorf("KRA %d is %x, want %s (share order is the order given)", i, rs.KRAs[i].SerialNumber, want)
				}
			}
		})
	}
}

// TestRecoverySetEpochs: records keep the epoch they were sealed under when the set changes.
func TestRecoverySetEpochs(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	old, oldKey := env.enrollArchived(t, "epoch1@example.org")
	env.assertArchived(t, old, oldKey)

	rs, err := env.svc.SetRecoverySet(ctx, 1, []string{env.kras[2].serial, env.kras[0].serial}, "admin")
	if err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	if rs.Epoch != 2 {
		t.Fatalf("epoch %d, want 2", rs.Epoch)
	}
	issued, newKey := env.enrollArchived(t, "epoch2@example.org")
	env.assertCommittedFirst(t, issued)

	oldRec, newRec := env.record(t, old.RecordID), env.record(t, issued.RecordID)
	tests := []struct {
		name      string
		rec       *store.Record
		wantEpoch uint32
		m, n      uint8
		kras      []int
		want      []byte
		wantErr   error
	}{
		{name: "old record, old quorum", rec: oldRec, wantEpoch: 1, m: 2, n: 3, kras: []int{1, 2}, want: oldKey},
		{name: "old record, one share", rec: oldRec, wantEpoch: 1, m: 2, n: 3, kras: []int{0}, wantErr: record.ErrOpen},
		{name: "new record, kra-2 alone", rec: newRec, wantEpoch: 2, m: 1, n: 2, kras: []int{2}, want: newKey},
		{name: "new record, kra-0 alone", rec: newRec, wantEpoch: 2, m: 1, n: 2, kras: []int{0}, want: newKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := record.Parse(tt.rec.Blob)
			if err != nil {
				t.Fatal(err)
			}
			if tt.rec.Epoch != tt.wantEpoch || r.Header.Epoch != tt.wantEpoch || r.Header.M != tt.m || r.Header.N != tt.n {
				t.Errorf("record: store epoch %d, header epoch %d, %d of %d; want epoch %d, %d of %d",
					tt.rec.Epoch, r.Header.Epoch, r.Header.M, r.Header.N, tt.wantEpoch, tt.m, tt.n)
			}
			got, err := env.openRecord(t, tt.rec.Blob, tt.kras...)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("open: err %v, want %v", err, tt.wantErr)
			}
			if err == nil && !bytes.Equal(got, tt.want) {
				t.Errorf("open gave another key")
			}
		})
	}
	// kra-1 is not in epoch 2.
	r, err := record.Parse(newRec.Blob)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ShareFor(record.KeyID(env.kras[1].cert)); !errors.Is(err, record.ErrNoShare) {
		t.Errorf("kra-1's share in an epoch-2 record: err %v, want record.ErrNoShare", err)
	}
}

// TestRecoverySetChangedElsewhere: a recovery set replaced by another process (a local admin
// command) while this one still caches the old set: the next enrollment's reservation sees the
// new epoch, seals the key again for the new set, and no record is committed for the old one.
func TestRecoverySetChangedElsewhere(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	first, _ := env.enrollArchived(t, "before@example.org")
	if rec := env.record(t, first.RecordID); rec.Epoch != 1 {
		t.Fatalf("first record epoch %d, want 1", rec.Epoch)
	}
	other := &Service{Store: env.svc.Store, Issuer: env.svc.Issuer, Templates: env.svc.Templates}
	rs, err := other.SetRecoverySet(ctx, 1, []string{env.kras[2].serial, env.kras[0].serial}, "admin")
	if err != nil || rs.Epoch != 2 {
		t.Fatalf("SetRecoverySet elsewhere: epoch %v, %v", rs, err)
	}
	issued, key := env.enrollArchived(t, "after@example.org")
	env.assertCommittedFirst(t, issued)
	rec := env.record(t, issued.RecordID)
	if rec.Epoch != 2 {
		t.Fatalf("record sealed after the change has epoch %d, want 2", rec.Epoch)
	}
	for _, i := range []int{0, 2} {
		got, err := env.openRecord(t, rec.Blob, i)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("open with KRA %d of the new set (quorum 1): %v", i, err)
		}
	}
}
