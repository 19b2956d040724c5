package tests

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const tokP11kitClient = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"

// tokRequireP11kit skips (fails under CI) when p11-kit's client module is missing.
func tokRequireP11kit(t *testing.T) {
	t.Helper()
	requireTools(t, "p11-kit", "openssl", "pkcs11-tool", "softhsm2-util")
	if _, err := os.Stat(tokP11kitClient); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit-client.so missing")
		}
		t.Skip("p11-kit-client.so missing")
	}
}

// tokStopP11kit kills a p11-kit server: the HSM is lost.
func tokStopP11kit(server *exec.Cmd) {
	syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
	server.Wait()
}

// tokSoftHSMEnv is the environment that points SoftHSM's own tools at the state's tokens.
func tokSoftHSMEnv(state string) []string {
	return []string{"SOFTHSM2_CONF=" + filepath.Join(state, "softhsm", "softhsm2.conf")}
}

// changeTokenPIN changes the appliance token's user PIN directly in SoftHSM (the p11-kit
// server must be stopped).
func changeTokenPIN(t *testing.T, state, oldPIN, newPIN string) {
	t.Helper()
	run2(t, tokSoftHSMEnv(state), "pkcs11-tool", "--module", softhsmModule(), "--token-label", "keyarc",
		"--login", "--pin", oldPIN, "--change-pin", "--new-pin", newPIN)
}

// tokGet is a GET returning the status and the body.
func tokGet(t *testing.T, a *appliance, path string) (int, string) {
	t.Helper()
	resp, err := a.client.Get(a.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tokMetric reads one series from the appliance's metrics listener ("" when absent).
func tokMetric(t *testing.T, a *appliance, series string) string {
	t.Helper()
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// tokWaitFor polls cond until it holds, failing the test with what after 60 s.
func tokWaitFor(t *testing.T, a *appliance, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s\nlog:\n%s", what, a.logs.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// tokESTEnroll is estEnroll returning the body too.
func tokESTEnroll(t *testing.T, a *appliance, mailbox string) (int, string) {
	t.Helper()
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", a.state, "--email", mailbox, "--template", "smime-signature"))
	body, _ := os.ReadFile(estCSR(t, t.TempDir(), "k", "/CN="+mailbox))
	req, _ := http.NewRequest("POST", a.url+"/.well-known/est/smime-signature/simpleenroll", bytes.NewReader(body))
	req.SetBasicAuth(mailbox, code)
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatalf("simpleenroll: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tokArchivalRequest prepares an archival enrollment (openssl key, CSR and CMS envelope to the
// transport certificate) and its enrollment code.
func tokArchivalRequest(t *testing.T, a *appliance, mailbox string) (code string, body []byte) {
	t.Helper()
	dir := t.TempDir()
	tr := filepath.Join(dir, "transport.pem")
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(a.state, "ca.pem"), "-o", tr, a.url+"/api/v1/transport-certificate")
	_, csrDER, env := opensslArchivalInput(t, dir, "k", mailbox, tr)
	body, _ = json.Marshal(map[string]string{"template": "smime-encryption",
		"csr": base64.StdEncoding.EncodeToString(csrDER), "encrypted_key": base64.StdEncoding.EncodeToString(env)})
	code = strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", a.state, "--email", mailbox))
	return code, body
}

// tokEnrollJSON is enrollJSON returning the body too.
func tokEnrollJSON(t *testing.T, a *appliance, mailbox, code string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", a.url+"/api/v1/enroll", bytes.NewReader(body))
	req.SetBasicAuth(mailbox, code)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tokCopyDir copies a folder tree (SoftHSM's token files) with cp -a.
func tokCopyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", from, to, err, out)
	}
}

// TestTokenSwappedLive: the HSM behind p11-kit goes away and comes back as another token with
// the same label, holding other keys under the appliance's key labels. The appliance checks
// the keys against its certificates after reconnecting and is not ready: 503 on /readyz, on
// EST and on an archival enrollment (never a 4xx: the client did nothing wrong), the metric
// and a log line naming each key. With the right token back, it serves again by itself.
func TestTokenSwappedLive(t *testing.T) {
	t.Parallel()
	tokRequireP11kit(t)
	state := devState(t)
	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := p11kitServer(t, state, socket)
	setTokenModule(t, state, tokP11kitClient)
	a := serveWith(t, state, []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + socket}, "")

	if got := estEnroll(t, a, "before@example.org"); got != 200 {
		t.Fatalf("enrollment with the right token: %d", got)
	}
	arcCode, arcBody := tokArchivalRequest(t, a, "swap@example.org")

	// The swap: the same token label, the same PIN, new keys under the same labels.
	tokStopP11kit(server)
	tokens := filepath.Join(state, "softhsm", "tokens")
	saved := filepath.Join(t.TempDir(), "tokens")
	tokCopyDir(t, tokens, saved)
	pinBytes, err := os.ReadFile(filepath.Join(state, "softhsm", "pins", "keyarc.pin"))
	if err != nil {
		t.Fatal(err)
	}
	pin := strings.TrimSpace(string(pinBytes))
	env := tokSoftHSMEnv(state)
	run2(t, env, "softhsm2-util", "--delete-token", "--token", "keyarc")
	run2(t, env, "softhsm2-util", "--init-token", "--free", "--label", "keyarc", "--pin", pin, "--so-pin", "87654321")
	for _, k := range []struct{ label, typ, usage string }{
		{"ca-key", "EC:prime256v1", "--usage-sign"},
		{"audit-key", "EC:prime256v1", "--usage-sign"},
		{"transport-key", "rsa:2048", "--usage-decrypt"},
	} {
		run2(t, env, "pkcs11-tool", "--module", softhsmModule(), "--token-label", "keyarc", "--login", "--pin", pin,
			"--keypairgen", "--key-type", k.typ, "--label", k.label, k.usage)
	}
	server = p11kitServer(t, state, socket)

	tokWaitFor(t, a, "the appliance has reconnected to the other token", func() bool {
		logs := a.logs.String()
		return strings.Contains(logs, "holds another key") || strings.Count(logs, "reconnected") > 0
	})
	code, body := tokGet(t, a, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "other keys") {
		t.Errorf("/readyz with a swapped token: %d %q, want 503 naming other keys", code, body)
	}
	if got := tokMetric(t, a, "keyarc_token_ready"); got != "0" {
		t.Errorf("keyarc_token_ready = %q with a swapped token, want 0", got)
	}
	if got := tokMetric(t, a, `keyarc_token_fault{cause="key_mismatch"}`); got != "1" {
		t.Errorf(`keyarc_token_fault{cause="key_mismatch"} = %q, want 1`, got)
	}
	if code, body := tokESTEnroll(t, a, "during@example.org"); code != http.StatusServiceUnavailable || !strings.Contains(body, "other keys") {
		t.Errorf("EST enrollment with a swapped token: %d %q, want 503 naming other keys", code, body)
	}
	if code, body := tokEnrollJSON(t, a, "swap@example.org", arcCode, arcBody); code != http.StatusServiceUnavailable {
		t.Errorf("archival enrollment with a swapped token: %d %s, want 503", code, body)
	}
	logs := a.logs.String()
	for _, key := range []string{"ca-key", "transport-key", "audit-key"} {
		if !regexp.MustCompile(`holds another key[^\n]*key=` + key + `\b`).MatchString(logs) {
			t.Errorf("no log line names key %s as changed", key)
		}
	}

	// The right token back: service resumes without a restart, and the code still works.
	tokStopP11kit(server)
	if err := os.RemoveAll(tokens); err != nil {
		t.Fatal(err)
	}
	tokCopyDir(t, saved, tokens)
	p11kitServer(t, state, socket)
	tokWaitFor(t, a, "/readyz answers 200 with the right token back", func() bool { return getStatus(t, a, "/readyz") == 200 })
	if got := tokMetric(t, a, `keyarc_token_fault{cause="key_mismatch"}`); got != "0" {
		t.Errorf(`keyarc_token_fault{cause="key_mismatch"} = %q with the right token back, want 0`, got)
	}
	if code, body := tokEnrollJSON(t, a, "swap@example.org", arcCode, arcBody); code != 200 {
		t.Errorf("archival enrollment with the right token back: %d %s", code, body)
	}
}

// TestTokenPINRefusedLive: the token comes back with another PIN. The appliance logs in once,
// is refused, and says so (/readyz, 503s, the log, the metric) without logging in again or
// logging the checkpoint failure at every tick. A change of the PIN file, or SIGHUP after the
// token was fixed, is one more login each, and brings service back without a restart.
// pkcs11-spy sits between the appliance and p11-kit's client and counts the C_Login calls.
func TestTokenPINRefusedLive(t *testing.T) {
	t.Parallel()
	tokRequireP11kit(t)
	spy := "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"
	if _, err := os.Stat(spy); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-spy.so (opensc) missing")
		}
		t.Skip("pkcs11-spy.so missing")
	}
	state := devState(t)
	// A checkpoint after every audit entry: a refused enrollment makes one due at once.
	cfgPath := filepath.Join(state, "keyarc.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(cfg, []byte("\naudit:")) {
		t.Fatalf("the dev configuration has an audit section already; adapt this test:\n%s", cfg)
	}
	writeFile(t, cfgPath, append(cfg, []byte("\naudit:\n  checkpoint_every: 1\n")...))
	pinFile := filepath.Join(state, "softhsm", "pins", "keyarc.pin")
	pinBytes, err := os.ReadFile(pinFile)
	if err != nil {
		t.Fatal(err)
	}
	oldPIN, newPIN, otherPIN := strings.TrimSpace(string(pinBytes)), "24682468", "13571357"

	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := p11kitServer(t, state, socket)
	setTokenModule(t, state, spy)
	spyLog := filepath.Join(t.TempDir(), "spy.log")
	a := serveWith(t, state, []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + socket,
		"PKCS11SPY=" + tokP11kitClient, "PKCS11SPY_OUTPUT=" + spyLog}, "")
	spyCount := func(what string) int {
		b, err := os.ReadFile(spyLog)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), what)
	}
	if n := spyCount("CKR_PIN_INCORRECT"); n != 0 {
		t.Fatalf("%d refused logins with the right PIN", n)
	}

	// The token comes back with a PIN the appliance does not have.
	loginsBefore := spyCount("C_Login")
	tokStopP11kit(server)
	changeTokenPIN(t, state, oldPIN, newPIN)
	server = p11kitServer(t, state, socket)
	tokWaitFor(t, a, "the appliance tried the PIN", func() bool { return spyCount("CKR_PIN_INCORRECT") >= 1 })
	code, body := tokGet(t, a, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "refused the PIN") {
		t.Errorf("/readyz with the PIN refused: %d %q, want 503 saying the token refused the PIN", code, body)
	}
	if code, body := tokESTEnroll(t, a, "refused@example.org"); code != http.StatusServiceUnavailable || !strings.Contains(body, "refused the PIN") {
		t.Errorf("EST enrollment with the PIN refused: %d %q, want 503 saying the token refused the PIN", code, body)
	}
	if got := tokMetric(t, a, `keyarc_token_fault{cause="pin_refused"}`); got != "1" {
		t.Errorf(`keyarc_token_fault{cause="pin_refused"} = %q, want 1`, got)
	}
	// One attempt, one C_Login. Several watch intervals (5 s) and readiness checks pass: no
	// other login, and the checkpoint that falls due cannot be signed, which is logged once.
	logins := spyCount("C_Login")
	if logins != loginsBefore+1 {
		t.Errorf("%d C_Login calls for the refused attempt, want 1", logins-loginsBefore)
	}
	for i := 0; i < 16; i++ {
		getStatus(t, a, "/readyz")
		time.Sleep(time.Second)
	}
	if n := spyCount("CKR_PIN_INCORRECT"); n != 1 {
		t.Errorf("%d refused logins on an unchanged PIN file, want exactly 1", n)
	}
	if n := spyCount("C_Login"); n != logins {
		t.Errorf("%d more C_Login calls on an unchanged PIN file, want none", n-logins)
	}
	logs := a.logs.String()
	if !strings.Contains(logs, "refused the PIN") {
		t.Error("the log does not say the token refused the PIN")
	}
	if strings.Contains(logs, "waiting to reconnect") {
		t.Error("the log says the appliance waits to reconnect, while the token refused the PIN")
	}
	if n := len(regexp.MustCompile(`(?m)^.*level=ERROR msg="audit checkpoint.*$`).FindAllString(logs, -1)); n > 1 {
		t.Errorf("the checkpoint failure is logged %d times, want once", n)
	}
	if strings.Contains(logs, oldPIN) || strings.Contains(logs, newPIN) {
		t.Error("a PIN appears in the log")
	}

	// SIGHUP with the PIN file unchanged: exactly one more login, refused again.
	logins = spyCount("C_Login")
	a.cmd.Process.Signal(syscall.SIGHUP)
	tokWaitFor(t, a, "SIGHUP made one more attempt", func() bool { return spyCount("CKR_PIN_INCORRECT") >= 2 })
	for i := 0; i < 8; i++ {
		getStatus(t, a, "/readyz")
		time.Sleep(time.Second)
	}
	if n := spyCount("CKR_PIN_INCORRECT"); n != 2 {
		t.Errorf("%d refused logins after one SIGHUP, want 2", n)
	}
	if n := spyCount("C_Login") - logins; n != 1 {
		t.Errorf("%d C_Login calls for one SIGHUP, want 1", n)
	}

	// The operator puts the right PIN in the file: one login, service is back.
	writeFile(t, pinFile, []byte(newPIN+"\n"))
	tokWaitFor(t, a, "/readyz answers 200 after the PIN file was fixed", func() bool { return getStatus(t, a, "/readyz") == 200 })
	if code, body := tokESTEnroll(t, a, "fixed@example.org"); code != 200 {
		t.Errorf("EST enrollment after the PIN file was fixed: %d %s", code, body)
	}
	if got := tokMetric(t, a, `keyarc_token_fault{cause="pin_refused"}`); got != "0" {
		t.Errorf(`keyarc_token_fault{cause="pin_refused"} = %q after the fix, want 0`, got)
	}
	if n := spyCount("CKR_PIN_INCORRECT"); n != 2 {
		t.Errorf("%d refused logins in all, want 2", n)
	}

	// The token's PIN changes again, and this time the operator fixes the token, not the
	// file: SIGHUP tells the appliance to try once more.
	tokStopP11kit(server)
	changeTokenPIN(t, state, newPIN, otherPIN)
	server = p11kitServer(t, state, socket)
	tokWaitFor(t, a, "the appliance tried the PIN again", func() bool { return spyCount("CKR_PIN_INCORRECT") >= 3 })
	tokStopP11kit(server)
	changeTokenPIN(t, state, otherPIN, newPIN)
	p11kitServer(t, state, socket)
	for i := 0; i < 8; i++ {
		if getStatus(t, a, "/readyz") == 200 {
			t.Fatal("the appliance logged in again on an unchanged PIN file without being asked")
		}
		time.Sleep(time.Second)
	}
	a.cmd.Process.Signal(syscall.SIGHUP)
	tokWaitFor(t, a, "/readyz answers 200 after the token was fixed and SIGHUP", func() bool { return getStatus(t, a, "/readyz") == 200 })
	if n := spyCount("CKR_PIN_INCORRECT"); n != 3 {
		t.Errorf("%d refused logins in all, want 3 (one per attempt)", n)
	}
}

// TestTokenStoreMissing: SoftHSM's token directory is gone. serve refuses to start saying the
// token store was not found and where it was looked for, not a bare CKR_GENERAL_ERROR.
func TestTokenStoreMissing(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	tokens := filepath.Join(state, "softhsm", "tokens")
	if err := os.Rename(tokens, tokens+".away"); err != nil {
		t.Fatal(err)
	}
	serveFails(t, state, "token store not found", tokens, filepath.Join(state, "softhsm", "softhsm2.conf"))
}
