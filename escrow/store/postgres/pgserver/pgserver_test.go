package pgserver

import (
	"bufio"
	"context"
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

	"github.com/jackc/pgx/v5/pgconn"
)

// start is Start for a test: it skips when PostgreSQL is not installed (fails when $CI or
// $KEYARC_REQUIRE_POSTGRES is set) and stops the server when t ends.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if errors.Is(err, ErrNotInstalled) && os.Getenv("CI") == "" && os.Getenv("KEYARC_REQUIRE_POSTGRES") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func show(t *testing.T, s *Server, name string) string {
	t.Helper()
	ctx := context.Background()
	c, err := pgconn.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rs, err := c.Exec(ctx, "SHOW "+name).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return string(rs[0].Rows[0][0])
}

// TestSocketOnly: the zero Options (and a throw-away server's settings) give a server on its
// socket only, with the settings asked for; a halted server starts again on its data; Stop
// removes the folder Start made, and no postmaster is left.
func TestSocketOnly(t *testing.T) {
	s, err := Start(Options{NoSync: true, Settings: append(ThrowAway, "max_connections = 50")})
	if errors.Is(err, ErrNotInstalled) && os.Getenv("CI") == "" && os.Getenv("KEYARC_REQUIRE_POSTGRES") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	for name, want := range map[string]string{"listen_addresses": "", "fsync": "off", "max_connections": "50",
		"port": strconv.Itoa(DefaultPort), "ssl": "off"} {
		if got := show(t, s, name); got != want {
			t.Errorf("SHOW %s = %q, want %q", name, got, want)
		}
	}
	ctx := context.Background()
	if err := s.Admin(ctx, "postgres", "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	if err := s.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := s.Admin(ctx, "postgres", "SELECT 1"); err == nil {
		t.Error("a halted server takes connections")
	}
	if err := s.Launch(); err != nil {
		t.Fatal(err)
	}
	if err := s.Admin(ctx, "postgres", "DO $$ BEGIN IF (SELECT x FROM kept) <> 7 THEN RAISE 'lost'; END IF; END $$"); err != nil {
		t.Errorf("the data after a halt and a launch: %v", err)
	}
	dir, pid2 := s.Dir(), s.PID()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the server's folder %s is still there after Stop (%v)", dir, err)
	}
	for _, p := range []int{pid, pid2} {
		if alive(p) {
			t.Errorf("postmaster %d still runs after Halt and Stop", p)
		}
	}
}

// TestTCPWithTLS: with Listen, TLS and HBA, a role logs in over TCP with TLS verified in
// full and its password only; the superuser still administers the server on its socket.
func TestTCPWithTLS(t *testing.T) {
	caPEM, tls, err := LoopbackTLS()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	s := start(t, Options{Port: port, Listen: "127.0.0.1", TLS: tls, NoSync: true,
		HBA: "local all postgres trust\nhostssl postgres app 127.0.0.1/32 scram-sha-256\n", Settings: ThrowAway})
	if err := s.Admin(context.Background(), "postgres", "CREATE ROLE app LOGIN PASSWORD 'right-horse'"); err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	connect := func(password, sslmode string) error {
		ctx := context.Background()
		c, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app password=%s dbname=postgres sslmode=%s sslrootcert=%s",
			port, password, sslmode, caPath))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	if err := connect("right-horse", "verify-full"); err != nil {
		t.Errorf("TLS verify-full with the password: %v", err)
	}
	if err := connect("wrong-horse", "verify-full"); err == nil {
		t.Error("a wrong password logs in")
	}
	if err := connect("right-horse", "disable"); err == nil {
		t.Error("a login without TLS is let in")
	}
	if got := show(t, s, "ssl"); got != "on" {
		t.Errorf("ssl = %q", got)
	}
}

// TestNoServerOutlivesItsProgram: a program that started a server and is killed with
// SIGKILL, with no chance to stop it, leaves no postgres process behind.
func TestNoServerOutlivesItsProgram(t *testing.T) {
	if os.Getenv("PGSERVER_HELPER") != "" {
		s, err := Start(Options{NoSync: true, Settings: ThrowAway})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Println(s.PID(), s.Dir())
		select {} // until killed
	}
	if _, err := findBin(); err != nil {
		start(t, Options{}) // skips or fails as the other tests do
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoServerOutlivesItsProgram$")
	cmd.Env = append(os.Environ(), "PGSERVER_HELPER=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	var pid int
	var dir string
	if _, serr := fmt.Sscan(line, &pid, &dir); err != nil || serr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the helper's answer %q: %v %v", line, err, serr)
	}
	defer os.RemoveAll(dir) // a killed program's server leaves its folder
	if !alive(pid) {
		t.Fatalf("postmaster %d is not running in the helper", pid)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	for deadline := time.Now().Add(time.Minute); alive(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGQUIT)
			t.Fatalf("postmaster %d still runs a minute after its program was killed", pid)
		}
	}
}

// alive says whether process pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
