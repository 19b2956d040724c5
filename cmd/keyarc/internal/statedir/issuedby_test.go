package statedir

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

// testCert makes a certificate for key, signed by parent's key (self-signed when parent is nil).
func testCert(t testing.TB, name string, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         parent == nil, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIssuedByRemembers: a pair that checked once checks again without a new verification, and
// remembering it never lets another CA or a certificate of another CA pass.
func TestIssuedByRemembers(t *testing.T) {
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k1, k2, kr := newKey(), newKey(), newKey()
	ca1 := testCert(t, "CA 1", k1, nil, nil)
	ca2 := testCert(t, "CA 2", k2, nil, nil)
	r1 := testCert(t, "responder 1", kr, ca1, k1)
	r2 := testCert(t, "responder 2", kr, ca2, k2)

	for i := range 2 {
		if !issuedBy(r1, ca1) {
			t.Fatalf("pass %d: responder 1 refused by its CA", i)
		}
	}
	if issuedBy(r1, ca2) {
		t.Fatal("responder 1 accepted by another CA after its own CA checked it")
	}
	if issuedBy(r2, ca1) {
		t.Fatal("a certificate of another CA accepted after responder 1 checked")
	}
	// A certificate parsed again (another pointer, same bytes) is the same pair.
	again, err := x509.ParseCertificate(r1.Raw)
	if err != nil {
		t.Fatal(err)
	}
	if !issuedBy(again, ca1) {
		t.Fatal("responder 1 parsed again refused by its CA")
	}
	if !issuedBy(r2, ca2) || issuedBy(r1, ca2) {
		t.Fatal("the remembered pair did not follow the last check")
	}
}

func BenchmarkIssuedBy(b *testing.B) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kr, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca1 := testCert(b, "CA 1", k1, nil, nil)
	r1 := testCert(b, "responder 1", kr, ca1, k1)
	b.Run("CheckSignatureFrom", func(b *testing.B) {
		for b.Loop() {
			if r1.CheckSignatureFrom(ca1) != nil {
				b.Fatal("refused")
			}
		}
	})
	b.Run("issuedBy", func(b *testing.B) {
		for b.Loop() {
			if !issuedBy(r1, ca1) {
				b.Fatal("refused")
			}
		}
	})
}
