package issue

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
)

func (e *env) signedRequest(tb testing.TB) SignedRequest {
	tb.Helper()
	serial, err := ca.NewSerial()
	if err != nil {
		tb.Fatal(err)
	}
	return SignedRequest{
		CA: ca.Request{Serial: serial, PublicKey: p256(tb).Public(), Subject: pkix.Name{CommonName: "appliance audit"},
			KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Minute), Validity: 24 * time.Hour},
		Row:     store.Certificate{Template: "appliance-audit"},
		Kind:    audit.KindEnroll,
		Actor:   "keyarc init",
		Details: audit.Details{Template: "appliance-audit"},
	}
}

func (e *env) row(tb testing.TB, serial string) *store.Certificate {
	tb.Helper()
	var c *store.Certificate
	err := e.db.View(context.Background(), func(tx store.Tx) (err error) {
		c, err = tx.GetCertificate(serial)
		return err
	})
	if err != nil {
		tb.Fatalf("certificate %s: %v", serial, err)
	}
	return c
}

// TestIssueSigned: a certificate no template describes is signed as asked and stored as issued
// under the row's template, with its audit entry in the same transaction.
func TestIssueSigned(t *testing.T) {
	e := newEnv(t)
	r := e.signedRequest(t)
	res, err := e.p.IssueSigned(context.Background(), r)
	if err != nil {
		t.Fatalf("IssueSigned: %v", err)
	}
	row := e.row(t, res.Serial)
	if row.State != store.StateIssued || row.Template != "appliance-audit" || row.Subject != "CN=appliance audit" ||
		!slices.Equal(row.DER, res.Certificate.Raw) || !row.NotAfter.Equal(res.Certificate.NotAfter) {
		t.Fatalf("row %+v", row)
	}
	err = e.db.View(context.Background(), func(tx store.Tx) error {
		es, err := tx.AuditOfKindsFrom([]string{string(audit.KindEnroll)}, 1, 10)
		if err != nil {
			return err
		}
		if len(es) != 1 || es[0].Actor != "keyarc init" || es[0].Subject != "CN=appliance audit" {
			t.Errorf("audit entries %+v", es)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIssueSignedRefusals: an incomplete request is refused before anything is signed; an audit
// entry the trail refuses fails the issuance, and the signed certificate is kept as failed.
func TestIssueSignedRefusals(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name   string
		change func(*SignedRequest)
	}{
		{"no serial", func(r *SignedRequest) { r.CA.Serial = nil }},
		{"no notBefore", func(r *SignedRequest) { r.CA.NotBefore = time.Time{} }},
		{"no template", func(r *SignedRequest) { r.Row.Template = "" }},
		{"no audit kind", func(r *SignedRequest) { r.Kind = "" }},
	} {
		r := e.signedRequest(t)
		c.change(&r)
		if _, err := e.p.IssueSigned(context.Background(), r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.name, err)
		}
	}

	refused := errors.New("audit trail refuses")
	e.p.Audit = func(store.Tx, audit.Kind, string, string, audit.Details) error { return refused }
	r := e.signedRequest(t)
	if res, err := e.p.IssueSigned(context.Background(), r); !errors.Is(err, refused) || res.Certificate != nil {
		t.Fatalf("IssueSigned with the audit trail refusing: %v, %v", res.Certificate, err)
	}
	if row := e.row(t, store.FormatSerial(r.CA.Serial)); row.State != store.StateFailed || len(row.DER) == 0 {
		t.Fatalf("the signed certificate is kept as %s (DER %d bytes), want failed with its DER", row.State, len(row.DER))
	}
}
