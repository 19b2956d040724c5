package ldapdir_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/directory"
	"github.com/keyarc/keyarc/escrow/directory/ldapdir"
	"github.com/keyarc/keyarc/escrow/directory/ldaptest"
)

// testCA is a software CA for the tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key}
}

var serial int64 = 100

// issue makes an encryption certificate for mail, valid until notAfter.
func (ca *testCA) issue(t *testing.T, mail string, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: mail},
		NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter, EmailAddresses: []string{mail},
		KeyUsage: x509.KeyUsageKeyAgreement, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func open(t *testing.T, s *ldaptest.Server, ca *x509.Certificate, password string) *ldapdir.Dir {
	t.Helper()
	d, err := ldapdir.New(ldapdir.Config{URL: s.URL, BindDN: ldaptest.BindDN, Password: password, Base: ldaptest.Base,
		CA: ca, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// smimeLeaves returns the end-entity certificate of each userSMIMECertificate value of mail.
func smimeLeaves(t *testing.T, s *ldaptest.Server, mail string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, v := range s.Attribute(t, mail, ldapdir.AttrSMIMECertificate) {
		leaf := ldapdir.Leaf(v)
		if leaf == nil {
			t.Fatalf("a userSMIMECertificate value of %s holds no single end-entity certificate", mail)
		}
		out = append(out, leaf.Raw)
	}
	return out
}

func same(got [][]byte, want ...[]byte) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || bytes.Equal(g, w)
		}
		if !found {
			return false
		}
	}
	return true
}

// TestPublishWithdraw publishes to a real slapd, reads it back as a mail client does
// (ldapsearch), publishes again (idempotent), and withdraws, leaving another issuer's values.
func TestPublishWithdraw(t *testing.T) {
	s := ldaptest.Start(t)
	ca, other := newCA(t, "keyarc test CA"), newCA(t, "someone else's CA")
	d := open(t, s, ca.cert, ldaptest.Password)
	ctx := context.Background()

	theirs := other.issue(t, ldaptest.Alice, time.Now().Add(time.Hour))
	theirP7, _ := ldapdir.CertsOnly(theirs, other.cert)
	s.AddBinary(t, ldaptest.DN("alice"), ldapdir.AttrCertificate, theirs.Raw)
	s.AddBinary(t, ldaptest.DN("alice"), ldapdir.AttrSMIMECertificate, theirP7)

	mine := ca.issue(t, ldaptest.Alice, time.Now().Add(24*time.Hour))
	for range 2 {
		if err := d.Publish(ctx, ldaptest.Alice, mine); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	if got := s.Certificates(t, ldaptest.Alice); !same(got, theirs.Raw, mine.Raw) {
		t.Fatalf("userCertificate;binary of alice: %d values, want theirs and mine once each", len(got))
	}
	if got := smimeLeaves(t, s, ldaptest.Alice); !same(got, theirs.Raw, mine.Raw) {
		t.Fatalf("userSMIMECertificate of alice: %d values, want theirs and mine once each", len(got))
	}
	// The published PKCS#7 carries the CA certificate too, for the client's chain.
	for _, v := range s.Attribute(t, ldaptest.Alice, ldapdir.AttrSMIMECertificate) {
		if l := ldapdir.Leaf(v); l != nil && bytes.Equal(l.Raw, mine.Raw) {
			if cs := ldapdir.Certificates(v); len(cs) != 2 || !bytes.Equal(cs[1].Raw, ca.cert.Raw) {
				t.Errorf("our userSMIMECertificate value holds %d certificates; want ours and the CA's", len(cs))
			}
		}
	}
	if got := s.Certificates(t, ldaptest.Bob); len(got) != 0 {
		t.Fatalf("bob has %d certificates; want none", len(got))
	}

	for range 2 {
		if err := d.Withdraw(ctx, ldaptest.Alice, mine); err != nil {
			t.Fatalf("Withdraw: %v", err)
		}
	}
	if got := s.Certificates(t, ldaptest.Alice); !same(got, theirs.Raw) {
		t.Fatalf("after Withdraw, alice has %d userCertificate values; want only the other issuer's", len(got))
	}
	if got := smimeLeaves(t, s, ldaptest.Alice); !same(got, theirs.Raw) {
		t.Fatalf("after Withdraw, alice has %d userSMIMECertificate values; want only the other issuer's", len(got))
	}
	// A mailbox without an entry has nothing to withdraw.
	if err := d.Withdraw(ctx, "nobody@example.org", mine); err != nil {
		t.Fatalf("Withdraw for a mailbox without an entry: %v", err)
	}
}

func TestPublishEntries(t *testing.T) {
	s := ldaptest.Start(t)
	ca := newCA(t, "keyarc test CA")
	d := open(t, s, ca.cert, ldaptest.Password)
	ctx := context.Background()
	tests := []struct {
		name    string
		mail    string
		wantErr error
	}{
		{"no entry", "nobody@example.org", directory.ErrNoEntry},
		{"two entries", ldaptest.Carol, directory.ErrManyEntries},
		{"a filter's special characters are escaped", "*)(mail=*", directory.ErrNoEntry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := d.Publish(ctx, tt.mail, ca.issue(t, tt.mail, time.Now().Add(time.Hour)))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Publish(%q) = %v; want %v", tt.mail, err, tt.wantErr)
			}
		})
	}
	if got := s.Certificates(t, ldaptest.Carol); len(got) != 0 {
		t.Fatalf("carol's entries hold %d certificates; want none", len(got))
	}
}

// TestPrune removes only the values the caller chooses (here: this CA's expired ones).
func TestPrune(t *testing.T) {
	s := ldaptest.Start(t)
	ca, other := newCA(t, "keyarc test CA"), newCA(t, "someone else's CA")
	d := open(t, s, ca.cert, ldaptest.Password)
	ctx := context.Background()
	past := time.Now().Add(-time.Hour)
	expired, live := ca.issue(t, ldaptest.Alice, past), ca.issue(t, ldaptest.Alice, time.Now().Add(time.Hour))
	theirsExpired := other.issue(t, ldaptest.Bob, past)
	for _, c := range []*x509.Certificate{expired, live} {
		if err := d.Publish(ctx, ldaptest.Alice, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Publish(ctx, ldaptest.Bob, theirsExpired); err != nil {
		t.Fatal(err)
	}
	n, err := d.Prune(ctx, func(c *x509.Certificate) bool {
		return directory.Issued(c, ca.cert) && !time.Now().Before(c.NotAfter)
	})
	if err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2 values (our expired certificate, from both attributes)", n, err)
	}
	if got := s.Certificates(t, ldaptest.Alice); !same(got, live.Raw) {
		t.Fatalf("alice after Prune: %d values; want the unexpired one", len(got))
	}
	if got := smimeLeaves(t, s, ldaptest.Alice); !same(got, live.Raw) {
		t.Fatalf("alice's userSMIMECertificate after Prune: %d values; want the unexpired one", len(got))
	}
	if got := s.Certificates(t, ldaptest.Bob); !same(got, theirsExpired.Raw) {
		t.Fatalf("bob after Prune: %d values; want the other issuer's, untouched", len(got))
	}
}

// TestServerFaults: a refused bind is ErrBind (without the password); a server that stops is an
// error that is neither of the skips; once it is back, the same Dir works again.
func TestServerFaults(t *testing.T) {
	s := ldaptest.Start(t)
	ca := newCA(t, "keyarc test CA")
	ctx := context.Background()
	cert := ca.issue(t, ldaptest.Alice, time.Now().Add(time.Hour))

	bad := open(t, s, ca.cert, "wrong-password-value")
	err := bad.Publish(ctx, ldaptest.Alice, cert)
	if !errors.Is(err, ldapdir.ErrBind) {
		t.Fatalf("Publish with a wrong password = %v; want ErrBind", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte("wrong-password-value")) {
		t.Fatalf("the error names the password: %v", err)
	}

	d := open(t, s, ca.cert, ldaptest.Password)
	if err := d.Check(ctx); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	err = d.Publish(ctx, ldaptest.Alice, cert)
	if err == nil || errors.Is(err, directory.ErrNoEntry) || errors.Is(err, directory.ErrManyEntries) {
		t.Fatalf("Publish with slapd stopped = %v; want a retryable error", err)
	}
	s.Restart(t)
	if err := d.Publish(ctx, ldaptest.Alice, cert); err != nil {
		t.Fatalf("Publish after slapd came back: %v", err)
	}
	if got := s.Certificates(t, ldaptest.Alice); !same(got, cert.Raw) {
		t.Fatalf("alice has %d values; want the certificate", len(got))
	}
}

// TestPasswordFunc: a password fixed at its source is used at the next connection.
func TestPasswordFunc(t *testing.T) {
	s := ldaptest.Start(t)
	pw := "wrong-password-value"
	d, err := ldapdir.New(ldapdir.Config{URL: s.URL, BindDN: ldaptest.BindDN, Base: ldaptest.Base, Timeout: 5 * time.Second,
		PasswordFunc: func() (string, error) { return pw, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Check(context.Background()); !errors.Is(err, ldapdir.ErrBind) {
		t.Fatalf("Check with the wrong password = %v; want ErrBind", err)
	}
	pw = ldaptest.Password
	if err := d.Check(context.Background()); err != nil {
		t.Fatalf("Check once the password is right: %v", err)
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ldapdir.Config
		wantErr error
	}{
		{"another scheme", ldapdir.Config{URL: "http://ldap.example.org", BindDN: "cn=a", Base: "dc=x"}, ldapdir.ErrConfig},
		{"no host", ldapdir.Config{URL: "ldap://", BindDN: "cn=a", Base: "dc=x"}, ldapdir.ErrConfig},
		{"no bind DN", ldapdir.Config{URL: "ldaps://ldap.example.org", Base: "dc=x"}, ldapdir.ErrConfig},
		{"base not a DN", ldapdir.Config{URL: "ldaps://ldap.example.org", BindDN: "cn=a", Base: "example"}, ldapdir.ErrConfig},
		{"ldaps", ldapdir.Config{URL: "ldaps://ldap.example.org", BindDN: "cn=a", Base: "dc=x"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ldapdir.New(tt.cfg); !errors.Is(err, tt.wantErr) {
				t.Fatalf("New = %v; want %v", err, tt.wantErr)
			}
		})
	}
}

// TestStartTLSRequired: ldap:// to a host that is not a loopback address is upgraded with
// StartTLS; a server the client cannot trust (here: its CA is not among the system roots) is
// then refused, the password never sent; insecure_plaintext skips StartTLS.
func TestStartTLSRequired(t *testing.T) {
	s := ldaptest.Start(t)
	ca := newCA(t, "keyarc test CA")
	// localhost is a name, not a loopback address literal: StartTLS is required.
	url := "ldap://localhost:" + s.URL[len("ldap://127.0.0.1:"):]
	d, err := ldapdir.New(ldapdir.Config{URL: url, BindDN: ldaptest.BindDN, Password: ldaptest.Password, Base: ldaptest.Base,
		CA: ca.cert, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	err = d.Check(context.Background())
	if !errors.Is(err, ldapdir.ErrUntrusted) {
		t.Fatalf("Check over ldap:// to a server not trusted = %v; want a StartTLS failure", err)
	}
	d2, err := ldapdir.New(ldapdir.Config{URL: url, BindDN: ldaptest.BindDN, Password: ldaptest.Password, Base: ldaptest.Base,
		CA: ca.cert, InsecurePlaintext: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := d2.Check(context.Background()); err != nil {
		t.Fatalf("Check with insecure_plaintext: %v", err)
	}
}

// TestPruneManyPages: a directory larger than one page of the paged search is swept whole.
func TestPruneManyPages(t *testing.T) {
	s := ldaptest.Start(t)
	ca := newCA(t, "keyarc test CA")
	d := open(t, s, ca.cert, ldaptest.Password)
	ctx := context.Background()
	const n = 450 // more than two pages
	var ldif strings.Builder
	for i := range n {
		fmt.Fprintf(&ldif, "dn: uid=p%d,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: p%d\ncn: P\nsn: P\nmail: p%d@example.org\n\n", i, ldaptest.People, i, i)
	}
	s.Modify(t, ldif.String())
	for i := range n {
		if err := d.Publish(ctx, fmt.Sprintf("p%d@example.org", i), ca.issue(t, fmt.Sprintf("p%d@example.org", i), time.Now().Add(-time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	got, err := d.Prune(ctx, func(c *x509.Certificate) bool { return !time.Now().Before(c.NotAfter) })
	if err != nil || got != 2*n {
		t.Fatalf("Prune = %d, %v; want %d values (two per entry)", got, err, 2*n)
	}
	if vals := s.Certificates(t, "p449@example.org"); len(vals) != 0 {
		t.Fatalf("the last entry still holds %d values", len(vals))
	}
}

// caPool reads a PEM CA file as the appliance reads directory.ldap.ca_file.
func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no PEM certificate", file)
	}
	return pool
}

// TestTLS: StartTLS (ldap:// to a name) and ldaps:// with the server's CA publish; with
// another CA, or the system roots, the server is refused before the bind, with an error that
// says the certificate was not trusted and names no password.
func TestTLS(t *testing.T) {
	s := ldaptest.Start(t)
	ca := newCA(t, "keyarc test CA")
	startTLS := "ldap://localhost:" + s.URL[len("ldap://127.0.0.1:"):]
	good := caPool(t, s.CAFile)
	stranger := x509.NewCertPool()
	stranger.AddCert(newCA(t, "not the directory's CA").cert)
	ctx := context.Background()
	for _, tt := range []struct {
		name, url string
		roots     *x509.CertPool
		ok        bool
	}{
		{"StartTLS", startTLS, good, true},
		{"ldaps", s.LDAPSURL, good, true},
		{"StartTLS with another CA", startTLS, stranger, false},
		{"ldaps with another CA", s.LDAPSURL, stranger, false},
		{"ldaps with the system roots", s.LDAPSURL, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ldapdir.New(ldapdir.Config{URL: tt.url, BindDN: ldaptest.BindDN, Password: ldaptest.Password, Base: ldaptest.Base,
				RootCAs: tt.roots, CA: ca.cert, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			cert := ca.issue(t, ldaptest.Bob, time.Now().Add(time.Hour))
			err = d.Publish(ctx, ldaptest.Bob, cert)
			if tt.ok {
				if err != nil {
					t.Fatalf("Publish over %s: %v", tt.url, err)
				}
				if got := s.Certificates(t, ldaptest.Bob); !holds(got, cert.Raw) {
					t.Fatalf("bob's entry does not hold the certificate published over %s", tt.url)
				}
				if err := d.Withdraw(ctx, ldaptest.Bob, cert); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ldapdir.ErrUntrusted) {
				t.Fatalf("Publish over %s with a CA that did not issue the server's certificate = %v; want ErrUntrusted", tt.url, err)
			}
			if !strings.Contains(err.Error(), "certificate signed by unknown authority") || strings.Contains(err.Error(), ldaptest.Password) {
				t.Fatalf("the error does not say the certificate is not trusted, or names the password: %v", err)
			}
			if got := s.Certificates(t, ldaptest.Bob); holds(got, cert.Raw) {
				t.Fatal("published to a server that was not trusted")
			}
		})
	}
}

func holds(vals [][]byte, v []byte) bool {
	for _, x := range vals {
		if bytes.Equal(x, v) {
			return true
		}
	}
	return false
}

// TestMailCase: keyarc stores a mailbox with its domain in lower case and its local part as
// written; the directory's entry may spell the domain otherwise (Dave@Example.ORG). The entry is
// found by the mail attribute's own equality rule (caseIgnoreIA5Match in OpenLDAP, as in Active
// Directory), so the certificate is published to it, withdrawn from it, and found by a mail
// client whatever case it searches with.
func TestMailCase(t *testing.T) {
	s := ldaptest.Start(t)
	ca := newCA(t, "keyarc test CA")
	d := open(t, s, ca.cert, ldaptest.Password)
	ctx := context.Background()
	s.Modify(t, "dn: uid=dave,"+ldaptest.People+"\nchangetype: add\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: Example\nmail: Dave@Example.ORG\n")
	const stored = "Dave@example.org" // as policy.NormalizeMailbox keeps it
	cert := ca.issue(t, stored, time.Now().Add(time.Hour))
	if err := d.Publish(ctx, stored, cert); err != nil {
		t.Fatalf("Publish(%s) to the entry of Dave@Example.ORG: %v", stored, err)
	}
	for _, search := range []string{"Dave@Example.ORG", "dave@example.org", "DAVE@EXAMPLE.ORG"} {
		if got := s.Certificates(t, search); !same(got, cert.Raw) {
			t.Fatalf("ldapsearch (mail=%s): %d values; want the certificate", search, len(got))
		}
	}
	if err := d.Withdraw(ctx, stored, cert); err != nil {
		t.Fatal(err)
	}
	if got := s.Certificates(t, "Dave@Example.ORG"); len(got) != 0 {
		t.Fatalf("after Withdraw, dave holds %d values", len(got))
	}
}

// TestConfigRedacts: no way of printing a Config shows its password.
func TestConfigRedacts(t *testing.T) {
	c := ldapdir.Config{URL: "ldap://127.0.0.1:1", BindDN: "cn=keyarc", Password: "s3cret-bind-pw", Base: "dc=example"}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "ldap", c)
	for _, out := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), fmt.Sprint(&c), buf.String()} {
		if strings.Contains(out, "s3cret") {
			t.Fatalf("the password shows in %q", out)
		}
		if !strings.Contains(out, "cn=keyarc") {
			t.Fatalf("the bind DN is missing from %q", out)
		}
	}
}

// TestHungServerCancel: a server that takes the connection and never answers holds a call
// only until its context ends, not for the whole timeout: the appliance's shutdown waits for
// the publisher.
func TestHungServerCancel(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	ca := newCA(t, "keyarc test CA")
	d, err := ldapdir.New(ldapdir.Config{URL: "ldap://" + l.Addr().String(), BindDN: ldaptest.BindDN, Password: "x",
		Base: ldaptest.Base, CA: ca.cert, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan error, 1)
	cert := ca.issue(t, ldaptest.Alice, time.Now().Add(time.Hour))
	go func() { done <- d.Publish(ctx, ldaptest.Alice, cert) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish on a hung server, cancelled: %v; want %v", err, context.Canceled)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Publish on a hung server still waits after its context was cancelled")
	}
}
