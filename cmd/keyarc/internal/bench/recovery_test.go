package bench

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// TestSpread: the recovery round's median and range, over an odd and an even count and none.
func TestSpread(t *testing.T) {
	ms := func(v ...int) []recoverySample {
		out := make([]recoverySample, len(v))
		for i, x := range v {
			out[i] = recoverySample{approve: time.Duration(x) * time.Millisecond, fetch: time.Millisecond}
		}
		return out
	}
	tests := []struct {
		name        string
		in          []recoverySample
		med, lo, hi time.Duration
	}{
		{"odd", ms(300, 100, 200), 201 * time.Millisecond, 101 * time.Millisecond, 301 * time.Millisecond},
		{"even: the upper middle", ms(40, 10, 30, 20), 31 * time.Millisecond, 11 * time.Millisecond, 41 * time.Millisecond},
		{"one", ms(7), 8 * time.Millisecond, 8 * time.Millisecond, 8 * time.Millisecond},
		{"none", nil, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			med, lo, hi := spread(tt.in, recoverySample.total)
			if med != tt.med || lo != tt.lo || hi != tt.hi {
				t.Fatalf("spread = %v, %v, %v; want %v, %v, %v", med, lo, hi, tt.med, tt.lo, tt.hi)
			}
		})
	}
}

// TestCheckPFX: a recovered PKCS#12 counts only when it opens with its password and holds the
// archived key with its certificate; another password, another key or another certificate
// fails the round.
func TestCheckPFX(t *testing.T) {
	key, cert := selfSigned(t)
	other, otherCert := selfSigned(t)
	const pw = "abcd-efgh-ijkm-npqr-stuv-wxyz"
	// Few iterations: this checks the decoding, not the cost.
	enc := pkcs12.Modern2023.WithIterations(2048)
	good, err := enc.Encode(key, cert, nil, pw)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := enc.Encode(other, otherCert, nil, pw)
	if err != nil {
		t.Fatal(err)
	}
	// A file whose key is not the certificate's: the key check alone catches it.
	swapped, err := enc.Encode(other, cert, nil, pw)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		pfx     []byte
		pw      string
		wantErr error // nil: accepted; errAnyOpen: refused by the decoder
	}{
		{"the archived key", good, pw, nil},
		{"another password", good, "abcd-efgh-ijkm-npqr-stuv-wxyy", errAnyOpen},
		{"not a PKCS#12", []byte{0x30, 0x03, 0x02, 0x01, 0x03}, pw, errAnyOpen},
		{"another key", otherKey, pw, errWrongKey},
		{"another key with the certificate", swapped, pw, errWrongKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkPFX(tt.pfx, tt.pw, key, cert)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("checkPFX: %v", err)
			case tt.wantErr == errAnyOpen && (err == nil || errors.Is(err, errWrongKey)):
				t.Fatalf("checkPFX: %v, want the decoder's refusal", err)
			case tt.wantErr == errWrongKey && !errors.Is(err, errWrongKey):
				t.Fatalf("checkPFX: %v, want %v", err, errWrongKey)
			}
		})
	}
	// The right key with another certificate is not the archived pair either.
	if err := checkPFX(good, pw, key, otherCert); !errors.Is(err, errWrongKey) {
		t.Fatalf("checkPFX with another certificate: %v, want %v", err, errWrongKey)
	}
}

// errAnyOpen marks a case the PKCS#12 decoder itself must refuse (its errors are its own).
var errAnyOpen = errors.New("any decoder error")

func selfSigned(t *testing.T) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	k := newP256()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "r@example.org"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageKeyAgreement}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return k, c
}
