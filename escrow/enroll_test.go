package escrow

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

func basicConstraintsCA(tb testing.TB) pkix.Extension {
	tb.Helper()
	v, err := asn1.Marshal(struct{ IsCA bool }{true})
	if err != nil {
		tb.Fatal(err)
	}
	return pkix.Extension{Id: oidBasicConstraints, Critical: true, Value: v}
}

func goodCSR(tb testing.TB, mailbox string) *x509.CertificateRequest {
	return newCSR(tb, newP256(tb), mailbox)
}

func TestEnroll(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		template string                                                       // of the request; smime-signature when empty
		csr      func(tb testing.TB, mailbox string) *x509.CertificateRequest // goodCSR when nil
		who      func(Enrollee) Enrollee                                      // changes the enrollee
		clock    time.Duration                                                // clock moved by this for the call
		wantErr  error
	}{
		{name: "P-256"},
		{name: "P-384", csr: func(tb testing.TB, m string) *x509.CertificateRequest { return newCSR(tb, p384, m) }},
		{name: "RSA-2048", csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			return newCSR(tb, rsaKey(tb, keySubject), m)
		}},
		{name: "mailbox with upper-case domain in SAN", csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			local, domain, _ := strings.Cut(m, "@")
			return newCSR(tb, newP256(tb), m, withEmails(local+"@"+strings.ToUpper(domain)))
		}},
		{name: "another mailbox in SAN", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			return newCSR(tb, newP256(tb), m, withEmails("mallory@example.org"))
		}},
		{name: "a second mailbox in SAN", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			return newCSR(tb, newP256(tb), m, withEmails(m, "mallory@example.org"))
		}},
		{name: "another mailbox in subject CN", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			return newCSR(tb, newP256(tb), m, func(r *x509.CertificateRequest) { r.Subject.CommonName = "mallory@example.org" })
		}},
		{name: "basicConstraints requested", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			return newCSR(tb, newP256(tb), m, withExtension(basicConstraintsCA(tb)))
		}},
		{name: "weak key RSA-1024", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			return newCSR(tb, rsa1024, m)
		}},
		{name: "bad signature", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			csr := newCSR(tb, newP256(tb), m)
			csr.Signature[len(csr.Signature)-1] ^= 1
			return csr
		}},
		{name: "CSR signed by another key", wantErr: policy.ErrRejected, csr: func(tb testing.TB, m string) *x509.CertificateRequest {
			csr := newCSR(tb, newP256(tb), m)
			csr.Signature = newCSR(tb, newP256(tb), m).Signature
			return csr
		}},
		{name: "no CSR", wantErr: ErrInvalidRequest, csr: func(testing.TB, string) *x509.CertificateRequest { return nil }},
		{name: "code of another template", template: policy.TemplateClientAuth, wantErr: ErrForbidden},
		{name: "template needing approval", template: policy.TemplateKRA, wantErr: ErrInvalidRequest},
		{name: "unknown template", template: "smime-nothing", wantErr: policy.ErrUnknownTemplate},
		{name: "archiving template", template: policy.TemplateSMIMEEncryption, wantErr: ErrInvalidRequest,
			who: func(w Enrollee) Enrollee {
				w.Code = &store.Code{ID: w.Code.ID, Template: policy.TemplateSMIMEEncryption}
				return w
			}},
		{name: "no code", wantErr: ErrUnauthorized, who: func(w Enrollee) Enrollee { w.Code = nil; return w }},
		{name: "expired code", clock: 31 * 24 * time.Hour, wantErr: ErrCodeExpired},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			who := env.enrollee(t, fmt.Sprintf("user%d@Example.ORG", i), policy.TemplateSMIMESignature)
			if who.Mailbox != fmt.Sprintf("user%d@example.org", i) {
				t.Fatalf("code mailbox %q: domain not normalised", who.Mailbox)
			}
			csrFn, template, caller := tt.csr, tt.template, who
			if csrFn == nil {
				csrFn = goodCSR
			}
			if template == "" {
				template = policy.TemplateSMIMESignature
			}
			if tt.who != nil {
				caller = tt.who(who)
			}
			if tt.clock != 0 {
				env.clock.Set(t0.Add(tt.clock))
			}
			issued, err := env.svc.Enroll(ctx, caller, EnrollRequest{Template: template, CSR: csrFn(t, who.Mailbox)})
			env.clock.Set(t0)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Enroll: err %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				t.Logf("refused: %v", err)
				if issued != nil {
					t.Errorf("Enroll returned a certificate with error %v", err)
				}
				if rows := env.certs(t, store.Filter{Email: who.Mailbox}); len(rows) != 0 {
					t.Errorf("refused enrollment left %d certificate row(s), first in state %s", len(rows), rows[0].State)
				}
				env.assertNothingLeft(t, who)
				// The code is still good for a correct request.
				issued, err = env.svc.Enroll(ctx, who, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: goodCSR(t, who.Mailbox)})
				if err != nil {
					t.Fatalf("Enroll with the same code after the refusal: %v", err)
				}
			}
			checkSignatureCert(t, env, who, issued)
			// The code is now used up.
			if err := env.codeErr(t, who); !errors.Is(err, ErrCodeUsed) {
				t.Errorf("Authenticate after enrollment: err %v, want ErrCodeUsed", err)
			}
			_, err = env.svc.Enroll(ctx, who, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: goodCSR(t, who.Mailbox)})
			if !errors.Is(err, ErrCodeUsed) {
				t.Errorf("second Enroll with the code: err %v, want ErrCodeUsed", err)
			}
			if rows := env.certs(t, store.Filter{Email: who.Mailbox}); len(rows) != 1 {
				t.Errorf("%d certificate rows for %s, want 1", len(rows), who.Mailbox)
			}
		})
	}
}

// checkSignatureCert checks an smime-signature certificate and its row.
func checkSignatureCert(tb testing.TB, env *testEnv, who Enrollee, issued *Issued) {
	tb.Helper()
	c := issued.Certificate
	if err := c.CheckSignatureFrom(env.svc.Issuer.Certificate()); err != nil {
		tb.Errorf("certificate not signed by the CA: %v", err)
	}
	if !slices.Equal(c.EmailAddresses, []string{who.Mailbox}) || c.Subject.CommonName != who.Mailbox {
		tb.Errorf("certificate names %v, CN %q; want %s", c.EmailAddresses, c.Subject.CommonName, who.Mailbox)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}) {
		tb.Errorf("EKU %v, want emailProtection", c.ExtKeyUsage)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment; c.KeyUsage != want {
		tb.Errorf("key usage %v, want %v", c.KeyUsage, want)
	}
	if !c.NotBefore.Equal(t0) || !c.NotAfter.Equal(t0.Add(365*24*time.Hour)) {
		tb.Errorf("validity %s..%s, want from the service clock %s for 365 days", c.NotBefore, c.NotAfter, t0)
	}
	if issued.RecordID != "" {
		tb.Errorf("smime-signature issuance returned record %q", issued.RecordID)
	}
	row := env.certificate(tb, issued.Serial)
	if row.State != store.StateIssued || row.CodeID != who.Code.ID || row.RecordID != "" || row.Template != policy.TemplateSMIMESignature {
		tb.Errorf("row: state %s, code %q, record %q, template %s", row.State, row.CodeID, row.RecordID, row.Template)
	}
	if recs := env.records(tb, who.Mailbox); len(recs) != 0 {
		tb.Errorf("smime-signature enrollment left %d escrow record(s)", len(recs))
	}
}

// TestEnrollPublicKeyOnly: a request without a CSR is refused, whatever PublicKey says.
func TestEnrollPublicKeyOnly(t *testing.T) {
	env := newTestService(t)
	who := env.enrollee(t, "pk@example.org", policy.TemplateSMIMESignature)
	_, err := env.svc.Enroll(context.Background(), who, EnrollRequest{Template: policy.TemplateSMIMESignature, PublicKey: newP256(t).Public()})
	if !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("Enroll without CSR: err %v, want ErrInvalidRequest", err)
	}
	env.assertNothingLeft(t, who)
}

func TestCodes(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()

	t.Run("create", func(t *testing.T) {
		tests := []struct {
			name     string
			mailbox  string
			template string
			wantErr  error
		}{
			{name: "ok", mailbox: "bob@example.org", template: policy.TemplateSMIMEEncryption},
			{name: "bad mailbox", mailbox: "bob", template: policy.TemplateSMIMEEncryption, wantErr: ErrInvalidRequest},
			{name: "empty mailbox", mailbox: "", template: policy.TemplateSMIMEEncryption, wantErr: ErrInvalidRequest},
			{name: "unknown template", mailbox: "bob@example.org", template: "nope", wantErr: policy.ErrUnknownTemplate},
			{name: "template needing approval", mailbox: "bob@example.org", template: policy.TemplateKRA, wantErr: ErrInvalidRequest},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, err := env.svc.CreateCode(ctx, tt.mailbox, tt.template, time.Hour)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("CreateCode: err %v, want %v", err, tt.wantErr)
				}
				if err != nil {
					return
				}
				if len(c.Secret) != codeLength || c.ID != c.Secret[:codeIDLen] || !c.ExpiresAt.Equal(t0.Add(time.Hour)) {
					t.Errorf("code %q (ID %q, expires %s)", c.Secret, c.ID, c.ExpiresAt)
				}
				for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
					if strings.Contains(s, c.Secret) || strings.Contains(s, c.Secret[codeIDLen:]) {
						t.Errorf("formatted code shows the secret: %s", s)
					}
				}
			})
		}
	})

	t.Run("authenticate", func(t *testing.T) {
		c, err := env.svc.CreateCode(ctx, "carol@example.org", policy.TemplateSMIMESignature, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		dashed := c.Secret[:6] + "-" + c.Secret[6:12] + "-" + c.Secret[12:18] + "-" + c.Secret[18:]
		wrong := []byte(c.Secret)
		wrong[len(wrong)-1] ^= 1 // same ID, other secret
		tests := []struct {
			name    string
			mailbox string
			secret  string
			clock   time.Duration
			wantErr error
		}{
			{name: "ok", mailbox: "carol@example.org", secret: c.Secret},
			{name: "dashes, spaces, lower case", mailbox: "carol@EXAMPLE.org", secret: "  " + strings.ToLower(dashed) + " "},
			{name: "wrong secret same ID", mailbox: "carol@example.org", secret: string(wrong), wantErr: ErrUnauthorized},
			{name: "unknown code", mailbox: "carol@example.org", secret: strings.Repeat("A", codeLength), wantErr: ErrUnauthorized},
			{name: "short code", mailbox: "carol@example.org", secret: c.Secret[:10], wantErr: ErrUnauthorized},
			{name: "other mailbox", mailbox: "dave@example.org", secret: c.Secret, wantErr: ErrUnauthorized},
			{name: "other local-part case", mailbox: "Carol@example.org", secret: c.Secret, wantErr: ErrUnauthorized},
			{name: "expired", mailbox: "carol@example.org", secret: c.Secret, clock: time.Hour, wantErr: ErrCodeExpired},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				env.clock.Set(t0.Add(tt.clock))
				defer env.clock.Set(t0)
				got, err := env.svc.Authenticate(ctx, tt.mailbox, tt.secret)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Authenticate: err %v, want %v", err, tt.wantErr)
				}
				if err == nil && (got.ID != c.ID || got.Template != policy.TemplateSMIMESignature) {
					t.Errorf("Authenticate returned code %s", got)
				}
			})
		}
	})
}

// TestEnrollConcurrent enrolls 50 mailboxes at once: all succeed with distinct serials, and the
// store group-commits their transactions.
func TestEnrollConcurrent(t *testing.T) {
	const n = 50
	env := newTestService(t)
	ctx := context.Background()
	type input struct {
		who Enrollee
		csr *x509.CertificateRequest
	}
	in := make([]input, n)
	for i := range in {
		who := env.enrollee(t, fmt.Sprintf("c%02d@example.org", i), policy.TemplateSMIMESignature)
		in[i] = input{who: who, csr: goodCSR(t, who.Mailbox)}
	}
	before := env.svc.Store.Stats()
	out := make([]*Issued, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range in {
		wg.Go(func() {
			<-start
			out[i], errs[i] = env.svc.Enroll(ctx, in[i].who, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: in[i].csr})
		})
	}
	close(start)
	wg.Wait()
	after := env.svc.Store.Stats()

	serials := map[string]bool{}
	for i := range out {
		if errs[i] != nil {
			t.Errorf("enrollment %d: %v", i, errs[i])
			continue
		}
		if serials[out[i].Serial] {
			t.Errorf("serial %s issued twice", out[i].Serial)
		}
		serials[out[i].Serial] = true
		if !slices.Equal(out[i].Certificate.EmailAddresses, []string{in[i].who.Mailbox}) {
			t.Errorf("enrollment %d got a certificate for %v", i, out[i].Certificate.EmailAddresses)
		}
	}
	if rows := env.certs(t, store.Filter{Template: policy.TemplateSMIMESignature, State: store.StateIssued}); len(rows) != n {
		t.Errorf("%d issued rows, want %d", len(rows), n)
	}
	commits, updates := after.Commits-before.Commits, after.Updates-before.Updates
	t.Logf("%d enrollments: %d updates in %d commits (largest batch %d)", n, updates, commits, after.MaxBatch)
	// An enrollment that archives nothing is one durable step: one update each.
	if updates != n {
		t.Errorf("%d store updates, want %d (one per enrollment)", updates, n)
	}
	if commits >= n {
		t.Errorf("%d commits for %d updates: group commit is not batching", commits, updates)
	}
}

// The CA signer must be a crypto.Signer for crypto/x509; make sure the hook does not hide it.
var _ crypto.Signer = (*hookSigner)(nil)
