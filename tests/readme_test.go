package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
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

// readmeBlock is one ```sh block of the README.
type readmeBlock struct {
	line   int    // line of the opening fence
	code   string // the block as pasted
	notRun string // the reason given by a <!-- not run: REASON --> line just before the fence
}

var notRunRE = regexp.MustCompile(`^<!-- not run: (.+) -->$`)

// readmeBlocks extracts the shell blocks of a README in order. A block preceded by
// `<!-- not run: REASON -->` is one an operator runs elsewhere (a real HSM, a stopped
// appliance, the appliance itself); every other block must run as pasted.
func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var cur *readmeBlock
	prev := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && line == "```sh":
			cur = &readmeBlock{line: n}
			if m := notRunRE.FindStringSubmatch(strings.TrimSpace(prev)); m != nil {
				cur.notRun = m[1]
			}
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.code += line + "\n"
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s: the block at line %d is not closed", path, cur.line)
	}
	return blocks
}

// copyWorkingTree copies the repository's files (tracked, and new ones not ignored) to dir: a
// fresh working copy, without .state/ or bin/.
func copyWorkingTree(t *testing.T, dir string) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, name)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or not a file
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestREADME runs every shell block of the README, in order, as an operator pastes them into one
// terminal: in a fresh working copy, with `make run` serving in the background on the ports the
// README names. Blocks marked `<!-- not run: REASON -->` are skipped; there are few, and each
// says why.
func TestREADME(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary with make and runs the whole README")
	}
	requireTools(t, "make", "git", "openssl", "curl", "certutil", "pk12util", "softhsm2-util", "awk")
	for _, addr := range []string{"127.0.0.1:8443", "127.0.0.1:9180", "127.0.0.1:8080"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			msg := fmt.Sprintf("the README's address %s is in use (another `make run`?): %v", addr, err)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		l.Close()
	}
	work := t.TempDir()
	copyWorkingTree(t, work)
	blocks := readmeBlocks(t, filepath.Join(work, "README.md"))
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	var skipped []string
	for _, b := range blocks {
		if b.notRun != "" {
			skipped = append(skipped, fmt.Sprintf("line %d (%s)", b.line, b.notRun))
			continue
		}
		fmt.Fprintf(&script, "echo '>>> README.md block at line %d' >&2\n%s", b.line, b.code)
	}
	if len(blocks)-len(skipped) < 10 || len(skipped) > 3 {
		t.Fatalf("%d blocks, %d not run (%s): the set not run must stay tiny", len(blocks), len(skipped), strings.Join(skipped, "; "))
	}
	t.Logf("not run: %s", strings.Join(skipped, "; "))

	// `make run`, in the background, as the README says: it builds bin/keyarc, provisions .state/
	// and serves on 127.0.0.1:8443 and 127.0.0.1:9180.
	var serveLog syncBuffer
	mk := exec.Command("make", "run")
	mk.Dir = work
	mk.Env = cleanEnv()
	mk.Stdout, mk.Stderr = &serveLog, &serveLog
	mk.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := mk.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- mk.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		syscall.Kill(-mk.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			syscall.Kill(-mk.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	t.Cleanup(stop)
	waitReady(t, "https://127.0.0.1:8443/readyz", exited, &serveLog)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sh := exec.CommandContext(ctx, "bash", "-c", script.String())
	sh.Dir = work
	sh.Env = cleanEnv()
	sh.Stdin = strings.NewReader("")
	var out bytes.Buffer
	sh.Stdout, sh.Stderr = &out, &out
	if err := sh.Run(); err != nil {
		t.Fatalf("the README's blocks, run in order, stopped: %v\n%s\nappliance log:\n%s", err, tail(out.String(), 6000), tail(serveLog.String(), 3000))
	}
	stop()
	if _, err := os.Stat(filepath.Join(work, ".state", "serve.json")); !os.IsNotExist(err) {
		t.Errorf("serve.json after the appliance stopped: %v", err)
	}
}

// waitReady waits for the appliance `make run` starts (a build, init --dev, serve).
func waitReady(t *testing.T, url string, exited chan error, log *syncBuffer) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		// Readiness only: the README's own blocks check the certificate with curl --cacert.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		select {
		case err := <-exited:
			t.Fatalf("make run exited: %v\n%s", err, tail(log.String(), 6000))
		default:
		}
		resp, err := c.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("make run not ready after 5 minutes: %v\n%s", err, tail(log.String(), 6000))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// cleanEnv is the test's environment without variables that would steer the README's commands
// elsewhere than a fresh operator's terminal.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SOFTHSM2_CONF=") || strings.HasPrefix(kv, "STATE=") || strings.HasPrefix(kv, "ADDR=") || strings.HasPrefix(kv, "METRICS=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}
