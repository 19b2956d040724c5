package statedir

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509/pkix"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// TestOCSPResponderRecorded: the responder certificate made at first and the one a renewal
// makes are each stored (template appliance-ocsp) before ocsp.pem is written; a current one is
// kept without a new issuance. The audit certificate is stored the same way, once.
func TestOCSPResponderRecorded(t *testing.T) {
	_, toks := softhsmtest.Tokens(t, "keyarc")
	tok, err := hsm.Open(toks[0].URI(""), hsm.Options{MaxSessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	dir := t.TempDir()
	cfg := config.DefaultAt(dir)
	db, err := sqlite.Open(filepath.Join(dir, "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	root, err := ca.SelfSignedRoot(caKey, pkix.Name{CommonName: "statedir test CA", Organization: []string{"keyarc"}, Country: []string{"DE"}},
		now.Add(-time.Hour), 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := ca.New(caKey, root)
	if err != nil {
		t.Fatal(err)
	}
	clock := now
	svc := &escrow.Service{Store: db, Issuer: issuer.WithClock(func() time.Time { return clock }), Now: func() time.Time { return clock }}
	ctx := context.Background()

	stored := func(template string) []string {
		t.Helper()
		var serials []string
		err := db.View(ctx, func(tx store.Tx) error {
			cs, err := tx.ListCertificates(store.Filter{Template: template, State: store.StateIssued})
			for _, c := range cs {
				serials = append(serials, c.Serial)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return serials
	}
	onFile := func(name string) string {
		t.Helper()
		c, err := pemfile.ReadCertificate(cfg.Path(name))
		if err != nil {
			t.Fatal(err)
		}
		return store.FormatSerial(c.SerialNumber)
	}

	signer, first, err := EnsureOCSPResponder(ctx, cfg, tok, svc, now, nil)
	if err != nil {
		t.Fatalf("EnsureOCSPResponder: %v", err)
	}
	s1 := store.FormatSerial(first.SerialNumber)
	if got := stored("appliance-ocsp"); !slices.Equal(got, []string{s1}) || onFile(OCSPCertName) != s1 {
		t.Fatalf("stored %v, ocsp.pem %s, want %s in both", got, onFile(OCSPCertName), s1)
	}
	if c, err := RenewOCSPCert(ctx, cfg, signer, svc, first, now.Add(time.Hour), nil); err != nil || c != first {
		t.Fatalf("a current certificate was not kept: %v", err)
	}
	// Six days and a little later, less than OCSPCertRenewBefore is left: a new one is issued.
	later := first.NotAfter.Add(-OCSPCertRenewBefore + time.Minute)
	clock = later
	renewed, err := RenewOCSPCert(ctx, cfg, signer, svc, first, later, nil)
	if err != nil {
		t.Fatalf("renewal: %v", err)
	}
	s2 := store.FormatSerial(renewed.SerialNumber)
	if got := stored("appliance-ocsp"); s2 == s1 || !slices.Equal(got, []string{s1, s2}) || onFile(OCSPCertName) != s2 {
		t.Fatalf("after the renewal: stored %v, ocsp.pem %s, want %s and %s, the new one on file", got, onFile(OCSPCertName), s1, s2)
	}

	if _, err := EnsureAuditCertificate(ctx, cfg, tok, svc, nil); err == nil {
		t.Fatal("EnsureAuditCertificate without an audit key in the token succeeded")
	}
	if _, err := tok.GenerateKey(cfg.Token.AuditKey, hsm.P256, hsm.UsageSign); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := EnsureAuditCertificate(ctx, cfg, tok, svc, nil); err != nil {
			t.Fatalf("EnsureAuditCertificate: %v", err)
		}
	}
	if got := stored("appliance-audit"); len(got) != 1 || got[0] != onFile(AuditCertName) {
		t.Fatalf("audit certificates stored %v, audit.pem %s", got, onFile(AuditCertName))
	}
}
