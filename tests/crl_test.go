package tests

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// servePublic is serve with the public plain-HTTP listener on publicAddr (keyarc serve
// --public-addr), where the state's public_url points.
func servePublic(t *testing.T, state, publicAddr string) *appliance {
	t.Helper()
	return serveWith(t, state, nil, "", "--public-addr", publicAddr)
}

// fetchedCRL is a CRL fetched with curl from a certificate's CDP URL.
type fetchedCRL struct {
	pem     string // the CRL converted to PEM for openssl verify
	etag    string
	headers string
}

var headerRE = regexp.MustCompile(`(?im)^(etag|last-modified|cache-control|content-type):\s*(.*?)\s*$`)

// fetchCRL downloads the CRL at url with curl, waiting (up to within) for one whose ETag is
// not notETag: the appliance publishes its CRL at start and a few seconds after a revocation.
func fetchCRL(t *testing.T, dir, url, notETag string, within time.Duration) fetchedCRL {
	t.Helper()
	der, hdr := filepath.Join(dir, "crl.der"), filepath.Join(dir, "crl.headers")
	deadline := time.Now().Add(within)
	for {
		os.Remove(der)
		code, _ := runResult(dir, nil, "curl", "-sS", "-D", hdr, "-o", der, "-w", "%{http_code}", url)
		headers, _ := os.ReadFile(hdr)
		h := map[string]string{}
		for _, m := range headerRE.FindAllStringSubmatch(string(headers), -1) {
			h[strings.ToLower(m[1])] = m[2]
		}
		if strings.TrimSpace(code) == "200" && h["etag"] != notETag {
			pem := filepath.Join(dir, "crl.pem")
			run(t, dir, "openssl", "crl", "-inform", "DER", "-in", der, "-out", pem)
			return fetchedCRL{pem: pem, etag: h["etag"], headers: string(headers)}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new CRL at %s within %v (HTTP %s, ETag %q):\n%s", url, within, code, h["etag"], headers)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// verifyWithCRL runs openssl verify -crl_check and returns its output (it fails on a revoked
// certificate, which is the answer looked for).
func verifyWithCRL(t *testing.T, dir, state, crl, cert string) string {
	t.Helper()
	out, _ := runResult(dir, nil, "openssl", "verify", "-crl_check", "-CAfile", filepath.Join(state, "ca.pem"), "-CRLfile", crl, cert)
	return out
}

// TestCRLEndToEnd: the CRL fetched from the certificate's own CDP URL (the public listener,
// plain HTTP) lets openssl verify -crl_check say OK, then "certificate revoked" within a
// minute of `keyarc revoke`. curl shows the caching headers; a conditional GET gets 304; the
// CA certificate is at the AIA caIssuers URL.
func TestCRLEndToEnd(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	a := servePublic(t, state, pub)
	dir := t.TempDir()
	out := filepath.Join(dir, "erin")
	enrollUser(t, a, "erin@example.org", out)
	certPath := filepath.Join(out, "cert.pem")
	cert := readCert(t, certPath)
	if len(cert.CRLDistributionPoints) != 1 || cert.CRLDistributionPoints[0] != "http://"+pub+"/crl/ca.crl" {
		t.Fatalf("CDP %v, want http://%s/crl/ca.crl", cert.CRLDistributionPoints, pub)
	}
	cdp := cert.CRLDistributionPoints[0]

	before := fetchCRL(t, dir, cdp, "", 30*time.Second)
	t.Logf("CRL headers:\n%s", before.headers)
	for _, want := range []string{"application/pkix-crl", "Last-Modified:", "max-age="} {
		if !strings.Contains(before.headers, want) {
			t.Errorf("CRL response lacks %q:\n%s", want, before.headers)
		}
	}
	if before.etag == "" {
		t.Errorf("no ETag:\n%s", before.headers)
	}
	if got := verifyWithCRL(t, dir, state, before.pem, certPath); !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify -crl_check before the revocation:\n%s", got)
	}
	if code := run(t, dir, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "If-None-Match: "+before.etag, cdp); strings.TrimSpace(code) != "304" {
		t.Errorf("conditional GET with the ETag: HTTP %s, want 304", code)
	}
	// The AIA caIssuers URL serves the CA certificate, DER.
	if len(cert.IssuingCertificateURL) != 1 {
		t.Fatalf("caIssuers %v", cert.IssuingCertificateURL)
	}
	run(t, dir, "curl", "-sS", "--fail", "-o", filepath.Join(dir, "ca.der"), cert.IssuingCertificateURL[0])
	if got := run(t, dir, "openssl", "x509", "-inform", "DER", "-in", filepath.Join(dir, "ca.der"), "-noout", "-subject"); !strings.Contains(got, readCert(t, filepath.Join(state, "ca.pem")).Subject.CommonName) {
		t.Errorf("caIssuers URL served %s", got)
	}

	serial := certSerial(t, dir, certPath)
	if _, errOut, err := keyarcResult("revoke", "--help"); err != nil && strings.Contains(errOut, "unknown command") {
		t.Skip("`keyarc revoke` does not exist in this build yet; TestCRLRevokedWhileStopped covers the CRL path")
	}
	start := time.Now()
	keyarc(t, "revoke", "--serial", serial, "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
	after := fetchCRL(t, dir, cdp, before.etag, time.Minute)
	t.Logf("the revocation was on the CRL served at the CDP after %v", time.Since(start).Round(100*time.Millisecond))
	if got := verifyWithCRL(t, dir, state, after.pem, certPath); !strings.Contains(got, "certificate revoked") {
		t.Fatalf("openssl verify -crl_check after keyarc revoke:\n%s", got)
	}
	if text := run(t, dir, "openssl", "crl", "-in", after.pem, "-noout", "-text"); !strings.Contains(text, "Key Compromise") || !strings.Contains(strings.ToUpper(text), strings.ToUpper(serial)) {
		t.Errorf("the CRL does not list %s with Key Compromise:\n%s", serial, text)
	}
	// Metrics: the CRL series and the revocation count.
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"keyarc_crl_number ", "keyarc_crl_next_update_remaining_seconds ", `keyarc_revocations_total{reason="keyCompromise"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestCRLRevokedWhileStopped: a revocation written straight into the store (the store API on
// the state folder's database) while serve is stopped is on the CRL served after the next
// start: the publisher publishes at every start.
func TestCRLRevokedWhileStopped(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	a := servePublic(t, state, pub)
	dir := t.TempDir()
	out := filepath.Join(dir, "finn")
	enrollUser(t, a, "finn@example.org", out)
	certPath := filepath.Join(out, "cert.pem")
	cdp := readCert(t, certPath).CRLDistributionPoints[0]
	before := fetchCRL(t, dir, cdp, "", 30*time.Second)
	if got := verifyWithCRL(t, dir, state, before.pem, certPath); !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify -crl_check before the revocation:\n%s", got)
	}
	stopServe(t, a)

	db, err := sqlite.Open(filepath.Join(state, "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	serial := certSerial(t, dir, certPath)
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(serial, store.ReasonSuperseded, time.Now())
	}); err != nil {
		t.Fatalf("RevokeCertificate: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	servePublic(t, state, pub)
	after := fetchCRL(t, dir, cdp, before.etag, 30*time.Second)
	if got := verifyWithCRL(t, dir, state, after.pem, certPath); !strings.Contains(got, "certificate revoked") {
		t.Fatalf("openssl verify -crl_check after the revocation:\n%s", got)
	}
	if text := run(t, dir, "openssl", "crl", "-in", after.pem, "-noout", "-text"); !strings.Contains(text, "Superseded") {
		t.Errorf("the CRL does not say Superseded:\n%s", text)
	}
}
