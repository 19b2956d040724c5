package tests

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// PKCS#11 return values the tests inject (pkcs11t.h).
const (
	ckrFunctionFailed = "0x6"
	ckrDeviceError    = "0x30"
)

var (
	p11faultOnce sync.Once
	p11faultPath string
	p11faultErr  string
)

// p11faultModule builds tests/internal/p11fault/p11fault.c with gcc, once per test binary, next
// to the keyarc binary (TestMain removes that folder), and returns the module's path. pkcs11.h
// comes from github.com/miekg/pkcs11 in the module cache: the appliance is built with it.
// It skips (fails under CI) when gcc is missing.
func p11faultModule(t *testing.T) string {
	t.Helper()
	requireTools(t, "gcc")
	p11faultOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/miekg/pkcs11").Output()
		if err != nil {
			p11faultErr = "go list github.com/miekg/pkcs11: " + err.Error()
			return
		}
		so := filepath.Join(filepath.Dir(keyarcBin), "p11fault.so")
		cc := exec.Command("gcc", "-Wall", "-Werror", "-shared", "-fPIC", "-I", strings.TrimSpace(string(out)),
			"-o", so, filepath.Join("internal", "p11fault", "p11fault.c"), "-ldl", "-lpthread")
		if b, err := cc.CombinedOutput(); err != nil {
			p11faultErr = "gcc p11fault.c: " + err.Error() + "\n" + string(b)
			return
		}
		p11faultPath = so
	})
	if p11faultErr != "" {
		t.Fatal(p11faultErr)
	}
	return p11faultPath
}

// faultyToken is an appliance whose token module is p11fault over SoftHSM, with its trigger.
type faultyToken struct {
	*appliance
	trigger string
}

// serveFaulty starts an appliance on state through p11fault, with no fault yet.
func serveFaulty(t *testing.T, state string, args ...string) *faultyToken {
	t.Helper()
	setTokenModule(t, state, p11faultModule(t))
	trigger := filepath.Join(t.TempDir(), "p11fault.trigger")
	a := serveWith(t, state, []string{"P11FAULT_MODULE=" + softhsmModule(), "P11FAULT_TRIGGER=" + trigger}, "", args...)
	return &faultyToken{appliance: a, trigger: trigger}
}

// fail makes the token answer the rules (see p11fault.c), e.g. "C_Sign=0x6 C_SignFinal=0x6".
func (f *faultyToken) fail(t *testing.T, rules string) {
	t.Helper()
	writeFile(t, f.trigger, []byte(rules+"\n"))
}

// heal ends every fault.
func (f *faultyToken) heal(t *testing.T) {
	t.Helper()
	if err := os.Remove(f.trigger); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// shimAnswer is an HTTP answer with the header the tests look at.
type shimAnswer struct {
	code       int
	retryAfter string
	body       string
}

func shimDo(t *testing.T, c *http.Client, req *http.Request) shimAnswer {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return shimAnswer{resp.StatusCode, resp.Header.Get("Retry-After"), string(b)}
}

// want503 checks an answer to a request the token failed: 503 with Retry-After, a message
// that puts the fault on the appliance, nothing that sends the client to fix its request.
func want503(t *testing.T, what string, got shimAnswer) {
	t.Helper()
	if got.code != http.StatusServiceUnavailable || got.retryAfter == "" {
		t.Errorf("%s with the token failing: HTTP %d (Retry-After %q) %q, want 503 with Retry-After", what, got.code, got.retryAfter, got.body)
		return
	}
	low := strings.ToLower(got.body)
	if !strings.Contains(low, "appliance") || !strings.Contains(low, "retry") {
		t.Errorf("%s: %q does not say the appliance failed and to retry", what, got.body)
	}
	for _, blame := range []string{"invalid", "malformed", "csr", "code", "password", "unauthorized"} {
		if strings.Contains(low, blame) {
			t.Errorf("%s: %q blames the client (%q)", what, got.body, blame)
		}
	}
}

// signFault makes every signature in the token fail with CKR_FUNCTION_FAILED.
const signFault = "C_Sign=" + ckrFunctionFailed + " C_SignFinal=" + ckrFunctionFailed

// TestTokenFailsOperations serves through p11fault, a PKCS#11 module between the appliance
// and SoftHSM that makes chosen calls answer a chosen error while a trigger file says so: the
// token stays connected and logged in, and answers, but fails the operation. One appliance,
// in phases, each fault ended before the next:
//   - a bulk enroll job while signing fails pauses (no item failed) and, the fault over,
//     ends with every item issued once;
//   - EST and an archival enrollment while signing fails (and the archival enrollment while
//     the envelope's unwrap fails) get 503 with Retry-After and a message that blames the
//     appliance; the codes are not spent, and enroll once the faults are over;
//     the metrics count the failed signatures;
//   - OCSP for a certificate revoked while signing fails is tryLater, never good;
//   - a recovery fetch while C_Decrypt answers CKR_DEVICE_ERROR is refused with 503 and not
//     consumed, the appliance is not ready although the token reconnects, and the fetch
//     succeeds once the token decrypts again; a recovery request while
//     C_GenerateKeyPair fails is refused as the appliance's fault.
func TestTokenFailsOperations(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	f := serveFaulty(t, state, "--public-addr", pub)
	a := f.appliance
	t.Cleanup(func() { f.heal(t) })
	dir := t.TempDir()

	t.Run("bulk", func(t *testing.T) {
		// First: checkEveryItemOnce counts every smime-encryption certificate of the appliance.
		// Long enough that the job's signing, which runs batches ahead of its commits, is not
		// over when the fault begins.
		const total = 1500
		file := filepath.Join(t.TempDir(), "enroll.jsonl")
		writeJobFile(t, file, `{"kind":"enroll","template":"smime-encryption"}`, enrollLines(t, state, "shim", total))
		id := strings.TrimSpace(keyarc(t, "bulk", "submit", file, "--state", state, "--as", "admin", "--server", a.url))
		c := adminClient(t, state)
		url := a.url + "/api/v1/bulk/" + id
		st := waitJob(t, c, url, time.Minute, "job started", func(st faultStatus) bool { return st.Done >= 10 })
		f.fail(t, signFault)
		defer f.heal(t) // a failed phase leaves no fault to the next
		if st.Done+st.Failed >= total {
			t.Fatalf("the job finished before the fault (%+v): make it longer", st)
		}
		waitPaused(t, a, c, url, "token")
		// Paused for as long as the fault lasts: not running now and then (a step that needs
		// no token used to resume it), no item failed, no progress once the batches signed
		// before the fault have committed.
		time.Sleep(time.Second)
		st, err := getFaultStatus(c, url)
		if err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			now, err := getFaultStatus(c, url)
			if err != nil || now.State != "paused" || now.Failed != 0 || now.Done != st.Done {
				t.Fatalf("status while the token fails: %+v %v; want paused with %d done, none failed", now, err, st.Done)
			}
		}
		if code, body := tokGet(t, a, "/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz while the job is paused by the token: %d %q, want 503", code, body)
		}
		f.heal(t)
		waitJob(t, c, url, 2*time.Minute, "job done", func(st faultStatus) bool { return st.State == "done" })
		checkEveryItemOnce(t, a, id, total, "smime-encryption")
		if v := metricValue(t, a, `keyarc_bulk_job_paused{cause="token"}`); v != 0 {
			t.Errorf(`keyarc_bulk_job_paused{cause="token"} = %v after the job, want 0`, v)
		}
		if strings.Contains(a.logs.String(), "record failed item") {
			t.Error("an item was failed for the token's fault")
		}
	})

	// A certificate for the OCSP phase, issued and answered good before any fault.
	olga := filepath.Join(dir, "olga")
	enrollUser(t, a, "olga@example.org", olga)
	olgaCert := filepath.Join(olga, "cert.pem")
	ocspURL := "http://" + pub + "/ocsp"
	ocspWait(t, dir, state, ocspURL, olgaCert, olgaCert+": good", 15*time.Second)

	t.Run("enroll", func(t *testing.T) {
		const estMailbox = "est-shim@example.org"
		estCode := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", estMailbox, "--template", "smime-signature"))
		csr, err := os.ReadFile(estCSR(t, t.TempDir(), "k", "/CN="+estMailbox))
		if err != nil {
			t.Fatal(err)
		}
		est := func() shimAnswer {
			req, _ := http.NewRequest("POST", a.url+"/.well-known/est/smime-signature/simpleenroll", bytes.NewReader(csr))
			req.SetBasicAuth(estMailbox, estCode)
			req.Header.Set("Content-Type", "application/pkcs10")
			return shimDo(t, a.client, req)
		}
		const arcMailbox = "arc-shim@example.org"
		arcCode, arcBody := tokArchivalRequest(t, a, arcMailbox)
		archival := func() shimAnswer {
			req, _ := http.NewRequest("POST", a.url+"/api/v1/enroll", bytes.NewReader(arcBody))
			req.SetBasicAuth(arcMailbox, arcCode)
			req.Header.Set("Content-Type", "application/json")
			return shimDo(t, a.client, req)
		}
		signFailures := func() float64 {
			return max(metricValue(t, a, `keyarc_hsm_operations_total{op="sign",result="token_fault"}`), 0)
		}
		before := signFailures()

		// The archival envelope is opened in the token first: its unwrap fails.
		f.fail(t, "C_Decrypt="+ckrFunctionFailed)
		defer f.heal(t)
		want503(t, "archival enrollment with the envelope's unwrap failing", archival())

		f.fail(t, signFault)
		want503(t, "EST simpleenroll", est())
		want503(t, "archival enrollment", archival())
		if after := signFailures(); after < before+2 {
			t.Errorf(`keyarc_hsm_operations_total{op="sign",result="token_fault"} went from %v to %v for two failed signatures`, before, after)
		}
		if code, body := tokGet(t, a, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "fail") {
			t.Errorf("/readyz with the token failing every signature: %d %q, want 503 saying it fails", code, body)
		}
		if got := tokMetric(t, a, "keyarc_token_ready"); got != "0" {
			t.Errorf("keyarc_token_ready = %q with the token failing every signature, want 0", got)
		}
		if got := tokMetric(t, a, `keyarc_token_fault{cause="failing"}`); got != "1" {
			t.Errorf(`keyarc_token_fault{cause="failing"} = %q with the token failing every signature, want 1`, got)
		}

		f.heal(t)
		tokWaitFor(t, a, "/readyz answers 200 once the token signs again", func() bool { return getStatus(t, a, "/readyz") == 200 })
		if got := est(); got.code != http.StatusOK {
			t.Errorf("EST with the same code once the token signs again: %d %q", got.code, got.body)
		}
		if got := archival(); got.code != http.StatusOK {
			t.Errorf("archival enrollment with the same code once the token signs again: %d %q", got.code, got.body)
		}
		if got := tokMetric(t, a, `keyarc_token_fault{cause="failing"}`); got != "0" {
			t.Errorf(`keyarc_token_fault{cause="failing"} = %q once the token signs again, want 0`, got)
		}
		logs := a.logs.String()
		for _, want := range []string{"answers but fails operations", "CKR_FUNCTION_FAILED", "completes operations again"} {
			if !strings.Contains(logs, want) {
				t.Errorf("the appliance log does not say %q", want)
			}
		}
	})

	t.Run("ocsp", func(t *testing.T) {
		req := filepath.Join(dir, "olga-req.der")
		run(t, dir, "openssl", "ocsp", "-issuer", filepath.Join(state, "ca.pem"), "-cert", olgaCert, "-no_nonce", "-reqout", req)
		der, err := os.ReadFile(req)
		if err != nil {
			t.Fatal(err)
		}
		f.fail(t, signFault)
		defer f.heal(t)
		serial := certSerial(t, dir, olgaCert)
		keyarc(t, "revoke", "--serial", serial, "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
		for i := range 3 {
			if i > 0 {
				time.Sleep(1500 * time.Millisecond) // past the responder's one-second recheck
			}
			if got := ocspAsk(t, dir, state, ocspURL, olgaCert, ""); strings.Contains(got, ": good") {
				t.Fatalf("openssl ocsp says good for a certificate revoked while the token fails to sign:\n%s", got)
			}
			httpReq, _ := http.NewRequest("POST", ocspURL, bytes.NewReader(der))
			httpReq.Header.Set("Content-Type", "application/ocsp-request")
			got := shimDo(t, http.DefaultClient, httpReq)
			// tryLater (RFC 6960 4.2.1): OCSPResponse { responseStatus 3 }, DER 30 03 0a 01 03.
			if got.code != http.StatusServiceUnavailable || got.retryAfter == "" || got.body != "\x30\x03\x0a\x01\x03" {
				t.Fatalf("OCSP with the revocation unsigned: HTTP %d (Retry-After %q) % x, want 503 tryLater", got.code, got.retryAfter, got.body)
			}
		}
		f.heal(t)
		ocspWait(t, dir, state, ocspURL, olgaCert, olgaCert+": revoked", time.Minute)
	})

	t.Run("recovery", func(t *testing.T) {
		rita := filepath.Join(dir, "rita")
		enrollUser(t, a, "rita@example.org", rita)
		serial := certSerial(t, dir, filepath.Join(rita, "cert.pem"))
		S := []string{"--state", state, "--server", a.url}
		as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

		// The request makes its recovery key in the token.
		f.fail(t, "C_GenerateKeyPair="+ckrFunctionFailed)
		defer f.heal(t)
		msg := keyarcFails(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "shim")...)
		if !strings.Contains(msg, "503") && !strings.Contains(strings.ToLower(msg), "retry") {
			t.Errorf("recovery request while the token fails key generation: %q, want the appliance's fault (503, retry)", msg)
		}
		f.heal(t)
		tokWaitFor(t, a, "/readyz answers 200 once the token makes keys again", func() bool { return getStatus(t, a, "/readyz") == 200 })
		id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "shim")...))
		keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
		keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)

		f.fail(t, "C_Decrypt="+ckrDeviceError)
		p12, pw := filepath.Join(dir, "rita.p12"), filepath.Join(dir, "rita.pw")
		msg = keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
		if !strings.Contains(msg, "503") && !strings.Contains(strings.ToLower(msg), "retry") {
			t.Errorf("fetch while the token fails to decrypt: %q, want the appliance's fault (503, retry)", msg)
		}
		for _, p := range []string{p12, pw} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("a refused fetch wrote %s", p)
			}
		}
		if show := keyarc(t, as("officer", "recovery", "show", id)...); strings.Contains(show, "consumed") || strings.Contains(show, "cancel") {
			t.Fatalf("the recovery was closed by the token's fault:\n%s", show)
		}
		// The token reconnects without trouble, but still fails the decryptions: not ready.
		if code, body := tokGet(t, a, "/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz while the token answers CKR_DEVICE_ERROR to decryptions: %d %q, want 503", code, body)
		}
		if got := tokMetric(t, a, "keyarc_token_ready"); got != "0" {
			t.Errorf("keyarc_token_ready = %q while the token fails decryptions, want 0", got)
		}

		f.heal(t)
		tokWaitFor(t, a, "/readyz answers 200 once the token decrypts again", func() bool { return getStatus(t, a, "/readyz") == 200 })
		keyarc(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
		run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", filepath.Join(dir, "rita.key"))
	})
}
