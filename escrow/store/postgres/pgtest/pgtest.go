// Package pgtest starts a throw-away PostgreSQL server for tests and hands them fresh,
// empty databases on it.
//
// The server is a [pgserver] server: the installed binaries (initdb and postgres under
// /usr/lib/postgresql/VERSION/bin, the newest version, or on $PATH) in a fresh folder of
// os.TempDir(), as the postgres system user when the test runs as root (PostgreSQL refuses to
// run as root), and gone with the test process however it ends. It listens on a unix socket
// in that folder only, with no TCP port, and runs with fsync off: what it stores is thrown
// away with it. Only _test.go files may import this package; it imports the standard
// library, testing, pgx's pgconn and pgserver.
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store/postgres/pgserver"
)

// Server is a running throw-away PostgreSQL server.
type Server struct {
	srv *pgserver.Server
	n   atomic.Int64
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
		srv, err := start()
		if errors.Is(err, pgserver.ErrNotInstalled) {
			if os.Getenv("KEYARC_REQUIRE_POSTGRES") == "" && os.Getenv("CI") == "" {
				tb.Skipf("pgtest: %v; install the postgresql package, or .ci/deps does", err)
			}
			tb.Fatalf("pgtest: PostgreSQL is required ($KEYARC_REQUIRE_POSTGRES or $CI is set): %v", err)
		}
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

// start starts the throw-away server: a unix socket in a fresh folder only, no fsync.
func start() (*Server, error) {
	srv, err := pgserver.Start(pgserver.Options{Prefix: "keyarc-pg-", NoSync: true,
		Settings: append(slices.Clone(pgserver.ThrowAway), "max_connections = 200", "shared_buffers = 64MB", "log_min_messages = warning")})
	if err != nil {
		return nil, err
	}
	return &Server{srv: srv}, nil
}

// stop shuts the server down and removes its folder.
func (s *Server) stop() error { return s.srv.Stop() }

// Restart shuts the server down as an administrator's fast shutdown does (every session is
// ended), runs down while it is down, and starts it again on the same data. Every database of
// the server goes down with it: do not call it while parallel tests use the server.
func (s *Server) Restart(tb testing.TB, down func()) {
	tb.Helper()
	if err := s.srv.Halt(); err != nil {
		tb.Fatalf("pgtest: restart: %v", err)
	}
	if down != nil {
		down()
	}
	if err := s.srv.Launch(); err != nil {
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

// CPU is the CPU time the server's processes have used so far (see [pgserver.Server.CPU]), for
// benchmarks that report the database's share of the work.
func (s *Server) CPU() time.Duration { return s.srv.CPU() }

// URL returns the key=value connection string of database name on the server's socket.
func (s *Server) URL(name string) string { return s.srv.URL(name) }

// Dir is the folder that holds the server's socket (the host of its connection strings).
func (s *Server) Dir() string { return s.srv.Dir() }

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
	return "postgres:///" + name + "?host=" + url.QueryEscape(s.srv.Dir()) + "&port=" + strconv.Itoa(s.srv.Port()) + "&user=postgres"
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
	return s.srv.Admin(ctx, name, sql)
}
