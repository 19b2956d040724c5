package tests

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/directory/ldaptest"
)

// directoryAnswer is GET /api/v1/directory's JSON, as a client reads it.
type directoryAnswer struct {
	Email        string `json:"email"`
	Certificates []struct {
		Serial string `json:"serial"`
		PEM    string `json:"pem"`
	} `json:"certificates"`
}

// lookup asks the appliance's directory with curl, as JSON, and returns the DER of each
// certificate answered.
func lookup(t *testing.T, a *appliance, dir, mailbox string) [][]byte {
	t.Helper()
	out := run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(a.state, "ca.pem"), a.url+"/api/v1/directory?email="+mailbox)
	var ans directoryAnswer
	if err := json.Unmarshal([]byte(out), &ans); err != nil {
		t.Fatalf("the directory's answer is not JSON: %v\n%s", err, out)
	}
	var ders [][]byte
	for _, c := range ans.Certificates {
		b, _ := pem.Decode([]byte(c.PEM))
		if b == nil {
			t.Fatalf("certificate %s of the answer holds no PEM", c.Serial)
		}
		ders = append(ders, b.Bytes)
	}
	return ders
}

// waitLDAP waits until ldapsearch finds exactly want (nil: nothing) as mailbox's
// userCertificate;binary.
func waitLDAP(t *testing.T, s *ldaptest.Server, a *appliance, mailbox string, want []byte) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := s.Certificates(t, mailbox)
		if want == nil && len(got) == 0 || want != nil && len(got) == 1 && bytes.Equal(got[0], want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ldapsearch (mail=%s) finds %d certificates after a minute; want %v\n%s", mailbox, len(got), want != nil, a.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDirectory runs the real binary with a real slapd, reached with StartTLS and verified
// with directory.ldap.ca_file: an enrolled encryption certificate is
// found with ldapsearch, as a mail client searches, and through GET /api/v1/directory with
// curl (JSON and DER); revoked, it is gone from both. An enrollment while slapd is down is
// answered at once, survives a restart of the appliance, and is published when slapd is back;
// a certificate skipped for want of an entry is published once the entry is added.
func TestDirectory(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	ldap := ldaptest.Start(t)
	state := devState(t)
	// ldap:// to a name, not a loopback address: StartTLS, the server verified with ca_file.
	appendFile(t, filepath.Join(state, "keyarc.yaml"), "directory:\n  ldap:\n    url: ldap://localhost:"+strings.TrimPrefix(ldap.URL, "ldap://127.0.0.1:")+
		"\n    ca_file: "+ldap.CAFile+"\n    bind_dn: "+ldaptest.BindDN+
		"\n    bind_password_source: file:"+ldap.PasswordFile+"\n    base: "+ldaptest.Base+"\n")
	a := serve(t, state)
	if !strings.Contains(a.logs.String(), "publishing encryption certificates to LDAP") {
		t.Fatalf("the start-up log does not say certificates are published:\n%s", a.logs.String())
	}
	if strings.Contains(a.logs.String(), ldaptest.Password) {
		t.Fatal("the log holds the bind password")
	}
	dir := t.TempDir()

	alice := filepath.Join(dir, "alice")
	enrollUser(t, a, ldaptest.Alice, alice)
	cert := readCert(t, filepath.Join(alice, "cert.pem"))
	waitLDAP(t, ldap, a, ldaptest.Alice, cert.Raw)
	// A mail client's own search, as Thunderbird and Outlook make it.
	out := run(t, dir, "ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", ldap.URL, "-b", ldaptest.Base, "(mail="+ldaptest.Alice+")", "userCertificate;binary")
	if vals, err := ldaptest.ParseLDIF(out, "userCertificate;binary"); err != nil || len(vals) != 1 || !bytes.Equal(vals[0], cert.Raw) {
		t.Fatalf("ldapsearch (mail=%s) userCertificate;binary: %d values, %v; want alice's certificate\n%s", ldaptest.Alice, len(vals), err, out)
	}
	if got := ldap.Attribute(t, ldaptest.Alice, "userSMIMECertificate"); len(got) != 1 {
		t.Fatalf("alice's userSMIMECertificate: %d values; want 1", len(got))
	}
	if got := lookup(t, a, dir, ldaptest.Alice); len(got) != 1 || !bytes.Equal(got[0], cert.Raw) {
		t.Fatalf("GET /api/v1/directory for alice: %d certificates; want hers", len(got))
	}
	// The domain of a mailbox is case-insensitive (RFC 5321), in the lookup as in LDAP.
	if got := lookup(t, a, dir, "alice@EXAMPLE.Org"); len(got) != 1 || !bytes.Equal(got[0], cert.Raw) {
		t.Fatalf("GET /api/v1/directory for alice@EXAMPLE.Org: %d certificates; want alice's", len(got))
	}
	if got := ldap.Certificates(t, "alice@EXAMPLE.Org"); len(got) != 1 || !bytes.Equal(got[0], cert.Raw) {
		t.Fatalf("ldapsearch (mail=alice@EXAMPLE.Org): %d certificates; want alice's", len(got))
	}
	derPath := filepath.Join(dir, "alice.cer")
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(state, "ca.pem"), "-H", "Accept: application/pkix-cert",
		"-o", derPath, a.url+"/api/v1/directory?email="+ldaptest.Alice)
	if der, err := os.ReadFile(derPath); err != nil || !bytes.Equal(der, cert.Raw) {
		t.Fatalf("the DER answered for alice is not her certificate: %v", err)
	}

	serial := certSerial(t, dir, filepath.Join(alice, "cert.pem"))
	keyarc(t, "revoke", "--serial", serial, "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
	waitLDAP(t, ldap, a, ldaptest.Alice, nil)
	if got := ldap.Attribute(t, ldaptest.Alice, "userSMIMECertificate"); len(got) != 0 {
		t.Fatalf("alice's userSMIMECertificate after the revocation: %d values; want none", len(got))
	}
	if got := lookup(t, a, dir, ldaptest.Alice); len(got) != 0 {
		t.Fatalf("GET /api/v1/directory for alice after the revocation: %d certificates; want none", len(got))
	}
	code := run(t, dir, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", filepath.Join(state, "ca.pem"),
		"-H", "Accept: application/pkix-cert", a.url+"/api/v1/directory?email="+ldaptest.Alice)
	if strings.TrimSpace(code) != "404" {
		t.Fatalf("the DER lookup of alice after the revocation answered %s; want 404", code)
	}

	// A mailbox without an entry: skipped and counted; the entry added afterwards (as an
	// administrator would, with ldapadd) gets the certificate at the next sweep, below at the
	// restart, without a new enrollment.
	const dave = "dave@example.org"
	enrollUser(t, a, dave, filepath.Join(dir, "dave"))
	daveCert := readCert(t, filepath.Join(dir, "dave", "cert.pem"))
	deadline := time.Now().Add(60 * time.Second)
	for !regexp.MustCompile(`(?m)^keyarc_directory_published_total\{op="publish",outcome="no_entry"\} 1$`).MatchString(run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")) {
		if time.Now().After(deadline) {
			t.Fatalf("the skip of dave (no entry) is not counted:\n%s", a.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	run(t, dir, "ldapadd", "-x", "-H", ldap.URL, "-D", ldaptest.BindDN, "-w", ldaptest.Password, "-f",
		writeLDIF(t, dir, "dn: uid=dave,"+ldaptest.People+"\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: Example\nmail: "+dave+"\n"))

	// slapd down: enrollment is not held up, and what it issued waits in the trail, across a
	// restart of the appliance.
	ldap.Stop()
	bob := filepath.Join(dir, "bob")
	enrollUser(t, a, ldaptest.Bob, bob)
	bobCert := readCert(t, filepath.Join(bob, "cert.pem"))
	if got := lookup(t, a, dir, ldaptest.Bob); len(got) != 1 {
		t.Fatalf("GET /api/v1/directory for bob with slapd down: %d certificates; want his", len(got))
	}
	deadline = time.Now().Add(60 * time.Second)
	for !strings.Contains(a.logs.String(), "publishing failed; nothing is lost") {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say publishing fails while slapd is down:\n%s", a.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	if !strings.Contains(metrics, `keyarc_directory_published_total{op="publish",outcome="error"}`) ||
		strings.Contains(metrics, `keyarc_directory_published_total{op="publish",outcome="error"} 0`) {
		t.Errorf("the metrics do not count the failed publication:\n%s", grepLines(metrics, "keyarc_directory"))
	}
	if m := regexp.MustCompile(`(?m)^keyarc_directory_backlog (\d+)`).FindStringSubmatch(metrics); m == nil || m[1] == "0" {
		t.Errorf("the metrics show no backlog while slapd is down:\n%s", grepLines(metrics, "keyarc_directory"))
	}
	a.stop(t)
	ldap.Restart(t)
	a = serve(t, state)
	waitLDAP(t, ldap, a, ldaptest.Bob, bobCert.Raw)
	if got := ldap.Certificates(t, ldaptest.Alice); len(got) != 0 {
		t.Fatalf("alice's revoked certificate is back in the directory after the restart")
	}
	waitLDAP(t, ldap, a, dave, daveCert.Raw)
}

// writeLDIF writes ldif to a file in dir and returns its path.
func writeLDIF(t *testing.T, dir, ldif string) string {
	t.Helper()
	p := filepath.Join(dir, "add.ldif")
	writeFile(t, p, []byte(ldif))
	return p
}

// TestDirectoryBindRefused: with a wrong bind password the appliance serves and enrolls, the log
// says the bind was refused (never the password), the failures are counted, and once the
// password at its source is right, the waiting certificate is published without a restart.
func TestDirectoryBindRefused(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	ldap := ldaptest.Start(t)
	state := devState(t)
	const wrong = "not-the-directory-password"
	pwFile := filepath.Join(state, "ldap-bind.pw")
	writeFile(t, pwFile, []byte(wrong+"\n"))
	appendFile(t, filepath.Join(state, "keyarc.yaml"), "directory:\n  ldap:\n    url: "+ldap.URL+"\n    bind_dn: "+ldaptest.BindDN+
		"\n    bind_password_source: file:ldap-bind.pw\n    base: "+ldaptest.Base+"\n")
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, ldaptest.Alice, filepath.Join(dir, "alice"))
	cert := readCert(t, filepath.Join(dir, "alice", "cert.pem"))
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(a.logs.String(), "refused the bind") {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say the bind was refused:\n%s", a.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	// The first attempt may be the expiry sweep's or the publication's: either counts an error.
	if !regexp.MustCompile(`(?m)^keyarc_directory_published_total\{op="[a-z]+",outcome="error"\} [1-9]`).MatchString(metrics) {
		t.Errorf("the refused bind is not counted:\n%s", grepLines(metrics, "keyarc_directory"))
	}
	if got := ldap.Certificates(t, ldaptest.Alice); len(got) != 0 {
		t.Fatal("published with a wrong bind password")
	}
	writeFile(t, pwFile, []byte(ldaptest.Password+"\n"))
	waitLDAP(t, ldap, a, ldaptest.Alice, cert.Raw)
	if logs := a.logs.String(); strings.Contains(logs, wrong) || strings.Contains(logs, ldaptest.Password) {
		t.Fatal("the log holds a bind password")
	}
}
