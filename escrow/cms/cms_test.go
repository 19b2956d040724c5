package cms

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

func readTestdata(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// flip returns a copy of b with byte i inverted.
func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0xff
	return c
}

func der(tb testing.TB, f func(b *cryptobyte.Builder)) []byte {
	tb.Helper()
	b := cryptobyte.NewBuilder(nil)
	f(b)
	out, err := b.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func TestDecryptErrors(t *testing.T) {
	tr := loadTransport(t)
	cbc := readTestdata(t, "cbc-oaep-sha1.der")
	gcm := readTestdata(t, "gcm-oaep-sha256.der")

	// Locate the wrapped key in the GCM envelope to corrupt it.
	env, err := parse(gcm)
	if err != nil {
		t.Fatal(err)
	}
	k, err := parseKTRI(env.recipients[0])
	if err != nil {
		t.Fatal(err)
	}
	ekAt := bytes.Index(gcm, k.encryptedKey)

	// aes256-CBC and aes256-GCM OIDs differ in their last byte.
	gcmInEnveloped := bytes.Replace(cbc,
		[]byte{0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a},
		[]byte{0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2e}, 1)

	signedData := der(t, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidSignedData)
			b.AddASN1(tagCtx0, func(b *cryptobyte.Builder) { b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) })
		})
	})
	deep := append(bytes.Repeat([]byte{0x30, 0x80}, 40), make([]byte, 80)...)

	gcmWith := func(params []byte) []byte {
		t.Helper()
		out, err := encrypt(rand.Reader, []byte("x"), tr.cert, AuthEnvelopedAESGCM, crypto.SHA1, encOptions{gcmParams: params})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	gcmParams := func(nonceLen int, icv int64) []byte {
		return der(t, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1OctetString(make([]byte, nonceLen))
				if icv >= 0 {
					b.AddASN1Int64(icv)
				}
			})
		})
	}

	tests := []struct {
		name    string
		in      []byte
		wantErr error
	}{
		{"pkcs1v15 key transport", readTestdata(t, "cbc-pkcs1v15.der"), ErrUnsupported},
		{"cbc ciphertext corrupted", flip(cbc, len(cbc)-1), ErrDecrypt},
		// CBC is malleable: only changes that break the padding are detected.
		{"cbc padding corrupted", flip(cbc, len(cbc)-17), ErrDecrypt},
		{"gcm ciphertext corrupted", flip(gcm, len(gcm)-20), ErrDecrypt},
		{"gcm tag corrupted", flip(gcm, len(gcm)-1), ErrDecrypt},
		{"wrapped key corrupted", flip(gcm, ekAt+100), ErrDecrypt},
		{"gcm in EnvelopedData", gcmInEnveloped, ErrUnsupported},
		{"gcm nonce 16", gcmWith(gcmParams(16, 16)), ErrUnsupported},
		{"gcm icvlen default 12", gcmWith(gcmParams(12, -1)), ErrUnsupported},
		{"gcm icvlen 8", gcmWith(gcmParams(12, 8)), ErrUnsupported},
		{"gcm params not a sequence", gcmWith([]byte{0x04, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}), ErrMalformed},
		{"signedData", signedData, ErrUnsupported},
		{"empty", nil, ErrMalformed},
		{"garbage", []byte("hello, world"), ErrMalformed},
		{"pem", []byte("-----BEGIN CMS-----\nMIIB\n-----END CMS-----\n"), ErrMalformed},
		{"empty sequence", []byte{0x30, 0x00}, ErrMalformed},
		{"empty indefinite sequence", []byte{0x30, 0x80, 0x00, 0x00}, ErrMalformed},
		{"trailing byte", append(bytes.Clone(cbc), 0), ErrMalformed},
		{"trailing element", append(bytes.Clone(cbc), 0x05, 0x00), ErrMalformed},
		{"too large", append(bytes.Clone(cbc), make([]byte, MaxEnvelopeSize)...), ErrMalformed},
		{"nesting too deep", deep, ErrMalformed},
		{"random bytes as sequence", append([]byte{0x30, 0x20}, bytes.Repeat([]byte{0xa5}, 0x20)...), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decrypt(tc.in, tr.cert, tr.decrypter(t))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got != nil {
				t.Fatal("plaintext returned with an error")
			}
			t.Logf("%v", err)
		})
	}
}

// TestDecryptTruncated: every strict prefix of a valid envelope is malformed.
func TestDecryptTruncated(t *testing.T) {
	tr := loadTransport(t)
	for _, name := range []string{"cbc-oaep-sha256.der", "gcm-oaep-stream.der"} {
		full := readTestdata(t, name)
		for n := 0; n < len(full); n++ {
			dec := tr.decrypter(t)
			if _, err := Decrypt(full[:n], tr.cert, dec); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s[:%d]: err = %v, want ErrMalformed", name, n, err)
			}
			if dec.calls.Load() != 0 {
				t.Fatalf("%s[:%d]: key used", name, n)
			}
		}
	}
}

func TestDecryptNoRecipient(t *testing.T) {
	tr := loadTransport(t)
	other := selfSigned(t, mustRSA(t))
	in, err := Encrypt([]byte("x"), other.cert, AuthEnvelopedAESGCM, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	dec := tr.decrypter(t)
	if _, err := Decrypt(in, tr.cert, dec); !errors.Is(err, ErrNoRecipient) {
		t.Fatalf("err = %v, want ErrNoRecipient", err)
	}
	if dec.calls.Load() != 0 {
		t.Fatal("key used")
	}
}

func TestDecryptKeyMismatch(t *testing.T) {
	tr := loadTransport(t)
	in := readTestdata(t, "cbc-oaep-sha1.der")
	if _, err := Decrypt(in, tr.cert, mustRSA(t)); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("err = %v, want ErrKeyMismatch", err)
	}
}

// TestDecrypterFailure: an HSM error is reported as ErrDecrypt and stays
// recognisable.
func TestDecrypterFailure(t *testing.T) {
	tr := loadTransport(t)
	errGone := errors.New("hsm: token gone")
	dec := &oaepOnly{tb: t, key: tr.key, err: errGone}
	_, err := Decrypt(readTestdata(t, "gcm-oaep-sha1.der"), tr.cert, dec)
	if !errors.Is(err, ErrDecrypt) || !errors.Is(err, errGone) {
		t.Fatalf("err = %v, want ErrDecrypt wrapping the decrypter's error", err)
	}
}

func TestAuthAttrs(t *testing.T) {
	tr := loadTransport(t)
	// One Attribute: contentType = id-data (RFC 5083 section 2.1 example).
	attrs := der(t, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier([]int{1, 2, 840, 113549, 1, 9, 3})
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidData) })
		})
	})
	pt := []byte("authenticated attributes")
	in, err := encrypt(rand.Reader, pt, tr.cert, AuthEnvelopedAESGCM, crypto.SHA256, encOptions{authAttrs: attrs})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decrypt(in, tr.cert, tr.decrypter(t))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Decrypt: %v", err)
	}
	// Change the attribute's OID (…9.3 -> …9.4): the tag no longer verifies.
	at := bytes.Index(in, attrs)
	tampered := bytes.Clone(in)
	tampered[at+12] ^= 0x07
	if _, err := Decrypt(tampered, tr.cert, tr.decrypter(t)); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("tampered authAttrs: err = %v, want ErrDecrypt", err)
	}
	if _, err := encrypt(rand.Reader, pt, tr.cert, EnvelopedAESCBC, crypto.SHA256, encOptions{authAttrs: attrs}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("authAttrs with CBC: err = %v", err)
	}
}

func TestParseOAEPParams(t *testing.T) {
	hashAlg := func(oid []int, null bool) func(b *cryptobyte.Builder) {
		return func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oid)
				if null {
					b.AddASN1NULL()
				}
			})
		}
	}
	params := func(h, mgf []int, mgfOID []int, label []byte, extra bool) []byte {
		return der(t, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				if h != nil {
					b.AddASN1(tagCtx0, hashAlg(h, true))
				}
				if mgf != nil {
					b.AddASN1(tagCtx1, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(mgfOID)
							hashAlg(mgf, false)(b)
						})
					})
				}
				if label != nil {
					b.AddASN1(tagCtx2, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(oidPSpecified)
							b.AddASN1OctetString(label)
						})
					})
				}
				if extra {
					b.AddASN1NULL()
				}
			})
		})
	}
	sha512 := []int{2, 16, 840, 1, 101, 3, 4, 2, 3}
	tests := []struct {
		name     string
		in       []byte
		wantHash crypto.Hash
		wantErr  error
	}{
		{"absent", nil, crypto.SHA1, nil},
		{"empty sequence", []byte{0x30, 0x00}, crypto.SHA1, nil},
		{"explicit sha1", params(oidSHA1, oidSHA1, oidMGF1, []byte{}, false), crypto.SHA1, nil},
		{"sha256", params(oidSHA256, oidSHA256, oidMGF1, nil, false), crypto.SHA256, nil},
		{"sha256 with sha1 mgf default", params(oidSHA256, nil, nil, nil, false), 0, ErrUnsupported},
		{"sha1 with sha256 mgf", params(nil, oidSHA256, oidMGF1, nil, false), 0, ErrUnsupported},
		{"label", params(oidSHA256, oidSHA256, oidMGF1, []byte("L"), false), 0, ErrUnsupported},
		{"sha512", params(sha512, sha512, oidMGF1, nil, false), 0, ErrUnsupported},
		{"unknown mgf", params(oidSHA256, oidSHA256, oidSHA256, nil, false), 0, ErrUnsupported},
		{"trailing field", params(oidSHA256, oidSHA256, oidMGF1, nil, true), 0, ErrMalformed},
		{"null instead of sequence", []byte{0x05, 0x00}, 0, ErrMalformed},
		{"truncated", []byte{0x30, 0x05, 0xa0}, 0, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseOAEPParams(tc.in)
			if !errorIs(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if h != tc.wantHash {
				t.Fatalf("hash = %v, want %v", h, tc.wantHash)
			}
		})
	}
}

func TestEncryptWritesOpenSSLParams(t *testing.T) {
	tr := loadTransport(t)
	for _, tc := range []struct {
		h    crypto.Hash
		want string // RSAES-OAEP AlgorithmIdentifier
	}{
		{crypto.SHA1, "300d06092a864886f70d010107" + "3000"},
		{crypto.SHA256, "303806092a864886f70d010107" + "302b" +
			"a00d300b0609608648016503040201" + "a11a301806092a864886f70d010108300b0609608648016503040201"},
	} {
		out, err := Encrypt([]byte("x"), tr.cert, EnvelopedAESCBC, tc.h)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(hex.EncodeToString(out), tc.want) {
			t.Errorf("%v: OAEP AlgorithmIdentifier %s not found", tc.h, tc.want)
		}
	}
}

func TestEncryptErrors(t *testing.T) {
	tr := loadTransport(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecCert := selfSigned(t, ecKey).cert
	tests := []struct {
		name    string
		pt      []byte
		cert    *x509.Certificate
		c       Content
		h       crypto.Hash
		wantErr error
	}{
		{"ok cbc", []byte("x"), tr.cert, EnvelopedAESCBC, crypto.SHA1, nil},
		{"ok gcm", []byte("x"), tr.cert, AuthEnvelopedAESGCM, crypto.SHA256, nil},
		{"ok largest", make([]byte, 60000), tr.cert, AuthEnvelopedAESGCM, crypto.SHA256, nil},
		{"nil cert", []byte("x"), nil, EnvelopedAESCBC, crypto.SHA1, ErrUnsupported},
		{"ec cert", []byte("x"), ecCert, EnvelopedAESCBC, crypto.SHA1, ErrUnsupported},
		{"sha512", []byte("x"), tr.cert, EnvelopedAESCBC, crypto.SHA512, ErrUnsupported},
		{"zero content", []byte("x"), tr.cert, Content(0), crypto.SHA1, ErrUnsupported},
		{"too large", make([]byte, MaxEnvelopeSize), tr.cert, EnvelopedAESCBC, crypto.SHA1, ErrUnsupported},
		{"too large after overhead", make([]byte, MaxEnvelopeSize-100), tr.cert, AuthEnvelopedAESGCM, crypto.SHA1, ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Encrypt(tc.pt, tc.cert, tc.c, tc.h)
			if !errorIs(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			got, err := Decrypt(out, tr.cert, tr.decrypter(t))
			if err != nil || !bytes.Equal(got, tc.pt) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}

// TestUnpad checks every padding value and a corrupted byte at every position.
func TestUnpad(t *testing.T) {
	for pad := 0; pad <= 17; pad++ {
		blk := bytes.Repeat([]byte{byte(pad)}, 32)
		n, ok := unpad(blk)
		if want := pad >= 1 && pad <= 16; ok != want || ok && n != 32-pad {
			t.Errorf("pad %d: n=%d ok=%v", pad, n, ok)
		}
		for i := 1; i <= pad && pad <= 16; i++ {
			bad := bytes.Clone(blk)
			bad[len(bad)-i] ^= 0x40
			if _, ok := unpad(bad); ok {
				t.Errorf("pad %d: corrupted byte -%d accepted", pad, i)
			}
		}
	}
}

func TestContentString(t *testing.T) {
	if EnvelopedAESCBC.String() != "EnvelopedAESCBC" || AuthEnvelopedAESGCM.String() != "AuthEnvelopedAESGCM" || Content(9).String() != "Content(9)" {
		t.Fatal("String")
	}
}

type keyCert struct{ cert *x509.Certificate }

func mustRSA(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func selfSigned(tb testing.TB, key crypto.Signer) keyCert {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "other"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<32, 0),
	}
	d, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(d)
	if err != nil {
		tb.Fatal(err)
	}
	return keyCert{cert: c}
}
