package tests

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestESTCompleteCSRAttrs: GET /.well-known/est/<label>/csrattrs with curl is base64 DER
// CsrAttrs (application/csrattrs) that openssl asn1parse reads, naming the template's key types,
// signature algorithms and mailbox attributes; an unknown label is 404, no label 204.
func TestESTCompleteCSRAttrs(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	cacert := filepath.Join(state, "ca.pem")

	headers := filepath.Join(dir, "csrattrs.headers")
	status, body := curlStatus(t, dir, "--cacert", cacert, "-D", headers, a.url+"/.well-known/est/smime-signature/csrattrs")
	if status != 200 {
		t.Fatalf("csrattrs: HTTP %d: %s", status, body)
	}
	h, _ := os.ReadFile(headers)
	for _, want := range []string{`(?im)^content-type:\s*application/csrattrs\r?$`, `(?im)^content-transfer-encoding:\s*base64\r?$`} {
		if !regexp.MustCompile(want).Match(h) {
			t.Errorf("response headers lack %s:\n%s", want, h)
		}
	}
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(body)))
	if err != nil {
		t.Fatalf("csrattrs body is not base64: %v\n%s", err, body)
	}
	derFile := filepath.Join(dir, "csrattrs.der")
	writeFile(t, derFile, der)
	parsed := run(t, dir, "openssl", "asn1parse", "-inform", "DER", "-in", derFile)
	for _, want := range []string{"ecdsa-with-SHA256", "ecdsa-with-SHA384", "sha256WithRSAEncryption", "id-ecPublicKey",
		"prime256v1", "secp384r1", "rsaEncryption", ":0800", "emailAddress", "X509v3 Subject Alternative Name"} {
		if !strings.Contains(parsed, want) {
			t.Errorf("openssl asn1parse of csrattrs lacks %q:\n%s", want, parsed)
		}
	}
	// The same with the pipeline the README shows (base64 -d | openssl asn1parse).
	if out := run(t, dir, "sh", "-c", "curl -sS --fail --cacert "+cacert+" "+a.url+"/.well-known/est/smime-encryption/csrattrs | tr -d '\\r' | base64 -d | openssl asn1parse -inform DER"); !strings.Contains(out, "id-ecPublicKey") {
		t.Errorf("csrattrs through base64 -d | openssl asn1parse:\n%s", out)
	}

	if status, body := curlStatus(t, dir, "--cacert", cacert, a.url+"/.well-known/est/no-such-template/csrattrs"); status != 404 || !strings.Contains(string(body), "smime-encryption") {
		t.Errorf("unknown template: HTTP %d %q, want 404 naming the templates", status, body)
	}
	if status, body := curlStatus(t, dir, "--cacert", cacert, a.url+"/.well-known/est/csrattrs"); status != 204 || len(body) != 0 {
		t.Errorf("csrattrs without a label: HTTP %d %q, want 204 and no body", status, body)
	}
}

// TestESTCompleteNoLabel: EST without a label enrolls with the template of the credential: a
// code issued for smime-signature gets a signature certificate from /.well-known/est/simpleenroll;
// that certificate re-enrolls at /.well-known/est/simplereenroll for its own template; a code for
// smime-encryption gets a key and an encryption certificate from /.well-known/est/serverkeygen.
// A wrong code, no credential and a simpleenroll with an archiving template's code are refused
// as they are with a label.
func TestESTCompleteNoLabel(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	cacert := filepath.Join(state, "ca.pem")
	const mailbox = "nolabel@example.org"

	// Refusals first: none of them uses a code up.
	sigCode := newCode(t, state, mailbox, "smime-signature")
	if got, body := curlEST(t, a, dir, "/.well-known/est/simpleenroll", mailbox+":AAAAAAAAAAAAAAAAAAAAAAAA", estCSR(t, dir, "wrong", "/CN="+mailbox)); got != "401" || !strings.Contains(body, "not accepted") {
		t.Errorf("wrong code: HTTP %s %q, want 401 not accepted", got, body)
	}
	if got, body := curlEST(t, a, dir, "/.well-known/est/simpleenroll", "", estCSR(t, dir, "noauth", "/CN="+mailbox)); got != "401" || !strings.Contains(body, "HTTP Basic") {
		t.Errorf("no credential: HTTP %s %q, want 401 naming HTTP Basic", got, body)
	}
	if got, body := curlEST(t, a, dir, "/.well-known/est/simplereenroll", mailbox+":"+sigCode, estCSR(t, dir, "reenroll-code", "/CN="+mailbox)); got != "401" || !strings.Contains(body, "client certificate") {
		t.Errorf("simplereenroll with a code: HTTP %s %q, want 401 asking for the certificate", got, body)
	}
	encCode := newCode(t, state, mailbox, "smime-encryption")
	if got, body := curlEST(t, a, dir, "/.well-known/est/simpleenroll", mailbox+":"+encCode, estCSR(t, dir, "enc-simple", "/CN="+mailbox)); got != "400" || !strings.Contains(body, "encrypted_key") {
		t.Errorf("simpleenroll with a smime-encryption code: HTTP %s %q, want 400 pointing at encrypted_key", got, body)
	}

	// An operator credential has a template (client-auth) but enrolls for nothing, with or
	// without a label.
	status, opBody := curlStatus(t, dir, "--cacert", cacert, "--cert", filepath.Join(state, "credentials", "admin.pem"),
		"--key", filepath.Join(state, "credentials", "admin-key.pem"), "-H", "Content-Type: application/pkcs10",
		"--data-binary", "@"+estCSR(t, dir, "op", "/CN="+mailbox), a.url+"/.well-known/est/simpleenroll")
	if status != 403 || !strings.Contains(string(opBody), "operator credential") {
		t.Errorf("simpleenroll with the admin credential: HTTP %d %q, want 403 operator credential", status, opBody)
	}

	// The code's template: smime-signature.
	got, body := curlEST(t, a, dir, "/.well-known/est/simpleenroll", mailbox+":"+sigCode, estCSR(t, dir, "sig", "/CN="+mailbox))
	if got != "200" {
		t.Fatalf("simpleenroll without a label: HTTP %s: %s", got, body)
	}
	sigCert := pkcs7ToPEM(t, dir, "sig-cert", body)
	if out := run(t, dir, "openssl", "verify", "-CAfile", cacert, "-purpose", "smimesign", sigCert); !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	text := run(t, dir, "openssl", "x509", "-in", sigCert, "-noout", "-text")
	for _, want := range []string{"email:" + mailbox, "Digital Signature", "Non Repudiation"} {
		if !strings.Contains(text, want) {
			t.Errorf("the certificate is not a smime-signature one (lacks %q):\n%s", want, text)
		}
	}
	if got, body := curlEST(t, a, dir, "/.well-known/est/simpleenroll", mailbox+":"+sigCode, estCSR(t, dir, "again", "/CN="+mailbox)); got != "401" || !strings.Contains(body, "already used") {
		t.Errorf("the code a second time: HTTP %s %q, want 401 already used", got, body)
	}

	// RFC 7030 4.2.2: the certificate re-enrolls for its own template, without a label.
	reCSR := estCSR(t, dir, "resig", "/CN="+mailbox)
	status, reBody := curlStatus(t, dir, "--cacert", cacert, "--cert", sigCert, "--key", filepath.Join(dir, "sig.key.pem"),
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+reCSR, a.url+"/.well-known/est/simplereenroll")
	if status != 200 {
		t.Fatalf("simplereenroll without a label: HTTP %d: %s", status, reBody)
	}
	reCert := pkcs7ToPEM(t, dir, "resig-cert", string(reBody))
	if out := run(t, dir, "openssl", "verify", "-CAfile", cacert, "-purpose", "smimesign", reCert); !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify of the renewed certificate: %s", out)
	}
	if !samePublicKey(t, dir, filepath.Join(dir, "resig.key.pem"), reCert) {
		t.Error("the renewed certificate does not carry the new request's key")
	}

	// The code's template: smime-encryption, the key made by the appliance (RSA, as the
	// request's: openssl's smimeencrypt purpose wants keyEncipherment).
	_, encDER := rsaKeyAndCSR(t, dir, "enc", mailbox, 2048)
	encB64 := filepath.Join(dir, "enc.csr.b64")
	writeFile(t, encB64, []byte(readB64(t, encDER)+"\n"))
	headers := filepath.Join(dir, "skg.headers")
	status, skg := curlStatus(t, dir, "--cacert", cacert, "-D", headers, "--user", mailbox+":"+encCode,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+encB64,
		a.url+"/.well-known/est/serverkeygen")
	if status != 200 {
		t.Fatalf("serverkeygen without a label: HTTP %d: %s", status, skg)
	}
	h, _ := os.ReadFile(headers)
	// The answer holds a private key: no cache may keep it.
	if !regexp.MustCompile(`(?im)^cache-control:\s*no-store\r?$`).Match(h) {
		t.Errorf("serverkeygen's answer, a private key, lacks Cache-Control: no-store:\n%s", h)
	}
	m := regexp.MustCompile(`(?im)^content-type:\s*(.+?)\r?$`).FindSubmatch(h)
	if m == nil {
		t.Fatalf("no Content-Type in:\n%s", h)
	}
	mediaType, params, err := mime.ParseMediaType(string(m[1]))
	if err != nil || mediaType != "multipart/mixed" {
		t.Fatalf("Content-Type %q, want multipart/mixed (%v)", m[1], err)
	}
	var keyB64, p7B64 string
	mr := multipart.NewReader(bytes.NewReader(skg), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		b, _ := io.ReadAll(p)
		switch mt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type")); mt {
		case "application/pkcs8":
			keyB64 = string(b)
		case "application/pkcs7-mime":
			p7B64 = string(b)
		}
	}
	if keyB64 == "" || p7B64 == "" {
		t.Fatalf("serverkeygen answered without a key or a certificate part:\n%s", skg)
	}
	keyDER, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(keyB64))
	if err != nil {
		t.Fatalf("the key part is not base64: %v", err)
	}
	keyFile := filepath.Join(dir, "enc.key.der")
	writeFile(t, keyFile, keyDER)
	encCert := pkcs7ToPEM(t, dir, "enc-cert", p7B64)
	if out := run(t, dir, "openssl", "verify", "-CAfile", cacert, "-purpose", "smimeencrypt", encCert); !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	if text := run(t, dir, "openssl", "x509", "-in", encCert, "-noout", "-text"); strings.Contains(text, "Digital Signature") {
		t.Errorf("the serverkeygen certificate is not a smime-encryption one:\n%s", text)
	}
	if !samePublicKey(t, dir, keyFile, encCert, "-inform", "DER") {
		t.Error("the returned key is not the pair of the returned certificate")
	}
}
