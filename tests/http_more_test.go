package tests

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// More of the HTTP surface: which requests the failed-login limits may refuse, how decoding
// errors read, malformed query parameters, readiness during a storage fault, and the CLI's
// messages around them.

// TestHTTPThrottleSparesValid: a source over its failed-login limit is refused before its
// credential is checked, except when it authenticates with a valid client certificate (an
// operator behind the same address is not locked out).
func TestHTTPThrottleSparesValid(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	setHTTPConfig(t, state, map[string]string{"login_failures_per_source": "3", "login_failures_per_mailbox": "4", "login_failure_window": "10m"})
	a := serve(t, state)
	dir := t.TempDir()
	est := "/.well-known/est/smime-signature/simpleenroll"
	ct := []string{"Content-Type", "application/pkcs10"}
	creds := filepath.Join(state, "credentials")

	// D1: wrong codes from 127.0.0.1, the address the operators use too.
	const stranger = "stranger@example.org"
	local := httpClient(t, a, "", "", "127.0.0.1")
	csr := httpCSR(t, dir, "s", stranger)
	for range 3 {
		httpDo(t, local, a, "POST", est, stranger+":AAAAAAAAAAAAAAAAAAAAAAAA", csr, ct...).want(t, "a wrong code", 401, "")
	}
	r := httpDo(t, local, a, "POST", est, stranger+":AAAAAAAAAAAAAAAAAAAAAAAA", csr, ct...)
	r.want(t, "a wrong code from a source over its limit", 429, "retry after")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	admin := httpClient(t, a, filepath.Join(creds, "admin.pem"), filepath.Join(creds, "admin-key.pem"), "127.0.0.1")
	httpDo(t, admin, a, "GET", "/api/v1/pending", "", nil).want(t, "the admin from the throttled source", 200, "")
	keyarc(t, "admin", "pending", "list", "--state", state, "--server", a.url, "--as", "admin")
	// A good code from the noisy source still waits: the source is the one guessing.
	code := newCode(t, state, stranger, "smime-signature")
	httpDo(t, local, a, "POST", est, stranger+":"+code, csr, ct...).want(t, "a code from the throttled source", 429, "")
}

// TestHTTPThrottleMailboxValidCode: a mailbox over its failed-login limit still takes its valid
// code, from any source; only its further failed attempts are answered 429.
func TestHTTPThrottleMailboxValidCode(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	setHTTPConfig(t, state, map[string]string{"login_failures_per_source": "3", "login_failures_per_mailbox": "4", "login_failure_window": "10m"})
	a := serve(t, state)
	dir := t.TempDir()
	est := "/.well-known/est/smime-signature/simpleenroll"
	ct := []string{"Content-Type", "application/pkcs10"}

	// Wrong codes for the victim from 5 sources, one each: over the mailbox's limit of 4.
	const victim = "victim@example.org"
	vcsr := httpCSR(t, dir, "v", victim)
	for i := 10; i < 15; i++ {
		c := httpClient(t, a, "", "", fmt.Sprintf("127.0.0.%d", i))
		httpDo(t, c, a, "POST", est, victim+":AAAAAAAAAAAAAAAAAAAAAAAA", vcsr, ct...)
	}
	fresh := httpClient(t, a, "", "", "127.0.0.30")
	r := httpDo(t, fresh, a, "POST", est, victim+":AAAAAAAAAAAAAAAAAAAAAAAA", vcsr, ct...)
	r.want(t, "a further wrong code for the victim", 429, "too many failed logins")
	if r.header.Get("Retry-After") == "" || r.header.Get("WWW-Authenticate") != "" {
		t.Errorf("mailbox 429: headers %v, want Retry-After and no challenge", r.header)
	}
	vcode := newCode(t, state, victim, "smime-signature")
	httpDo(t, fresh, a, "POST", est, victim+":"+vcode, vcsr, ct...).want(t, "the victim's valid code", 200, "")
}

// TestHTTPDecodeWords: malformed bodies and query parameters are refused in words that name the
// field, without Go's type names or the ASN.1 decoder's struct dumps.
func TestHTTPDecodeWords(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	creds := filepath.Join(state, "credentials")
	officer := httpClient(t, a, filepath.Join(creds, "officer.pem"), filepath.Join(creds, "officer-key.pem"), "")
	ct := []string{"Content-Type", "application/json"}

	r := httpDo(t, officer, a, "POST", "/api/v1/recoveries", "", []byte(`{"serial": 12, "reason": "x"}`), ct...)
	r.want(t, "a number for serial", 400, "field serial must be a string")
	if strings.Contains(r.body, "Go struct") || strings.Contains(r.body, "of type") {
		t.Errorf("the refusal shows Go internals: %q", r.body)
	}

	const mailbox = "csr@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	anon := httpClient(t, a, "", "", "")
	bad := base64.StdEncoding.EncodeToString([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	body, _ := json.Marshal(map[string]string{"template": "smime-signature", "csr": bad})
	r = httpDo(t, anon, a, "POST", "/api/v1/enroll", mailbox+":"+code, body, ct...)
	r.want(t, "a CSR that is not one", 400, "csr: not a PKCS#10 certificate request (DER or PEM)")
	if strings.Contains(r.body, "class:") || strings.Contains(r.body, "tags don't match") {
		t.Errorf("the refusal shows the ASN.1 decoder's reason: %q", r.body)
	}

	auditor := httpClient(t, a, filepath.Join(creds, "auditor.pem"), filepath.Join(creds, "auditor-key.pem"), "")
	httpDo(t, auditor, a, "GET", "/api/v1/audit?after=abc", "", nil).want(t, "an unknown query parameter", 400, `"after"`)
	httpDo(t, auditor, a, "GET", "/api/v1/audit?from=abc", "", nil).want(t, "a malformed from", 400, "from")
	httpDo(t, auditor, a, "GET", "/api/v1/audit?limit=5", "", nil).want(t, "a good query", 200, "")
}

// TestHTTPReadyStorage: /readyz answers 503 "storage unavailable" while the store fails its
// writes, and ready again once it does not.
func TestHTTPReadyStorage(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "strace")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "ready@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	anon := httpClient(t, a, "", "", "")
	httpDo(t, anon, a, "GET", "/readyz", "", nil).want(t, "readiness before the fault", 200, "ready")

	st := startStrace(t, a, "-e", "trace=pwrite64", "-e", "inject=pwrite64:error=ENOSPC")
	httpDo(t, anon, a, "POST", "/.well-known/est/smime-signature/simpleenroll", mailbox+":"+code,
		httpCSR(t, dir, "r", mailbox), "Content-Type", "application/pkcs10").want(t, "enrollment during the fault", 503, "storage unavailable")
	r := httpDo(t, anon, a, "GET", "/readyz", "", nil)
	st.Process.Signal(os.Interrupt)
	st.Wait()
	r.want(t, "readiness during the fault", 503, "storage unavailable")
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	var ok bool
	for range 100 {
		if r = httpDo(t, anon, a, "GET", "/readyz", "", nil); r.code == 200 {
			ok = true
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !ok {
		t.Errorf("readiness after the fault: %d %q", r.code, r.body)
	}
}

// TestCLIHelpAndArgs: help for an unknown subcommand points at its group's help, and a missing
// FILE is reported before a missing --server.
func TestCLIHelpAndArgs(t *testing.T) {
	t.Parallel()
	_, errOut, err := keyarcResult("help", "bulk", "nosuch")
	if err == nil || !strings.Contains(errOut, "run `keyarc help bulk`") {
		t.Errorf("keyarc help bulk nosuch: %v %q, want a pointer to `keyarc help bulk`", err, errOut)
	}
	_, errOut, err = keyarcResult("bulk", "submit", "--wait")
	if err == nil || !strings.Contains(errOut, "expected FILE") || strings.Contains(errOut, "--server") {
		t.Errorf("keyarc bulk submit --wait: %v %q, want the missing FILE named first", err, errOut)
	}
}
