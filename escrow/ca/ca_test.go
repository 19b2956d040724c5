package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"math/big"
	"slices"
	"sync"
	"testing"
	"time"
)

const day = 24 * time.Hour

var (
	t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) // the test clock

	keysOnce sync.Once
	caRSA    *rsa.PrivateKey
	leafRSA  *rsa.PrivateKey
)

func rsaKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if caRSA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if leafRSA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newIssuer makes a root for key and an Issuer on it with the test clock.
func newIssuer(t testing.TB, key crypto.Signer) *Issuer {
	t.Helper()
	root, err := SelfSignedRoot(key, pkix.Name{CommonName: "keyarc test root", Organization: []string{"Example"}}, t0.Add(-day), 3650*day)
	if err != nil {
		t.Fatalf("SelfSignedRoot: %v", err)
	}
	iss, err := New(key, root)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return iss.WithClock(func() time.Time { return t0 })
}

func smimeRequest(pub crypto.PublicKey) Request {
	ku := x509.KeyUsageKeyEncipherment
	if _, ok := pub.(*ecdsa.PublicKey); ok {
		ku = x509.KeyUsageKeyAgreement
	}
	return Request{
		PublicKey:      pub,
		Subject:        pkix.Name{CommonName: "alice@example.com"},
		EmailAddresses: []string{"alice@example.com"},
		KeyUsage:       ku,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		NotBefore:      t0,
		Validity:       365 * day,
	}
}

func TestIssueAndVerify(t *testing.T) {
	rsaKeys(t)
	tests := []struct {
		name    string
		ca      crypto.Signer
		leaf    crypto.PublicKey
		wantAlg x509.SignatureAlgorithm
	}{
		{name: "p256 ca, rsa leaf", ca: p256(t), leaf: leafRSA.Public(), wantAlg: x509.ECDSAWithSHA256},
		{name: "p384 ca, p256 leaf", ca: mustEC(t, elliptic.P384()), leaf: p256(t).Public(), wantAlg: x509.ECDSAWithSHA384},
		{name: "rsa ca, p256 leaf", ca: caRSA, leaf: p256(t).Public(), wantAlg: x509.SHA256WithRSA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss := newIssuer(t, tt.ca)
			cert, err := iss.Issue(smimeRequest(tt.leaf))
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(iss.Certificate())
			if _, err := cert.Verify(x509.VerifyOptions{
				Roots:       roots,
				CurrentTime: t0.Add(time.Hour),
				KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
			}); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if cert.SignatureAlgorithm != tt.wantAlg {
				t.Errorf("signature algorithm %v, want %v", cert.SignatureAlgorithm, tt.wantAlg)
			}
			if len(cert.EmailAddresses) != 1 || cert.EmailAddresses[0] != "alice@example.com" {
				t.Errorf("SAN %v", cert.EmailAddresses)
			}
			if !cert.BasicConstraintsValid || cert.IsCA {
				t.Errorf("basicConstraints valid=%v ca=%v", cert.BasicConstraintsValid, cert.IsCA)
			}
			if !bytes.Equal(cert.AuthorityKeyId, iss.Certificate().SubjectKeyId) || len(cert.SubjectKeyId) != 20 {
				t.Errorf("AKI %x SKI %x", cert.AuthorityKeyId, cert.SubjectKeyId)
			}
			want, _ := keyID(tt.leaf)
			if !bytes.Equal(cert.SubjectKeyId, want) {
				t.Errorf("SKI %x, want %x", cert.SubjectKeyId, want)
			}
			if !cert.NotAfter.Equal(t0.Add(365 * day)) {
				t.Errorf("NotAfter %v", cert.NotAfter)
			}
			crit := map[string]bool{}
			for _, e := range cert.Extensions {
				crit[e.Id.String()] = e.Critical
			}
			if !crit["2.5.29.15"] || !crit["2.5.29.19"] {
				t.Errorf("keyUsage/basicConstraints not critical: %v", crit)
			}
			if _, ok := crit["2.5.29.17"]; !ok {
				t.Errorf("no subjectAltName")
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %x", cert.SerialNumber)
			}
		})
	}
}

func mustEC(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestIssueKRAAndEmptySubject(t *testing.T) {
	rsaKeys(t)
	iss := newIssuer(t, p256(t))
	req := Request{
		PublicKey:          leafRSA.Public(),
		Subject:            pkix.Name{CommonName: "KRA 1"},
		KeyUsage:           x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 311, 21, 6}},
		NotBefore:          t0,
		Validity:           730 * day,
	}
	cert, err := iss.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.UnknownExtKeyUsage) != 1 {
		t.Errorf("EKU %v", cert.UnknownExtKeyUsage)
	}
	// An S/MIME certificate with an empty subject gets a critical SAN.
	r := smimeRequest(p256(t).Public())
	r.Subject = pkix.Name{}
	cert, err = iss.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cert.Extensions {
		if e.Id.String() == "2.5.29.17" && !e.Critical {
			t.Error("SAN not critical with an empty subject")
		}
	}
}

func TestIssueExplicitSerial(t *testing.T) {
	iss := newIssuer(t, p256(t))
	r := smimeRequest(p256(t).Public())
	r.Serial = big.NewInt(4242)
	cert, err := iss.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	if cert.SerialNumber.Int64() != 4242 {
		t.Fatalf("serial %v", cert.SerialNumber)
	}
}

func TestLint(t *testing.T) {
	rsaKeys(t)
	iss := newIssuer(t, p256(t))
	ec := p256(t).Public()
	tests := []struct {
		name    string
		edit    func(*Request)
		wantErr error
	}{
		{name: "ok", edit: func(*Request) {}},
		{name: "825 days", edit: func(r *Request) { r.Validity = 825 * day }},
		{name: "notBefore 59s ahead", edit: func(r *Request) { r.NotBefore = t0.Add(59 * time.Second) }},
		{name: "826 days smime", edit: func(r *Request) { r.Validity = 826 * day }, wantErr: ErrLint},
		{name: "smime without rfc822Name", edit: func(r *Request) { r.EmailAddresses = nil }, wantErr: ErrLint},
		{name: "invalid mailbox", edit: func(r *Request) { r.EmailAddresses = []string{"alice@example.com\r\n"} }, wantErr: ErrLint},
		{name: "notBefore 2 minutes ahead", edit: func(r *Request) { r.NotBefore = t0.Add(2 * time.Minute) }, wantErr: ErrLint},
		{name: "notBefore zero", edit: func(r *Request) { r.NotBefore = time.Time{} }, wantErr: ErrLint},
		{name: "zero validity", edit: func(r *Request) { r.Validity = 0 }, wantErr: ErrLint},
		{name: "outlives the CA", edit: func(r *Request) {
			r.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			r.Validity = 3700 * day
		}, wantErr: ErrLint},
		{name: "no public key", edit: func(r *Request) { r.PublicKey = nil }, wantErr: ErrLint},
		{name: "unsupported public key", edit: func(r *Request) { r.PublicKey = "key" }, wantErr: ErrLint},
		{name: "no key usage", edit: func(r *Request) { r.KeyUsage = 0 }, wantErr: ErrLint},
		{name: "certSign", edit: func(r *Request) { r.KeyUsage |= x509.KeyUsageCertSign }, wantErr: ErrLint},
		{name: "ecdsa keyEncipherment", edit: func(r *Request) { r.KeyUsage = x509.KeyUsageKeyEncipherment }, wantErr: ErrLint},
		{name: "rsa keyAgreement", edit: func(r *Request) { r.PublicKey = leafRSA.Public(); r.KeyUsage = x509.KeyUsageKeyAgreement }, wantErr: ErrLint},
		{name: "any eku", edit: func(r *Request) { r.ExtKeyUsage = append(r.ExtKeyUsage, x509.ExtKeyUsageAny) }, wantErr: ErrLint},
		{name: "negative serial", edit: func(r *Request) { r.Serial = big.NewInt(-1) }, wantErr: ErrLint},
		{name: "zero serial", edit: func(r *Request) { r.Serial = new(big.Int) }, wantErr: ErrLint},
		{name: "21-octet serial", edit: func(r *Request) { r.Serial = new(big.Int).Lsh(big.NewInt(1), 160) }, wantErr: ErrLint},
		{name: "ocsp nocheck on smime", edit: func(r *Request) { r.OCSPNoCheck = true }, wantErr: ErrLint},
		{name: "ocsp nocheck with another eku", edit: func(r *Request) {
			r.EmailAddresses, r.Subject = nil, pkix.Name{CommonName: "responder"}
			r.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning, x509.ExtKeyUsageClientAuth}
			r.OCSPNoCheck = true
		}, wantErr: ErrLint},
		{name: "no names at all", edit: func(r *Request) {
			r.Subject = pkix.Name{}
			r.EmailAddresses = nil
			r.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}, wantErr: ErrLint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := smimeRequest(ec)
			tt.edit(&r)
			_, err := iss.Issue(r)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Issue() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// countingSigner counts Sign calls, to prove lint failures never reach the signer.
type countingSigner struct {
	crypto.Signer
	mu sync.Mutex
	n  int
}

func (c *countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.Signer.Sign(r, d, o)
}

func TestLintBeforeSign(t *testing.T) {
	key := p256(t)
	iss := newIssuer(t, key)
	cs := &countingSigner{Signer: key}
	iss2, err := New(cs, iss.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	r := smimeRequest(p256(t).Public())
	r.Validity = 1000 * day
	if _, err := iss2.WithClock(func() time.Time { return t0 }).Issue(r); !errors.Is(err, ErrLint) {
		t.Fatal(err)
	}
	if cs.n != 0 {
		t.Fatalf("signer called %d times for a request that failed lint", cs.n)
	}
}

// badSigner returns a well-formed signature over the wrong data.
type badSigner struct{ *ecdsa.PrivateKey }

func (b badSigner) Sign(r io.Reader, digest []byte, o crypto.SignerOpts) ([]byte, error) {
	other := sha256.Sum256([]byte("not the certificate"))
	return b.PrivateKey.Sign(r, other[:], o)
}

// errSigner fails like an HSM that lost its session.
type errSigner struct{ crypto.Signer }

var errHSM = errors.New("hsm: token gone")

func (errSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) { return nil, errHSM }

func TestSelfCheck(t *testing.T) {
	key := p256(t)
	good := newIssuer(t, key)
	bad, err := New(badSigner{key}, good.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	failing, err := New(errSigner{key}, good.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		iss     *Issuer
		wantErr error
	}{
		{name: "good", iss: good},
		{name: "bad signature", iss: bad.WithClock(func() time.Time { return t0 }), wantErr: ErrSelfCheck},
		{name: "signer error", iss: failing.WithClock(func() time.Time { return t0 }), wantErr: errHSM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.iss.Issue(smimeRequest(p256(t).Public()))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Issue() = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if _, err := SelfSignedRoot(badSigner{key}, pkix.Name{CommonName: "x"}, t0, day); !errors.Is(err, ErrSelfCheck) {
		t.Fatalf("SelfSignedRoot with a bad signer = %v", err)
	}
}

func TestSelfCheckTampered(t *testing.T) {
	iss := newIssuer(t, p256(t))
	cert, err := iss.Issue(smimeRequest(p256(t).Public()))
	if err != nil {
		t.Fatal(err)
	}
	der := bytes.Clone(cert.Raw)
	// Change one byte inside the TBS part (the serial) and check the self-check notices.
	i := bytes.Index(der, cert.SerialNumber.Bytes())
	der[i] ^= 0x01
	if _, err := iss.selfCheck(der); !errors.Is(err, ErrSelfCheck) {
		t.Fatalf("selfCheck(tampered) = %v", err)
	}
	if _, err := iss.selfCheck(der[:10]); !errors.Is(err, ErrSelfCheck) {
		t.Fatalf("selfCheck(truncated) = %v", err)
	}
}

func TestNew(t *testing.T) {
	rsaKeys(t)
	key := p256(t)
	root := newIssuer(t, key).Certificate()
	leaf, err := newIssuer(t, key).Issue(smimeRequest(p256(t).Public()))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		signer  crypto.Signer
		cert    *x509.Certificate
		wantErr error
	}{
		{name: "ok", signer: key, cert: root},
		{name: "other ecdsa key", signer: p256(t), cert: root, wantErr: ErrKeyMismatch},
		{name: "rsa key", signer: caRSA, cert: root, wantErr: ErrKeyMismatch},
		{name: "not a CA", signer: key, cert: &x509.Certificate{PublicKey: key.Public(), BasicConstraintsValid: true}, wantErr: ErrNotCA},
		{name: "leaf cert", signer: key, cert: leaf, wantErr: ErrKeyMismatch},
		{name: "no certSign", signer: key, cert: &x509.Certificate{PublicKey: key.Public(), BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCRLSign}, wantErr: ErrNotCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.signer, tt.cert)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("New() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestSelfSignedRoot(t *testing.T) {
	key := p256(t)
	root, err := SelfSignedRoot(key, pkix.Name{CommonName: "root"}, t0, 3650*day)
	if err != nil {
		t.Fatal(err)
	}
	if !root.IsCA || !root.BasicConstraintsValid || root.MaxPathLen != 0 || !root.MaxPathLenZero {
		t.Errorf("basicConstraints %v %v %v", root.IsCA, root.MaxPathLen, root.MaxPathLenZero)
	}
	if root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("key usage %v", root.KeyUsage)
	}
	if len(root.SubjectKeyId) != 20 || len(root.ExtKeyUsage) != 0 {
		t.Errorf("SKI %x EKU %v", root.SubjectKeyId, root.ExtKeyUsage)
	}
	if !root.NotAfter.Equal(t0.Add(3650 * day)) {
		t.Errorf("NotAfter %v", root.NotAfter)
	}
	if _, err := SelfSignedRoot(key, pkix.Name{}, t0, day); !errors.Is(err, ErrLint) {
		t.Errorf("empty subject: %v", err)
	}
	if _, err := SelfSignedRoot(key, pkix.Name{CommonName: "x"}, t0, 0); !errors.Is(err, ErrLint) {
		t.Errorf("zero validity: %v", err)
	}
}

func TestCSR(t *testing.T) {
	rsaKeys(t)
	for _, key := range []crypto.Signer{p256(t), caRSA} {
		der, err := CSR(key, pkix.Name{CommonName: "keyarc issuing CA", Organization: []string{"Example"}})
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatal(err)
		}
		if csr.Subject.CommonName != "keyarc issuing CA" {
			t.Errorf("subject %v", csr.Subject)
		}
		// Have the request signed by a "external" root and check the result can issue.
		ext := newIssuer(t, p256(t))
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: csr.Subject, NotBefore: t0.Add(-day), NotAfter: t0.Add(1000 * day),
			ExtraExtensions: csr.Extensions,
		}
		certDER, err := x509.CreateCertificate(rand.Reader, tmpl, ext.Certificate(), csr.PublicKey, ext.signer)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := x509.ParseCertificate(certDER)
		if err != nil {
			t.Fatal(err)
		}
		if !sub.IsCA || sub.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign || !sub.MaxPathLenZero {
			t.Errorf("requested extensions lost: ca=%v ku=%v", sub.IsCA, sub.KeyUsage)
		}
		if _, err := New(key, sub); err != nil {
			t.Errorf("New on externally signed CA: %v", err)
		}
	}
	if _, err := CSR(p256(t), pkix.Name{}); !errors.Is(err, ErrLint) {
		t.Errorf("empty subject: %v", err)
	}
}

func TestNewSerial(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s, err := NewSerial()
		if err != nil {
			t.Fatal(err)
		}
		if s.Sign() <= 0 || s.BitLen() > 128 || len(s.Bytes()) != 16 {
			t.Fatalf("serial %x", s)
		}
		if seen[s.String()] {
			t.Fatal("duplicate serial")
		}
		seen[s.String()] = true
	}
	// The issuing time leads (the second, then its fraction in 2^-24 s), then 72 random
	// bits: a later time gives a larger serial, within a second too, and its hex form
	// (leading zeros dropped, as the store keeps it) sorts after too.
	rnd := bytes.Repeat([]byte{0xff}, 9)
	t0 := time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)
	prev, err := newSerial(bytes.NewReader(rnd), t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := new(big.Int).Rsh(prev, 96).Int64(); got != t0.Unix() {
		t.Fatalf("serial %x leads with %d, want the second %d", prev, got, t0.Unix())
	}
	if got := new(big.Int).And(prev, new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 72), big.NewInt(1))); got.Cmp(new(big.Int).SetBytes(rnd)) != 0 {
		t.Fatalf("serial %x does not end with the 72 random bits", prev)
	}
	for _, d := range []time.Duration{100 * time.Nanosecond, time.Microsecond, time.Millisecond, 999 * time.Millisecond, time.Second, time.Hour} {
		next, err := newSerial(bytes.NewReader(make([]byte, 9)), t0.Add(d))
		if err != nil {
			t.Fatal(err)
		}
		if prev.Cmp(next) >= 0 || prev.Text(16) >= next.Text(16) || len(prev.Text(16)) != 32 || len(next.Text(16)) != 32 {
			t.Fatalf("serials %v apart out of order: %x then %x", d, prev, next)
		}
		prev, _ = newSerial(bytes.NewReader(rnd), t0.Add(d))
	}
	if _, err := newSerial(bytes.NewReader(nil), t0); err == nil {
		t.Fatal("newSerial with an empty reader succeeded")
	}
}

func TestConcurrentIssue(t *testing.T) {
	iss := newIssuer(t, p256(t))
	leaf := p256(t).Public()
	const workers, each = 8, 25
	var (
		mu      sync.Mutex
		serials = map[string]bool{}
		wg      sync.WaitGroup
	)
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				cert, err := iss.Issue(smimeRequest(leaf))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				serials[cert.SerialNumber.String()] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(serials) != workers*each {
		t.Fatalf("%d distinct serials, want %d", len(serials), workers*each)
	}
}

func BenchmarkIssueP256(b *testing.B) {
	iss := newIssuer(b, p256(b))
	req := smimeRequest(p256(b).Public())
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := iss.Issue(req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

// TestOCSPResponderCertificate: a delegated responder's certificate carries OCSPSigning alone
// and id-pkix-ocsp-nocheck, non-critical, with an ASN.1 NULL value.
func TestOCSPResponderCertificate(t *testing.T) {
	iss := newIssuer(t, p256(t))
	cert, err := iss.Issue(Request{PublicKey: p256(t).Public(), Subject: pkix.Name{CommonName: "keyarc OCSP responder"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		OCSPNoCheck: true, NotBefore: t0, Validity: 14 * day})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidOCSPNoCheck) {
			found = true
			if e.Critical || !bytes.Equal(e.Value, []byte{0x05, 0x00}) {
				t.Errorf("id-pkix-ocsp-nocheck: critical %v, value %x; want non-critical 0500", e.Critical, e.Value)
			}
		}
	}
	if !found {
		t.Error("no id-pkix-ocsp-nocheck extension")
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}) {
		t.Errorf("extended key usage %v, want OCSPSigning alone", cert.ExtKeyUsage)
	}
}
