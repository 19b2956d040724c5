// Package pgtest starts a throw-away PostgreSQL server for tests and hands them fresh,
// empty databases on it.
//
// The server runs from the installed binaries (initdb and postgres under
// /usr/lib/postgresql/VERSION/bin, the newest version, or on $PATH) in a fresh folder of
// os.TempDir(), as the postgres system user when the test runs as root (PostgreSQL refuses to
// run as root). It listens on a unix socket in that folder only, with no TCP port, and runs
// with fsync off: what it stores is thrown away with it. Only _test.go files may import this
// package; it imports the standard library, testing and pgx's pgconn.
//
// # Concurrency
//
// [Start] may be called from parallel tests: one server is shared by the process, started on
// the first call and stopped when the last test that asked for it ends. [Server.NewDatabase]
// may be called concurrently.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Server is a running throw-away PostgreSQL server.
type Server struct {
	dir     string // owned by the server's user: data/, the socket and the log
	command func(name string, args ...string) *exec.Cmd
	cmd     *exec.Cmd
	exit    chan error // the server process's exit
	n       atomic.Int64
}

var shared struct {
	mu   sync.Mutex
	srv  *Server
	refs int
}

// Start returns the process's server, starting it if no test holds it, and stops it when tb
// and every other test holding it have ended. It skips tb when PostgreSQL is not installed,
// unless $KEYARC_REQUIRE_POSTGRES or $CI is set: then it fails tb, as it does when the server
// does not start.
func Start(tb testing.TB) *Server {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil {
		bin, err := findBin()
		if err != nil {
			if os.Getenv("KEYARC_REQUIRE_POSTGRES") == "" && os.Getenv("CI") == "" {
				tb.Skipf("pgtest: PostgreSQL is not installed (%v); install the postgresql package, or .ci/deps does", err)
			}
			tb.Fatalf("pgtest: PostgreSQL is required ($KEYARC_REQUIRE_POSTGRES or $CI is set): %v", err)
		}
		srv, err := start(bin)
		if err != nil {
			tb.Fatalf("pgtest: %v", err)
		}
		shared.srv = srv
	}
	shared.refs++
	srv := shared.srv
	tb.Cleanup(func() {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		if shared.refs--; shared.refs == 0 && shared.srv != nil {
			if err := shared.srv.stop(); err != nil {
				tb.Errorf("pgtest: stop the server: %v", err)
			}
			shared.srv = nil
		}
	})
	return srv
}

// Keep holds the process's server from its first [Start] until release is called, so that the
// tests of a package share one server even when they run one after the other. Call it from
// TestMain around m.Run:
//
//	func TestMain(m *testing.M) {
//		release := pgtest.Keep()
//		code := m.Run()
//		release()
//		os.Exit(code)
//	}
func Keep() (release func()) {
	shared.mu.Lock()
	shared.refs++
	shared.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			shared.mu.Lock()
			defer shared.mu.Unlock()
			if shared.refs--; shared.refs == 0 && shared.srv != nil {
				if err := shared.srv.stop(); err != nil {
					fmt.Fprintf(os.Stderr, "pgtest: stop the server: %v\n", err)
				}
				shared.srv = nil
			}
		})
	}
}

// findBin returns the folder of the newest installed initdb and postgres.
func findBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return "", errors.New("no initdb under /usr/lib/postgresql/*/bin nor on $PATH")
	}
	d := filepath.Dir(initdb)
	if !isExec(filepath.Join(d, "postgres")) {
		return "", fmt.Errorf("no postgres beside %s", initdb)
	}
	return d, nil
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// start runs initdb and postgres from bin in a new folder, and waits until the server takes
// connections.
func start(bin string) (srv *Server, err error) {
	dir, err := os.MkdirTemp("", "keyarc-pg-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, and PostgreSQL refuses root: no postgres user to run it as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return cmd
	}
	data := filepath.Join(dir, "data")
	initdb := command("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
		"--no-sync", "--no-instructions")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// In postgresql.conf rather than on the command line, which ALTER SYSTEM could not
	// override (see Durable).
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, err
	}
	_, err = conf.WriteString("\n# pgtest: a throw-away server\nlisten_addresses = ''\nfsync = off\nsynchronous_commit = off\n" +
		"full_page_writes = off\nmax_connections = 200\nshared_buffers = 64MB\nlog_min_messages = warning\n")
	if err := errors.Join(err, conf.Close()); err != nil {
		return nil, err
	}
	srv = &Server{dir: dir, command: command}
	if err := srv.launch(); err != nil {
		return nil, err
	}
	return srv, nil
}

// launch starts postgres on the server's data folder and waits until it takes connections.
func (s *Server) launch() error {
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := s.command("postgres", "-D", filepath.Join(s.dir, "data"), "-k", s.dir, "-p", "5432")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	s.cmd, s.exit = cmd, make(chan error, 1)
	go func() { s.exit <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		c, err := pgconn.Connect(ctx, s.URL("postgres"))
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case werr := <-s.exit:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited (%v) before taking connections:\n%s", werr, log)
		case <-ctx.Done():
			s.halt()
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres takes no connection after 60s: %v\n%s", err, log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// halt shuts postgres down (fast shutdown: sessions are ended, then a kill if it lingers),
// keeping its data.
func (s *Server) halt() error {
	s.cmd.Process.Signal(syscall.SIGINT)
	var err error
	select {
	case err = <-s.exit:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		err = fmt.Errorf("postgres did not stop within 30s: %v", <-s.exit)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil // a fast shutdown ends with a signal status on some versions
	}
	return err
}

// stop shuts the server down and removes its folder.
func (s *Server) stop() error {
	return errors.Join(s.halt(), os.RemoveAll(s.dir))
}

// Restart shuts the server down as an administrator's fast shutdown does (every session is
// ended), runs down while it is down, and starts it again on the same data. Every database of
// the server goes down with it: do not call it while parallel tests use the server.
func (s *Server) Restart(tb testing.TB, down func()) {
	tb.Helper()
	if err := s.halt(); err != nil {
		tb.Fatalf("pgtest: restart: %v", err)
	}
	if down != nil {
		down()
	}
	if err := s.launch(); err != nil {
		tb.Fatalf("pgtest: restart: %v", err)
	}
}

// Durable turns fsync, synchronous_commit and full_page_writes on until tb ends, for
// benchmarks whose figures must include what a COMMIT costs on a real server. Every database
// of the server is affected, the parallel tests' too.
func (s *Server) Durable(tb testing.TB) {
	tb.Helper()
	set := func(value string) error {
		for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes"} {
			q := "ALTER SYSTEM SET " + name + " = " + value
			if value == "" {
				q = "ALTER SYSTEM RESET " + name
			}
			if err := s.admin(q); err != nil {
				return err
			}
		}
		return s.admin("SELECT pg_reload_conf()")
	}
	if err := set("on"); err != nil {
		tb.Fatalf("pgtest: durable: %v", err)
	}
	tb.Cleanup(func() {
		if err := set(""); err != nil {
			tb.Errorf("pgtest: durable: %v", err)
		}
	})
	// The server reloads its configuration asynchronously: wait until new sessions see it.
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := pgconn.Connect(ctx, s.URL("postgres"))
		var on bool
		if err == nil {
			rs, qerr := c.Exec(ctx, "SHOW fsync").ReadAll()
			on = qerr == nil && len(rs) == 1 && len(rs[0].Rows) == 1 && string(rs[0].Rows[0][0]) == "on"
			c.Close(ctx)
		}
		cancel()
		if on {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("pgtest: durable: fsync still off after 10s (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL returns the key=value connection string of database name on the server's socket.
func (s *Server) URL(name string) string {
	return fmt.Sprintf("host=%s port=5432 user=postgres dbname=%s sslmode=disable", s.dir, name)
}

// Dir is the folder that holds the server's socket (the host of its connection strings).
func (s *Server) Dir() string { return s.dir }

// NewDatabase creates an empty database with a name of its own and returns its key=value
// connection string; the database is dropped when tb ends, with whatever connections it still
// has.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	return s.URL(s.CreateDatabase(tb))
}

// CreateDatabase is NewDatabase returning the database's name.
func (s *Server) CreateDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("keyarc_test_%d", s.n.Add(1))
	if err := s.admin("CREATE DATABASE " + name); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.admin("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
		}
	})
	return name
}

// PostgresURL returns the postgres:// URL of database name on the server's socket.
func (s *Server) PostgresURL(name string) string {
	return "postgres:///" + name + "?host=" + url.QueryEscape(s.dir) + "&port=5432&user=postgres"
}

// Admin runs sql on the server's postgres database as the superuser (to make faults: stop
// connections, revoke rights).
func (s *Server) Admin(tb testing.TB, sql string) {
	tb.Helper()
	if err := s.admin(sql); err != nil {
		tb.Fatalf("pgtest: %s: %v", strings.Fields(sql)[0], err)
	}
}

// AdminOn is Admin on database name.
func (s *Server) AdminOn(tb testing.TB, name, sql string) {
	tb.Helper()
	if err := s.adminOn(name, sql); err != nil {
		tb.Fatalf("pgtest: %s: %v", strings.Fields(sql)[0], err)
	}
}

func (s *Server) admin(sql string) error { return s.adminOn("postgres", sql) }

func (s *Server) adminOn(name, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgconn.Connect(ctx, s.URL(name))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql).ReadAll()
	return err
}
