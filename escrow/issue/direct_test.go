package issue

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
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

// TestIssueHandsCertHash: the pipeline gives the audit entry the SHA-256 of the DER it stores
// in the same transaction, so the entry need not read the certificate back.
func TestIssueHandsCertHash(t *testing.T) {
	e := newEnv(t)
	var got []string
	audit0 := e.p.Audit
	e.p.Audit = func(tx store.Tx, kind audit.Kind, actor, subject string, d audit.Details) error {
		got = d.CertHash
		return audit0(tx, kind, actor, subject, d)
	}
	res, err := e.p.IssueSigned(context.Background(), e.signedRequest(t))
	if err != nil {
		t.Fatalf("IssueSigned: %v", err)
	}
	sum := sha256.Sum256(res.Certificate.Raw)
	if want := []string{hex.EncodeToString(sum[:])}; !slices.Equal(got, want) {
		t.Fatalf("the audit entry was handed hashes %q, want %q", got, want)
	}
	got = nil
	out := e.p.Issue(context.Background(), []Request{e.request(t, 0, 1)}, 1, nil)
	if out[0].Err != nil {
		t.Fatalf("Issue: %v", out[0].Err)
	}
	sum = sha256.Sum256(out[0].Certificate.Raw)
	if want := []string{hex.EncodeToString(sum[:])}; !slices.Equal(got, want) {
		t.Fatalf("the archival's audit entry was handed hashes %q, want %q", got, want)
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

// TestIssueSignedCodeRecord: a code record the caller passes is checked before signing in place
// of a read (a spent or expired record signs nothing); a record of another code is not used;
// a record that says unused while the store says used is refused by the claim, and the
// certificate signed for it is kept as failed, not returned.
func TestIssueSignedCodeRecord(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Now()
	used := now.Add(-time.Minute)
	codes := []store.Code{
		{ID: "FRESHCODE", Email: "a@example.org", Template: "appliance-audit", Hash: []byte{1}, CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		{ID: "SPENTCODE", Email: "a@example.org", Template: "appliance-audit", Hash: []byte{2}, CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
	}
	err := e.db.Update(ctx, func(tx store.Tx) error {
		for _, c := range codes {
			if err := tx.InsertCode(c); err != nil {
				return err
			}
		}
		return tx.ClaimCode("SPENTCODE", used)
	})
	if err != nil {
		t.Fatal(err)
	}
	spent := codes[0]
	spent.UsedAt = &used
	expired := codes[0]
	expired.ExpiresAt = now.Add(-2 * time.Minute)
	other := codes[0]
	other.ID = "NOSUCHCODE"
	for _, c := range []struct {
		name    string
		codeID  string
		record  *store.Code
		wantErr error
		signed  bool
	}{
		{"spent record", "FRESHCODE", &spent, store.ErrCodeUsed, false},
		{"expired record", "FRESHCODE", &expired, store.ErrCodeExpired, false},
		{"record of another code", "SPENTCODE", &other, store.ErrCodeUsed, false},
		{"stale record of a spent code", "SPENTCODE", &codes[1], store.ErrCodeUsed, true},
		{"fresh record", "FRESHCODE", &codes[0], nil, true},
	} {
		r := e.signedRequest(t)
		r.Row.CodeID, r.Code = c.codeID, c.record
		res, err := e.p.IssueSigned(ctx, r)
		if !errors.Is(err, c.wantErr) {
			t.Errorf("%s: %v, want %v", c.name, err, c.wantErr)
		}
		if (res.Certificate != nil) != (c.wantErr == nil) {
			t.Errorf("%s: certificate returned %v", c.name, res.Certificate != nil)
		}
		var row *store.Certificate
		err = e.db.View(ctx, func(tx store.Tx) (err error) {
			row, err = tx.GetCertificate(store.FormatSerial(r.CA.Serial))
			return err
		})
		switch {
		case !c.signed && !errors.Is(err, store.ErrNotFound):
			t.Errorf("%s: a row for a certificate that should not be signed: %+v, %v", c.name, row, err)
		case c.signed && c.wantErr != nil && (err != nil || row.State != store.StateFailed):
			t.Errorf("%s: the signed certificate is not kept as failed: %+v, %v", c.name, row, err)
		}
	}
}
