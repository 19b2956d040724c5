package tests

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ocspAsk runs openssl ocsp against url for the certificate (or, with serial set, for that
// serial) and returns its output; openssl verifies the response against the CA.
func ocspAsk(t *testing.T, dir, state, url, cert, serial string) string {
	t.Helper()
	args := []string{"ocsp", "-issuer", filepath.Join(state, "ca.pem"), "-CAfile", filepath.Join(state, "ca.pem"), "-url", url, "-resp_text"}
	if serial != "" {
		args = append(args, "-serial", "0x"+serial)
	} else {
		args = append(args, "-cert", cert)
	}
	out, _ := runResult(dir, nil, "openssl", args...)
	return out
}

// ocspWait asks until the answer contains want, for at most within.
func ocspWait(t *testing.T, dir, state, url, cert, want string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out := ocspAsk(t, dir, state, url, cert, "")
		if strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("openssl ocsp at %s: no %q within %v; last answer:\n%s", url, want, within, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestOCSPEndToEnd: openssl ocsp, at the OCSP URL in the certificate's own AIA, says good,
// then revoked after `keyarc revoke`, verifying every response against the CA (the delegated
// responder certificate with OCSPSigning and id-pkix-ocsp-nocheck); a serial keyarc never
// issued is never good; a GET whose base64 holds "//" reaches the responder; garbage gets
// malformedRequest.
func TestOCSPEndToEnd(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	a := servePublic(t, state, pub)
	dir := t.TempDir()
	out := filepath.Join(dir, "fay")
	enrollUser(t, a, "fay@example.org", out)
	certPath := filepath.Join(out, "cert.pem")
	cert := readCert(t, certPath)
	if len(cert.OCSPServer) != 1 || cert.OCSPServer[0] != "http://"+pub+"/ocsp" {
		t.Fatalf("AIA OCSP %v, want http://%s/ocsp", cert.OCSPServer, pub)
	}
	url := cert.OCSPServer[0]

	// The new certificate's response is there well before the pre-signer's next periodic
	// pass (30 s after the start): signed once issuance pauses, or on demand if asked first.
	good := ocspWait(t, dir, state, url, certPath, certPath+": good", 15*time.Second)
	for _, want := range []string{"Response verify OK", "OCSP Signing", "OCSP No Check"} {
		if !strings.Contains(good, want) {
			t.Errorf("the good answer lacks %q:\n%s", want, good)
		}
	}
	// Never good for a serial keyarc never issued.
	if got := ocspAsk(t, dir, state, url, "", "7e57ab1e0ddba11"); !strings.Contains(got, "unauthorized") || strings.Contains(got, ": good") {
		t.Errorf("openssl ocsp for a serial never issued:\n%s", got)
	}
	// GET (RFC 6960 appendix A): a request whose base64 holds "//" must reach the responder,
	// not a redirect of the path.
	req := filepath.Join(dir, "req.der")
	run(t, dir, "openssl", "ocsp", "-issuer", filepath.Join(state, "ca.pem"), "-cert", certPath, "-no_nonce", "-reqout", req)
	der, err := os.ReadFile(req)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(der)
	for _, path := range []string{b64, "MEow//" + b64[6:]} {
		code := run(t, dir, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url+"/"+path)
		if path == b64 && strings.TrimSpace(code) != "200" {
			t.Errorf("GET of a well-formed request: HTTP %s, want 200", code)
		}
		if strings.HasPrefix(strings.TrimSpace(code), "30") {
			t.Errorf("GET %s...: HTTP %s, a redirect instead of an OCSP answer", path[:12], code)
		}
	}
	// Garbage by POST: malformedRequest (HTTP 400), not a server fault.
	resp, err := http.Post(url, "application/ocsp-request", strings.NewReader("not an OCSP request"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("POST of garbage: HTTP %d, want 400 (malformedRequest)", resp.StatusCode)
	}

	serial := certSerial(t, dir, certPath)
	keyarc(t, "revoke", "--serial", serial, "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
	revoked := ocspWait(t, dir, state, url, certPath, certPath+": revoked", time.Minute)
	if !strings.Contains(revoked, "Response verify OK") || !strings.Contains(revoked, "Reason: keyCompromise") {
		t.Errorf("the revoked answer:\n%s", revoked)
	}
}

// TestOCSPRevokedWhileTokenAway: a new certificate's response is pre-signed without anyone
// asking, and served while the token is away. A revocation acknowledged while the token is
// away (its new response cannot be signed) is never answered "good" by the responder from the
// response signed before it: relying parties get tryLater (HTTP 503, Retry-After) until the
// token is back, then the revoked answer. The CRL that follows the token's return lists it.
func TestOCSPRevokedWhileTokenAway(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl", "p11-kit")
	client := "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
	if _, err := os.Stat(client); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit-client.so missing")
		}
		t.Skip("p11-kit-client.so missing")
	}
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := p11kitServer(t, state, socket)
	setTokenModule(t, state, client)
	a := serveWith(t, state, []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + socket}, "", "--public-addr", pub)
	dir := t.TempDir()
	// Once the start's pass is over, every response signed is one of the two new
	// certificates': nobody asks about them, so the pre-signer signs them by itself, once
	// issuance pauses.
	waitMetric(t, a, `keyarc_ocsp_presign_passes_total{result="ok"}`, 1, time.Minute)
	signed := metricValue(t, a, "keyarc_ocsp_signed_total")
	out := filepath.Join(dir, "gus")
	enrollUser(t, a, "gus@example.org", out)
	certPath := filepath.Join(out, "cert.pem")
	hal := filepath.Join(dir, "hal")
	enrollUser(t, a, "hal@example.org", hal)
	waitMetric(t, a, "keyarc_ocsp_signed_total", signed+2, time.Minute)
	url := "http://" + pub + "/ocsp"
	ocspWait(t, dir, state, url, certPath, certPath+": good", 15*time.Second)

	// The token goes away. The certificate nobody asked about is answered from its
	// pre-signed response; the revocation needs only the store, and is acknowledged.
	syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
	server.Wait()
	halCert := filepath.Join(hal, "cert.pem")
	if got := ocspAsk(t, dir, state, url, halCert, ""); !strings.Contains(got, halCert+": good") {
		t.Fatalf("openssl ocsp, token away, for a certificate issued before: want its pre-signed good answer:\n%s", got)
	}
	serial := certSerial(t, dir, certPath)
	keyarc(t, "revoke", "--serial", serial, "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
	req := filepath.Join(dir, "req.der")
	run(t, dir, "openssl", "ocsp", "-issuer", filepath.Join(state, "ca.pem"), "-cert", certPath, "-no_nonce", "-reqout", req)
	der, err := os.ReadFile(req)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if i > 0 {
			time.Sleep(1500 * time.Millisecond) // past the handler's one-second recheck
		}
		if got := ocspAsk(t, dir, state, url, certPath, ""); strings.Contains(got, ": good") {
			t.Fatalf("openssl ocsp says good for a certificate revoked %d s ago (token away):\n%s", i*3/2, got)
		}
		resp, err := http.Post(url, "application/ocsp-request", bytes.NewReader(der))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("OCSP with the revocation not signed yet: HTTP %d (Retry-After %q), want 503 tryLater",
				resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}

	// The token is back: the revoked answer, and a CRL that lists the certificate.
	p11kitServer(t, state, socket)
	ocspWait(t, dir, state, url, certPath, certPath+": revoked", time.Minute)
	deadline := time.Now().Add(time.Minute)
	for {
		crl := filepath.Join(dir, "ca.crl")
		run(t, dir, "curl", "-sS", "-o", crl, "http://"+pub+"/crl/ca.crl")
		text, _ := runResult(dir, nil, "openssl", "crl", "-inform", "DER", "-in", crl, "-noout", "-text")
		if strings.Contains(strings.ToLower(text), strings.ToLower(serial)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRL does not list %s a minute after the token came back:\n%s", serial, text)
		}
		time.Sleep(time.Second)
	}
}
