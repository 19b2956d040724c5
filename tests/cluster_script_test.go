package tests

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterMakeTarget runs .ci/cluster, what `make cluster` runs, on ports of its own: it
// provisions once, serves three nodes that a client reaches by --server, and leaves no process
// behind, whether it is stopped by SIGTERM or one of its processes dies. A second run reuses
// the state folder without provisioning again.
func TestClusterMakeTarget(t *testing.T) {
	t.Parallel()
	requireTools(t, "p11-kit", "curl", "pg_isready", "psql")
	tokRequireP11kit(t)
	if _, err := os.Stat("/usr/lib/postgresql"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("PostgreSQL is required in CI (make test installs it)")
		}
		t.Skip("PostgreSQL not installed; run `make deps`")
	}
	// Not t.TempDir(): as root, PostgreSQL runs as the postgres user, which must pass through.
	parent, err := os.MkdirTemp("", "keyarc-make-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o711); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(parent, "state")

	// First run: provisions, serves, and stops everything on SIGTERM.
	r := startClusterScript(t, state)
	if !strings.Contains(r.out.String(), "keyarc init --dev") {
		t.Errorf("the first run did not provision:\n%s", r.out.String())
	}
	show := keyarc(t, "admin", "recovery-set", "show", "--state", state, "--as", "admin", "--server", fmt.Sprintf("https://127.0.0.1:%d", r.port+1))
	if !strings.Contains(show, "any 2 of 3") {
		t.Errorf("recovery-set show through node2:\n%s", show)
	}
	for i := 0; i < 3; i++ {
		if !r.alive(fmt.Sprintf("--node node%d", i+1)) {
			t.Errorf("node%d is not among the script's processes", i+1)
		}
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	if code := r.wait(t); code != 143 {
		t.Errorf("exit status after SIGTERM: %d, want 143", code)
	}
	r.noOrphans(t)

	// Second run on the same state: no new provisioning; one node killed takes the rest down.
	r = startClusterScript(t, state)
	if strings.Contains(r.out.String(), "initdb") || strings.Contains(r.out.String(), "keyarc init") {
		t.Errorf("the second run provisioned again:\n%s", r.out.String())
	}
	node2 := r.pidOf("--node node2")
	if node2 == 0 {
		t.Fatalf("node2 is not among the script's processes:\n%s", r.out.String())
	}
	syscall.Kill(node2, syscall.SIGKILL)
	if code := r.wait(t); code != 1 {
		t.Errorf("exit status after a node died: %d, want 1", code)
	}
	if !strings.Contains(r.out.String(), "stopping the rest") {
		t.Errorf("the script does not say why it stopped:\n%s", lastLines(r.out.String(), 20))
	}
	r.noOrphans(t)
}

// clusterScript is a running .ci/cluster.
type clusterScript struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan error
	port   int
	seen   map[int]string // every process of the script's tree seen, with its command line
}

// startClusterScript starts .ci/cluster on free ports and waits until it says it is ready.
func startClusterScript(t *testing.T, state string) *clusterScript {
	t.Helper()
	r := &clusterScript{out: &syncBuffer{}, port: freePortRun(t, 3), seen: map[int]string{}}
	r.cmd = exec.Command("bash", "../.ci/cluster")
	r.cmd.Env = append(os.Environ(), "STATE="+state, "BIN="+keyarcBin, "PORT="+strconv.Itoa(r.port),
		"METRICS_PORT="+strconv.Itoa(freePortRun(t, 3)), "PUBLIC_PORT="+strconv.Itoa(freePortRun(t, 3)))
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.exited = make(chan error, 1)
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-r.exited:
			r.exited <- nil
		default:
			r.cmd.Process.Signal(syscall.SIGTERM)
			r.wait(t)
		}
		for pid := range r.seen {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(r.out.String(), "cluster: ready") {
		select {
		case err := <-r.exited:
			r.exited <- err
			t.Fatalf(".ci/cluster exited before it was ready (%v):\n%s", err, lastLines(r.out.String(), 40))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf(".ci/cluster not ready after 3 minutes:\n%s", lastLines(r.out.String(), 40))
		}
	}
	r.scan()
	return r
}

// scan records the script's process tree as it is now.
func (r *clusterScript) scan() {
	parents := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 {
			parents[pid], _ = strconv.Atoi(f[1])
		}
	}
	in := map[int]bool{r.cmd.Process.Pid: true}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parents {
			if in[pp] && !in[pid] {
				in[pid], changed = true, true
			}
		}
	}
	delete(in, r.cmd.Process.Pid)
	for pid := range in {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		r.seen[pid] = strings.ReplaceAll(string(b), "\x00", " ")
	}
}

func (r *clusterScript) pidOf(arg string) int {
	for pid, cmdline := range r.seen {
		if strings.Contains(cmdline, arg) {
			return pid
		}
	}
	return 0
}

func (r *clusterScript) alive(arg string) bool { return r.pidOf(arg) != 0 }

// wait waits for the script to exit and returns its exit status.
func (r *clusterScript) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-r.exited:
		r.exited <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(90 * time.Second):
		t.Fatalf(".ci/cluster did not exit within 90s:\n%s", lastLines(r.out.String(), 40))
		return -1
	}
}

// noOrphans checks that no process of the script's tree outlived it (a process ID reused by
// another program is told apart by its command line).
func (r *clusterScript) noOrphans(t *testing.T) {
	t.Helper()
	if len(r.seen) < 5 {
		t.Errorf("only %d processes seen under the script, want PostgreSQL, p11-kit and 3 nodes at least: %v", len(r.seen), r.seen)
	}
	deadline := time.Now().Add(10 * time.Second)
	for pid, cmdline := range r.seen {
		for {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil || strings.ReplaceAll(string(b), "\x00", " ") != cmdline || zombie(pid) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("process %d (%s) outlived .ci/cluster", pid, cmdline)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// freePortRun finds n consecutive free loopback ports and returns the first.
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		base := freePortNumber(t)
		if base+n > 65535 {
			continue
		}
		ok := true
		var ls []net.Listener
		for i := 0; i < n && ok; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}
