package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/keyarc/keyarc/policy"
)

// testCAPolicy is a CA's own policy OID (under the documentation arc of a private enterprise).
var testCAPolicy = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1, 1}

const testPublicURL = "http://pki.example.org"

// newProfiledIssuer is newIssuer with a public URL, the CA's own policy OID and the options.
func newProfiledIssuer(t testing.TB, key crypto.Signer, opts ...Option) *Issuer {
	t.Helper()
	subject := pkix.Name{CommonName: "keyarc test root", Organization: []string{"Example"}, Country: []string{"DE"}}
	root, err := SelfSignedRoot(key, subject, t0.Add(-day), 3650*day)
	if err != nil {
		t.Fatalf("SelfSignedRoot: %v", err)
	}
	iss, err := New(key, root, append([]Option{WithPublicURL(testPublicURL), WithPolicy(testCAPolicy)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return iss.WithClock(func() time.Time { return t0 })
}

// templateRequest builds the request escrow/issue builds for template tt (the subject CN is
// the mailbox for S/MIME, a name for the others).
func templateRequest(tt *policy.Template, pub crypto.PublicKey) Request {
	eku, unknown := tt.ExtKeyUsages()
	r := Request{
		PublicKey:          pub,
		KeyUsage:           tt.KeyUsageFor(pub),
		ExtKeyUsage:        eku,
		UnknownExtKeyUsage: unknown,
		NotBefore:          t0,
		Validity:           tt.Validity(),
		Policies:           tt.CertificatePolicies(),
	}
	if tt.IsSMIME() {
		r.Subject = pkix.Name{CommonName: "alice@example.com"}
		r.EmailAddresses = []string{"alice@example.com"}
	} else {
		r.Subject = pkix.Name{CommonName: "KRA kra1 (key recovery)"}
	}
	return r
}

// zlintAll lints an issued certificate with both sources, the S/MIME one included whatever
// the certificate is, as an outside auditor would for an S/MIME certificate.
func zlintAll(t testing.TB, der []byte, sources ...lint.LintSource) *zlint.ResultSet {
	t.Helper()
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("zcrypto parse: %v", err)
	}
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: sources})
	if err != nil {
		t.Fatal(err)
	}
	return zlint.LintCertificateEx(c, reg)
}

// tally counts a result set: findings at notice level and above, and the lints of source src
// that applied (status neither NA nor NE).
func tally(rs *zlint.ResultSet, src lint.LintSource) (warnOrWorse, notices []string, applied int) {
	for name, r := range rs.Results {
		switch {
		case r.Status >= lint.Warn:
			warnOrWorse = append(warnOrWorse, name+" ("+r.Status.String()+": "+r.Details+")")
		case r.Status == lint.Notice:
			notices = append(notices, name)
		}
		if r.Status != lint.NA && r.Status != lint.NE {
			if l := lint.GlobalRegistry().ByName(name); l != nil && l.Source == src {
				applied++
			}
		}
	}
	slices.Sort(warnOrWorse)
	slices.Sort(notices)
	return warnOrWorse, notices, applied
}

// minSMIMEApplied is the fewest CABF_SMIME_BR lints that must apply to an S/MIME certificate
// for "no findings" to mean something (3 applied before certificates carried a policy OID).
const minSMIMEApplied = 20

var (
	leafOnce               sync.Once
	leafP256, leafP384     *ecdsa.PrivateKey
	leafRSA3072, caRSA3072 *rsa.PrivateKey
)

func leafKeys(t testing.TB) {
	t.Helper()
	rsaKeys(t)
	leafOnce.Do(func() {
		leafP256, leafP384 = mustEC(t, elliptic.P256()), mustEC(t, elliptic.P384())
		var err error
		if leafRSA3072, err = rsa.GenerateKey(rand.Reader, 3072); err != nil {
			panic(err)
		}
	})
}

// TestZlintBuiltinTemplates issues a certificate of every built-in template, for every key
// type the template accepts, under P-256, P-384 and RSA CA keys, and lints the result: no
// warning or error from CABF_SMIME_BR or RFC5280, and for S/MIME templates most S/MIME lints
// applied.
func TestZlintBuiltinTemplates(t *testing.T) {
	leafKeys(t)
	cas := []struct {
		name string
		key  crypto.Signer
	}{{"p256 ca", p256(t)}, {"p384 ca", mustEC(t, elliptic.P384())}, {"rsa2048 ca", caRSA}}
	leaves := []struct {
		name string
		key  crypto.PublicKey
		alg  string
	}{{"rsa2048", leafRSA.Public(), policy.AlgorithmRSA}, {"rsa3072", leafRSA3072.Public(), policy.AlgorithmRSA},
		{"p256", leafP256.Public(), policy.AlgorithmECDSA}, {"p384", leafP384.Public(), policy.AlgorithmECDSA}}
	templates, err := policy.Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range templates {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, c := range cas {
		iss := newProfiledIssuer(t, c.key)
		for _, n := range names {
			tt := templates[n]
			for _, l := range leaves {
				if err := tt.CheckPublicKey(l.key); err != nil {
					continue // the template refuses this key before it reaches the CA
				}
				t.Run(c.name+"/"+n+"/"+l.name, func(t *testing.T) {
					cert, err := iss.Issue(templateRequest(tt, l.key))
					if err != nil {
						t.Fatalf("Issue: %v", err)
					}
					checkProfile(t, cert, tt.IsSMIME())
					if tt.IsSMIME() {
						bad, notices, applied := tally(zlintAll(t, cert.Raw, lint.CABFSMIMEBaselineRequirements, lint.RFC5280), lint.CABFSMIMEBaselineRequirements)
						if len(bad) > 0 {
							t.Errorf("zlint findings: %s", strings.Join(bad, "; "))
						}
						if applied < minSMIMEApplied {
							t.Errorf("only %d CABF_SMIME_BR lints applied, want at least %d", applied, minSMIMEApplied)
						}
						t.Logf("%d CABF_SMIME_BR lints applied; notices: %v", applied, notices)
						return
					}
					bad, notices, applied := tally(zlintAll(t, cert.Raw, lint.RFC5280), lint.RFC5280)
					if len(bad) > 0 {
						t.Errorf("zlint RFC5280 findings: %s", strings.Join(bad, "; "))
					}
					t.Logf("%d RFC5280 lints applied; notices: %v", applied, notices)
				})
			}
		}
	}
}

// checkProfile checks the extensions the profile adds.
func checkProfile(t *testing.T, cert *x509.Certificate, smime bool) {
	t.Helper()
	if want := []string{testPublicURL + CRLPath}; !slices.Equal(cert.CRLDistributionPoints, want) {
		t.Errorf("CRL distribution points %v, want %v", cert.CRLDistributionPoints, want)
	}
	if want := []string{testPublicURL + OCSPPath}; !slices.Equal(cert.OCSPServer, want) {
		t.Errorf("OCSP %v, want %v", cert.OCSPServer, want)
	}
	if want := []string{testPublicURL + CACertPath}; !slices.Equal(cert.IssuingCertificateURL, want) {
		t.Errorf("caIssuers %v, want %v", cert.IssuingCertificateURL, want)
	}
	var reserved, own int
	for _, p := range cert.Policies {
		switch p.String() {
		case policy.OIDSMIMEMailboxStrict.String():
			reserved++
		case testCAPolicy.String():
			own++
		default:
			t.Errorf("unexpected policy %v", p)
		}
	}
	if smime && (reserved != 1 || own != 1) {
		t.Errorf("policies %v: want the strict mailbox-validated OID and the CA's own", cert.Policies)
	}
	if !smime && len(cert.Policies) != 0 {
		t.Errorf("policies %v on a certificate that is not S/MIME", cert.Policies)
	}
}

// TestZlintDefaultPublicURL: the development default (an IP address with a port) issues
// certificates whose only zlint finding is zlint's misreading of "IP:port" as an internal
// name, which the Issuer (and only for its own URLs) does not count.
func TestZlintDefaultPublicURL(t *testing.T) {
	iss := newIssuer(t, p256(t))
	cert, err := iss.Issue(templateRequest(&policy.Builtins()[1], p256(t).Public()))
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if want := DefaultPublicURL + CRLPath; len(cert.CRLDistributionPoints) != 1 || cert.CRLDistributionPoints[0] != want {
		t.Errorf("CDP %v, want %s", cert.CRLDistributionPoints, want)
	}
	bad, _, _ := tally(zlintAll(t, cert.Raw, lint.CABFSMIMEBaselineRequirements, lint.RFC5280), lint.CABFSMIMEBaselineRequirements)
	if len(bad) != 1 || !strings.HasPrefix(bad[0], lintAIAInternalNames+" ") {
		t.Errorf("findings %v, want only %s", bad, lintAIAInternalNames)
	}
}

// TestZlintRefusesBeforeSigning: a certificate that zlint refuses is never signed by the CA
// key, the error names the lint, and the observer counts it.
func TestZlintRefusesBeforeSigning(t *testing.T) {
	leafKeys(t)
	strictMulti := policy.Builtins()[1] // smime-signature, with clientAuth added (Validate refuses this)
	strictMulti.ExtKeyUsage = append(strictMulti.ExtKeyUsage, policy.EKUClientAuth)
	tests := []struct {
		name     string
		req      func() Request
		wantLint string
	}{
		{name: "reserved policy missing", wantLint: "e_exactly_one_smime_policy", req: func() Request {
			r := templateRequest(&policy.Builtins()[0], leafP256.Public())
			r.Policies = []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 32473, 9}}
			return r
		}},
		{name: "two reserved policies", wantLint: "e_exactly_one_smime_policy", req: func() Request {
			r := templateRequest(&policy.Builtins()[0], leafP256.Public())
			r.Policies = []asn1.ObjectIdentifier{policy.OIDSMIMEMailboxStrict, policy.OIDSMIMEMailboxLegacy}
			return r
		}},
		{name: "strict template with clientAuth", wantLint: "e_smime_strict_eku_check", req: func() Request {
			return templateRequest(&strictMulti, leafP256.Public())
		}},
		{name: "mailbox-validated CN that is not the mailbox", wantLint: "e_commonname_mailbox_validated", req: func() Request {
			r := templateRequest(&policy.Builtins()[1], leafRSA.Public())
			r.Subject = pkix.Name{CommonName: "Alice Example"}
			return r
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := p256(t)
			root := newProfiledIssuer(t, key).Certificate()
			var mu sync.Mutex
			var seen []string
			cs := &countingSigner{Signer: key}
			iss, err := New(cs, root, WithPublicURL(testPublicURL), WithLintObserver(func(l string) {
				mu.Lock()
				seen = append(seen, l)
				mu.Unlock()
			}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = iss.WithClock(func() time.Time { return t0 }).Issue(tt.req())
			if !errors.Is(err, ErrLint) {
				t.Fatalf("Issue() = %v, want ErrLint", err)
			}
			le, ok := AsLintError(err)
			if !ok || !slices.Contains(le.Lints(), tt.wantLint) {
				t.Fatalf("Issue() = %v, want a LintError naming %s", err, tt.wantLint)
			}
			if !strings.Contains(err.Error(), tt.wantLint) {
				t.Errorf("error %q does not name %s", err, tt.wantLint)
			}
			if cs.n != 0 {
				t.Errorf("the CA key signed %d times", cs.n)
			}
			if !slices.Contains(seen, tt.wantLint) {
				t.Errorf("observer saw %v, want %s", seen, tt.wantLint)
			}
		})
	}
}

func TestParsePublicURL(t *testing.T) {
	tests := []struct {
		in, wantBase string
		wantErr      error
	}{
		{in: "http://pki.example.org", wantBase: "http://pki.example.org"},
		{in: "http://pki.example.org/", wantBase: "http://pki.example.org"},
		{in: "http://pki.example.org:8080/keyarc/", wantBase: "http://pki.example.org:8080/keyarc"},
		{in: "http://127.0.0.1:8080", wantBase: "http://127.0.0.1:8080"},
		{in: "http://[::1]:8080", wantBase: "http://[::1]:8080"},
		{in: "https://pki.example.org", wantErr: ErrPublicURL},
		{in: "pki.example.org", wantErr: ErrPublicURL},
		{in: "http://", wantErr: ErrPublicURL},
		{in: "http://pki.example.org/?x=1", wantErr: ErrPublicURL},
		{in: "http://pki.example.org/?", wantErr: ErrPublicURL},
		{in: "http://pki.example.org/#top", wantErr: ErrPublicURL},
		{in: "http://user@pki.example.org", wantErr: ErrPublicURL},
		{in: "http://localhost:8080", wantErr: ErrPublicURL},
		{in: "http://pki.corp.internal", wantErr: ErrPublicURL},
		{in: "http://pki.example.org/%zz", wantErr: ErrPublicURL},
		{in: "", wantErr: ErrPublicURL},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := ParsePublicURL(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParsePublicURL(%q) = %v, want %v", tt.in, err, tt.wantErr)
			}
			if err == nil && (u.Base != tt.wantBase || u.CRL != tt.wantBase+CRLPath || u.OCSP != tt.wantBase+OCSPPath || u.CACert != tt.wantBase+CACertPath) {
				t.Errorf("got %+v, want base %s", u, tt.wantBase)
			}
		})
	}
}

func TestWithPolicy(t *testing.T) {
	key := p256(t)
	root := newIssuer(t, key).Certificate()
	for _, oid := range []asn1.ObjectIdentifier{policy.OIDSMIMEMailboxStrict, {2}} {
		if _, err := New(key, root, WithPolicy(oid)); err == nil {
			t.Errorf("WithPolicy(%v) accepted", oid)
		}
	}
}

// cpuTime returns the CPU time the process has used so far, user and system, all threads.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loopCPU runs op in b.Loop and reports, beside the time per operation, the process's CPU
// time per operation (cpu-µs/op: what the operation costs the server, collector included,
// which a machine busy with other work inflates less than the wall-clock time).
func loopCPU(b *testing.B, op func() error) {
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}

// BenchmarkIssueZlint measures the CPU cost of issuing one certificate with and without the
// zlint gate: the same S/MIME request, one goroutine, P-256 and RSA-2048 CA keys (software
// keys: the token's signature costs what it costs on top). zlint-only is the gate alone
// (assembling the certificate with the placeholder signature, zcrypto's parse and the lints),
// encode is lint's own checks and the TBS encoding.
func BenchmarkIssueZlint(b *testing.B) {
	rsaKeys(b)
	for _, c := range []struct {
		name string
		key  crypto.Signer
	}{{"p256", p256(b)}, {"rsa2048", caRSA}} {
		iss := newProfiledIssuer(b, c.key)
		req := templateRequest(&policy.Builtins()[0], p256(b).Public())
		if _, err := iss.Issue(req); err != nil { // builds the zlint registries
			b.Fatal(err)
		}
		off := *iss
		off.noZlint = true
		for _, v := range []struct {
			name string
			iss  *Issuer
		}{{"zlint", iss}, {"nozlint", &off}} {
			b.Run(c.name+"/"+v.name, func(b *testing.B) {
				loopCPU(b, func() error { _, err := v.iss.Issue(req); return err })
			})
		}
		b.Run(c.name+"/zlint-only", func(b *testing.B) {
			l, err := iss.lint(&req)
			if err != nil {
				b.Fatal(err)
			}
			loopCPU(b, func() error { return iss.zlintCheck(l) })
		})
		b.Run(c.name+"/encode", func(b *testing.B) {
			loopCPU(b, func() error { _, err := iss.lint(&req); return err })
		})
	}
}

// sourceRegistry is the zlint registry of the gate's sources, every lint of them included:
// what an outside auditor runs.
func sourceRegistry(t testing.TB, smime bool) lint.Registry {
	t.Helper()
	sources := lint.SourceList{lint.RFC5280}
	if smime {
		sources = append(sources, lint.CABFSMIMEBaselineRequirements)
	}
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: sources})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestZlintRunIsLintCertificateEx: the gate's own loop over the registry's lints finds what
// zlint.LintCertificateEx finds with every lint of the gate's sources, for certificates that
// pass and for ones that draw findings, and it runs every certificate lint of the sources
// but zlintNeverApplies.
func TestZlintRunIsLintCertificateEx(t *testing.T) {
	leafKeys(t)
	iss := newProfiledIssuer(t, p256(t))
	z := iss.z
	if err := z.init(); err != nil {
		t.Fatal(err)
	}
	skipped := neverApplies()
	for _, reg := range []struct {
		lints []gateLint
		smime bool
	}{{z.smimeLints, true}, {z.rfcLints, false}} {
		var kept []string
		for _, l := range reg.lints {
			kept = append(kept, l.Name)
		}
		var want []string
		for _, l := range sourceRegistry(t, reg.smime).CertificateLints().Lints() {
			if !slices.Contains(skipped, l.Name) {
				want = append(want, l.Name)
			}
		}
		slices.Sort(kept)
		if !slices.Equal(kept, want) || len(kept) < 50 {
			t.Fatalf("smime %v: the gate runs %d lints, want the %d of its sources but zlintNeverApplies", reg.smime, len(kept), len(want))
		}
	}
	noPolicy := templateRequest(&policy.Builtins()[0], leafP256.Public())
	noPolicy.Policies = []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 32473, 9}}
	badCN := templateRequest(&policy.Builtins()[1], leafRSA.Public())
	badCN.Subject = pkix.Name{CommonName: "Alice Example"}
	reqs := map[string]Request{"smime-encryption": templateRequest(&policy.Builtins()[0], leafP256.Public()),
		"kra": templateRequest(&policy.Builtins()[2], leafRSA.Public()), "no reserved policy": noPolicy, "CN not the mailbox": badCN}
	for name, req := range reqs {
		t.Run(name, func(t *testing.T) {
			l, err := iss.lint(&req)
			if err != nil {
				t.Fatal(err)
			}
			got, want := runAndLintEx(t, z, l, iss.profile.algID)
			if !slices.Equal(got, want) {
				t.Fatalf("run found %v, LintCertificateEx %v", got, want)
			}
			if name != "smime-encryption" && name != "kra" && len(got) == 0 {
				t.Fatal("no findings where zlint refuses")
			}
		})
	}
}

// runAndLintEx returns the findings of the gate on l and those of zlint.LintCertificateEx
// with every lint of the gate's sources.
func runAndLintEx(t testing.TB, z *zlinter, l linted, algID []byte) (got, want []Finding) {
	t.Helper()
	got, err := z.run(l, algID)
	if err != nil {
		t.Fatal(err)
	}
	der, err := assemble(l.buf, certHeadroom, algID, z.placeholder)
	if err != nil {
		t.Fatal(err)
	}
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return got, findings(zlint.LintCertificateEx(c, sourceRegistry(t, l.smime)))
}
