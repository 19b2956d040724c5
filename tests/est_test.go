package tests

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// curlEST posts a base64 PKCS#10 body to an EST endpoint with curl and returns the HTTP status
// and the body.
func curlEST(t *testing.T, a *appliance, dir, path, user, bodyFile string) (string, string) {
	t.Helper()
	out := filepath.Join(dir, "resp.out")
	os.Remove(out)
	args := []string{"-sS", "--cacert", filepath.Join(a.state, "ca.pem"), "-o", out, "-w", "%{http_code}",
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@" + bodyFile}
	if user != "" {
		args = append(args, "--user", user)
	}
	args = append(args, a.url+path)
	code := run(t, dir, "curl", args...)
	body, _ := os.ReadFile(out)
	return strings.TrimSpace(code), string(body)
}

// estCSR makes a key and a PKCS#10 request with openssl and writes the request as EST wants it
// (base64 DER); it returns the path of that file.
func estCSR(t *testing.T, dir, name, subj string, reqArgs ...string) string {
	t.Helper()
	der := filepath.Join(dir, name+".csr.der")
	args := append([]string{"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(dir, name+".key.pem"), "-subj", subj, "-outform", "DER", "-out", der}, reqArgs...)
	run(t, dir, "openssl", args...)
	raw, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	b64 := filepath.Join(dir, name+".csr.b64")
	writeFile(t, b64, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"))
	return b64
}

// pkcs7ToPEM turns an EST certs-only response (base64, CRLF allowed) into PEM certificates.
func pkcs7ToPEM(t *testing.T, dir, name, body string) string {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(body))
	if err != nil {
		t.Fatalf("EST response is not base64: %v\n%s", err, body)
	}
	p7 := filepath.Join(dir, name+".p7")
	writeFile(t, p7, der)
	out := filepath.Join(dir, name+".pem")
	run(t, dir, "openssl", "pkcs7", "-inform", "DER", "-in", p7, "-print_certs", "-out", out)
	return out
}

// TestESTEnrollment is the first scenario: a real EST client (curl and openssl) fetches the CA,
// enrolls a CSR with a one-time code, and openssl verifies the certificate; the code then no
// longer works, and refused requests leave the code usable.
func TestESTEnrollment(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()

	// cacerts: base64 certs-only PKCS#7 holding the CA.
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(state, "ca.pem"), "-o", filepath.Join(dir, "cacerts.b64"), a.url+"/.well-known/est/cacerts")
	cab64, _ := os.ReadFile(filepath.Join(dir, "cacerts.b64"))
	cacerts := pkcs7ToPEM(t, dir, "cacerts", string(cab64))
	if got := run(t, dir, "openssl", "x509", "-in", cacerts, "-noout", "-ext", "basicConstraints,keyUsage"); !strings.Contains(got, "CA:TRUE") || !strings.Contains(got, "Certificate Sign") {
		t.Fatalf("cacerts does not hold a CA certificate:\n%s", got)
	}

	const mailbox = "alice@example.org"
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-signature"))
	if !regexp.MustCompile(`^[A-Z2-7]{24}$`).MatchString(code) {
		t.Fatalf("enroll-code create printed %q, want the code alone", code)
	}
	enroll := "/.well-known/est/smime-signature/simpleenroll"

	// Refused requests, each with a reason, none of which uses the code up.
	refusals := []struct {
		name, user, body, wantCode, wantMsg string
	}{
		{"another mailbox in the CSR", mailbox + ":" + code,
			estCSR(t, dir, "other", "/CN=bob@example.org", "-addext", "subjectAltName=email:bob@example.org"), "400", "bob@example.org"},
		{"injected basicConstraints", mailbox + ":" + code,
			estCSR(t, dir, "ca", "/CN="+mailbox, "-addext", "basicConstraints=critical,CA:TRUE"), "400", "basicConstraints"},
		{"wrong code", mailbox + ":AAAAAAAAAAAAAAAAAAAAAAAA", estCSR(t, dir, "wrongcode", "/CN="+mailbox), "401", "not accepted"},
		{"code of another mailbox", "bob@example.org:" + code, estCSR(t, dir, "wrongbox", "/CN="+mailbox), "401", "not accepted"},
		{"no authentication", "", estCSR(t, dir, "noauth", "/CN="+mailbox), "401", "HTTP Basic"},
	}
	for _, r := range refusals {
		got, body := curlEST(t, a, dir, enroll, r.user, r.body)
		if got != r.wantCode || !strings.Contains(body, r.wantMsg) {
			t.Errorf("%s: got %s %q, want %s mentioning %q", r.name, got, body, r.wantCode, r.wantMsg)
		}
	}
	garbage := filepath.Join(dir, "garbage.b64")
	writeFile(t, garbage, []byte("bm90IGEgQ1NS\n"))
	if got, body := curlEST(t, a, dir, enroll, mailbox+":"+code, garbage); got != "400" || !strings.Contains(body, "PKCS#10") {
		t.Errorf("garbage body: got %s %q, want 400 naming PKCS#10", got, body)
	}

	// The real enrollment.
	csr := estCSR(t, dir, "alice", "/CN="+mailbox)
	got, body := curlEST(t, a, dir, enroll, mailbox+":"+code, csr)
	if got != "200" {
		t.Fatalf("simpleenroll: HTTP %s: %s", got, body)
	}
	cert := pkcs7ToPEM(t, dir, "alice-cert", body)
	if out := run(t, dir, "openssl", "verify", "-CAfile", cacerts, "-purpose", "smimesign", cert); !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	text := run(t, dir, "openssl", "x509", "-in", cert, "-noout", "-text")
	for _, want := range []string{"email:" + mailbox, "E-mail Protection", "Digital Signature"} {
		if !strings.Contains(text, want) {
			t.Errorf("certificate lacks %q:\n%s", want, text)
		}
	}
	// The certificate is the pair of the key openssl made.
	keyPub := run(t, dir, "openssl", "pkey", "-in", filepath.Join(dir, "alice.key.pem"), "-pubout")
	certPub := run(t, dir, "openssl", "x509", "-in", cert, "-noout", "-pubkey")
	if keyPub != certPub {
		t.Fatal("issued certificate does not carry the CSR's public key")
	}

	// The same code cannot be used twice.
	again := estCSR(t, dir, "again", "/CN="+mailbox)
	if got, body := curlEST(t, a, dir, enroll, mailbox+":"+code, again); got != "401" || !strings.Contains(body, "already used") {
		t.Fatalf("second use of the code: got %s %q, want 401 already used", got, body)
	}

	// Archiving templates are not served by simpleenroll.
	code2 := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-encryption"))
	if got, body := curlEST(t, a, dir, "/.well-known/est/smime-encryption/simpleenroll", mailbox+":"+code2, again); got != "400" || !strings.Contains(body, "encrypted_key") {
		t.Fatalf("simpleenroll on an archiving template: got %s %q, want 400 pointing at encrypted_key", got, body)
	}

	// The metrics listener counts the enrollment; the TLS listener does not serve metrics.
	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	if !strings.Contains(metrics, `keyarc_enrollments_total{archived="false",template="smime-signature"} 1`) {
		t.Errorf("metrics do not count the enrollment:\n%s", grepLines(metrics, "keyarc_enrollments"))
	}
	if strings.Contains(metrics, mailbox) {
		t.Error("a mailbox appears in the metrics")
	}
	if out, _ := runResult(dir, nil, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", filepath.Join(state, "ca.pem"), a.url+"/metrics"); strings.TrimSpace(out) != "404" {
		t.Errorf("the TLS listener answers /metrics with %s, want 404", out)
	}
	if strings.Contains(a.logs.String(), code) {
		t.Error("an enrollment code appears in the appliance log")
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
