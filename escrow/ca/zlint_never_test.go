package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/keyarc/keyarc/policy"
)

// corpusRequests returns requests of template tt for key pub that stretch what the encoder
// writes: the template's own, a subject of every attribute, an empty subject with every kind
// of subjectAltName, a NotBefore long past, a life past 2049 (GeneralizedTime) where the
// profile allows it, no or an unknown extended key usage, an OCSP responder, several
// purposes with other policies (anyPolicy among them) and every key usage. Some draw zlint
// findings: the gate must see what zlint sees, whatever the verdict.
func corpusRequests(tt *policy.Template, pub crypto.PublicKey) []Request {
	base := templateRequest(tt, pub)
	out := []Request{base}
	v := base
	v.Subject = pkix.Name{CommonName: base.Subject.CommonName, Organization: []string{"Example"}, OrganizationalUnit: []string{"IT"},
		Country: []string{"DE"}, Province: []string{"Bayern"}, Locality: []string{"München"}, StreetAddress: []string{"Straße 1"},
		PostalCode: []string{"80331"}, SerialNumber: "42", ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 42}, Value: "Alice"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 4}, Value: "Example"},
			{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: "alice@example.com"},
			{Type: asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}, Value: "example"},
			{Type: asn1.ObjectIdentifier{2, 5, 4, 97}, Value: "LEIXG-7ZW8QJWVPR4P1J1K9Y6"}}}
	out = append(out, v)
	v = base
	v.Subject = pkix.Name{}
	v.EmailAddresses = []string{"alice@example.com", "bob@example.org"}
	v.DNSNames = []string{"host.example.com"}
	v.IPAddresses = []net.IP{net.IPv4(192, 0, 2, 1).To4(), net.ParseIP("2001:db8::1")}
	out = append(out, v)
	v = base
	v.NotBefore = base.NotBefore.Add(-3000 * day)
	out = append(out, v)
	v = base
	v.Validity = 25 * 365 * day // refused for emailProtection (825 days at most)
	out = append(out, v)
	v = base
	v.ExtKeyUsage = nil
	out = append(out, v)
	v.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 32473, 7}}
	out = append(out, v)
	v = base
	v.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
	v.UnknownExtKeyUsage = nil
	v.OCSPNoCheck = true
	out = append(out, v)
	v = base
	v.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection, x509.ExtKeyUsageClientAuth,
		x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageCodeSigning}
	v.EmailAddresses = []string{"alice@example.com"}
	for _, p := range [][]asn1.ObjectIdentifier{{policy.OIDSMIMEMailboxLegacy}, {{2, 23, 140, 1, 5, 2, 2}},
		{{2, 23, 140, 1, 5, 3, 2}}, {{2, 23, 140, 1, 5, 4, 3}}, {{2, 23, 140, 1, 5, 1, 2}, {2, 23, 140, 1, 2, 1}, {2, 5, 29, 32, 0}}} {
		v.Policies = p
		out = append(out, v)
	}
	v.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment |
		x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageEncipherOnly | x509.KeyUsageDecipherOnly
	out = append(out, v)
	return out
}

// zlintCorpus returns the to-be-signed certificates, with the placeholder signature, of
// corpusRequests for every built-in template and every key the template accepts plus an
// Ed25519 one, under CAs of each key type keyarc signs with, with and without a public URL
// and the CA's own policy, the CA certificate living past 2050.
func zlintCorpus(t *testing.T) (tbs []linted, issuers []*Issuer) {
	t.Helper()
	leafKeys(t)
	_, edCA, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edLeaf, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaves := []crypto.PublicKey{leafRSA.Public(), leafRSA3072.Public(), leafP256.Public(), leafP384.Public(), edLeaf}
	for _, key := range []crypto.Signer{p256(t), mustEC(t, elliptic.P384()), caRSA, edCA} {
		subject := pkix.Name{CommonName: "keyarc test root", Organization: []string{"Example"}, Country: []string{"DE"}}
		root, err := SelfSignedRoot(key, subject, t0.Add(-3650*day), 40*365*day)
		if err != nil {
			t.Fatal(err)
		}
		for _, opts := range [][]Option{nil, {WithPublicURL(testPublicURL), WithPolicy(testCAPolicy)}} {
			iss, err := New(key, root, opts...)
			if err != nil {
				t.Fatal(err)
			}
			iss = iss.WithClock(func() time.Time { return t0 })
			for _, tt := range policy.Builtins() {
				for _, pub := range leaves {
					for _, req := range corpusRequests(&tt, pub) {
						l, err := iss.lint(&req)
						if err != nil {
							continue // refused before zlint
						}
						tbs, issuers = append(tbs, l), append(issuers, iss)
					}
				}
			}
		}
	}
	return tbs, issuers
}

// encoderExtensions are the only extensions encodeTBSCertificate writes. One more there means
// zlintNeverApplies must be checked again.
var encoderExtensions = []string{"2.5.29.15", "2.5.29.37", "2.5.29.19", "2.5.29.14", "2.5.29.35",
	"1.3.6.1.5.5.7.1.1", "2.5.29.17", "2.5.29.32", "2.5.29.31", "1.3.6.1.5.5.7.48.1.5"}

// TestZlintNeverApplies: the lints the gate leaves out (zlintNeverApplies) say NA on every
// certificate of a wide corpus of requests, whose certificates have none of the features those
// lints need (no CA certificate, no extension but the encoder's, no policy qualifier); the
// gate's findings there are those of every lint of its sources; and each group of lints left
// out does apply once a certificate has its feature, so the reason given is the real one.
func TestZlintNeverApplies(t *testing.T) {
	all := sourceRegistry(t, true)
	skipped := map[string]*lint.CertificateLint{}
	for _, name := range neverApplies() {
		l := all.CertificateLints().ByName(name)
		if l == nil {
			t.Fatalf("%s is not a certificate lint of the gate's sources", name)
		}
		skipped[name] = l
	}
	regs := map[bool]lint.Registry{true: all, false: sourceRegistry(t, false)}
	conf := all.GetConfiguration()

	tbs, issuers := zlintCorpus(t)
	shapes := map[string]bool{}
	var gen, smime int
	for n, l := range tbs {
		iss := issuers[n]
		got, err := iss.z.run(l, iss.profile.algID)
		if err != nil {
			t.Fatal(err)
		}
		der, err := assemble(l.buf, certHeadroom, iss.profile.algID, iss.z.placeholder)
		if err != nil {
			t.Fatal(err)
		}
		c, err := zx509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if want := findings(zlint.LintCertificateEx(c, regs[l.smime])); !slices.Equal(got, want) {
			t.Errorf("certificate %d: the gate found %v, every lint of its sources %v", n, got, want)
		}
		if c.IsCA {
			t.Errorf("certificate %d is a CA certificate", n)
		}
		for _, e := range c.Extensions {
			if !slices.Contains(encoderExtensions, e.Id.String()) {
				t.Errorf("certificate %d has extension %v", n, e.Id)
			}
		}
		for _, q := range c.QualifierId {
			if len(q) > 0 {
				t.Errorf("certificate %d has policy qualifiers %v", n, q)
			}
		}
		for name, sl := range skipped {
			if r := sl.Execute(c, conf); r.Status != lint.NA {
				t.Errorf("certificate %d: %s says %s, want NA", n, name, r.Status)
			}
		}
		shapes[c.PublicKeyAlgorithm.String()+"/"+c.SignatureAlgorithm.String()] = true
		if c.NotAfter.Year() >= 2050 {
			gen++
		}
		if l.smime {
			smime++
		}
	}
	// The corpus reaches what it claims to.
	if len(tbs) < 500 || gen == 0 || smime == 0 || len(shapes) < 12 {
		t.Fatalf("corpus of %d certificates, %d living past 2049, %d S/MIME, %d key and signature algorithms",
			len(tbs), gen, smime, len(shapes))
	}
	t.Logf("%d certificates (%d S/MIME, %d past 2049), %d key/signature algorithm pairs", len(tbs), smime, gen, len(shapes))

	// Each group applies once a certificate has its feature, and not before.
	ca, caKey := probeCA(t)
	base := probeCertificate(t, ca, caKey, func(*x509.Certificate) {})
	for _, g := range zlintNeverApplies {
		add, ok := probeFeatures[g.feature]
		if !ok {
			t.Errorf("no probe for %q", g.feature)
			continue
		}
		with := probeCertificate(t, ca, caKey, add)
		for _, name := range g.lints {
			if r := skipped[name].Execute(base, conf); r.Status != lint.NA {
				t.Errorf("%s says %s without %s, want NA", name, r.Status, g.feature)
			}
			if r := skipped[name].Execute(with, conf); r.Status == lint.NA {
				t.Errorf("%s does not apply to a certificate with %s", name, g.feature)
			}
		}
	}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawExtension(oid asn1.ObjectIdentifier, value []byte) func(*x509.Certificate) {
	return func(c *x509.Certificate) {
		c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: oid, Value: value})
	}
}

// uriName is a GeneralName uniformResourceIdentifier.
func uriName(s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(s)}
}

// probeFeatures adds to a probe certificate what each group of zlintNeverApplies needs.
var probeFeatures = map[string]func(*x509.Certificate){
	"basic constraints cA TRUE": func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage = true, c.KeyUsage|x509.KeyUsageCertSign
	},
	"issuer alternative name": func(c *x509.Certificate) {
		v, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("ca.example.org")}})
		rawExtension(asn1.ObjectIdentifier{2, 5, 29, 18}, v)(c)
	},
	"name constraints": func(c *x509.Certificate) { c.PermittedDNSDomains = []string{"example.org"} },
	"policy constraints": rawExtension(asn1.ObjectIdentifier{2, 5, 29, 36},
		[]byte{0x30, 0x03, 0x80, 0x01, 0x00}), // requireExplicitPolicy 0
	"policy mappings": func(c *x509.Certificate) {
		v, _ := asn1.Marshal([]struct{ Issuer, Subject asn1.ObjectIdentifier }{{asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1}, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 2}}})
		rawExtension(asn1.ObjectIdentifier{2, 5, 29, 33}, v)(c)
	},
	"inhibit anyPolicy": rawExtension(asn1.ObjectIdentifier{2, 5, 29, 54}, []byte{0x02, 0x01, 0x00}),
	"subject directory attributes": func(c *x509.Certificate) {
		v, _ := asn1.Marshal([]struct {
			Type   asn1.ObjectIdentifier
			Values []string `asn1:"set,printable"`
		}{{asn1.ObjectIdentifier{2, 5, 4, 16}, []string{"A"}}})
		rawExtension(asn1.ObjectIdentifier{2, 5, 29, 9}, v)(c)
	},
	"subject information access": func(c *x509.Certificate) {
		v, _ := asn1.Marshal([]struct {
			Method   asn1.ObjectIdentifier
			Location asn1.RawValue
		}{{asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 5}, uriName("http://pki.example.org/repo")}})
		rawExtension(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 11}, v)(c)
	},
	"freshest CRL": func(c *x509.Certificate) {
		// DistributionPoint { distributionPoint [0] { fullName [0] { URI } } }
		name, _ := asn1.Marshal(uriName("http://pki.example.org/delta.crl"))
		full, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: name})
		dp, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: full})
		v, _ := asn1.Marshal([]asn1.RawValue{{Tag: asn1.TagSequence, Class: asn1.ClassUniversal, IsCompound: true, Bytes: dp}})
		rawExtension(asn1.ObjectIdentifier{2, 5, 29, 46}, v)(c)
	},
	"QC statements": func(c *x509.Certificate) {
		v, _ := asn1.Marshal([]struct{ ID asn1.ObjectIdentifier }{{asn1.ObjectIdentifier{0, 4, 0, 1862, 1, 1}}}) // QcCompliance
		rawExtension(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 3}, v)(c)
	},
	"Adobe time-stamp or archive revocation info": rawExtension(asn1.ObjectIdentifier{1, 2, 840, 113583, 1, 1, 9, 1},
		[]byte{0x30, 0x03, 0x02, 0x01, 0x01}), // version 1, no location
	"policy user notice with explicit text": func(c *x509.Certificate) {
		type qualifier struct {
			ID     asn1.ObjectIdentifier
			Notice struct {
				Text string `asn1:"utf8"`
			}
		}
		type info struct {
			ID         asn1.ObjectIdentifier
			Qualifiers []qualifier
		}
		q := qualifier{ID: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 2, 2}}
		q.Notice.Text = "keyarc test notice"
		v, _ := asn1.Marshal([]info{{ID: asn1.ObjectIdentifier(policy.OIDSMIMEMailboxLegacy), Qualifiers: []qualifier{q}}})
		c.Policies = nil
		rawExtension(asn1.ObjectIdentifier{2, 5, 29, 32}, v)(c)
	},
}

// probeCA is a CA made by crypto/x509, for the probe certificates.
func probeCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := p256(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "probe CA", Country: []string{"DE"}},
		NotBefore: t0.Add(-day), NotAfter: t0.Add(3650 * day), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

// probeCertificate is an S/MIME subscriber certificate under the legacy mailbox-validated
// policy, made by crypto/x509, with add applied to its template.
func probeCertificate(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, add func(*x509.Certificate)) *zx509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice@example.com"},
		NotBefore: t0, NotAfter: t0.Add(365 * day), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		EmailAddresses: []string{"alice@example.com"}, CRLDistributionPoints: []string{testPublicURL + CRLPath},
		Policies: []x509.OID{mustOID(t, policy.OIDSMIMEMailboxLegacy)}}
	add(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, leafP256.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustOID(t testing.TB, o asn1.ObjectIdentifier) x509.OID {
	t.Helper()
	oid, err := x509.OIDFromInts(func() []uint64 {
		var u []uint64
		for _, n := range o {
			u = append(u, uint64(n))
		}
		return u
	}())
	if err != nil {
		t.Fatal(err)
	}
	return oid
}

// TestZlintSharedLints: the lints whose one instance the gate shares across certificates
// are those whose type has no fields, or the audited sharedLints; a lint that can be
// configured never is.
func TestZlintSharedLints(t *testing.T) {
	iss := newProfiledIssuer(t, p256(t))
	if err := iss.z.init(); err != nil {
		t.Fatal(err)
	}
	var withFields []string
	for _, lints := range [][]gateLint{iss.z.smimeLints, iss.z.rfcLints} {
		for _, l := range lints {
			if l.shared == nil {
				continue
			}
			if _, ok := l.shared.(lint.Configurable); ok {
				t.Errorf("%s can be configured and is shared", l.Name)
			}
			if reflect.TypeOf(l.shared).Elem().Size() != 0 && !slices.Contains(withFields, l.Name) {
				withFields = append(withFields, l.Name)
			}
		}
	}
	var audited []string
	for name := range sharedLints {
		audited = append(audited, name)
	}
	slices.Sort(withFields)
	slices.Sort(audited)
	if !slices.Equal(withFields, audited) {
		t.Errorf("lints with fields shared: %v, audited: %v", withFields, audited)
	}
}

// panicLint panics in CheckApplies.
type panicLint struct{}

func (panicLint) CheckApplies(*zx509.Certificate) bool { panic("probe") }
func (panicLint) Execute(*zx509.Certificate) *lint.LintResult {
	return &lint.LintResult{Status: lint.Pass}
}

// TestZlintGateLintPanics: a lint that panics is a fatal finding, as in zlint.
func TestZlintGateLintPanics(t *testing.T) {
	ca, caKey := probeCA(t)
	c := probeCertificate(t, ca, caKey, func(*x509.Certificate) {})
	g := gateLint{CertificateLint: &lint.CertificateLint{LintMetadata: lint.LintMetadata{Name: "e_probe", Source: lint.RFC5280},
		Lint: func() lint.CertificateLintInterface { return panicLint{} }}, shared: panicLint{}}
	r := g.execute(c, lint.NewEmptyConfig(), &frameworkScope{c: c})
	if r == nil || r.Status != lint.Fatal {
		t.Fatalf("execute = %+v, want a fatal result", r)
	}
	if want := g.Execute(c, lint.NewEmptyConfig()); r.Details != want.Details {
		t.Errorf("details %q, zlint's %q", r.Details, want.Details)
	}
}

// TestZlintConcurrent: goroutines sharing one Issuer's gate (and so the shared lint
// instances) find what one goroutine finds. Run with -race.
func TestZlintConcurrent(t *testing.T) {
	tbs, issuers := zlintCorpus(t)
	tbs, issuers = tbs[:200], issuers[:200]
	want := make([][]Finding, len(tbs))
	for n, l := range tbs {
		f, err := issuers[n].z.run(l, issuers[n].profile.algID)
		if err != nil {
			t.Fatal(err)
		}
		want[n] = f
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for n, l := range tbs {
				// Each goroutine assembles in its own copy of the buffer.
				buf := slices.Grow(slices.Clone(l.buf), certTailroom)
				own := linted{buf: buf, tbs: buf[certHeadroom:], smime: l.smime}
				got, err := issuers[n].z.run(own, issuers[n].profile.algID)
				if err != nil {
					t.Error(err)
					return
				}
				if !slices.EqualFunc(got, want[n], func(a, b Finding) bool { return a == b }) {
					t.Errorf("certificate %d: %v, alone %v", n, got, want[n])
				}
			}
		})
	}
	wg.Wait()
}
