package tests

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeWritesNoCoreFile: a crash of the appliance writes no core file, even where core
// files are allowed (`ulimit -c unlimited`) and the Go runtime is asked for one
// (GOTRACEBACK=crash). The process holds the token PIN, the SoftHSM token's keys, the SMTP and
// database passwords and, while it serves, users' private keys and PKCS#12 passwords: none of
// that may land in a file. The appliance also drops the core limit to 0 for what it starts.
func TestServeWritesNoCoreFile(t *testing.T) {
	t.Parallel()
	requireTools(t, "sh")
	if runtime.GOOS != "linux" {
		t.Skip("core dump protection is checked on Linux")
	}
	pattern, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		t.Skip(err)
	}
	// A core_pattern of a plain file name puts the core file in the crashing process's working
	// directory, where this test looks; a pipe or a path elsewhere hides it from the test.
	observable := !bytes.ContainsAny(bytes.TrimSpace(pattern), "|/")
	state := devState(t)
	pin, err := os.ReadFile(filepath.Join(state, "softhsm", "pins", "keyarc.pin"))
	if err != nil {
		t.Fatal(err)
	}
	pin = bytes.TrimSpace(pin)

	dir := t.TempDir()
	addr := freePort(t)
	cmd := exec.Command("sh", "-c", `ulimit -c unlimited || exit 97; exec "$0" "$@"`, keyarcBin, "serve", "--state", state,
		"--addr", addr, "--metrics-addr", freePort(t), "--public-addr", freePort(t))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOTRACEBACK=crash")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(state, "ca.pem")))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-exited:
			if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 97 {
				t.Skip("the hard core file size limit is 0 here: no core file can be allowed")
			}
			t.Fatalf("keyarc serve exited: %v\n%s", err, logs.String())
		default:
		}
		if resp, err := client.Get("https://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("appliance not ready after 60s:\n%s", logs.String())
		}
	}

	limits, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "limits"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(limits), "\n") {
		// "Max core file size        0                    unlimited            bytes"
		if rest, ok := strings.CutPrefix(line, "Max core file size"); ok {
			if soft := strings.Fields(rest); len(soft) == 0 || soft[0] != "0" {
				t.Errorf("the appliance runs with a core file size limit of %q, want 0", strings.TrimSpace(rest))
			}
		}
	}

	// SIGQUIT with GOTRACEBACK=crash: the runtime prints its stacks and aborts, which dumps core
	// if the process allows it.
	cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("keyarc serve did not end on SIGQUIT")
	}
	if !observable {
		t.Logf("core_pattern %q: a core file would not be in the working directory; only the limit was checked", pattern)
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "core") {
			continue
		}
		core, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		t.Errorf("the crash wrote a core file %s of %d bytes (holding the token PIN: %v)", e.Name(), len(core), bytes.Contains(core, pin))
	}
}
