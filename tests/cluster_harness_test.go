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
	"errors"
	"fmt"
	"net"
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

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/keyarc/keyarc/escrow/store/postgres/pgserver"
)

// The cluster harness: a PostgreSQL server of the test's own, reached as production reaches
// it (TCP on a loopback port, TLS with sslmode=verify-full against a CA made for the test, a
// role of keyarc's own whose password the nodes read from a file), the appliance token behind
// `p11-kit server`, one `keyarc init --dev`, and three `keyarc serve` nodes on one state
// folder, each with its node name.

// pgServer is a PostgreSQL server in a folder of its own, on a free loopback port.
type pgServer struct {
	srv      *pgserver.Server
	dir      string // the server's: data/, the socket, the log
	bin      string
	port     int
	caPath   string // the CA that issued the server's TLS certificate
	password string // role keyarc's
}

// startPG initdb's and starts a server, makes role and database keyarc, and stops the server
// and removes its folder when t ends. It skips (fails under CI) without PostgreSQL.
func startPG(t *testing.T) *pgServer {
	t.Helper()
	caPEM, tls, err := pgserver.LoopbackTLS()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pgserver.Start(pgserver.Options{
		// Not t.TempDir(): the server's user must reach its folder, and a test's folders are
		// root's alone when the test runs as root.
		Prefix: "keyarc-cluster-pg-",
		Port:   freePortNumber(t),
		Listen: "127.0.0.1",
		TLS:    tls,
		// The superuser on the socket only; role keyarc over TLS with its password only.
		HBA:      "local all postgres trust\nhostssl keyarc keyarc 127.0.0.1/32 scram-sha-256\n",
		NoSync:   true,
		Settings: append(slices.Clone(pgserver.ThrowAway), "max_connections = 200", "log_min_messages = warning"),
	})
	if errors.Is(err, pgserver.ErrNotInstalled) {
		if os.Getenv("CI") != "" {
			t.Fatal("PostgreSQL is required in CI (make test installs it)")
		}
		t.Skip("PostgreSQL not installed; run `make deps`")
	}
	if err != nil {
		t.Fatal(err)
	}
	s := &pgServer{srv: srv, dir: srv.Dir(), bin: srv.Bin(), port: srv.Port()}
	t.Cleanup(func() {
		if err := srv.Halt(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("postgres log:\n%s", srv.LogTail(40))
		}
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	s.caPath = filepath.Join(t.TempDir(), "pg-ca.pem")
	writeFile(t, s.caPath, caPEM)
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

// launch starts postgres again on its data and waits until it takes connections.
func (s *pgServer) launch(t *testing.T) {
	t.Helper()
	if err := s.srv.Launch(); err != nil {
		t.Fatal(err)
	}
}

// halt shuts the server down as an administrator's fast shutdown does: every session ends.
func (s *pgServer) halt(t *testing.T) {
	t.Helper()
	if err := s.srv.Halt(); err != nil {
		t.Error(err)
	}
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
	// mail is what the nodes' subscriber notices sent to the test's SMTP relay.
	mail *mailLog
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
	// Subscriber notices to a relay of the test's: the leader queues them, each node sends
	// its own queue (a folder per node inside the shared state folder's).
	relay := freePort(t)
	c := provisionCluster(t, relay)
	c.mail = startMailSink(t, relay).log()
	// The nodes start one after the other: each start-up writes the audit trail.
	for i := 0; i < n; i++ {
		c.nodes = append(c.nodes, serveWith(t, c.state, nil, "", "--node", fmt.Sprintf("node%d", i+1), "--public-addr", freePort(t)))
	}
	return c
}

// provisionCluster makes the database, the token server and the state folder of a cluster
// whose notices go to the SMTP relay at relay, and starts no node (nor the relay).
func provisionCluster(t *testing.T, relay string) *cluster {
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
	cfg += noticesConfig(relay)
	writeFile(t, cfgPath, []byte(cfg))
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
