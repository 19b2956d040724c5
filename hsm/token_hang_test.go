package hsm

import (
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyarc/keyarc/softhsm/softhsmtest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestErrTokenHung: a hung token is a lost token to every caller that checks ErrTokenGone,
// and classify keeps it as it is.
func TestErrTokenHung(t *testing.T) {
	err := fmt.Errorf("hsm: sign with %q: %w", "ca", fmt.Errorf("%w: no answer within 1s", ErrTokenHung))
	for _, target := range []error{ErrTokenHung, ErrTokenGone} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(%v, %v) = false", err, target)
		}
		if !errors.Is(classify(err), target) {
			t.Errorf("classify lost %v", target)
		}
	}
	if errors.Is(ErrTokenGone, ErrTokenHung) {
		t.Error("a lost token is not necessarily a hung one")
	}
	if got := result(err); got != "token_gone" {
		t.Errorf("result label = %q, want token_gone", got)
	}
}

// TestCallTimeout holds a call inside the module (as a token that stops answering
// does): the caller gets ErrTokenHung after CallTimeout, the token is not used until the
// call has returned and a new login succeeded, the old connection is closed once its call
// returns, and Close never waits longer than CallTimeout.
func TestCallTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	const limit = time.Second
	_, _, tok := newToken(t, Options{CallTimeout: limit, Registerer: reg})
	if _, err := tok.GenerateKey("k", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("k")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("hang"))
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}

	hang := func() (release func()) {
		t.Helper()
		block := make(chan struct{})
		err := tok.do("sign", func(*conn) error { <-block; return nil })
		if !errors.Is(err, ErrTokenHung) || !errors.Is(err, ErrTokenGone) {
			t.Fatalf("a call held past CallTimeout = %v, want ErrTokenHung and ErrTokenGone", err)
		}
		var once sync.Once
		return func() { once.Do(func() { close(block) }) }
	}
	old := tok.cur
	release := hang()
	t.Cleanup(release)
	if got := counter(t, reg, "sign", "token_gone"); got != 1 {
		t.Errorf("sign token_gone = %v, want 1", got)
	}
	// Every operation now fails at once; none reaches the dropped connection.
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); !errors.Is(err, ErrTokenGone) {
		t.Errorf("Sign after a hung call = %v, want ErrTokenGone", err)
	}
	if _, err := tok.Signer("k"); !errors.Is(err, ErrTokenGone) {
		t.Errorf("Signer after a hung call = %v, want ErrTokenGone", err)
	}
	// No login while the hung call runs: Ping says so, the first after CallTimeout, the
	// next at once.
	for i := range 3 {
		if err := tok.Ping(); !errors.Is(err, ErrTokenHung) {
			t.Fatalf("Ping %d while a call hangs = %v, want ErrTokenHung", i, err)
		}
	}
	if !old.retired.Load() {
		t.Error("the connection of the hung call is still in use")
	}
	release()
	pingUntil(t, tok, 10*time.Second)
	if tok.cur == old {
		t.Error("Ping did not make a new connection")
	}
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign after reconnecting: %v", err)
	}
	// The old connection was closed once its call returned.
	if err := old.raw.ping(); !errors.Is(err, ErrClosed) {
		t.Errorf("old raw session ping = %v, want ErrClosed", err)
	}

	// Close with a call that never returns: bounded, and says why.
	release = hang()
	t.Cleanup(release)
	done := make(chan error, 1)
	go func() { done <- tok.Close() }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrTokenHung) {
			t.Errorf("Close with a hung call = %v, want ErrTokenHung", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Close waited for a hung call")
	}
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Errorf("Sign after Close = %v, want ErrClosed", err)
	}
	release()
}

// pingUntil pings tok until it answers.
func pingUntil(t *testing.T, tok *Token, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := tok.Ping()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping never succeeded; last: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTokenHangP11Kit freezes a real token server (SIGSTOP of p11-kit server): operations,
// Ping and Open fail with ErrTokenHung instead of hanging, the token comes back by itself
// after SIGCONT, and Close returns while the server is frozen.
func TestTokenHangP11Kit(t *testing.T) {
	client := "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
	if _, err := exec.LookPath("p11-kit"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit is required in CI")
		}
		t.Skip("p11-kit not installed")
	}
	if _, err := os.Stat(client); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit-client.so is required in CI")
		}
		t.Skip("p11-kit-client.so missing")
	}
	in, toks := softhsmtest.Tokens(t, "hang")
	st := toks[0]
	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := exec.Command("p11-kit", "server", "-f", "-n", socket, "--provider", st.Module, "pkcs11:token="+st.Label)
	server.Env = append(os.Environ(), in.Env()...)
	server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-server.Process.Pid, syscall.SIGCONT)
		syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
		server.Wait()
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if i == 100 {
			t.Fatal("p11-kit server made no socket")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+socket)
	freeze := func() { syscall.Kill(-server.Process.Pid, syscall.SIGSTOP) }
	thaw := func() { syscall.Kill(-server.Process.Pid, syscall.SIGCONT) }
	t.Cleanup(thaw)

	u, err := ParseURI(st.URI(""))
	if err != nil {
		t.Fatal(err)
	}
	u.ModulePath = client
	const limit = 2 * time.Second
	tok, err := Open(u.String(), Options{CallTimeout: limit, PoolWaitTimeout: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	pub, err := tok.GenerateKey("pinned", P256, UsageSign)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Expect("pinned", pub); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("pinned")
	if err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil {
		t.Fatal(err)
	}

	freeze()
	// Concurrent signers all get an answer: ErrTokenHung for those that reached the
	// module, ErrTokenGone (or a full pool) for the others.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Sign(nil, digest, crypto.SHA256)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	hung := 0
	for err := range errs {
		switch {
		case errors.Is(err, ErrTokenHung):
			hung++
		case errors.Is(err, ErrTokenGone), errors.Is(err, ErrPoolExhausted):
		default:
			t.Errorf("Sign on a frozen token = %v, want ErrTokenGone", err)
		}
	}
	if hung == 0 {
		t.Error("no Sign reported ErrTokenHung")
	}
	for i := range 3 {
		if err := tok.Ping(); !errors.Is(err, ErrTokenGone) {
			t.Fatalf("Ping %d on a frozen token = %v, want ErrTokenGone", i, err)
		}
	}

	thaw()
	pingUntil(t, tok, 30*time.Second)
	if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil {
		t.Fatalf("Sign after the token came back: %v", err)
	}

	// Frozen again with nothing running: Ping finds it, Close does not wait for it, and
	// Open does not either.
	freeze()
	if err := tok.Ping(); !errors.Is(err, ErrTokenHung) {
		t.Errorf("Ping on a frozen token = %v, want ErrTokenHung", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- tok.Close() }()
	select {
	case err := <-closed:
		if !errors.Is(err, ErrTokenHung) {
			t.Errorf("Close of a frozen token = %v, want ErrTokenHung", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Close waited for a frozen token")
	}
	opened := make(chan error, 1)
	go func() {
		tok2, err := Open(u.String(), Options{CallTimeout: limit})
		if err == nil {
			tok2.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		if !errors.Is(err, ErrTokenHung) {
			t.Errorf("Open of a frozen token = %v, want ErrTokenHung", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Open waited for a frozen token")
	}
	thaw()
}
