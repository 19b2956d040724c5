package tests

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store/postgres"
)

// TestPostgresSecurity: security on PostgreSQL, as a database administrator sees it. A node
// runs under a role of its own that has only the privileges of postgres.Grants (the schema
// belongs to another role). After enrollments with codes (their keys archived), a recovery
// approved by two KRAs and fetched as a PKCS#12 with its password, a dump of the whole
// database with pg_dump, the administrator's own tool, holds no enrollment code, no PKCS#12
// password, no PIN, no password and no private key (its PKCS#8 DER raw, in hex or in base64,
// nor its private scalar or primes). The node's role may not drop, truncate or alter a table
// nor rewrite the audit trail. A byte flipped in a certificate row and an escrow record row
// swapped for another user's, through SQL, are named by `keyarc check`.
//
// The KRAs' shares are not searched for: their plain bytes exist only inside the KRAs'
// tokens and the recovery key's token, never outside where a test could read them.
func TestPostgresSecurity(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	c := startCluster(t, 1)
	dir := t.TempDir()

	// The node's own role: LOGIN, a password of its own, the privileges of Grants on the
	// database that role keyarc (the owner) made and migrated.
	const nodeRole = "keyarc_node"
	nodePassword := rand.Text()
	admin := c.pg.admin(t)
	if _, err := admin.Exec(fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", nodeRole, nodePassword)); err != nil {
		t.Fatal(err)
	}
	for _, g := range postgres.Grants("keyarc", nodeRole) {
		if _, err := c.db.Exec(g); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	appendFile(t, filepath.Join(c.pg.dir, "data", "pg_hba.conf"), "hostssl keyarc "+nodeRole+" 127.0.0.1/32 scram-sha-256\n")
	if _, err := admin.Exec("SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	nodePWFile := filepath.Join(t.TempDir(), "node.password")
	writeFile(t, nodePWFile, []byte(nodePassword+"\n"))
	cfgPath := filepath.Join(c.state, "keyarc.yaml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "postgres://keyarc@", "postgres://"+nodeRole+"@", 1)
	cfg = regexp.MustCompile(`(?m)^database_password_source: .*$`).ReplaceAllString(cfg, "database_password_source: file:"+nodePWFile)
	if cfg == string(b) || !strings.Contains(cfg, nodeRole+"@") {
		t.Fatalf("cannot point %s at role %s:\n%s", cfgPath, nodeRole, b)
	}
	c.nodes[0].stop(t)
	writeFile(t, cfgPath, []byte(cfg))
	a := serveWith(t, c.state, nil, "", "--node", "node1", "--public-addr", freePort(t))
	c.nodes[0] = a

	// Enrollments with codes, the keys archived; one code left unused.
	var codes []string
	serials := map[string]string{}
	for _, u := range []string{"ada", "bob", "cy"} {
		codes = append(codes, enrollUser(t, a, u+"@example.org", filepath.Join(dir, u)))
		serials[u] = fmt.Sprintf("%x", readCert(t, filepath.Join(dir, u, "cert.pem")).SerialNumber)
	}
	codes = append(codes, strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", c.state, "--email", "dee@example.org", "--template", "smime-encryption")))
	// A recovery of ada's key: two KRAs approve, the officer fetches a PKCS#12.
	on := func(who string, args ...string) []string {
		return append(args, "--state", c.state, "--server", a.url, "--as", who)
	}
	id := strings.TrimSpace(keyarc(t, on("officer", "recovery", "request", "--serial", serials["ada"], "--reason", "laptop lost")...))
	keyarc(t, on("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, on("kra2", "recovery", "approve", id, "--yes")...)
	p12, pwFile := filepath.Join(dir, "ada.p12"), filepath.Join(dir, "ada.pw")
	keyarc(t, on("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pwFile)...)
	if got := queryInt(t, c.db, "SELECT count(*) FROM approvals WHERE recovery_id = $1", id); got != 2 {
		t.Fatalf("%d approvals stored, want 2", got)
	}

	// What must never be in the database.
	secrets := map[string]string{}
	for i, code := range codes {
		secrets[fmt.Sprintf("enrollment code %d", i+1)] = code
	}
	secrets["PKCS#12 password"] = strings.TrimSpace(readString(t, pwFile))
	secrets["node role's password"] = nodePassword
	secrets["owner role's password"] = c.pg.password
	pins, _ := filepath.Glob(filepath.Join(c.state, "softhsm", "pins", "*"))
	if len(pins) < 4 {
		t.Fatalf("PIN files: %v, want the appliance's and the KRAs'", pins)
	}
	for _, p := range pins {
		secrets["PIN "+filepath.Base(p)] = strings.TrimSpace(readString(t, p))
	}
	keys, _ := filepath.Glob(filepath.Join(c.state, "credentials", "*-key.pem"))
	for _, u := range []string{"ada", "bob", "cy"} {
		keys = append(keys, filepath.Join(dir, u, "key.pem"))
	}
	for _, k := range keys {
		for form, v := range privateKeyForms(t, k) {
			secrets[k+" as "+form] = v
		}
	}

	// The whole database, as its administrator dumps it.
	dump := pgDump(t, c)
	if !strings.Contains(dump, serials["ada"]) || !strings.Contains(dump, "COPY public.approvals") {
		t.Fatalf("the dump holds no certificate or approval rows (%d bytes): the search below would prove nothing", len(dump))
	}
	lower := strings.ToLower(dump)
	for what, s := range secrets {
		if len(s) < 6 {
			t.Errorf("%s: %q is too short to search for", what, s)
			continue
		}
		if strings.Contains(dump, s) || strings.Contains(lower, strings.ToLower(s)) {
			t.Errorf("the database dump holds the %s", what)
		}
	}
	t.Logf("searched a %d-byte pg_dump for %d secrets", len(dump), len(secrets))

	// The node's role keeps the schema and the audit trail as they are.
	nodeDB, err := sql.Open("pgx", fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/keyarc?sslmode=verify-full&sslrootcert=%s", nodeRole, nodePassword, c.pg.port, c.pg.caPath))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeDB.Close()
	if err := nodeDB.Ping(); err != nil {
		t.Fatalf("the node's role cannot connect: %v", err)
	}
	for _, q := range []string{
		"DROP TABLE certificates",
		"DROP TABLE audit",
		"TRUNCATE audit",
		"TRUNCATE certificates CASCADE",
		"ALTER TABLE certificates ADD COLUMN forged TEXT",
		"ALTER TABLE audit DROP COLUMN hash",
		"UPDATE audit SET kind = 'forged'",
		"DELETE FROM audit",
		"DELETE FROM certificates",
		"DELETE FROM records",
		"UPDATE approvals SET kra = 'forged'",
		"CREATE TABLE forged (x int)",
	} {
		_, err := nodeDB.Exec(q)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" { // insufficient_privilege
			t.Errorf("%s as the node's role: %v, want refused for want of privilege (42501)", q, err)
		}
	}

	// A GRANT by a role that holds no grant option gives nothing (PostgreSQL only warns).
	if _, err := nodeDB.Exec("GRANT SELECT ON certificates TO PUBLIC"); err == nil {
		var granted bool
		if err := c.db.QueryRow("SELECT has_table_privilege('public', 'certificates', 'SELECT')").Scan(&granted); err != nil || granted {
			t.Errorf("the node's role gave everyone SELECT on certificates (%v)", err)
		}
	}

	// Rows tampered with through SQL, the node stopped: a byte of bob's certificate, and
	// cy's escrow record replaced by ada's.
	a.stop(t)
	var der []byte
	if err := c.db.QueryRow("SELECT der FROM certificates WHERE serial = $1", serials["bob"]).Scan(&der); err != nil {
		t.Fatal(err)
	}
	der[len(der)-10] ^= 0x01 // inside the signature: it still parses
	if _, err := c.db.Exec("UPDATE certificates SET der = $1 WHERE serial = $2", der, serials["bob"]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.db.Exec(`UPDATE records SET blob = (SELECT blob FROM records WHERE serial = $1) WHERE serial = $2`, serials["ada"], serials["cy"]); err != nil {
		t.Fatal(err)
	}
	msg := keyarcFails(t, "check", "--state", c.state)
	for _, want := range []string{serials["bob"], "signature", serials["cy"], "record"} {
		if !strings.Contains(msg, want) {
			t.Errorf("keyarc check on PostgreSQL does not name %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, serials["ada"]+":") {
		t.Errorf("keyarc check blames ada's untouched certificate %s:\n%s", serials["ada"], msg)
	}
}

// pgDump dumps database keyarc with pg_dump as its owner, over TLS as the nodes connect.
func pgDump(t *testing.T, c *cluster) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.pg.bin, "pg_dump"), "--no-owner",
		fmt.Sprintf("host=127.0.0.1 port=%d user=keyarc dbname=keyarc sslmode=verify-full sslrootcert=%s", c.pg.port, c.pg.caPath))
	cmd.Env = append(os.Environ(), "PGPASSWORD="+c.pg.password)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, stderr.String())
	}
	return string(out)
}

// privateKeyForms returns the forms in which the private key of the PEM file at path could
// be stored: its PKCS#8 DER in hex and base64, the base64 body of the PEM as written, and its
// private scalar (ECDSA) or private exponent and primes (RSA) in hex.
func privateKeyForms(t *testing.T, path string) map[string]string {
	t.Helper()
	blk, _ := pem.Decode([]byte(readString(t, path)))
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if k, err2 := x509.ParseECPrivateKey(blk.Bytes); err2 == nil {
			key = k
		} else if k, err3 := x509.ParsePKCS1PrivateKey(blk.Bytes); err3 == nil {
			key = k
		} else {
			t.Fatalf("%s: %v", path, err)
		}
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string]string{
		"PKCS#8 hex":    hex.EncodeToString(p8),
		"PKCS#8 base64": base64.StdEncoding.EncodeToString(p8),
		"PEM body":      base64.StdEncoding.EncodeToString(blk.Bytes)[:64],
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		d, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		forms["private scalar hex"] = hex.EncodeToString(d)
	case *rsa.PrivateKey:
		forms["private exponent hex"] = hex.EncodeToString(k.D.Bytes())
		forms["prime p hex"] = hex.EncodeToString(k.Primes[0].Bytes())
		forms["prime q hex"] = hex.EncodeToString(k.Primes[1].Bytes())
	}
	return forms
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
