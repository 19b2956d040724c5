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
// does): at CallTimeout the watchdog marks the token as not answering while the caller is
// still held, the held caller gets ErrTokenHung when the call returns, the token is not
// used until the call has returned and a new login succeeded, the old connection is closed
// once its call returns, and Close never waits longer than CallTimeout.
//
// The held caller itself returns only when the module does: operations run inline on the
// caller's goroutine (a goroutine per call cost a third of the signing throughput). What
// must not wait is everything else: readiness and every later operation.
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

	// hang holds a call inside the module until the watchdog has found it; release lets
	// it return, and checks what its caller got.
	hang := func() (release func()) {
		t.Helper()
		held := holdCall(t, tok, "sign")
		var once sync.Once
		return func() {
			once.Do(func() {
				if err := held(); !errors.Is(err, ErrTokenHung) || !errors.Is(err, ErrTokenGone) {
					t.Errorf("a call held past CallTimeout = %v, want ErrTokenHung and ErrTokenGone", err)
				}
			})
		}
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

// holdCall runs operation op with a call that stays inside the module until released,
// and returns once the watchdog has found it (the token no longer counts as answering)
// while the call is still held. release lets the call return and gives its caller's error.
func holdCall(t *testing.T, tok *Token, op string) (release func() error) {
	t.Helper()
	block := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- tok.do(op, func(*conn) error { <-block; return nil }) }()
	waitUnready(t, tok, time.Minute)
	select {
	case err := <-done:
		t.Fatalf("a held call returned before its release: %v", err)
	default:
	}
	var once sync.Once
	var err error
	release = func() error {
		once.Do(func() {
			close(block)
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { release() })
	return release
}

// waitUnready waits until tok counts as not answering, without calling into the module.
func waitUnready(t *testing.T, tok *Token, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !tok.broken.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the token still counts as answering")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchdog: a call that returns past its limit is reported as hung although it
// succeeded, and counted once; a key generation waiting behind a hung one does not wait
// for the module; a call that returns in time under a short limit is not flagged, nor is
// one that panicked.
func TestWatchdog(t *testing.T) {
	reg := prometheus.NewRegistry()
	const limit = 200 * time.Millisecond
	_, _, tok := newToken(t, Options{CallTimeout: limit, KeyGenTimeout: limit, Registerer: reg})
	for range 100 {
		if err := tok.do("find", func(*conn) error { return nil }); err != nil {
			t.Fatalf("a call that returned in time = %v", err)
		}
	}
	// A call that panics (and whose caller recovers, as an HTTP server does) is over too:
	// its watch does not fire later, and its slot and connection are given back.
	func() {
		defer func() { _ = recover() }()
		_ = tok.do("find", func(*conn) error { panic("in the module") })
	}()
	time.Sleep(3 * limit)
	if err := tok.do("find", func(*conn) error { return nil }); err != nil {
		t.Fatalf("a call after one that panicked = %v", err)
	}
	if n := len(tok.sem); n != 0 {
		t.Fatalf("%d session slots still taken", n)
	}

	// A generation holds GenerateKey's lock, as GenerateKey does, and hangs; the next
	// one fails as soon as it sees the token is not answering, without waiting for the
	// module.
	if err := tok.lockGen(); err != nil {
		t.Fatal(err)
	}
	release := holdCall(t, tok, "generate")
	gen := make(chan error, 1)
	go func() {
		_, err := tok.GenerateKey("k2", P256, UsageSign)
		gen <- err
	}()
	select {
	case err := <-gen:
		if !errors.Is(err, ErrTokenGone) {
			t.Errorf("GenerateKey behind a hung one = %v, want ErrTokenGone", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("GenerateKey waited for a hung generation")
	}
	if err := tok.Ping(); !errors.Is(err, ErrTokenHung) {
		t.Errorf("Ping while a call hangs = %v, want ErrTokenHung", err)
	}
	if err := release(); !errors.Is(err, ErrTokenHung) {
		t.Errorf("a call that succeeded past its limit = %v, want ErrTokenHung", err)
	}
	tok.unlockGen()
	if got := counter(t, reg, "generate", "token_gone"); got != 2 {
		t.Errorf("generate token_gone = %v, want 2 (the hung call once, the refused one)", got)
	}
	pingUntil(t, tok, 10*time.Second)
	if _, err := tok.GenerateKey("k3", P256, UsageSign); err != nil {
		t.Fatalf("GenerateKey after reconnecting: %v", err)
	}
}

// TestTokenHangP11Kit freezes a real token server (SIGSTOP of p11-kit server): the
// operations inside the module at the time fail with ErrTokenHung once it answers, every
// later operation, Ping and Open fail without waiting for it, the token comes back by
// itself after SIGCONT, and Close returns while the server is frozen.
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
	reg := prometheus.NewRegistry()
	tok, err := Open(u.String(), Options{CallTimeout: limit, PoolWaitTimeout: limit, Registerer: reg})
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
	// Concurrent signers: those that reached the module stay there until it answers, and
	// get ErrTokenHung then; the others get ErrTokenGone (or a full pool) without waiting
	// for it. Meanwhile the watchdog has marked the token as not answering: Ping and every
	// new operation fail at once.
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
	waitUnready(t, tok, time.Minute)
	late := make(chan error, 1)
	go func() {
		_, err := s.Sign(nil, digest, crypto.SHA256)
		late <- err
	}()
	select {
	case err := <-late:
		if !errors.Is(err, ErrTokenGone) {
			t.Errorf("Sign on a token found hung = %v, want ErrTokenGone", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Sign on a token found hung waited for the module")
	}
	for i := range 3 {
		if err := tok.Ping(); !errors.Is(err, ErrTokenGone) {
			t.Fatalf("Ping %d on a frozen token = %v, want ErrTokenGone", i, err)
		}
	}

	// The token answers again only once every signer has been given up on (the held ones
	// by the watchdog at their own limit, the others for a full pool or a lost token):
	// a call the module answers within its limit is a success, however late its peers are.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if counter(t, reg, "sign", "token_gone")+counter(t, reg, "sign", "pool_exhausted") >= 16+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the signers on a frozen token were not all given up on")
		}
	}
	thaw()
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
