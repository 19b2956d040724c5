package tests

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// The cluster harness: a PostgreSQL server of the test's own, reached as production reaches
// it (TCP on a loopback port, TLS with sslmode=verify-full against a CA made for the test, a
// role of keyarc's own whose password the nodes read from a file), the appliance token behind
// `p11-kit server`, one `keyarc init --dev`, and three `keyarc serve` nodes on one state
// folder, each with its node name.

// pgServer is a PostgreSQL server in a folder of its own, on a free loopback port.
type pgServer struct {
	dir      string // owned by the server's user: data/, the socket, TLS files, the log
	bin      string
	port     int
	cred     *syscall.Credential // the postgres user's, when the test runs as root
	cmd      *exec.Cmd
	exit     chan error
	caPath   string // the CA that issued the server's TLS certificate
	password string // role keyarc's
}

// startPG initdb's and starts a server, makes role and database keyarc, and stops the server
// and removes its folder when t ends. It skips (fails under CI) without PostgreSQL.
func startPG(t *testing.T) *pgServer {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		a, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		b, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return a > b
	})
	if len(dirs) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("PostgreSQL is required in CI (make test installs it)")
		}
		t.Skip("PostgreSQL not installed; run `make deps`")
	}
	// Not t.TempDir(): the server's user must reach its folder, and a test's folders are
	// root's alone when the test runs as root.
	dir, err := os.MkdirTemp("", "keyarc-cluster-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &pgServer{dir: dir, bin: dirs[0], port: freePortNumber(t)}
	t.Cleanup(func() {
		if s.cmd != nil {
			s.halt(t)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "postgres.log")); err == nil {
				t.Logf("postgres log:\n%s", lastLines(string(b), 40))
			}
		}
		os.RemoveAll(dir)
	})
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and PostgreSQL refuses root: no postgres user to run it as: %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := s.command("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
		"--no-sync", "--no-instructions").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	caPEM, certPEM, keyPEM := pgTLSFiles(t)
	s.caPath = filepath.Join(t.TempDir(), "pg-ca.pem")
	writeFile(t, s.caPath, caPEM)
	for name, b := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
		p := filepath.Join(data, name)
		writeFile(t, p, b)
		if uid >= 0 {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	conf := fmt.Sprintf("\n# the cluster tests' server: loopback TCP with TLS, a socket for the test's own administration\n"+
		"listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nssl = on\n"+
		"fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\nlog_min_messages = warning\n", s.port, dir)
	appendFile(t, filepath.Join(data, "postgresql.conf"), conf)
	// The superuser on the socket only; role keyarc over TLS with its password only.
	writeFile(t, filepath.Join(data, "pg_hba.conf"), []byte("local all postgres trust\nhostssl keyarc keyarc 127.0.0.1/32 scram-sha-256\n"))
	if uid >= 0 {
		for _, p := range []string{filepath.Join(data, "pg_hba.conf")} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.launch(t)
	var pw [18]byte
	rand.Read(pw[:])
	s.password = base64.RawURLEncoding.EncodeToString(pw[:])
	admin := s.admin(t)
	for _, q := range []string{
		"CREATE ROLE keyarc LOGIN PASSWORD '" + s.password + "'",
		"CREATE DATABASE keyarc OWNER keyarc",
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatalf("%s: %v", strings.Fields(q)[0]+" "+strings.Fields(q)[1], err)
		}
	}
	return s
}

func (s *pgServer) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

// launch starts postgres and waits until it takes connections.
func (s *pgServer) launch(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := s.command("postgres", "-D", filepath.Join(s.dir, "data"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	s.cmd, s.exit = cmd, make(chan error, 1)
	go func() { s.exit <- cmd.Wait() }()
	for deadline := time.Now().Add(60 * time.Second); ; {
		db, err := sql.Open("pgx", strings.Replace(s.adminURL(), "dbname=keyarc", "dbname=postgres", 1))
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil {
			return
		}
		select {
		case werr := <-s.exit:
			s.cmd = nil
			t.Fatalf("postgres exited (%v) before taking connections", werr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres takes no connection after 60s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// halt shuts the server down as an administrator's fast shutdown does: every session ends.
func (s *pgServer) halt(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exit:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exit
		t.Error("postgres did not stop within 30s of a fast shutdown")
	}
	s.cmd = nil
}

func (s *pgServer) adminURL() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=keyarc sslmode=disable", s.dir, s.port)
}

// admin is a superuser connection to database keyarc over the socket, for the test's own
// queries; closed when t ends.
func (s *pgServer) admin(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", strings.Replace(s.adminURL(), "dbname=keyarc", "dbname=postgres", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// keyarcDB is a superuser connection to database keyarc, for the test's checks.
func (s *pgServer) keyarcDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", s.adminURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// url is the database's URL as a node's keyarc.yaml holds it: TCP, verify-full, no password.
func (s *pgServer) url() string {
	return fmt.Sprintf("postgres://keyarc@127.0.0.1:%d/keyarc?sslmode=verify-full&sslrootcert=%s", s.port, s.caPath)
}

// pgTLSFiles makes a CA and, issued by it, the server's certificate for 127.0.0.1 and its key.
func pgTLSFiles(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cluster test database CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
}

// cluster is three nodes on one state folder, sharing the database and the token.
type cluster struct {
	// t is the test that started the cluster: what a phase (a subtest) starts again lives as
	// long as the cluster, not as the phase.
	t      *testing.T
	state  string
	pg     *pgServer
	db     *sql.DB // the test's own connection to database keyarc
	socket string  // the p11-kit server's
	p11    *exec.Cmd
	nodes  []*appliance
}

// The lease lengths the cluster's nodes are configured with.
const (
	clusterLeaderLease = 8 * time.Second
	clusterJobLease    = 10 * time.Second
)

// leaseLeft is how long lease name has left, as the database's clock sees it (the nodes share
// the test's machine, hence its clock).
func (c *cluster) leaseLeft(t *testing.T, name string) time.Duration {
	t.Helper()
	var us int64
	err := c.db.QueryRow(`SELECT expires - (extract(epoch FROM clock_timestamp()) * 1000000)::bigint FROM leases WHERE name = $1`, name).Scan(&us)
	if err != nil {
		t.Fatalf("lease %s: %v", name, err)
	}
	return time.Duration(us) * time.Microsecond
}

// startCluster provisions and starts a cluster of n nodes.
func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	requireTools(t, "p11-kit", "openssl")
	tokRequireP11kit(t)
	c := &cluster{t: t, pg: startPG(t)}
	c.db = c.pg.keyarcDB(t)
	c.state = filepath.Join(t.TempDir(), "state")
	pwFile := filepath.Join(t.TempDir(), "database.password")
	writeFile(t, pwFile, []byte(c.pg.password+"\n"))
	keyarc(t, "init", "--dev", "--state", c.state, "--database", c.pg.url(), "--database-password-source", "file:"+pwFile)
	// The token moves behind p11-kit: the nodes load its client module and find the server's
	// socket in token.p11_kit_server.
	c.socket = filepath.Join(t.TempDir(), "p11-kit.sock")
	c.p11 = p11kitServer(t, c.state, c.socket)
	setTokenModule(t, c.state, tokP11kitClient)
	cfgPath := filepath.Join(c.state, "keyarc.yaml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "\ntoken:\n", "\ntoken:\n  p11_kit_server: "+c.socket+"\n", 1)
	if cfg == string(b) {
		t.Fatalf("no token section in %s", cfgPath)
	}
	// Shorter leases than the defaults (cluster.leader_lease, cluster.job_lease): a dead or
	// paused node's work is taken over sooner, and the phases check that the nodes use them.
	cfg += fmt.Sprintf("cluster:\n  leader_lease: %s\n  job_lease: %s\n", clusterLeaderLease, clusterJobLease)
	writeFile(t, cfgPath, []byte(cfg))
	// The nodes start one after the other: each start-up writes the audit trail.
	for i := 0; i < n; i++ {
		c.nodes = append(c.nodes, serveWith(t, c.state, nil, "", "--node", fmt.Sprintf("node%d", i+1), "--public-addr", freePort(t)))
	}
	return c
}

// restartTokenServer kills the p11-kit server (the HSM is lost) and, after down, starts it
// again on the same socket.
func (c *cluster) restartTokenServer(t *testing.T, down func()) {
	t.Helper()
	syscall.Kill(-c.p11.Process.Pid, syscall.SIGKILL)
	c.p11.Wait()
	if down != nil {
		down()
	}
	c.p11 = p11kitServer(c.t, c.state, c.socket)
}

// waitReady waits until every node answers /readyz with 200, by itself.
func (c *cluster) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for i, a := range c.nodes {
		for getStatus(t, a, "/readyz") != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatalf("node%d is not ready again after %s", i+1, within)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// makeCodes makes one smime-signature enrollment code for each mailbox, a few at a time.
func (c *cluster) makeCodes(t *testing.T, mailboxes []string) map[string]string {
	t.Helper()
	codes := make(map[string]string, len(mailboxes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, m := range mailboxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			out, errOut, err := keyarcResult("admin", "enroll-code", "create", "--state", c.state, "--email", m, "--template", "smime-signature")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("enroll-code create %s: %v\n%s", m, err, errOut)
				return
			}
			codes[m] = strings.TrimSpace(out)
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return codes
}

// estCSRDER makes a fresh P-256 key and its PKCS#10 request for mailbox, base64 as EST sends it.
// Safe for concurrent use.
func estCSRDER(mailbox string) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: mailbox}}, key)
	return []byte(base64.StdEncoding.EncodeToString(der) + "\n")
}

// enrollResult is the outcome of one EST enrollment: the status, and the certificate's serial
// (hex) on success; err is a transport error (no answer).
type enrollResult struct {
	status int
	serial string
	der    []byte
	err    error
}

// estEnrollOnce sends one simpleenroll for mailbox with its code to node a. Safe for
// concurrent use; it does not fail the test.
func estEnrollOnce(a *appliance, mailbox, code string, csr []byte) enrollResult {
	req, _ := http.NewRequest("POST", a.url+"/.well-known/est/smime-signature/simpleenroll", bytes.NewReader(csr))
	req.SetBasicAuth(mailbox, code)
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := a.client.Do(req)
	if err != nil {
		return enrollResult{err: err}
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	r := enrollResult{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		return r
	}
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(body.String()))
	if err != nil {
		r.err = fmt.Errorf("EST answer is not base64: %w", err)
		return r
	}
	cert, err := certFromCertsOnly(der)
	if err != nil {
		r.err = err
		return r
	}
	r.serial, r.der = hex.EncodeToString(cert.SerialNumber.Bytes()), cert.Raw
	return r
}

// certFromCertsOnly finds the one certificate in a degenerate PKCS#7 (certs-only) answer: the
// DER of a certificate whose parse succeeds, found by scanning for SEQUENCE starts.
func certFromCertsOnly(p7 []byte) (*x509.Certificate, error) {
	for i := 0; i+4 < len(p7); i++ {
		if p7[i] != 0x30 || p7[i+1] != 0x82 {
			continue
		}
		n := int(p7[i+2])<<8 | int(p7[i+3])
		if i+4+n > len(p7) {
			continue
		}
		if c, err := x509.ParseCertificate(p7[i : i+4+n]); err == nil {
			return c, nil
		}
	}
	return nil, errors.New("no certificate in the EST answer")
}

func freePortNumber(t *testing.T) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(freePort(t))
	n, _ := strconv.Atoi(p)
	return n
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
