package tests

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTokenHung freezes the HSM instead of losing it: the p11-kit server gets SIGSTOP, so
// the token stops answering without disconnecting and every call into it blocks. The
// appliance must not block with it: EST answers 503 once the call's time limit has passed,
// /readyz answers 503 and keyarc_token_ready drops to 0 (so the alert fires), and after
// SIGCONT the appliance reconnects and serves again by itself. Frozen again, SIGTERM still
// stops the process.
func TestTokenHung(t *testing.T) {
	t.Parallel()
	tokRequireP11kit(t)
	state := devState(t)
	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := p11kitServer(t, state, socket)
	setTokenModule(t, state, tokP11kitClient)
	// token.call_timeout, the operator's setting of the limit, shortened so the test waits less.
	cfgPath := filepath.Join(state, "keyarc.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "  call_timeout: 10s\n") {
		t.Fatalf("keyarc init wrote no token.call_timeout of 10s:\n%s", cfg)
	}
	writeFile(t, cfgPath, []byte(strings.Replace(string(cfg), "  call_timeout: 10s\n", "  call_timeout: 3s\n", 1)))
	a := serveWith(t, state, []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + socket}, "")
	// Cleanups run last first: the server is thawed before it is killed.
	freeze := func() { syscall.Kill(-server.Process.Pid, syscall.SIGSTOP) }
	thaw := func() { syscall.Kill(-server.Process.Pid, syscall.SIGCONT) }
	t.Cleanup(thaw)

	if got := estEnroll(t, a, "before@example.org"); got != http.StatusOK {
		t.Fatalf("enrollment with the token answering: %d", got)
	}
	// The enrollment code and the CSR are made before the freeze.
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", a.state, "--email", "during@example.org", "--template", "smime-signature"))
	csr, err := os.ReadFile(estCSR(t, t.TempDir(), "k", "/CN=during@example.org"))
	if err != nil {
		t.Fatal(err)
	}

	freeze()
	if got := estEnrollWithCode(t, a, "during@example.org", code, csr); got != http.StatusServiceUnavailable {
		t.Fatalf("enrollment with the token frozen: %d, want 503\nlog:\n%s", got, a.logs.String())
	}
	if got, body := tokGet(t, a, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz with the token frozen: %d %q, want 503", got, body)
	}
	tokWaitFor(t, a, "keyarc_token_ready is 0", func() bool { return tokMetric(t, a, "keyarc_token_ready") == "0" })
	if got := tokMetric(t, a, `keyarc_token_fault{cause="unreachable"}`); got != "1" {
		t.Errorf(`keyarc_token_fault{cause="unreachable"} = %q with the token frozen, want 1`, got)
	}
	if got := getStatus(t, a, "/healthz"); got != http.StatusOK {
		t.Errorf("/healthz (the process is alive): %d", got)
	}
	if !strings.Contains(a.logs.String(), "did not answer in time") {
		t.Error("the log does not say the token did not answer in time")
	}

	thaw()
	tokWaitFor(t, a, "/readyz answers 200 again", func() bool {
		code, _ := tokGet(t, a, "/readyz")
		return code == http.StatusOK
	})
	if got := tokMetric(t, a, "keyarc_token_ready"); got != "1" {
		t.Errorf("keyarc_token_ready = %q after the token came back, want 1", got)
	}
	if got := estEnroll(t, a, "after@example.org"); got != http.StatusOK {
		t.Fatalf("enrollment after the token came back: %d\nlog:\n%s", got, a.logs.String())
	}

	// Frozen again, SIGTERM: the shutdown checkpoint and closing the token give up on the
	// token, and the process exits.
	freeze()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(3 * time.Minute):
		t.Fatalf("keyarc serve still running 3 minutes after SIGTERM with the token frozen\nlog:\n%s", a.logs.String())
	}
	a.exited = make(chan error, 1)
	a.exited <- nil
}
