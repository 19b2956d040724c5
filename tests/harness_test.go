// Package tests runs keyarc end to end: the real binary, real SoftHSM tokens, a real SQLite
// file, and the users' own tools (openssl, curl, pkcs11-tool, pk12util) as clients.
package tests

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/directory/ldaptest"
)

// keyarcBin is the binary under test, built once by TestMain.
var keyarcBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keyarc-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keyarcBin = filepath.Join(dir, "keyarc")
	args := []string{"build", "-o", keyarcBin}
	if os.Getenv("KEYARC_E2E_RACE") != "" {
		// make test sets this: the appliance's own concurrency is then checked under the real
		// scenarios, and a data race makes the binary exit with status 66 (see raceExit).
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/keyarc")...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build keyarc:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTools skips (or, under CI, fails) when a tool the scenario drives is missing.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI (make test installs it)", tool)
			}
			t.Skipf("%s not installed; run `make deps`", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/softhsm/libsofthsm2.so"); err != nil && os.Getenv("KEYARC_PKCS11_MODULE") == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("SoftHSM is required in CI (make test installs it)")
		}
		t.Skip("SoftHSM not installed; run `make deps`")
	}
}

// keyarc runs the binary and returns its standard output; it fails the test on error.
func keyarc(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := keyarcResult(args...)
	if err != nil {
		t.Fatalf("keyarc %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// keyarcResult runs the binary and returns stdout, stderr and the error.
func keyarcResult(args ...string) (string, string, error) {
	cmd := exec.Command(keyarcBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if strings.Contains(stderr.String(), "WARNING: DATA RACE") {
		err = fmt.Errorf("the race detector found a data race: %w", err)
	}
	return stdout.String(), stderr.String(), err
}

// run runs a tool and returns its combined output, failing the test on error.
func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	out, err := runResult(dir, nil, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runResult(dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// appliance is a running `keyarc serve` over a state folder made by `keyarc init --dev`.
type appliance struct {
	state   string
	url     string
	metrics string
	cmd     *exec.Cmd
	logs    *syncBuffer
	client  *http.Client
	exited  chan error
}

// stop shuts the appliance down cleanly (SIGINT) and waits for it.
func (a *appliance) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the appliance did not stop")
	}
	a.exited = make(chan error, 1)
	a.exited <- nil
}

// kill stops the appliance with SIGKILL, as a crash would, and waits for it to be gone.
func (a *appliance) kill(t *testing.T) {
	t.Helper()
	a.cmd.Process.Kill()
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the appliance did not die")
	}
	a.exited = make(chan error, 1)
	a.exited <- nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// devState makes a development state folder with `keyarc init --dev`.
func devState(t *testing.T, extra ...string) string {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	keyarc(t, append([]string{"init", "--dev", "--state", state}, extra...)...)
	return state
}

// freePort returns a loopback address whose port is free now, taken below the kernel's range
// of ephemeral ports when there is room (ldaptest.FreePort).
func freePort(t *testing.T) string {
	t.Helper()
	p, err := ldaptest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// serve starts the appliance on free loopback ports and waits until it is ready.
func serve(t *testing.T, state string) *appliance {
	t.Helper()
	return serveWith(t, state, nil, "")
}

// serveWith is serve with extra environment variables and, when addr is not empty, a given
// HTTPS address (to restart an appliance where it was), and extra serve arguments. A free port
// is free only until something else binds it (another test's appliance, a client's outgoing
// connection): an appliance that found one of the ports this function chose taken is started
// again on others.
func serveWith(t *testing.T, state string, env []string, addr string, args ...string) *appliance {
	t.Helper()
	for try := 1; ; try++ {
		a, taken := startAppliance(t, state, env, addr, args...)
		if !taken {
			return a
		}
		if try == 3 {
			t.Fatalf("keyarc serve found its ports taken %d times:\n%s", try, a.logs.String())
		}
		t.Logf("keyarc serve found a port taken; starting it on others")
	}
}

// startAppliance starts the appliance and waits until it is ready. taken reports an appliance
// that exited at start because a port that was not given (addr, --public-addr) was taken;
// it has been waited for.
func startAppliance(t *testing.T, state string, env []string, addr string, args ...string) (a *appliance, taken bool) {
	t.Helper()
	chosen := addr == ""
	if chosen {
		addr = freePort(t)
	}
	maddr := freePort(t)
	if !slices.Contains(args, "--public-addr") {
		// Never serve's default public listener, 127.0.0.1:8080: that is `make run`'s, which the
		// README test runs beside these tests and asks for OCSP there.
		args = append(slices.Clip(args), "--public-addr", freePort(t))
	}
	a = &appliance{state: state, url: "https://" + addr, metrics: "http://" + maddr, logs: &syncBuffer{}}
	a.cmd = exec.Command(keyarcBin, append([]string{"serve", "--state", state, "--addr", addr, "--metrics-addr", maddr}, args...)...)
	a.cmd.Env = append(os.Environ(), env...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- a.cmd.Wait() }()
	a.exited = exited
	cleanup := func() {
		a.cmd.Process.Signal(os.Interrupt)
		select {
		case <-a.exited:
		case <-time.After(20 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
		}
		if strings.Contains(a.logs.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in keyarc serve")
		}
		if t.Failed() {
			t.Logf("appliance log:\n%s", a.logs.String())
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(state, "ca.pem")))
	a.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			logs := a.logs.String()
			if strings.Contains(logs, "address already in use") && (chosen || !strings.Contains(logs, "listen "+addr+":")) {
				return a, true
			}
			// Put the exit back for the cleanup, which waits for it.
			exited <- err
			t.Cleanup(cleanup)
			t.Fatalf("keyarc serve exited: %v\n%s", err, logs)
		default:
		}
		resp, err := a.client.Get(a.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Cleanup(cleanup)
				return a, false
			}
		}
		if time.Now().After(deadline) {
			t.Cleanup(cleanup)
			t.Fatalf("appliance not ready after 60s: %v\n%s", err, a.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// interrupted runs keyarc with args, sends it SIGINT (Ctrl-C) after the given time, and returns
// what it wrote to stderr and how it ended.
func interrupted(t *testing.T, after time.Duration, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(keyarcBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(after)
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	return stderr.String(), err
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
