// Package ldaptest runs a throw-away OpenLDAP slapd for tests: a fresh folder per server, a
// loopback port, the core, cosine and inetorgperson schemas, the base dc=example,dc=org with
// ou=people under it, an administrator (the root DN, with a password) and two people with mail
// attributes. Every server also serves TLS: StartTLS on its ldap:// port and an ldaps:// port, with
// a server certificate for 127.0.0.1 and localhost issued by a CA made for the test (CAFile). It
// reads the directory as a mail client does, with ldapsearch, so that a test
// checks what Thunderbird or Outlook would find, not what the code under test believes it wrote.
//
// Only tests import it; it imports the standard library and testing. slapd must be built with
// TLS (Debian's is, with GnuTLS). It needs slapd, slapadd,
// slappasswd, ldapsearch and ldapmodify (Debian packages slapd and ldap-utils, installed by
// .ci/deps); without them it skips, unless $CI or $KEYARC_REQUIRE_SLAPD is set.
//
// # Concurrency
//
// Each [Start] makes its own server; a Server's methods are safe to call from one test's
// goroutines.
package ldaptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The directory every server holds.
const (
	Base     = "dc=example,dc=org"
	People   = "ou=people," + Base
	BindDN   = "cn=admin," + Base
	Password = "directory-admin-secret"
	// Alice and Bob are the people with a mail attribute; Carol's mail is held by two
	// entries (a duplicate the publisher must refuse to guess between).
	Alice = "alice@example.org"
	Bob   = "bob@example.org"
	Carol = "carol@example.org"
)

// Server is a running slapd.
type Server struct {
	// URL is ldap://127.0.0.1:PORT. The same port takes StartTLS; ldap://localhost:PORT is the
	// same server by a name, for a client that uses StartTLS except to a loopback address.
	URL string
	// LDAPSURL is ldaps://127.0.0.1:PORT2: TLS from the first byte.
	LDAPSURL string
	// CAFile is the PEM certificate of the CA that issued the server's certificate (for
	// 127.0.0.1 and localhost); CA is the same certificate.
	CAFile string
	CA     *x509.Certificate
	// PasswordFile holds Password (mode 0600), for configurations that read it from a file.
	PasswordFile string

	dir, conf string
	port      int
	tlsPort   int
	mu        sync.Mutex
	cmd       *exec.Cmd
	exit      chan error
}

// Start makes a folder and a configuration, loads the base entries and starts slapd on a free
// loopback port. The server stops when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	for _, bin := range []string{"slapd", "slapadd", "slappasswd", "ldapsearch", "ldapmodify"} {
		if _, err := lookPath(bin); err != nil {
			if os.Getenv("CI") == "" && os.Getenv("KEYARC_REQUIRE_SLAPD") == "" {
				tb.Skipf("ldaptest: %s is not installed (packages slapd and ldap-utils; .ci/deps installs them)", bin)
			}
			tb.Fatalf("ldaptest: %s is required ($CI or $KEYARC_REQUIRE_SLAPD is set): %v", bin, err)
		}
	}
	dir := tb.TempDir()
	s := &Server{dir: dir, conf: filepath.Join(dir, "slapd.conf"), PasswordFile: filepath.Join(dir, "bind-password")}
	if err := os.WriteFile(s.PasswordFile, []byte(Password+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := s.makeTLS(); err != nil {
		tb.Fatalf("ldaptest: %v", err)
	}
	hash, err := run("", "slappasswd", "-s", Password)
	if err != nil {
		tb.Fatalf("ldaptest: slappasswd: %v", err)
	}
	conf := fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile %[1]s/slapd.pid
TLSCertificateFile %[1]s/server.pem
TLSCertificateKeyFile %[1]s/server.key
database mdb
maxsize 104857600
suffix "%[2]s"
rootdn "%[3]s"
rootpw %[4]s
directory %[1]s/db
index mail eq
access to attrs=userPassword by anonymous auth by * none
access to * by * read
`, dir, Base, BindDN, strings.TrimSpace(hash))
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	ldif := filepath.Join(dir, "base.ldif")
	if err := os.WriteFile(ldif, []byte(baseLDIF), 0o600); err != nil {
		tb.Fatal(err)
	}
	if out, err := run("", "slapadd", "-f", s.conf, "-l", ldif); err != nil {
		tb.Fatalf("ldaptest: slapadd: %v\n%s", err, out)
	}
	// A port free when asked may be bound by someone else before slapd binds it (another
	// test's server, a client's outgoing connection): slapd then exits, and starts again on
	// other ports.
	for try := 1; ; try++ {
		if s.port, err = FreePort(); err != nil {
			tb.Fatal(err)
		}
		if s.tlsPort, err = FreePort(); err != nil {
			tb.Fatal(err)
		}
		s.URL = "ldap://127.0.0.1:" + strconv.Itoa(s.port)
		s.LDAPSURL = "ldaps://127.0.0.1:" + strconv.Itoa(s.tlsPort)
		err = s.start()
		if err == nil {
			break
		}
		if try == 3 || !errors.Is(err, errExitedAtStart) {
			tb.Fatalf("ldaptest: %v", err)
		}
	}
	tb.Cleanup(s.Stop)
	return s
}

const baseLDIF = `dn: ` + Base + `
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ` + People + `
objectClass: organizationalUnit
ou: people

dn: uid=alice,` + People + `
objectClass: inetOrgPerson
uid: alice
cn: Alice Example
sn: Example
mail: ` + Alice + `

dn: uid=bob,` + People + `
objectClass: inetOrgPerson
uid: bob
cn: Bob Example
sn: Example
mail: ` + Bob + `

dn: uid=carol,` + People + `
objectClass: inetOrgPerson
uid: carol
cn: Carol Example
sn: Example
mail: ` + Carol + `

dn: uid=carol2,` + People + `
objectClass: inetOrgPerson
uid: carol2
cn: Carol Other
sn: Other
mail: ` + Carol + `
`

// DN is the entry of uid under ou=people.
func DN(uid string) string { return "uid=" + uid + "," + People }

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	// -d 0 keeps slapd in the foreground, so that this process owns it and sees it end.
	bin, err := lookPath("slapd")
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "-f", s.conf, "-h", s.URL+"/ "+s.LDAPSURL+"/", "-d", "0")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start slapd: %w", err)
	}
	exit := make(chan error, 1)
	go func() { exit <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for _, port := range []int{s.port, s.tlsPort} {
		if err := waitListen(port, deadline, exit, cmd, &log); err != nil {
			return err
		}
	}
	s.cmd, s.exit = cmd, exit
	return nil
}

// waitListen waits until slapd listens on port, or exits, or the deadline passes.
func waitListen(port int, deadline time.Time, exit chan error, cmd *exec.Cmd, log *bytes.Buffer) error {
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exit:
			return fmt.Errorf("%w: %v\n%s", errExitedAtStart, err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exit
			return fmt.Errorf("slapd did not listen on port %d within 15s\n%s", port, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// makeTLS makes a CA for this server and the server's certificate for 127.0.0.1 and
// localhost, and writes them to the folder: CAFile, server.pem and server.key (PKCS#8).
func (s *Server) makeTLS() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ldaptest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	if s.CA, err = x509.ParseCertificate(caDER); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.CA, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	s.CAFile = filepath.Join(s.dir, "ca.pem")
	for name, block := range map[string]*pem.Block{
		s.CAFile:                           {Type: "CERTIFICATE", Bytes: caDER},
		filepath.Join(s.dir, "server.pem"): {Type: "CERTIFICATE", Bytes: der},
		filepath.Join(s.dir, "server.key"): {Type: "PRIVATE KEY", Bytes: p8},
	} {
		if err := os.WriteFile(name, pem.EncodeToMemory(block), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// Stop stops slapd, keeping its data; [Server.Restart] starts it again on the same port.
// Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exit:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exit
	}
	s.cmd = nil
}

// Restart starts a stopped server again, on the same port, with the same data.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.start(); err != nil {
		tb.Fatalf("ldaptest: %v", err)
	}
}

// Attribute returns the values of attr of the entries whose mail is mail, read anonymously
// with ldapsearch as a mail client would:
//
//	ldapsearch -x -H URL -b BASE "(mail=MAIL)" ATTR
//
// attr is "userCertificate;binary" or "userSMIMECertificate".
func (s *Server) Attribute(tb testing.TB, mail, attr string) [][]byte {
	tb.Helper()
	out, err := run("", "ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", s.URL, "-b", Base,
		"(mail="+mail+")", attr)
	if err != nil {
		tb.Fatalf("ldaptest: ldapsearch: %v\n%s", err, out)
	}
	vals, err := ParseLDIF(out, attr)
	if err != nil {
		tb.Fatalf("ldaptest: %v", err)
	}
	return vals
}

// Certificates returns the userCertificate;binary values of mail's entries.
func (s *Server) Certificates(tb testing.TB, mail string) [][]byte {
	tb.Helper()
	return s.Attribute(tb, mail, "userCertificate;binary")
}

// Modify applies an LDIF change (ldapmodify) as the administrator: a test plants a value
// someone else published, or takes an entry away.
func (s *Server) Modify(tb testing.TB, ldif string) {
	tb.Helper()
	if out, err := run(ldif, "ldapmodify", "-x", "-H", s.URL, "-D", BindDN, "-w", Password); err != nil {
		tb.Fatalf("ldaptest: ldapmodify: %v\n%s", err, out)
	}
}

// AddBinary adds a binary value of attr to the entry dn as the administrator.
func (s *Server) AddBinary(tb testing.TB, dn, attr string, value []byte) {
	tb.Helper()
	s.Modify(tb, "dn: "+dn+"\nchangetype: modify\nadd: "+attr+"\n"+attr+":: "+base64.StdEncoding.EncodeToString(value)+"\n")
}

// ParseLDIF returns the values of attr in ldapsearch's unwrapped LDIF output (base64 values
// decoded), in the order they come.
func ParseLDIF(ldif, attr string) ([][]byte, error) {
	var vals [][]byte
	for _, line := range strings.Split(ldif, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(name, attr) {
			continue
		}
		if b64, ok := strings.CutPrefix(rest, ": "); ok {
			v, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
			if err != nil {
				return nil, fmt.Errorf("value of %s is not base64: %w", attr, err)
			}
			vals = append(vals, v)
			continue
		}
		vals = append(vals, []byte(strings.TrimPrefix(rest, " ")))
	}
	return vals, nil
}

func run(stdin, name string, args ...string) (string, error) {
	if p, err := lookPath(name); err == nil {
		name = p
	}
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// lookPath finds a program on $PATH or in /usr/sbin (not on every user's $PATH).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join("/usr/sbin", name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", errors.New(name + " not found")
}

// errExitedAtStart: slapd ended before it listened (a port taken, most often).
var errExitedAtStart = errors.New("slapd exited at start")

// FreePort returns a loopback port that is free now, below the kernel's ephemeral range when
// there is room: a port of that range, free when asked, may become the local port of a
// client's outgoing connection before the server meant for it binds it. The end-to-end
// harness takes the appliances' ports from it too. It never returns a port twice in a
// process: ports drawn for one server (an appliance's HTTPS, metrics and public listeners)
// were free all three, but could be the same one.
func FreePort() (int, error) {
	givenMu.Lock()
	defer givenMu.Unlock()
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var low, high int
		if _, err := fmt.Sscan(string(b), &low, &high); err == nil && low > 20000 {
			for range 100 {
				p := 10000 + mrand.IntN(low-10000)
				if given[p] {
					continue
				}
				if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
					l.Close()
					given[p] = true
					return p, nil
				}
			}
		}
	}
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !given[p] {
			given[p] = true
			return p, nil
		}
	}
	return 0, errors.New("ldaptest: no free port left that was not given before")
}

// given holds the ports FreePort returned.
var (
	givenMu sync.Mutex
	given   = make(map[int]bool)
)
