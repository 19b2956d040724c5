package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

type directoryEnv struct {
	srv    *Server
	mux    *http.ServeMux
	issuer *ca.Issuer
	other  *ca.Issuer
	db     store.Store
}

func newCAForTest(t *testing.T, name string) *ca.Issuer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root, err := ca.SelfSignedRoot(key, pkix.Name{CommonName: name, Organization: []string{"keyarc"}, Country: []string{"DE"}},
		time.Now().Add(-72*time.Hour), 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.New(key, root)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func newDirectoryEnv(t *testing.T, dc *config.DirectoryConfig) *directoryEnv {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &directoryEnv{issuer: newCAForTest(t, "directory test CA"), other: newCAForTest(t, "another CA"), db: db}
	cfg := config.Default()
	cfg.Directory = dc
	e.srv = &Server{log: slog.New(slog.DiscardHandler), cfg: cfg, db: db, caCert: e.issuer.Certificate()}
	e.mux = http.NewServeMux()
	e.srv.directoryRoutes(e.mux)
	return e
}

// store issues a certificate for mail with key usage ku, valid from notBefore for validity, by
// iss, and stores it in state.
func (e *directoryEnv) store(t *testing.T, iss *ca.Issuer, mail string, ku x509.KeyUsage, notBefore time.Time, validity time.Duration, state string) *x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := iss.Issue(ca.Request{PublicKey: k.Public(), EmailAddresses: []string{mail}, KeyUsage: ku,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}, NotBefore: notBefore, Validity: validity})
	if err != nil {
		t.Fatal(err)
	}
	row := store.Certificate{Serial: store.FormatSerial(c.SerialNumber), Template: "smime-encryption", Email: mail, State: state,
		DER: c.Raw, NotBefore: c.NotBefore, NotAfter: c.NotAfter}
	if state == store.StateRevoked {
		row.RevokedAt = time.Now()
	}
	if err := e.db.Update(context.Background(), func(tx store.Tx) error { return tx.InsertCertificate(row) }); err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *directoryEnv) get(t *testing.T, query, accept string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest("GET", "/api/v1/directory"+query, nil)
	r.RemoteAddr = "192.0.2.7:4711"
	if accept != "" {
		r.Header.Set("Accept", accept)
	}
	w := httptest.NewRecorder()
	e.mux.ServeHTTP(w, r)
	return w
}

// TestDirectoryLookup: only the valid encryption certificates this CA issued are answered, as
// JSON with PEM, or one DER; the refusals have their statuses.
func TestDirectoryLookup(t *testing.T) {
	e := newDirectoryEnv(t, nil)
	now := time.Now()
	enc := x509.KeyUsageKeyAgreement
	good := e.store(t, e.issuer, "alice@example.org", enc, now.Add(-time.Hour), 30*24*time.Hour, store.StateIssued)
	e.store(t, e.issuer, "alice@example.org", x509.KeyUsageDigitalSignature, now.Add(-time.Hour), 30*24*time.Hour, store.StateIssued)
	e.store(t, e.issuer, "alice@example.org", enc, now.Add(-time.Hour), 30*24*time.Hour, store.StateRevoked)
	e.store(t, e.issuer, "alice@example.org", enc, now.Add(-72*time.Hour), 24*time.Hour, store.StateIssued) // expired
	e.store(t, e.other, "alice@example.org", enc, now.Add(-time.Hour), 30*24*time.Hour, store.StateIssued)  // another CA's
	b1 := e.store(t, e.issuer, "bob@example.org", enc, now.Add(-time.Hour), 30*24*time.Hour, store.StateIssued)
	b2 := e.store(t, e.issuer, "bob@example.org", enc, now.Add(-time.Hour), 30*24*time.Hour, store.StateIssued)

	w := e.get(t, "?email=alice@Example.ORG", "")
	if w.Code != http.StatusOK {
		t.Fatalf("JSON lookup: %d %s", w.Code, w.Body)
	}
	var ans DirectoryAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil {
		t.Fatal(err)
	}
	if ans.Email != "alice@example.org" || len(ans.Certificates) != 1 {
		t.Fatalf("JSON lookup of alice: %s; want her one valid encryption certificate", w.Body)
	}
	if b, _ := pem.Decode([]byte(ans.Certificates[0].PEM)); b == nil || !bytes.Equal(b.Bytes, good.Raw) {
		t.Fatalf("the PEM answered is not alice's valid encryption certificate")
	}
	w = e.get(t, "?email=alice@example.org", "application/pkix-cert")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != pkixCert || !bytes.Equal(w.Body.Bytes(), good.Raw) {
		t.Fatalf("DER lookup of alice: %d %q; want her certificate's DER", w.Code, w.Header().Get("Content-Type"))
	}

	w = e.get(t, "?email=bob@example.org", "application/json")
	if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil || len(ans.Certificates) != 2 {
		t.Fatalf("JSON lookup of bob: %d %s; want two certificates", w.Code, w.Body)
	}
	for i, c := range []*x509.Certificate{b1, b2} {
		if b, _ := pem.Decode([]byte(ans.Certificates[i].PEM)); b == nil || !bytes.Equal(b.Bytes, c.Raw) {
			t.Fatalf("bob's certificate %d is not the one stored, or out of order", i)
		}
	}

	for _, tc := range []struct {
		name, query, accept string
		want                int
	}{
		{"several for one DER", "?email=bob@example.org", "application/pkix-cert", http.StatusConflict},
		{"none for one DER", "?email=nobody@example.org", "application/pkix-cert", http.StatusNotFound},
		{"none as JSON", "?email=nobody@example.org", "", http.StatusOK},
		{"no email", "", "", http.StatusBadRequest},
		{"two emails", "?email=a@example.org&email=b@example.org", "", http.StatusBadRequest},
		{"not a mailbox", "?email=alice", "", http.StatusBadRequest},
		{"a filter", "?email=*", "", http.StatusBadRequest},
		{"unacceptable type", "?email=alice@example.org", "text/html", http.StatusNotAcceptable},
		{"preference list", "?email=alice@example.org", "text/html, application/json;q=0.9", http.StatusOK},
		{"DER refused with q=0.0", "?email=bob@example.org", "application/pkix-cert;q=0.0, application/json", http.StatusOK},
		{"only DER, refused with q=0.000", "?email=bob@example.org", "application/pkix-cert; q=0.000", http.StatusNotAcceptable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := e.get(t, tc.query, tc.accept)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d (%s)", w.Code, tc.want, w.Body)
			}
			if tc.want >= 400 {
				var body map[string]string
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error"] == "" {
					t.Fatalf("refusal %q is not a JSON error", w.Body)
				}
			}
		})
	}
}

// TestDirectoryLookupRate: a source over its limit gets 429 with Retry-After; another source
// is not affected.
func TestDirectoryLookupRate(t *testing.T) {
	e := newDirectoryEnv(t, &config.DirectoryConfig{LookupsPerMinute: 3})
	for i := range 3 {
		if w := e.get(t, "?email=a@example.org", ""); w.Code != http.StatusOK {
			t.Fatalf("lookup %d: %d", i+1, w.Code)
		}
	}
	w := e.get(t, "?email=a@example.org", "")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("4th lookup in a minute: %d, Retry-After %q; want 429 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	r := httptest.NewRequest("GET", "/api/v1/directory?email=a@example.org", nil)
	r.RemoteAddr = "198.51.100.1:1"
	w = httptest.NewRecorder()
	e.mux.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("another source: %d", w.Code)
	}
	l := newLookupLimiter(1, time.Minute)
	t0 := time.Now()
	if l.take("x", t0) != 0 || l.take("x", t0.Add(time.Second)) != 59*time.Second || l.take("x", t0.Add(time.Minute)) != 0 {
		t.Fatal("the limiter's window does not start again after a minute")
	}
}

// TestDirectoryLookupClientCertificate: with lookup: client-certificate, a caller without one
// is refused with 401.
func TestDirectoryLookupClientCertificate(t *testing.T) {
	e := newDirectoryEnv(t, &config.DirectoryConfig{Lookup: config.LookupClientCertificate})
	if w := e.get(t, "?email=a@example.org", ""); w.Code != http.StatusUnauthorized {
		t.Fatalf("lookup without a client certificate: %d %s; want 401", w.Code, w.Body)
	}
}
