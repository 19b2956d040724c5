package tests

import (
	"bytes"
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
// appliance must not block with it: once the call's time limit has passed, /readyz answers
// 503, keyarc_token_ready drops to 0 (so the alert fires) and every new EST request gets 503
// at once; the request caught inside the frozen call gets 503 when the token answers again.
// After SIGCONT the appliance reconnects and serves again by itself. Frozen again, SIGTERM
// still stops the process.
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
	// The enrollment codes and the CSRs are made before the freeze.
	enrollment := func(mailbox string) (code string, csr []byte) {
		code = strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", a.state, "--email", mailbox, "--template", "smime-signature"))
		csr, err := os.ReadFile(estCSR(t, t.TempDir(), "k", "/CN="+mailbox))
		if err != nil {
			t.Fatal(err)
		}
		return code, csr
	}
	caughtCode, caughtCSR := enrollment("caught@example.org")
	code, csr := enrollment("during@example.org")

	freeze()
	// This request goes into the frozen token and waits there: a call into the module cannot
	// be taken back. It must end with 503, not with a certificate nor a client error.
	caught := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", a.url+"/.well-known/est/smime-signature/simpleenroll", bytes.NewReader(caughtCSR))
		req.SetBasicAuth("caught@example.org", caughtCode)
		req.Header.Set("Content-Type", "application/pkcs10")
		resp, err := a.client.Do(req)
		if err != nil {
			caught <- 0
			return
		}
		resp.Body.Close()
		caught <- resp.StatusCode
	}()
	tokWaitFor(t, a, "/readyz answers 503 once the call's limit has passed", func() bool {
		code, _ := tokGet(t, a, "/readyz")
		return code == http.StatusServiceUnavailable
	})
	if got := estEnrollWithCode(t, a, "during@example.org", code, csr); got != http.StatusServiceUnavailable {
		t.Fatalf("enrollment with the token found frozen: %d, want 503\nlog:\n%s", got, a.logs.String())
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
	select {
	case got := <-caught:
		if got != http.StatusServiceUnavailable {
			t.Errorf("the enrollment caught inside the frozen call: %d, want 503", got)
		}
	case <-time.After(time.Minute):
		t.Fatalf("the enrollment caught inside the frozen call has no answer a minute after the thaw\nlog:\n%s", a.logs.String())
	}
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
