package tests

import (
	"database/sql"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// zlintMinSMIMEApplied is the fewest CABF_SMIME_BR lints that must apply to an S/MIME
// certificate for "no findings" to mean anything (3 applied while certificates carried no
// S/MIME policy OID; 22 apply to keyarc's mailbox-validated strict certificates).
const zlintMinSMIMEApplied = 20

// TestZlintIssuedCertificates issues certificates through the real binary by every path that
// makes one: EST simpleenroll (smime-signature, openssl and curl as the client), `keyarc
// enroll` (smime-encryption: a key made by the client and imported into escrow), EST
// serverkeygen and a bulk keygen job (keys made by the appliance), plus everything `init --dev`
// issues (operator credentials, KRA certificates, transport, TLS and audit certificates). It
// then lints every certificate the appliance holds with zlint: no warning or error, S/MIME
// certificates with CABF_SMIME_BR and RFC5280 and most S/MIME lints applied, the others with
// RFC5280. Notices are logged.
func TestZlintIssuedCertificates(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	const publicURL = "http://pki.example.org/keyarc"
	state := devState(t, "--public-url", publicURL, "--org", "Example Org", "--country", "DE")
	if cfg, _ := os.ReadFile(filepath.Join(state, "keyarc.yaml")); !strings.Contains(string(cfg), "public_url: "+publicURL) {
		t.Fatalf("keyarc.yaml does not hold public_url %s:\n%s", publicURL, cfg)
	}
	if ca := readCert(t, filepath.Join(state, "ca.pem")); !slices.Equal(ca.Subject.Organization, []string{"Example Org"}) || !slices.Equal(ca.Subject.Country, []string{"DE"}) {
		t.Errorf("CA subject %s, want O=Example Org, C=DE", ca.Subject)
	}
	dir := t.TempDir()
	// An operator credential issued offline, before serve: the same profile as serve's.
	cred := strings.TrimSpace(keyarc(t, "admin", "credential", "issue", "--state", state, "--role", "officer", "--name", "olga", "--out", dir))
	if c := readCert(t, cred); !slices.Equal(c.CRLDistributionPoints, []string{publicURL + "/crl/ca.crl"}) {
		t.Errorf("offline credential: CRL distribution points %v, want the configured %s/crl/ca.crl", c.CRLDistributionPoints, publicURL)
	}
	a := serve(t, state)

	// EST simpleenroll: a signing certificate.
	code := newCode(t, state, "zed@example.org", "smime-signature")
	csr := estCSR(t, dir, "zed", "/CN=zed@example.org")
	if status, body := curlEST(t, a, dir, "/.well-known/est/smime-signature/simpleenroll", "zed@example.org:"+code, csr); status != "200" {
		t.Fatalf("simpleenroll: HTTP %s: %s", status, body)
	}
	// keyarc enroll: the client's own key, archived.
	code = newCode(t, state, "yan@example.org", "smime-encryption")
	keyarc(t, "enroll", "--state", state, "--template", "smime-encryption", "--email", "yan@example.org", "--code", code, "--out", filepath.Join(dir, "yan"))
	// EST serverkeygen: a key made by the appliance.
	code = newCode(t, state, "xia@example.org", "smime-encryption")
	csr = estCSR(t, dir, "xia", "/CN=xia@example.org")
	if status, body := curlEST(t, a, dir, "/.well-known/est/smime-encryption/serverkeygen", "xia@example.org:"+code, csr); status != "200" {
		t.Fatalf("serverkeygen: HTTP %s: %s", status, body)
	}
	// A bulk keygen job, P-256 and RSA keys.
	file := filepath.Join(t.TempDir(), "keygen.jsonl")
	writeJobFile(t, file, `{"kind":"keygen","template":"smime-encryption","key":"p256"}`,
		[]string{`{"email":"kg1@example.org"}`, `{"email":"kg2@example.org","key":"rsa2048"}`})
	id := submitBulk(t, a, file)
	readResults(t, a, id, "--passwords", filepath.Join(t.TempDir(), "passwords.jsonl"))

	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT serial, template, email, der FROM certificates WHERE state = 'issued' ORDER BY created_at`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	perTemplate := map[string]int{}
	smimeMailboxes := map[string]bool{}
	for rows.Next() {
		var serial, template, email string
		var der []byte
		if err := rows.Scan(&serial, &template, &email, &der); err != nil {
			t.Fatal(err)
		}
		perTemplate[template]++
		smime := strings.HasPrefix(template, "smime-")
		if smime {
			smimeMailboxes[email] = true
		}
		name := fmt.Sprintf("%s %s (%s)", template, serial, email)
		checkZlint(t, name, der, smime, publicURL)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"zed@example.org", "yan@example.org", "xia@example.org", "kg1@example.org", "kg2@example.org"} {
		if !smimeMailboxes[m] {
			t.Errorf("no issued S/MIME certificate for %s", m)
		}
	}
	if perTemplate["kra"] == 0 || perTemplate["client-auth"]+perTemplate["kra"] < 3 {
		t.Errorf("certificates per template %v: want the KRA and operator certificates of init --dev", perTemplate)
	}
	t.Logf("certificates linted per template: %v", perTemplate)
	// The certificates init writes to files.
	for _, f := range []string{"transport.pem", "tls.pem", "audit.pem"} {
		b, err := os.ReadFile(filepath.Join(state, f))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := pem.Decode(b)
		if p == nil {
			t.Fatalf("%s: no PEM", f)
		}
		checkZlint(t, f, p.Bytes, false, publicURL)
	}
}

// checkZlint lints der: with CABF_SMIME_BR and RFC5280 when smime, else RFC5280 only.
func checkZlint(t *testing.T, name string, der []byte, smime bool, publicURL string) {
	t.Helper()
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("%s: zcrypto parse: %v", name, err)
	}
	sources := lint.SourceList{lint.RFC5280}
	if smime {
		sources = append(sources, lint.CABFSMIMEBaselineRequirements)
	}
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: sources})
	if err != nil {
		t.Fatal(err)
	}
	rs := zlint.LintCertificateEx(c, reg)
	var bad, notices []string
	applied := 0
	for lname, r := range rs.Results {
		switch {
		case r.Status >= lint.Warn:
			bad = append(bad, lname+" ("+r.Status.String()+": "+r.Details+")")
		case r.Status == lint.Notice:
			notices = append(notices, lname)
		}
		if r.Status != lint.NA && r.Status != lint.NE {
			if l := lint.GlobalRegistry().ByName(lname); l != nil && l.Source == lint.CABFSMIMEBaselineRequirements {
				applied++
			}
		}
	}
	slices.Sort(bad)
	if len(bad) > 0 {
		t.Errorf("%s: zlint: %s", name, strings.Join(bad, "; "))
	}
	if len(notices) > 0 {
		t.Logf("%s: zlint notices: %v", name, notices)
	}
	if !smime {
		return
	}
	if applied < zlintMinSMIMEApplied {
		t.Errorf("%s: %d CABF_SMIME_BR lints applied, want at least %d", name, applied, zlintMinSMIMEApplied)
	}
	if want := publicURL + "/crl/ca.crl"; !slices.Equal(c.CRLDistributionPoints, []string{want}) {
		t.Errorf("%s: CRL distribution points %v, want %s", name, c.CRLDistributionPoints, want)
	}
	if !slices.Equal(c.OCSPServer, []string{publicURL + "/ocsp"}) || !slices.Equal(c.IssuingCertificateURL, []string{publicURL + "/ca.crt"}) {
		t.Errorf("%s: AIA OCSP %v, caIssuers %v", name, c.OCSPServer, c.IssuingCertificateURL)
	}
}
