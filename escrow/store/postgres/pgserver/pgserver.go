// Package pgserver runs a PostgreSQL server of a program's own: initdb in a folder, then
// postgres on that folder, from the installed binaries (initdb and postgres under
// /usr/lib/postgresql/VERSION/bin, the newest version, or on $PATH). It is the one way the
// tests' harnesses (pgtest, the cluster tests) and `keyarc bench` start PostgreSQL.
//
// The server listens on a unix socket in its folder, where the superuser postgres logs in
// without a password; [Options] add TCP on a loopback address, TLS with a given certificate,
// a pg_hba.conf of the caller's (password logins) and postgresql.conf settings. When the
// program runs as root the server runs as the postgres system user (PostgreSQL refuses
// root).
//
// No server outlives its program: postgres gets SIGQUIT (an immediate shutdown) from the
// kernel when the thread that started it ends, and that thread is kept for it until it has
// ended, so a program that fails, panics or is killed, even with SIGKILL, leaves no postgres
// process behind. Its folder stays in that case (os.TempDir() keeps it).
//
// It imports the standard library and pgx's pgconn, never testing: `keyarc bench` is built
// into the production binary.
//
// # Concurrency
//
// [Server.Admin], [Server.URL] and the accessors may be called concurrently; [Server.Halt],
// [Server.Launch] and [Server.Stop] may not, with each other or with anything else.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNotInstalled is returned by [Start] when no initdb and postgres are installed.
var ErrNotInstalled = errors.New("pgserver: PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin nor on $PATH; the postgresql package has it)")

// DefaultPort is the port number of a server whose [Options] name none. Without TCP it only
// names the socket, in the server's own folder: two such servers do not collide.
const DefaultPort = 5432

// ThrowAway are the postgresql.conf settings of a server whose data is thrown away with it:
// no fsync, no synchronous commit, no full page writes.
var ThrowAway = []string{"fsync = off", "synchronous_commit = off", "full_page_writes = off"}

// Options shape a server. The zero value is a durable server on a unix socket only, in a
// fresh folder of os.TempDir().
type Options struct {
	// Dir is the server's folder (data/, the socket, postgres.log), made if missing and kept
	// by [Server.Stop]. Empty: a fresh folder in os.TempDir(), named Prefix and a random
	// suffix, that Stop removes.
	Dir    string
	Prefix string // "keyarc-pg-" when empty
	// Port is the server's port number: its socket's name, and TCP's with Listen.
	// 0: DefaultPort.
	Port int
	// Listen is listen_addresses: empty for the unix socket only, else the addresses of
	// TCP (such as "127.0.0.1").
	Listen string
	// TLS, when set, turns ssl on with this certificate and key (PEM).
	TLS *TLS
	// HBA, when set, replaces initdb's pg_hba.conf (which trusts every local login). Keep a
	// line that trusts the superuser on the socket ("local all postgres trust"): the
	// server's own administration ([Server.Admin], the start-up check) logs in that way.
	HBA string
	// NoSync makes initdb skip its fsyncs (a throw-away server).
	NoSync bool
	// Settings are postgresql.conf lines ("name = value"), appended after the server's
	// own (listen_addresses, port, unix_socket_directories, ssl). In the file rather than
	// on the command line, so that ALTER SYSTEM may override them.
	Settings []string
}

// TLS is a server's certificate and its private key, PEM.
type TLS struct {
	CertPEM, KeyPEM []byte
}

// Server is a PostgreSQL server started by [Start].
type Server struct {
	dir     string // owned by the server's user: data/, the socket and the log
	ownDir  bool   // made by Start: Stop removes it
	bin     string
	port    int
	cred    *syscall.Credential // the postgres user's, when the program runs as root
	cmd     *exec.Cmd
	exit    chan error // the running postmaster's exit
	stopped bool
}

// Start runs initdb in a new data folder and starts postgres on it, and returns once the
// server takes connections on its socket. On an error nothing of the server runs any more,
// and a folder Start made is removed. Its errors: [ErrNotInstalled]; else what initdb or
// postgres said (the end of the server's log), or the file system's.
func Start(opts Options) (srv *Server, err error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: opts.Dir, bin: bin, port: opts.Port}
	if s.port == 0 {
		s.port = DefaultPort
	}
	if s.dir == "" {
		prefix := opts.Prefix
		if prefix == "" {
			prefix = "keyarc-pg-"
		}
		if s.dir, err = os.MkdirTemp("", prefix); err != nil {
			return nil, fmt.Errorf("pgserver: %w", err)
		}
		s.ownDir = true
	} else if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	if s.dir, err = filepath.Abs(s.dir); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	defer func() {
		if err != nil && s.ownDir {
			os.RemoveAll(s.dir)
		}
	}()
	if os.Geteuid() == 0 {
		if err := s.asPostgresUser(); err != nil {
			return nil, err
		}
	}
	data := s.dataDir()
	args := []string{"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-instructions"}
	if opts.NoSync {
		args = append(args, "--no-sync")
	}
	if out, err := s.command("initdb", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgserver: initdb: %w\n%s", err, out)
	}
	conf := fmt.Sprintf("\n# pgserver\nlisten_addresses = %s\nport = %d\nunix_socket_directories = %s\n",
		quote(opts.Listen), s.port, quote(s.dir))
	if opts.TLS != nil {
		if err := s.writeFile(filepath.Join(data, "server.crt"), opts.TLS.CertPEM); err != nil {
			return nil, err
		}
		if err := s.writeFile(filepath.Join(data, "server.key"), opts.TLS.KeyPEM); err != nil {
			return nil, err
		}
		conf += "ssl = on\n"
	}
	if len(opts.Settings) > 0 {
		conf += strings.Join(opts.Settings, "\n") + "\n"
	}
	if err := appendFile(filepath.Join(data, "postgresql.conf"), conf); err != nil {
		return nil, err
	}
	if opts.HBA != "" {
		if err := s.writeFile(filepath.Join(data, "pg_hba.conf"), []byte(opts.HBA)); err != nil {
			return nil, err
		}
	}
	if err := s.Launch(); err != nil {
		return nil, err
	}
	return s, nil
}

// asPostgresUser makes the server run as the postgres system user: it owns the server's
// folder, and may pass through the folder's parents.
func (s *Server) asPostgresUser() error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("pgserver: running as root, and PostgreSQL refuses root: no postgres user to run it as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	for p := filepath.Dir(s.dir); p != "/" && p != "."; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("pgserver: let the postgres user reach %s: %w", s.dir, err)
			}
		}
	}
	if err := os.Chown(s.dir, uid, gid); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	return nil
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
		return "", ErrNotInstalled
	}
	d := filepath.Dir(initdb)
	if !isExec(filepath.Join(d, "postgres")) {
		return "", fmt.Errorf("%w: no postgres beside %s", ErrNotInstalled, initdb)
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

// quote is a postgresql.conf string value.
func quote(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	return cmd
}

// writeFile writes a file of the server's, which only the server's user may read.
func (s *Server) writeFile(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("pgserver: %w", err)
		}
	}
	return nil
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	_, err = f.WriteString(text)
	if err := errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	return nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// LogPath is the server's log file: postgres's own output, appended to by every launch.
func (s *Server) LogPath() string { return filepath.Join(s.dir, "postgres.log") }

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string {
	b, _ := os.ReadFile(s.LogPath())
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Launch starts postgres on the server's data (again, after [Server.Halt]) and waits until
// it takes connections, for a minute at most. On an error no postgres of the server runs.
func (s *Server) Launch() error {
	if s.cmd != nil {
		return errors.New("pgserver: launch: the server runs already")
	}
	logf, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	defer logf.Close()
	if s.cred != nil {
		os.Chown(logf.Name(), int(s.cred.Uid), int(s.cred.Gid))
	}
	cmd := s.command("postgres", "-D", s.dataDir())
	cmd.Stdout, cmd.Stderr = logf, logf
	// The kernel sends Pdeathsig when the thread that started the process ends, not the
	// process: the goroutine below starts postgres on a thread locked to it and keeps that
	// thread until postgres has ended. Only the program's own end ends it sooner.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	started, exit := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exit <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("pgserver: postgres: %w", err)
	}
	s.cmd, s.exit = cmd, exit

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
			s.cmd = nil
			return fmt.Errorf("pgserver: postgres exited (%v) before taking connections:\n%s", werr, s.LogTail(20))
		case <-ctx.Done():
			s.Halt()
			return fmt.Errorf("pgserver: postgres takes no connection after 60s: %v\n%s", err, s.LogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Halt shuts postgres down as an administrator's fast shutdown does (every session is
// ended; SIGKILL if it lingers for 30 s), keeping its data. It does nothing to a halted
// server.
func (s *Server) Halt() error {
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	var err error
	select {
	case err = <-s.exit:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		err = fmt.Errorf("pgserver: postgres did not stop within 30s of a fast shutdown: %v", <-s.exit)
	}
	s.cmd = nil
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil // a fast shutdown ends with a signal status on some versions
	}
	return err
}

// Stop halts the server and removes its folder if [Start] made it. Calling it again does
// nothing.
func (s *Server) Stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	err := s.Halt()
	if s.ownDir {
		err = errors.Join(err, os.RemoveAll(s.dir))
	}
	return err
}

// Dir is the server's folder, which holds its socket (the host of [Server.URL]).
func (s *Server) Dir() string { return s.dir }

// Bin is the folder of the PostgreSQL binaries the server runs (pg_dump, psql are there too).
func (s *Server) Bin() string { return s.bin }

// Port is the server's port number.
func (s *Server) Port() int { return s.port }

// PID is the postmaster's process ID, 0 while the server is halted.
func (s *Server) PID() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// CPU is the CPU time (user and system) the server has used so far: the postmaster's own, that
// of its children that ended (which it waited for) and that of those still running, read from
// /proc. It is 0 while the server is halted.
func (s *Server) CPU() time.Duration {
	root := s.PID()
	if root == 0 {
		return 0
	}
	dirs, _ := os.ReadDir("/proc")
	var ticks int64
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		i := strings.LastIndexByte(string(stat), ')')
		if err != nil || i < 0 {
			continue
		}
		// The fields after the command's closing parenthesis: state(3) ppid(4) ... utime(14)
		// stime(15) cutime(16) cstime(17), counted from 1 with the pid.
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 15 {
			continue
		}
		n := func(k int) int64 { v, _ := strconv.ParseInt(f[k-3], 10, 64); return v }
		switch {
		case pid == root:
			ticks += n(14) + n(15) + n(16) + n(17)
		case n(4) == int64(root):
			ticks += n(14) + n(15)
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// URL is the key=value connection string of the superuser to database name on the server's
// socket.
func (s *Server) URL(name string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", s.dir, s.port, name)
}

// Admin runs sql (one or more statements) on database name as the superuser, through the
// socket.
func (s *Server) Admin(ctx context.Context, name, sql string) error {
	c, err := pgconn.Connect(ctx, s.URL(name))
	if err != nil {
		return fmt.Errorf("pgserver: %w", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("pgserver: %s: %w", firstWords(sql), err)
	}
	return nil
}

// firstWords names a statement in an error by its first two words ("CREATE ROLE"), never
// its text, which may hold a password.
func firstWords(sql string) string {
	f := strings.Fields(sql)
	return strings.Join(f[:min(2, len(f))], " ")
}
