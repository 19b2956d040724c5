package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"
	"time"
)

func testCert(t testing.TB, pub, priv any) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "alice"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1e9, 0), EmailAddresses: []string{"alice@example.org"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestKeyID: the key identity is the SHA-256 of the SubjectPublicKeyInfo crypto/x509 finds,
// for EC and RSA keys; anything not shaped like a certificate is ErrInvalid.
func TestKeyID(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, der := range map[string][]byte{"ecdsa": testCert(t, &ec.PublicKey, ec), "rsa": testCert(t, &rk.PublicKey, rk)} {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		got, err := KeyID(der)
		if err != nil || got != hex.EncodeToString(sum[:]) || !ValidKeyID(got) {
			t.Errorf("%s: KeyID = %q, %v; want %x", name, got, err, sum)
		}
	}
	good := testCert(t, &ec.PublicKey, ec)
	for _, tc := range []struct {
		name    string
		der     []byte
		wantErr error
	}{
		{name: "empty", der: nil, wantErr: ErrInvalid},
		{name: "not der", der: []byte("hello"), wantErr: ErrInvalid},
		{name: "short sequence", der: []byte{0x30, 0x03, 0x02, 0x01, 0x05}, wantErr: ErrInvalid},
		{name: "truncated", der: good[:len(good)/2], wantErr: ErrInvalid},
		{name: "trailing bytes", der: append(append([]byte{}, good...), 0), wantErr: ErrInvalid},
		{name: "tbs too short", der: []byte{0x30, 0x05, 0x30, 0x03, 0x02, 0x01, 0x01}, wantErr: ErrInvalid},
		{name: "certificate", der: good, wantErr: nil},
	} {
		if _, err := KeyID(tc.der); !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
			t.Errorf("%s: KeyID error %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}

// TestKeyIDVersion1: a certificate without the version field (v1) has its key found too.
func TestKeyIDVersion1(t *testing.T) {
	spki := []byte{0x30, 0x03, 0x05, 0x01, 0x00} // not a key, but shaped as a SEQUENCE
	field := []byte{0x05, 0x00}                  // NULL stands in for serial, signature, issuer, validity, subject
	var tbs []byte
	for range 5 {
		tbs = append(tbs, field...)
	}
	tbs = append(tbs, spki...)
	tbs = append([]byte{0x30, byte(len(tbs))}, tbs...)
	der := append([]byte{0x30, byte(len(tbs))}, tbs...)
	sum := sha256.Sum256(spki)
	if got, err := KeyID(der); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("KeyID(v1) = %q, %v; want %x", got, err, sum)
	}
	v3 := append([]byte{0xa0, 0x03, 0x02, 0x01, 0x02}, tbs[2:]...)
	v3 = append([]byte{0x30, byte(len(v3))}, v3...)
	v3 = append([]byte{0x30, byte(len(v3))}, v3...)
	if got, err := KeyID(v3); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("KeyID(v3) = %q, %v; want %x", got, err, sum)
	}
}

// FuzzKeyID: KeyID never panics, and wherever crypto/x509 parses a certificate, KeyID agrees
// with its SubjectPublicKeyInfo.
func FuzzKeyID(f *testing.F) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(testCert(f, &ec.PublicKey, ec))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x05})
	f.Fuzz(func(t *testing.T, der []byte) {
		id, err := KeyID(der)
		if err == nil && !ValidKeyID(id) {
			t.Fatalf("KeyID = %q", id)
		}
		if c, perr := x509.ParseCertificate(der); perr == nil {
			sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			if id != hex.EncodeToString(sum[:]) {
				t.Fatalf("KeyID = %q, %v; crypto/x509 finds %x", id, err, sum)
			}
		}
	})
}

func TestValidReason(t *testing.T) {
	for r := -1; r <= 11; r++ {
		want := r == 0 || r == 1 || r == 3 || r == 4 || r == 5 || r == 9
		if ValidReason(r) != want {
			t.Errorf("ValidReason(%d) = %v, want %v", r, !want, want)
		}
		stored := r >= 0 && r <= 10 && r != 7
		if ValidStoredReason(r) != stored {
			t.Errorf("ValidStoredReason(%d) = %v, want %v", r, !stored, stored)
		}
	}
}

func TestValidKeyID(t *testing.T) {
	ok := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for id, want := range map[string]bool{ok: true, ok[:63]: false, ok + "0": false, "": false,
		"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef": false,
		"g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": false} {
		if ValidKeyID(id) != want {
			t.Errorf("ValidKeyID(%q) = %v, want %v", id, !want, want)
		}
	}
}
