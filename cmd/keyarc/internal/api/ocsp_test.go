package api

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	xocsp "golang.org/x/crypto/ocsp"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/escrow/ocsp/presign"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

type ocspEnv struct {
	dir     string
	db      *sqlite.DB
	issuer  *ca.Issuer
	caPath  string
	signer  *presign.Signer
	srv     *httptest.Server
	metrics *OCSPMetrics
	h       *OCSPHandler
	// skew is added to the handler's clock (nanoseconds): tests move it past the cache's TTLs.
	skew atomic.Int64
}

// newOCSPEnv: a software CA (escrow/ca), the responder key in a fresh SoftHSM token and its
// certificate issued by the CA as the appliance issues it, a real SQLite store, the pre-signer
// and the handler on a loopback server.
func newOCSPEnv(tb testing.TB) *ocspEnv {
	tb.Helper()
	_, toks := softhsmtest.Tokens(tb, "ocsp")
	tok, err := hsm.Open(toks[0].URI(""), hsm.Options{MaxSessions: 4})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tok.Close() })
	respKey, err := statedir.EnsureOCSPKey(tok, nil)
	if err != nil {
		tb.Fatal(err)
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root, err := ca.SelfSignedRoot(caKey, pkix.Name{CommonName: "OCSP test CA", Organization: []string{"keyarc"}, Country: []string{"DE"}},
		time.Now().Add(-time.Hour), 365*24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := ca.New(caKey, root)
	if err != nil {
		tb.Fatal(err)
	}
	// The responder certificate is issued as the appliance issues it, and kept on a record of
	// its own: the store under test holds only the test's certificates.
	scratch, err := sqlite.Open(filepath.Join(tb.TempDir(), "responder.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { scratch.Close() })
	respCert, err := statedir.IssueOCSPCert(context.Background(), &escrow.Service{Store: scratch, Issuer: issuer}, respKey.Public(), time.Now())
	if err != nil {
		tb.Fatalf("the CA refuses the responder certificate: %v", err)
	}
	r, err := ocsp.NewResponder(root, respCert, respKey, nil)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	db, err := sqlite.Open(filepath.Join(dir, "keyarc.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	m, err := NewOCSPMetrics(prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	e := &ocspEnv{dir: dir, db: db, issuer: issuer, metrics: m, caPath: filepath.Join(dir, "ca.pem"),
		signer: &presign.Signer{Store: db, Responder: func(time.Time) (*ocsp.Responder, error) { return r, nil }, Metrics: m}}
	e.h, err = NewOCSPHandler(OCSPHandlerConfig{Store: db, CA: root, Metrics: m,
		Now: func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) }})
	if err != nil {
		tb.Fatal(err)
	}
	e.srv = httptest.NewServer(e.h)
	tb.Cleanup(e.srv.Close)
	writePEM(tb, e.caPath, root.Raw)
	return e
}

func writePEM(tb testing.TB, path string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// leaf issues an S/MIME certificate; stored says whether the store learns of it.
func (e *ocspEnv) leaf(tb testing.TB, name string, stored bool) (*x509.Certificate, string) {
	tb.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := e.issuer.Issue(ca.Request{PublicKey: k.Public(), EmailAddresses: []string{name + "@example.org"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		NotBefore: time.Now().Add(-time.Minute), Validity: 30 * 24 * time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	if stored {
		if err := e.db.Update(context.Background(), func(tx store.Tx) error {
			return tx.InsertCertificate(store.Certificate{Serial: store.FormatSerial(c.SerialNumber), Template: "smime-signature",
				Email: name + "@example.org", State: "issued", DER: c.Raw, NotBefore: c.NotBefore, NotAfter: c.NotAfter})
		}); err != nil {
			tb.Fatal(err)
		}
	}
	path := filepath.Join(e.dir, name+".pem")
	writePEM(tb, path, c.Raw)
	return c, path
}

func needOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl missing and $CI is set")
		}
		t.Skip("openssl missing")
	}
}

// opensslOCSP asks the responder with `openssl ocsp` (POST) and returns its output.
func (e *ocspEnv) opensslOCSP(t *testing.T, certPath string, extra ...string) string {
	t.Helper()
	args := append(append([]string{"ocsp"}, extra...), "-issuer", e.caPath, "-cert", certPath, "-url", e.srv.URL+"/ocsp", "-CAfile", e.caPath, "-no_nonce", "-resp_text")
	out, _ := exec.Command("openssl", args...).CombinedOutput()
	return string(out)
}

func TestOCSPWithOpenSSL(t *testing.T) {
	needOpenSSL(t)
	e := newOCSPEnv(t)
	alice, alicePath := e.leaf(t, "alice", true)
	_, bobPath := e.leaf(t, "bob", true)
	_, ghostPath := e.leaf(t, "ghost", false) // signed by our CA, never stored: never issued
	if n, err := e.signer.SignDue(context.Background()); err != nil || n != 2 {
		t.Fatalf("SignDue: %d, %v", n, err)
	}

	out := e.opensslOCSP(t, alicePath)
	if !strings.Contains(out, alicePath+": good") || !strings.Contains(out, "Response verify OK") {
		t.Fatalf("alice is not good:\n%s", out)
	}
	if !strings.Contains(out, "Responder Id: ") || strings.Contains(out, "Responder Id: CN") || strings.Contains(out, "Reason:") {
		t.Errorf("responderID not by key, or a reason on a good answer:\n%s", out)
	}
	if out := e.opensslOCSP(t, alicePath, "-sha256"); !strings.Contains(out, alicePath+": good") {
		t.Fatalf("alice with a SHA-256 CertID:\n%s", out)
	}
	out = e.opensslOCSP(t, ghostPath)
	if !strings.Contains(out, "unauthorized") || strings.Contains(out, ": good") {
		t.Fatalf("a serial never issued:\n%s", out)
	}
	// Another CA's certificate with the same serial as alice's: unauthorized.
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherRoot, _ := ca.SelfSignedRoot(otherKey, pkix.Name{CommonName: "OCSP test CA", Organization: []string{"keyarc"}, Country: []string{"DE"}},
		time.Now().Add(-time.Hour), 365*24*time.Hour)
	otherIssuer, _ := ca.New(otherKey, otherRoot)
	other := &ocspEnv{dir: t.TempDir(), db: e.db, issuer: otherIssuer}
	other.caPath = filepath.Join(other.dir, "ca.pem")
	writePEM(t, other.caPath, otherRoot.Raw)
	_, otherPath := other.leaf(t, "mallory", false)
	out, _ = func() (string, error) {
		b, err := exec.Command("openssl", "ocsp", "-issuer", other.caPath, "-cert", otherPath, "-url", e.srv.URL+"/ocsp", "-no_nonce").CombinedOutput()
		return string(b), err
	}()
	if !strings.Contains(out, "unauthorized") {
		t.Fatalf("another issuer:\n%s", out)
	}

	// Revoke alice (keyCompromise), tell the handler as the appliance does, and re-sign:
	// revoked, with its reason.
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(store.FormatSerial(alice.SerialNumber), store.ReasonKeyCompromise, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	e.h.Invalidate([]string{store.FormatSerial(alice.SerialNumber)})
	// Before her response is signed again: tryLater (503), never the old good response.
	if out := e.opensslOCSP(t, alicePath); strings.Contains(out, ": good") || !strings.Contains(out, "503") {
		t.Fatalf("alice before her response is signed again: want HTTP 503 (tryLater), not the old good response:\n%s", out)
	}
	if n, err := e.signer.SignSerials(context.Background(), []string{store.FormatSerial(alice.SerialNumber)}); err != nil || n != 1 {
		t.Fatalf("SignSerials: %d, %v", n, err)
	}
	// A response signed with an older status is kept for a second: revoked within ocspRecheck.
	for deadline := time.Now().Add(3 * ocspRecheck); ; time.Sleep(100 * time.Millisecond) {
		out = e.opensslOCSP(t, alicePath)
		if strings.Contains(out, ": revoked") || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(out, alicePath+": revoked") || !strings.Contains(out, "Reason: keyCompromise") || !strings.Contains(out, "Response verify OK") {
		t.Fatalf("alice after revocation:\n%s", out)
	}
	if out := e.opensslOCSP(t, bobPath); !strings.Contains(out, bobPath+": good") {
		t.Fatalf("bob:\n%s", out)
	}

	// GET (RFC 6960 A.1) with curl-like escaping, verified by openssl from the saved answer.
	der := mustRequest(t, e, alice.SerialNumber)
	resp, body := e.get(t, "/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(der)), nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/ocsp-response" {
		t.Fatalf("GET: %d %v", resp.StatusCode, resp.Header)
	}
	for _, h := range []string{"Cache-Control", "Expires", "Last-Modified", "ETag"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("GET answer without %s", h)
		}
	}
	if !strings.Contains(resp.Header.Get("Cache-Control"), "max-age=") {
		t.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
	}
	respPath := filepath.Join(e.dir, "get.der")
	os.WriteFile(respPath, body, 0o644)
	vout, _ := exec.Command("openssl", "ocsp", "-respin", respPath, "-issuer", e.caPath, "-cert", alicePath, "-CAfile", e.caPath, "-no_nonce").CombinedOutput()
	if !strings.Contains(string(vout), ": revoked") || !strings.Contains(string(vout), "Response verify OK") {
		t.Fatalf("GET answer read by openssl:\n%s", vout)
	}
	resp2, _ := e.get(t, "/ocsp/"+base64.StdEncoding.EncodeToString(der), map[string]string{"If-None-Match": resp.Header.Get("ETag")})
	if resp2.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", resp2.StatusCode)
	}
	resp3, body3 := e.post(t, der, "application/ocsp-request")
	if resp3.StatusCode != 200 || !bytes.Equal(body3, body) || resp3.Header.Get("Cache-Control") != "no-store" || resp3.Header.Get("ETag") != "" {
		t.Errorf("POST: %d, Cache-Control %q, ETag %q, same body %v", resp3.StatusCode, resp3.Header.Get("Cache-Control"), resp3.Header.Get("ETag"), bytes.Equal(body3, body))
	}
	var m dto.Metric
	e.metrics.responses.WithLabelValues("unauthorized").(prometheus.Metric).Write(&m)
	if got := m.GetCounter().GetValue(); got < 1 {
		t.Errorf("unauthorized answers counted: %v", got)
	}
}

// status asks for c by GET and returns the certificate status the response says (good,
// revoked; tryLater for HTTP 503) and its max-age.
func (e *ocspEnv) status(t *testing.T, c *x509.Certificate) (string, string) {
	t.Helper()
	serial := c.SerialNumber
	resp, body := e.get(t, "/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(mustRequest(t, e, serial))), nil)
	if resp.StatusCode == http.StatusServiceUnavailable && bytes.Equal(body, e.h.tryLater) {
		return "tryLater", resp.Header.Get("Cache-Control")
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET: HTTP %d", resp.StatusCode)
	}
	r, err := xocsp.ParseResponseForCert(body, c, e.issuer.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	st := map[int]string{xocsp.Good: "good", xocsp.Revoked: "revoked"}[r.Status]
	if r.SerialNumber.Cmp(serial) != 0 || st == "" {
		t.Fatalf("answer for serial %x, status %d", r.SerialNumber, r.Status)
	}
	return st, resp.Header.Get("Cache-Control")
}

// TestOCSPCacheFollowsTheStore: the handler serves from memory, and still follows the store:
// a revocation it is told of (Invalidate) is served a second after its response is stored; one
// committed by another process within a minute; a response signed with an older status than
// the certificate's is read again every second until the re-signed one is stored, and a good
// one is withheld meanwhile (tryLater).
func TestOCSPCacheFollowsTheStore(t *testing.T) {
	e := newOCSPEnv(t)
	ctx := context.Background()
	alice, _ := e.leaf(t, "alice", true)
	bob, _ := e.leaf(t, "bob", true)
	carol, _ := e.leaf(t, "carol", true)
	if _, err := e.signer.SignDue(ctx); err != nil {
		t.Fatal(err)
	}
	revoke := func(c *x509.Certificate) string {
		s := store.FormatSerial(c.SerialNumber)
		if err := e.db.Update(ctx, func(tx store.Tx) error { return tx.RevokeCertificate(s, store.ReasonKeyCompromise, time.Now()) }); err != nil {
			t.Fatal(err)
		}
		return s
	}
	sign := func(s string) {
		if n, err := e.signer.SignSerials(ctx, []string{s}); err != nil || n != 1 {
			t.Fatalf("SignSerials: %d, %v", n, err)
		}
	}
	advance := func(d time.Duration) { e.skew.Add(int64(d)) }
	want := func(c *x509.Certificate, want, step string) {
		t.Helper()
		if got, cc := e.status(t, c); got != want {
			t.Fatalf("%s: %s (Cache-Control %q), want %s", step, got, cc, want)
		}
	}
	for _, c := range []*x509.Certificate{alice, bob, carol} {
		want(c, "good", "first answer")
	}

	// Another process revokes alice and stores her new response: served from memory until
	// the minute is over, then revoked.
	sign(revoke(alice))
	want(alice, "good", "alice, revoked by another process, within the minute")
	advance(ocspCacheTTL + time.Second)
	want(alice, "revoked", "alice after the minute")

	// Bob is revoked by another process and not signed yet: read again every second.
	bs := revoke(bob)
	advance(ocspCacheTTL + time.Second)
	want(bob, "tryLater", "bob, his response not signed again yet")
	sign(bs)
	advance(ocspRecheck + 100*time.Millisecond)
	want(bob, "revoked", "bob a second after his response is stored")

	// Carol is revoked in this process: Invalidate drops her response at once.
	cs := revoke(carol)
	e.h.Invalidate([]string{cs})
	want(carol, "tryLater", "carol, her response not signed again yet")
	sign(cs)
	advance(ocspRecheck + 100*time.Millisecond)
	want(carol, "revoked", "carol a second after her response is stored")
	// A cache in front keeps an answer at most a minute, not until its nextUpdate.
	_, cc := e.status(t, carol)
	var age int
	fmt.Sscanf(cc, "max-age=%d", &age)
	if age <= 0 || age > int(ocspCacheMaxAge/time.Second) {
		t.Errorf("Cache-Control %q, want 0 < max-age <= %v", cc, ocspCacheMaxAge)
	}
}

// TestOCSPMaxAge: max-age is at most ocspCacheMaxAge, and never runs past the answer's nextUpdate.
func TestOCSPMaxAge(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 500_000_000, time.UTC)
	for _, tc := range []struct {
		left time.Duration
		want string
	}{
		{7 * 24 * time.Hour, "max-age=60,"},
		{61 * time.Second, "max-age=60,"},
		{30 * time.Second, "max-age=29,"},
		{-time.Minute, "max-age=0,"},
	} {
		e := newOCSPEntry(&store.OCSPResponse{Serial: "ab", ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(tc.left)}, now.Add(time.Minute))
		if got := e.cacheControl(now)[0]; !strings.HasPrefix(got, tc.want) {
			t.Errorf("nextUpdate in %v: Cache-Control %q, want %s...", tc.left, got, tc.want)
		}
	}
}

func mustRequest(t testing.TB, e *ocspEnv, serial *big.Int) []byte {
	is, _ := ocsp.NewIssuer(e.issuer.Certificate())
	der, err := ocsp.MarshalRequest([]ocsp.CertID{is.CertID(crypto.SHA1, serial)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (e *ocspEnv) get(t testing.TB, path string, hdr map[string]string) (*http.Response, []byte) {
	req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (e *ocspEnv) post(t testing.TB, body []byte, ct string) (*http.Response, []byte) {
	resp, err := http.Post(e.srv.URL+"/ocsp", ct, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestOCSPBadRequests: garbage, truncated, oversized and otherwise refused requests, each
// with its status and no side effect; and faults of the appliance are never client errors.
func TestOCSPBadRequests(t *testing.T) {
	e := newOCSPEnv(t)
	alice, _ := e.leaf(t, "alice", true)
	good := mustRequest(t, e, alice.SerialNumber)
	malformed := ocsp.ErrorResponse(ocsp.MalformedRequest)
	tryLater := ocsp.ErrorResponse(ocsp.TryLater)
	two, _ := func() ([]byte, error) {
		is, _ := ocsp.NewIssuer(e.issuer.Certificate())
		return ocsp.MarshalRequest([]ocsp.CertID{is.CertID(crypto.SHA1, alice.SerialNumber), is.CertID(crypto.SHA256, alice.SerialNumber)}, nil)
	}()
	tests := []struct {
		name     string
		do       func() (*http.Response, []byte)
		wantCode int
		wantBody []byte
	}{
		{"garbage POST", func() (*http.Response, []byte) {
			return e.post(t, []byte("not an OCSP request"), "application/ocsp-request")
		}, 400, malformed},
		{"truncated POST", func() (*http.Response, []byte) { return e.post(t, good[:len(good)-5], "application/ocsp-request") }, 400, malformed},
		{"empty POST", func() (*http.Response, []byte) { return e.post(t, nil, "application/ocsp-request") }, 400, malformed},
		{"two CertIDs", func() (*http.Response, []byte) { return e.post(t, two, "application/ocsp-request") }, 400, malformed},
		{"oversized POST", func() (*http.Response, []byte) { return e.post(t, make([]byte, 5000), "application/ocsp-request") }, 413, nil},
		{"wrong content type", func() (*http.Response, []byte) { return e.post(t, good, "application/json") }, 415, nil},
		{"garbage GET", func() (*http.Response, []byte) { return e.get(t, "/ocsp/!!!notbase64", nil) }, 400, malformed},
		{"truncated GET", func() (*http.Response, []byte) {
			return e.get(t, "/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(good[:10])), nil)
		}, 400, malformed},
		{"empty GET", func() (*http.Response, []byte) { return e.get(t, "/ocsp/", nil) }, 400, malformed},
		{"oversized GET", func() (*http.Response, []byte) { return e.get(t, "/ocsp/"+strings.Repeat("A", 9000), nil) }, 413, nil},
		{"not signed yet", func() (*http.Response, []byte) { return e.post(t, good, "application/ocsp-request") }, 503, tryLater},
		{"PUT", func() (*http.Response, []byte) {
			req, _ := http.NewRequest("PUT", e.srv.URL+"/ocsp", bytes.NewReader(good))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp, nil
		}, 405, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.do()
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("HTTP %d, want %d (%q)", resp.StatusCode, tt.wantCode, body)
			}
			if tt.wantBody != nil && !bytes.Equal(body, tt.wantBody) {
				t.Fatalf("body %x, want %x", body, tt.wantBody)
			}
		})
	}
	var n int
	e.db.View(context.Background(), func(tx store.Tx) error {
		due, _ := tx.OCSPDue(time.Now(), time.Now(), "", 10)
		n = len(due)
		return nil
	})
	if n != 1 {
		t.Fatalf("requests changed the store: %d due", n)
	}
	// A storage fault: 503 tryLater, never a 4xx.
	e.db.Close()
	resp, body := e.post(t, good, "application/ocsp-request")
	if resp.StatusCode != 503 || !bytes.Equal(body, tryLater) || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("closed store: %d %x", resp.StatusCode, body)
	}
}

// BenchmarkOCSPLoopback serves pre-signed responses to 8 keep-alive clients over loopback
// (POST, 1,000 certificates); it reports responses/s. Client and server share the machine.
func BenchmarkOCSPLoopback(b *testing.B) {
	e := newOCSPEnv(b)
	var reqs [][]byte
	for i := range 1000 {
		c, _ := e.leaf(b, fmt.Sprintf("u%d", i), true)
		reqs = append(reqs, mustRequest(b, e, c.SerialNumber))
	}
	if _, err := e.signer.SignDue(context.Background()); err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 8, MaxConnsPerHost: 8}
	client := &http.Client{Transport: tr}
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				resp, err := client.Post(e.srv.URL+"/ocsp", "application/ocsp-request", bytes.NewReader(reqs[i%int64(len(reqs))]))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if failed.Load() > 0 {
		b.Fatalf("%d requests failed", failed.Load())
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "responses/s")
}

// BenchmarkOCSPHandler is the handler alone, a GET answered from memory: its CPU time and
// allocations per request, without the network.
func BenchmarkOCSPHandler(b *testing.B) {
	e := newOCSPEnv(b)
	var paths []string
	for i := range 100 {
		c, _ := e.leaf(b, fmt.Sprintf("u%d", i), true)
		paths = append(paths, "/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(mustRequest(b, e, c.SerialNumber))))
	}
	if _, err := e.signer.SignDue(context.Background()); err != nil {
		b.Fatal(err)
	}
	reqs := make([]*http.Request, len(paths))
	for i, p := range paths {
		reqs[i] = httptest.NewRequest("GET", p, nil)
	}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		clear(w.h)
		w.code = 0
		e.h.ServeHTTP(w, reqs[i%len(reqs)])
		if w.code != http.StatusOK {
			b.Fatalf("HTTP %d", w.code)
		}
	}
}

type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }

// TestOCSPSignsMissing: with SignMissing set, a certificate issued a moment ago, whose first
// response the pre-signer has not stored yet, is answered good at once (openssl ocsp), and
// its response is stored; a serial never issued is still unauthorized and nothing is signed
// for it; when signing fails (the token away), the answer is tryLater, never an error of the
// client.
func TestOCSPSignsMissing(t *testing.T) {
	needOpenSSL(t)
	e := newOCSPEnv(t)
	var calls atomic.Int64
	var fail atomic.Bool
	e.h.c.SignMissing = func(ctx context.Context, serials []string) (int, error) {
		calls.Add(1)
		if fail.Load() {
			return 0, hsm.ErrTokenGone
		}
		return e.signer.SignSerials(ctx, serials)
	}
	_, alicePath := e.leaf(t, "alice", true)
	if out := e.opensslOCSP(t, alicePath); !strings.Contains(out, alicePath+": good") || !strings.Contains(out, "Response verify OK") {
		t.Fatalf("a certificate just issued is not answered good:\n%s", out)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d on-demand signings, want 1", calls.Load())
	}
	if out := e.opensslOCSP(t, alicePath); !strings.Contains(out, alicePath+": good") || calls.Load() != 1 {
		t.Fatalf("second request: %d signings (want the stored response, 1):\n%s", calls.Load(), out)
	}
	_, ghostPath := e.leaf(t, "ghost", false)
	if out := e.opensslOCSP(t, ghostPath); !strings.Contains(out, "unauthorized") || strings.Contains(out, ": good") {
		t.Fatalf("a serial never issued:\n%s", out)
	}
	if calls.Load() != 1 {
		t.Errorf("a serial never issued was signed on demand")
	}
	fail.Store(true)
	bob, _ := e.leaf(t, "bob", true)
	resp, body := e.post(t, mustRequest(t, e, bob.SerialNumber), "application/ocsp-request")
	if resp.StatusCode != 503 || !bytes.Equal(body, ocsp.ErrorResponse(ocsp.TryLater)) {
		t.Fatalf("signing failed: HTTP %d %x, want 503 tryLater", resp.StatusCode, body)
	}
}

// TestOCSPSignsWithheldRevocation: with SignMissing set, a revoked certificate whose stored
// response still says good (the pre-signer behind, or its signal lost in a crash) is signed
// on demand and answered revoked at once; when signing fails (the token away) the answer is
// tryLater, never the good response.
func TestOCSPSignsWithheldRevocation(t *testing.T) {
	e := newOCSPEnv(t)
	ctx := context.Background()
	var fail atomic.Bool
	e.h.c.SignMissing = func(ctx context.Context, serials []string) (int, error) {
		if fail.Load() {
			return 0, hsm.ErrTokenGone
		}
		return e.signer.SignSerials(ctx, serials)
	}
	alice, _ := e.leaf(t, "alice", true)
	bob, _ := e.leaf(t, "bob", true)
	if _, err := e.signer.SignDue(ctx); err != nil {
		t.Fatal(err)
	}
	revoke := func(c *x509.Certificate) {
		s := store.FormatSerial(c.SerialNumber)
		if err := e.db.Update(ctx, func(tx store.Tx) error { return tx.RevokeCertificate(s, store.ReasonKeyCompromise, time.Now()) }); err != nil {
			t.Fatal(err)
		}
		e.h.Invalidate([]string{s})
	}
	revoke(alice)
	if got, _ := e.status(t, alice); got != "revoked" {
		t.Fatalf("alice, revoked and not re-signed yet: %s, want revoked (signed on demand)", got)
	}
	fail.Store(true)
	revoke(bob)
	if got, _ := e.status(t, bob); got != "tryLater" {
		t.Fatalf("bob, revoked with the token away: %s, want tryLater", got)
	}
	fail.Store(false)
	e.skew.Add(int64(ocspRecheck + 100*time.Millisecond))
	if got, _ := e.status(t, bob); got != "revoked" {
		t.Fatalf("bob, the token back: %s, want revoked", got)
	}
}
