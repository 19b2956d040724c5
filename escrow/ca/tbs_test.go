package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3/lint"

	"github.com/keyarc/keyarc/policy"
)

// x509Template is the template crypto/x509 would sign for req under iss: the profile as the
// Issuer describes it, written with crypto/x509's own fields. The key identifier is computed
// here from scratch, with encoding/asn1.
func x509Template(t testing.TB, iss *Issuer, req Request) *x509.Certificate {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(req.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		t.Fatal(err)
	}
	ski := sha256.Sum256(spki.PublicKey.Bytes)
	smime := slices.Contains(req.ExtKeyUsage, x509.ExtKeyUsageEmailProtection)
	policies := req.Policies
	if smime {
		if policies == nil {
			policies = []asn1.ObjectIdentifier{policy.OIDSMIMEMailboxStrict}
		}
		if iss.caPolicy != nil {
			policies = append(slices.Clip(policies), iss.caPolicy)
		}
	}
	var pols []x509.OID
	for _, p := range policies {
		u := make([]uint64, len(p))
		for n, a := range p {
			u[n] = uint64(a)
		}
		o, err := x509.OIDFromInts(u)
		if err != nil {
			t.Fatal(err)
		}
		pols = append(pols, o)
	}
	var extra []pkix.Extension
	if req.OCSPNoCheck {
		extra = append(extra, pkix.Extension{Id: oidOCSPNoCheck, Value: []byte{0x05, 0x00}})
	}
	return &x509.Certificate{
		SerialNumber:          req.Serial,
		Subject:               req.Subject,
		NotBefore:             req.NotBefore,
		NotAfter:              req.NotBefore.Add(req.Validity),
		KeyUsage:              req.KeyUsage,
		ExtKeyUsage:           req.ExtKeyUsage,
		UnknownExtKeyUsage:    req.UnknownExtKeyUsage,
		BasicConstraintsValid: true,
		SubjectKeyId:          ski[:20],
		AuthorityKeyId:        iss.aki,
		EmailAddresses:        req.EmailAddresses,
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		SignatureAlgorithm:    iss.sigAlg,
		Policies:              pols,
		CRLDistributionPoints: []string{iss.urls.CRL},
		OCSPServer:            []string{iss.urls.OCSP},
		IssuingCertificateURL: []string{iss.urls.CACert},
		ExtraExtensions:       extra,
	}
}

// checkTBS encodes req (which must pass lint and carry a serial) and compares it with the
// tbsCertificate inside what x509.CreateCertificate makes of the same template, signed by the
// Issuer's key under its certificate.
func checkTBS(t testing.TB, iss *Issuer, req Request) {
	t.Helper()
	l, err := iss.lint(&req)
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, x509Template(t, iss, req), iss.cert, req.PublicKey, iss.signer)
	if err != nil {
		t.Fatalf("x509.CreateCertificate: %v", err)
	}
	want, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(l.tbs, want.RawTBSCertificate) {
		t.Fatalf("TBS differs from crypto/x509's\n got %x\nwant %x", l.tbs, want.RawTBSCertificate)
	}
	if !bytes.Equal(l.buf[:certHeadroom], make([]byte, certHeadroom)) || cap(l.buf)-len(l.buf) < certTailroom {
		t.Fatalf("buffer: headroom %x, %d bytes of tailroom", l.buf[:certHeadroom], cap(l.buf)-len(l.buf))
	}
}

var (
	tbsKeysOnce                       sync.Once
	tbsCARSA3072, tbsLeafRSA3072      *rsa.PrivateKey
	tbsCAEd25519, tbsLeafEd25519      ed25519.PrivateKey
	tbsCAP384, tbsCAP521, tbsLeafP384 *ecdsa.PrivateKey
)

func tbsKeys(t testing.TB) {
	t.Helper()
	rsaKeys(t)
	tbsKeysOnce.Do(func() {
		var err error
		if tbsCARSA3072, err = rsa.GenerateKey(rand.Reader, 3072); err != nil {
			panic(err)
		}
		if tbsLeafRSA3072, err = rsa.GenerateKey(rand.Reader, 3072); err != nil {
			panic(err)
		}
		if _, tbsCAEd25519, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
		if _, tbsLeafEd25519, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
		tbsCAP384, tbsCAP521, tbsLeafP384 = mustEC(t, elliptic.P384()), mustEC(t, elliptic.P521()), mustEC(t, elliptic.P384())
	})
}

type namedSigner struct {
	name string
	key  crypto.Signer
}

func tbsCAKeys(t testing.TB) []namedSigner {
	tbsKeys(t)
	return []namedSigner{{"p256", p256(t)}, {"p384", tbsCAP384}, {"p521", tbsCAP521}, {"rsa2048", caRSA},
		{"rsa3072", tbsCARSA3072}, {"ed25519", tbsCAEd25519}}
}

func tbsLeafKeys(t testing.TB) []namedSigner {
	tbsKeys(t)
	return []namedSigner{{"p256", p256(t)}, {"p384", tbsLeafP384}, {"rsa2048", leafRSA},
		{"rsa3072", tbsLeafRSA3072}, {"ed25519", tbsLeafEd25519}}
}

// serviceRequests are the requests keyarc makes outside the templates (cmd/keyarc's init,
// statedir and bench, escrow's tests): the key transport, TLS, audit and OCSP responder
// certificates, for a key pub.
func serviceRequests(pub crypto.PublicKey, caSubject pkix.Name) map[string]Request {
	reqs := map[string]Request{
		"tls": {PublicKey: pub, Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost", "keyarc.example.org"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: t0.Add(-time.Minute), Validity: 397 * day},
		"audit": {PublicKey: pub, Subject: pkix.Name{CommonName: caSubject.CommonName + " audit", Organization: caSubject.Organization},
			KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: t0.Add(-time.Minute), Validity: 1000 * day},
		"ocsp responder": {PublicKey: pub, Subject: pkix.Name{CommonName: caSubject.CommonName + " OCSP responder", Organization: caSubject.Organization},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
			OCSPNoCheck: true, NotBefore: t0.Add(-time.Minute), Validity: 4 * day},
		"bench raw": {PublicKey: pub, Subject: pkix.Name{CommonName: "raw@example.org"}, EmailAddresses: []string{"raw@example.org"},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
			NotBefore: t0, Validity: 365 * day},
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		reqs["transport"] = Request{PublicKey: pub, Subject: pkix.Name{CommonName: caSubject.CommonName + " key transport", Organization: caSubject.Organization},
			KeyUsage: x509.KeyUsageKeyEncipherment, NotBefore: t0.Add(-time.Minute), Validity: 5 * 365 * day}
	}
	return reqs
}

// TestTBSIsCreateCertificate: the TBS the Issuer encodes is, byte for byte, the
// tbsCertificate x509.CreateCertificate makes, for every built-in template and every
// subscriber key type it accepts, the service certificates keyarc issues, under every CA key
// type, with and without a public URL and the CA's own policy.
func TestTBSIsCreateCertificate(t *testing.T) {
	var n int
	for _, c := range tbsCAKeys(t) {
		for _, profiled := range []bool{true, false} {
			iss := newIssuer(t, c.key)
			name := c.name + " ca/default url"
			if profiled {
				iss, name = newProfiledIssuer(t, c.key), c.name+" ca/profiled"
			}
			t.Run(name, func(t *testing.T) {
				for _, l := range tbsLeafKeys(t) {
					pub := l.key.Public()
					for _, tt := range policy.Builtins() {
						if tt.CheckPublicKey(pub) != nil && l.name != "ed25519" {
							continue
						}
						// Templates refuse Ed25519 keys; the encoder is checked with them all the same.
						req := templateRequest(&tt, pub)
						if req.KeyUsage == 0 {
							continue // KRA: an Ed25519 key can do none of its key usages
						}
						req.Serial = mustSerial(t)
						checkTBS(t, iss, req)
						n++
					}
					for sname, req := range serviceRequests(pub, iss.cert.Subject) {
						req.Serial = mustSerial(t)
						t.Run(l.name+"/"+sname, func(t *testing.T) { checkTBS(t, iss, req) })
						n++
					}
				}
			})
		}
	}
	t.Logf("%d TBS compared", n)
}

func mustSerial(t testing.TB) *big.Int {
	t.Helper()
	s, err := NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTBSZlintSeesTheSignedBytes: what zlint parses is the certificate that comes out, but for
// the signature value; the placeholder has the length a real signature of the CA key can
// have at most.
func TestTBSZlintSeesTheSignedBytes(t *testing.T) {
	for _, c := range tbsCAKeys(t) {
		t.Run(c.name, func(t *testing.T) {
			iss := newProfiledIssuer(t, c.key)
			req := templateRequest(&policy.Builtins()[0], p256(t).Public())
			l, err := iss.lint(&req)
			if err != nil {
				t.Fatal(err)
			}
			der, err := assemble(l.buf, certHeadroom, iss.profile.algID, iss.z.placeholder)
			if err != nil {
				t.Fatal(err)
			}
			linted := bytes.Clone(der)
			zc, err := zx509.ParseCertificate(linted)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(zc.RawTBSCertificate, l.tbs) || zc.SignatureAlgorithm.String() != iss.sigAlg.String() {
				t.Fatalf("zcrypto reads TBS %x alg %v", zc.RawTBSCertificate, zc.SignatureAlgorithm)
			}
			sig, err := signTBS(c.key, iss.sigAlg, l.tbs)
			if err != nil {
				t.Fatal(err)
			}
			if len(sig) > len(iss.z.placeholder) {
				t.Errorf("signature of %d bytes, placeholder of %d", len(sig), len(iss.z.placeholder))
			}
			// Issued with the same serial, the certificate's TBS is the one linted.
			req.Serial = mustSerial(t)
			if l, err = iss.lint(&req); err != nil {
				t.Fatal(err)
			}
			got, err := iss.Issue(req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.RawTBSCertificate, l.tbs) {
				t.Fatal("the issued TBS is not the linted one")
			}
		})
	}
}

// TestTBSRefusals: what crypto/x509 cannot encode, or encodes but cannot parse (which would
// fail the self-check after the CA key signed), is refused by lint with ErrLint.
func TestTBSRefusals(t *testing.T) {
	iss := newProfiledIssuer(t, p256(t))
	base := serviceRequests(p256(t).Public(), iss.cert.Subject)["tls"]
	tests := []struct {
		name string
		edit func(*Request)
	}{
		{"non-ASCII DNS name", func(r *Request) { r.DNSNames = []string{"bücher.example"} }},
		{"invalid UTF-8 in the subject", func(r *Request) { r.Subject.CommonName = "a\xffb" }},
		{"unknown extended key usage", func(r *Request) { r.ExtKeyUsage = append(r.ExtKeyUsage, x509.ExtKeyUsage(99)) }},
		{"invalid unknown extended key usage", func(r *Request) { r.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{3, 1}} }},
		{"invalid policy", func(r *Request) { r.Policies = []asn1.ObjectIdentifier{{1, 40, 1}} }},
		{"IP address of 5 bytes", func(r *Request) { r.IPAddresses = []net.IP{{1, 2, 3, 4, 5}} }},
		{"empty IP address", func(r *Request) { r.IPAddresses = []net.IP{{}} }},
		{"extended key usage arc of 2^31", func(r *Request) { r.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 3, 6, 1, 1 << 31}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := base
			req.Serial = mustSerial(t)
			tt.edit(&req)
			if _, err := iss.lint(&req); !errors.Is(err, ErrLint) {
				t.Fatalf("lint = %v, want ErrLint", err)
			}
			tmpl := x509Template(&lenientTB{TB: t}, iss, req)
			der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, req.PublicKey, iss.signer)
			if err == nil {
				if _, err := x509.ParseCertificate(der); err == nil {
					t.Errorf("crypto/x509 encodes and parses what lint refuses")
				}
			}
		})
	}
}

// lenientTB lets x509Template build a template whose policy OID x509.OIDFromInts refuses
// (crypto/x509 refuses the certificate all the same: an invalid OID has no encoding).
type lenientTB struct{ testing.TB }

func (l *lenientTB) Fatal(args ...any) { l.Log(args...) }

// TestTBSRandomized compares the encoder with crypto/x509 over random requests: subjects of
// unusual characters (PrintableString or UTF8String), several mailboxes, DNS names and IP
// addresses of every length, key usages, extended key usages, serials of every size, and
// validity periods around the UTCTime/GeneralizedTime boundaries (1950, 2050).
func TestTBSRandomized(t *testing.T) {
	seed := [32]byte{}
	if _, err := rand.Read(seed[:]); err != nil {
		t.Fatal(err)
	}
	r := mrand.New(mrand.NewChaCha8(seed))
	tbsKeys(t)
	cas := map[string]*Issuer{}
	for _, c := range []namedSigner{{"p256", p256(t)}, {"rsa2048", caRSA}, {"ed25519", tbsCAEd25519}} {
		root, err := SelfSignedRoot(c.key, pkix.Name{CommonName: "wide root", Organization: []string{"Exämple & Co*"}},
			time.Date(1940, 1, 1, 0, 0, 0, 0, time.UTC), 150*365*day)
		if err != nil {
			t.Fatal(err)
		}
		iss, err := New(c.key, root, WithPublicURL(testPublicURL), WithPolicy(testCAPolicy))
		if err != nil {
			t.Fatal(err)
		}
		cas[c.name] = iss.WithClock(func() time.Time { return time.Date(2080, 1, 1, 0, 0, 0, 0, time.UTC) })
	}
	leaves := tbsLeafKeys(t)
	const rounds = 400
	compared := 0
	for n := range rounds {
		names := []string{"p256", "rsa2048", "ed25519"}
		iss := cas[names[r.IntN(len(names))]]
		req := randomRequest(r, leaves[r.IntN(len(leaves))].key.Public())
		if _, err := iss.lint(&req); err != nil {
			if !errors.Is(err, ErrLint) {
				t.Fatalf("seed %x round %d: lint = %v, want nil or ErrLint", seed, n, err)
			}
			continue
		}
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			defer func() {
				if t.Failed() {
					t.Logf("seed %x round %d: request %+v", seed, n, req)
				}
			}()
			checkTBS(t, iss, req)
		})
		compared++
	}
	if compared < rounds/3 {
		t.Fatalf("only %d of %d random requests passed lint", compared, rounds)
	}
	t.Logf("%d of %d random requests compared", compared, rounds)
}

// randomRequest makes a request with random fields, most of which lint accepts.
func randomRequest(r *mrand.Rand, pub crypto.PublicKey) Request {
	pick := func(s ...string) string { return s[r.IntN(len(s))] }
	text := func() string {
		var b strings.Builder
		for range 1 + r.IntN(12) {
			b.WriteString(pick("a", "Z", "0", " ", "'", "(", ")", "+", ",", "-", ".", "/", ":", "=", "?", "*", "&", "@",
				"_", "ä", "é", "ß", "日本", "\u00a0", "😀", "\t", "\\", "\"", "#", "<", ";"))
		}
		return b.String()
	}
	req := Request{PublicKey: pub, Serial: new(big.Int).SetBytes(randBytes(r, 1+r.IntN(19)))}
	if req.Serial.Sign() == 0 {
		req.Serial.SetInt64(1)
	}
	if r.IntN(5) > 0 {
		req.Subject.CommonName = text()
	}
	if r.IntN(2) == 0 {
		req.Subject.Organization = []string{text()}
	}
	if r.IntN(3) == 0 {
		req.Subject.OrganizationalUnit = []string{text(), text()}
	}
	if r.IntN(4) == 0 {
		req.Subject.Country = []string{pick("DE", "US", "FR")}
	}
	if r.IntN(4) == 0 {
		req.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, Value: "alice@example.com"}}
	}
	for range r.IntN(3) {
		local := pick("alice", "bob.smith", "o'neil", "x+tag", "a_b", "ALICE", "1", "very-long-local-part-with-dashes")
		domain := pick("example.com", "example.org", "mail.example.co.uk", "xn--bcher-kva.example")
		req.EmailAddresses = append(req.EmailAddresses, local+"@"+domain)
	}
	for range r.IntN(3) {
		req.DNSNames = append(req.DNSNames, pick("example.org", "*.example.org", "a-b.example.net", "localhost", "x"))
	}
	for range r.IntN(3) {
		req.IPAddresses = append(req.IPAddresses, net.IP(randBytes(r, ipLen(r))))
	}
	req.KeyUsage = x509.KeyUsage(1 + r.IntN(0x1ff))
	req.KeyUsage &^= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	switch pub.(type) {
	case *rsa.PublicKey:
		req.KeyUsage &^= x509.KeyUsageKeyAgreement
	default:
		req.KeyUsage &^= x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment
	}
	if req.KeyUsage == 0 {
		req.KeyUsage = x509.KeyUsageDigitalSignature
	}
	ekus := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning,
		x509.ExtKeyUsageTimeStamping, x509.ExtKeyUsageIPSECUser, x509.ExtKeyUsageMicrosoftKernelCodeSigning,
		x509.ExtKeyUsageNetscapeServerGatedCrypto}
	for range r.IntN(3) {
		req.ExtKeyUsage = append(req.ExtKeyUsage, ekus[r.IntN(len(ekus))])
	}
	if r.IntN(3) == 0 {
		// An arc of 2^31 or more is refused (x509.ParseCertificate would not read it).
		req.UnknownExtKeyUsage = []asn1.ObjectIdentifier{policy.OIDKeyRecovery, {1, 3, 6, 1, 4, 1, 32473, 1<<31 - 1}, {2, 999, 1 << 40}}[:1+r.IntN(2)+r.IntN(2)*r.IntN(2)]
	}
	if len(req.EmailAddresses) > 0 && r.IntN(2) == 0 {
		req.ExtKeyUsage = append(req.ExtKeyUsage, x509.ExtKeyUsageEmailProtection)
		if r.IntN(3) == 0 {
			req.Policies = []asn1.ObjectIdentifier{policy.OIDSMIMEMailboxLegacy}
		}
	} else if r.IntN(4) == 0 {
		req.Policies = []asn1.ObjectIdentifier{{2, 23, 140, 1, 2, 1}, {1, 3, 6, 1, 4, 1, 32473, 7, 1 << 35}}[:1+r.IntN(2)]
	}
	if r.IntN(8) == 0 {
		req.ExtKeyUsage, req.UnknownExtKeyUsage, req.Policies = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}, nil, nil
		req.OCSPNoCheck = true
	}
	// Times around the ends of UTCTime, in UTC and other zones, with fractions of a second.
	edges := []time.Time{
		time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(1949, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2030, 6, 15, 12, 0, 0, 0, time.UTC), time.Date(2049, 6, 1, 0, 0, 0, 0, time.UTC),
	}
	zones := []*time.Location{time.UTC, time.FixedZone("UTC+14", 14*3600), time.FixedZone("UTC-12", -12*3600)}
	nb := edges[r.IntN(len(edges))].Add(time.Duration(r.IntN(7)-3) * time.Second).Add(time.Duration(r.IntN(1e9)))
	req.NotBefore = nb.In(zones[r.IntN(len(zones))])
	req.Validity = []time.Duration{time.Second, time.Minute, day, 365 * day, 825 * day, 3650 * day}[r.IntN(6)] +
		time.Duration(r.IntN(3))*time.Second
	return req
}

// ipLen is the length of a random IP address: one in ten neither 4 nor 16, which lint refuses.
func ipLen(r *mrand.Rand) int {
	if r.IntN(10) == 0 {
		return []int{0, 3, 5}[r.IntN(3)]
	}
	return []int{4, 16}[r.IntN(2)]
}

func randBytes(r *mrand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

// FuzzTBSCertificate: for any request lint accepts, the TBS is crypto/x509's; for any other,
// lint says ErrLint. The seeds are the unusual cases: names that need a UTF8String, a mailbox
// list, IPs of odd lengths, times on either side of 2050.
func FuzzTBSCertificate(f *testing.F) {
	f.Add("alice@example.com", "Example", "alice@example.com", "", []byte{127, 0, 0, 1}, int64(0), int64(365*86400), uint16(x509.KeyUsageDigitalSignature), uint8(4))
	f.Add("Ünïcödé & *", "", "o'neil+x@example.org", "a.example.org", []byte{}, int64(-30), int64(2), uint16(0x1ff), uint8(0))
	f.Add("", "", "a@example.com", "", []byte{1, 2, 3}, int64(0), int64(1), uint16(x509.KeyUsageKeyAgreement), uint8(4))
	f.Add("x", "y", "", "localhost", make([]byte, 16), int64(10), int64(100*365*86400), uint16(x509.KeyUsageDecipherOnly), uint8(1))
	f.Add("\xff", "", "", "", []byte(nil), int64(0), int64(1), uint16(1), uint8(2))
	key := p256(f)
	root, err := SelfSignedRoot(key, pkix.Name{CommonName: "fuzz root"}, time.Date(1940, 1, 1, 0, 0, 0, 0, time.UTC), 150*365*day)
	if err != nil {
		f.Fatal(err)
	}
	iss, err := New(key, root, WithPublicURL(testPublicURL), WithPolicy(testCAPolicy))
	if err != nil {
		f.Fatal(err)
	}
	iss = iss.WithClock(func() time.Time { return time.Date(2080, 1, 1, 0, 0, 0, 0, time.UTC) })
	leaf := p256(f).Public()
	edge := time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)
	f.Fuzz(func(t *testing.T, cn, org, mailbox, dns string, ip []byte, nbOffset, validity int64, ku uint16, eku uint8) {
		req := Request{PublicKey: leaf, Serial: big.NewInt(0x1234), Subject: pkix.Name{CommonName: cn},
			KeyUsage: x509.KeyUsage(ku), NotBefore: edge.Add(time.Duration(nbOffset) * time.Second),
			Validity: time.Duration(validity) * time.Second}
		if org != "" {
			req.Subject.Organization = []string{org}
		}
		if mailbox != "" {
			req.EmailAddresses = []string{mailbox, "second@example.com"}
		}
		if dns != "" {
			req.DNSNames = []string{dns}
		}
		if ip != nil {
			req.IPAddresses = []net.IP{ip}
		}
		if eku != 0 {
			req.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsage(eku % 16)}
		}
		if _, err := iss.lint(&req); err != nil {
			if !errors.Is(err, ErrLint) {
				t.Fatalf("lint = %v, want nil or ErrLint", err)
			}
			return
		}
		checkTBS(t, iss, req)
	})
}

// TestPlaceholderSignature: the placeholder is as long as the longest signature of the CA
// key, so a lint that tells the curve by the length finds the right one.
func TestPlaceholderSignature(t *testing.T) {
	tbsKeys(t)
	for _, tt := range []struct {
		key     crypto.PublicKey
		wantLen int
	}{{p256(t).Public(), 72}, {tbsCAP384.Public(), 104}, {tbsCAP521.Public(), 139}, {caRSA.Public(), 256},
		{tbsCARSA3072.Public(), 384}, {tbsCAEd25519.Public(), 64}} {
		sig, err := placeholderSignature(tt.key)
		if err != nil {
			t.Fatal(err)
		}
		if len(sig) != tt.wantLen {
			t.Errorf("%T: placeholder of %d bytes, want %d", tt.key, len(sig), tt.wantLen)
		}
	}
	if _, err := placeholderSignature("key"); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("placeholderSignature(string) = %v", err)
	}
	// e_crl_ecdsa_signature_encoding_correct tells the curve by the signature's length: with
	// the placeholder, every CA key's CRL passes the gate, as the signed one passes zlint.
	for _, c := range tbsCAKeys(t) {
		t.Run(c.name+" CRL", func(t *testing.T) {
			signed, err := newIssuer(t, c.key).IssueCRL(crlRequest(7, CRLEntry{Serial: big.NewInt(9), RevokedAt: t0.Add(-time.Hour), Reason: CRLReasonKeyCompromise}))
			if err != nil {
				t.Fatalf("IssueCRL: %v", err)
			}
			zlintSignedCRL(t, signed.DER)
		})
	}
}

// TestZlintNoLintReadsTheSignature: every certificate lint of the two sources gives the same
// result on the certificate made with the placeholder as on the one signed by the CA key.
func TestZlintNoLintReadsTheSignature(t *testing.T) {
	for _, c := range tbsCAKeys(t) {
		t.Run(c.name, func(t *testing.T) {
			iss := newProfiledIssuer(t, c.key)
			for _, tt := range policy.Builtins() {
				req := templateRequest(&tt, p256(t).Public())
				if tt.CheckPublicKey(req.PublicKey) != nil {
					req = templateRequest(&tt, leafRSA.Public())
				}
				l, err := iss.lint(&req)
				if err != nil {
					t.Fatal(err)
				}
				placeholder, err := assemble(l.buf, certHeadroom, iss.profile.algID, iss.z.placeholder)
				if err != nil {
					t.Fatal(err)
				}
				placeholder = bytes.Clone(placeholder)
				sig, err := signTBS(c.key, iss.sigAlg, l.tbs)
				if err != nil {
					t.Fatal(err)
				}
				signed, err := assemble(l.buf, certHeadroom, iss.profile.algID, sig)
				if err != nil {
					t.Fatal(err)
				}
				sources := []lint.LintSource{lint.CABFSMIMEBaselineRequirements, lint.RFC5280}
				a, b := zlintAll(t, placeholder, sources...), zlintAll(t, signed, sources...)
				for name, ra := range a.Results {
					if rb := b.Results[name]; rb.Status != ra.Status || rb.Details != ra.Details {
						t.Errorf("%s: %s: %v %q with the placeholder, %v %q signed", tt.Name, name, ra.Status, ra.Details, rb.Status, rb.Details)
					}
				}
			}
		})
	}
}
