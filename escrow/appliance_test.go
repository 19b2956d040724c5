package escrow

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestIssueAppliance: each of the appliance's own certificates is signed as asked, stored as
// issued under its purpose's template name with an enroll entry (with its hash), passes the
// consistency check, and is not revoked while unexpired, by serial or by key.
func TestIssueAppliance(t *testing.T) {
	env := newBareService(t)
	ctx := WithActor(context.Background(), "keyarc init")
	key := newP256(t)
	reqs := []ApplianceRequest{
		{Purpose: ApplianceTLS, PublicKey: key.Public(), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Validity: 397 * 24 * time.Hour},
		{Purpose: ApplianceTransport, PublicKey: &rsaKey(t, keyTransport).PublicKey, Subject: pkix.Name{CommonName: "keyarc key transport"},
			KeyUsage: x509.KeyUsageKeyEncipherment, Validity: 825 * 24 * time.Hour},
		{Purpose: ApplianceAudit, PublicKey: newP256(t).Public(), Subject: pkix.Name{CommonName: "keyarc audit"},
			KeyUsage: x509.KeyUsageDigitalSignature, Validity: 3650 * 24 * time.Hour},
		{Purpose: ApplianceOCSP, PublicKey: newP256(t).Public(), Subject: pkix.Name{CommonName: "keyarc OCSP responder"},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}, OCSPNoCheck: true,
			NotBefore: t0.Add(-2 * time.Minute), Validity: 14 * 24 * time.Hour},
	}
	var serials []string
	for _, req := range reqs {
		name := req.Purpose.Template()
		issued, err := env.svc.IssueAppliance(ctx, req)
		if err != nil {
			t.Fatalf("IssueAppliance(%s): %v", req.Purpose, err)
		}
		c := issued.Certificate
		wantNB := t0.Add(-time.Minute)
		if !req.NotBefore.IsZero() {
			wantNB = req.NotBefore
		}
		if !c.NotBefore.Equal(wantNB) || !c.NotAfter.Equal(wantNB.Add(req.Validity)) || c.Subject.CommonName != req.Subject.CommonName ||
			c.KeyUsage != req.KeyUsage || !slices.Equal(c.ExtKeyUsage, req.ExtKeyUsage) || !slices.Equal(c.DNSNames, req.DNSNames) {
			t.Errorf("%s: signed %v..%v %q usage %v %v names %v", name, c.NotBefore, c.NotAfter, c.Subject, c.KeyUsage, c.ExtKeyUsage, c.DNSNames)
		}
		if err := c.CheckSignatureFrom(env.svc.Issuer.Certificate()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		row := env.certificate(t, issued.Serial)
		if row.State != store.StateIssued || row.Template != name || row.Email != "" || row.Role != "" || !slices.Equal(row.DER, c.Raw) {
			t.Errorf("%s: row %s %q %q %q, DER stored %v", name, row.State, row.Template, row.Email, row.Role, slices.Equal(row.DER, c.Raw))
		}
		serials = append(serials, issued.Serial)
	}
	entries := env.auditOf(t, audit.KindEnroll)
	if len(entries) != len(reqs) {
		t.Fatalf("%d enroll entries, want %d", len(entries), len(reqs))
	}
	for i, d := range entries {
		if d.Serial != serials[i] || d.Template != reqs[i].Purpose.Template() || len(d.CertHash) != 1 || len(d.Fingerprint) != 1 ||
			d.Fingerprint[0] != PublicKeyFingerprint(reqs[i].PublicKey) {
			t.Errorf("entry %d: %+v", i, d)
		}
	}
	rep, err := env.svc.checker().All(context.Background())
	if err != nil || rep.Certificates != len(reqs) || len(rep.Problems) != 0 || rep.Unhashed != 0 {
		t.Fatalf("consistency check: %+v, %v", rep, err)
	}

	// None is revoked while unexpired: the appliance goes on using its keys whatever their
	// certificates say, so a revocation would only pretend to retire one.
	subscriber := policy.Principal{Role: policy.RoleEnrollee, Mailbox: "alice@example.org"}
	if _, err := env.svc.Revoke(ctx, subscriber, RevokeRequest{Serial: serials[1], Reason: "keyCompromise"}); !errors.Is(err, policy.ErrForbidden) {
		t.Fatalf("a subscriber revokes the transport certificate: %v, want policy.ErrForbidden", err)
	}
	for i, serial := range serials {
		for _, req := range []RevokeRequest{{Serial: serial, Reason: "keyCompromise"}, {KeyOf: serial, Reason: "superseded"}} {
			_, err := env.svc.Revoke(ctx, officerP, req)
			if !errors.Is(err, ErrApplianceCertificate) || !strings.Contains(err.Error(), serial) || !strings.Contains(err.Error(), string(reqs[i].Purpose)) {
				t.Errorf("an officer revokes the %s certificate (%+v): %v, want ErrApplianceCertificate naming it", reqs[i].Purpose, req, err)
			}
		}
		if row := env.certificate(t, serial); row.State != store.StateIssued {
			t.Errorf("the refused %s certificate is %s", reqs[i].Purpose, row.State)
		}
	}
	p := newPublisher(env, nil)
	if _, err := p.Publish(ctx); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if _, rl := parseLatest(t, p); len(rl.RevokedCertificateEntries) != 0 {
		t.Fatalf("CRL lists %d certificates, want none", len(rl.RevokedCertificateEntries))
	}
}

// TestIssueApplianceRefusals: a request the Service or the CA refuses stores nothing.
func TestIssueApplianceRefusals(t *testing.T) {
	env := newBareService(t)
	pub := newP256(t).Public()
	for _, c := range []struct {
		name    string
		req     ApplianceRequest
		wantErr error
	}{
		{"unknown purpose", ApplianceRequest{Purpose: "web", PublicKey: pub, KeyUsage: x509.KeyUsageDigitalSignature, Validity: time.Hour}, ErrInvalidRequest},
		{"no key", ApplianceRequest{Purpose: ApplianceTLS, KeyUsage: x509.KeyUsageDigitalSignature, Validity: time.Hour}, ErrInvalidRequest},
		{"no validity", ApplianceRequest{Purpose: ApplianceAudit, PublicKey: pub, KeyUsage: x509.KeyUsageDigitalSignature}, ErrInvalidRequest},
		{"no key usage", ApplianceRequest{Purpose: ApplianceAudit, PublicKey: pub, Subject: pkix.Name{CommonName: "audit"}, Validity: time.Hour}, ca.ErrLint},
		{"a CA's key usage", ApplianceRequest{Purpose: ApplianceAudit, PublicKey: pub, Subject: pkix.Name{CommonName: "audit"},
			KeyUsage: x509.KeyUsageCertSign, Validity: time.Hour}, ca.ErrLint},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := env.svc.IssueAppliance(context.Background(), c.req); !errors.Is(err, c.wantErr) {
				t.Fatalf("IssueAppliance: %v, want %v", err, c.wantErr)
			}
		})
	}
	if n := len(env.auditOf(t, audit.KindEnroll)); n != 0 {
		t.Fatalf("%d enroll entries after refusals", n)
	}
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		cs, err := tx.ListCertificates(store.Filter{})
		if err == nil && len(cs) != 0 {
			t.Errorf("%d certificates stored after refusals", len(cs))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRecordAppliance: a certificate the CA signed before the appliance's own were stored is
// put on record once, with its entry, and then passes the check and is known as the
// appliance's own (not revoked); a certificate of another CA is refused.
func TestRecordAppliance(t *testing.T) {
	env := newBareService(t)
	ctx := context.Background()
	// env.transport was signed by the CA and never stored, as an older init did.
	stored, err := env.svc.RecordAppliance(ctx, ApplianceTransport, env.transport)
	if err != nil || !stored {
		t.Fatalf("RecordAppliance: %v, %v", stored, err)
	}
	serial := store.FormatSerial(env.transport.SerialNumber)
	if row := env.certificate(t, serial); row.State != store.StateIssued || row.Template != "appliance-transport" || !slices.Equal(row.DER, env.transport.Raw) {
		t.Fatalf("row %s %q", row.State, row.Template)
	}
	if stored, err := env.svc.RecordAppliance(ctx, ApplianceTransport, env.transport); err != nil || stored {
		t.Fatalf("RecordAppliance again: %v, %v, want nothing stored", stored, err)
	}
	if es := env.auditOf(t, audit.KindEnroll); len(es) != 1 || es[0].Serial != serial || len(es[0].CertHash) != 1 {
		t.Fatalf("enroll entries %+v, want one for %s", es, serial)
	}
	rep, err := env.svc.checker().All(ctx)
	if err != nil || rep.Certificates != 1 || len(rep.Problems) != 0 {
		t.Fatalf("consistency check: %+v, %v", rep, err)
	}
	if _, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Serial: serial, Reason: "keyCompromise"}); !errors.Is(err, ErrApplianceCertificate) {
		t.Fatalf("Revoke: %v, want ErrApplianceCertificate (the appliance's own, once recorded)", err)
	}

	otherKey := newP256(t)
	otherRoot, err := ca.SelfSignedRoot(otherKey, pkix.Name{CommonName: "another CA"}, t0.Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.svc.RecordAppliance(ctx, ApplianceTLS, otherRoot); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("another CA's certificate: %v, want ErrInvalidRequest", err)
	}
	if _, err := env.svc.RecordAppliance(ctx, "web", env.transport); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("an unknown purpose: %v, want ErrInvalidRequest", err)
	}
}
