package record

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
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// update regenerates the golden records and the fuzz seed corpus:
//
//	go test ./escrow/record -run TestGolden -update
//
// The KRA keys and certificates and the subject key in testdata are created
// only when missing, so that the vectors stay tied to the same keys.
var update = flag.Bool("update", false, "regenerate testdata golden records and fuzz seeds")

// kra is a test Key Recovery Agent: its key and certificate.
type kra struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
}

func (k kra) recipient(t testing.TB) Recipient {
	t.Helper()
	r, err := RecipientFromCertificate(k.cert)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// loadKRAs reads testdata/kraN.pem and kraN.crt (N = 1..3), creating them
// under -update when missing.
func loadKRAs(t testing.TB) []kra {
	t.Helper()
	var kras []kra
	for i := 1; i <= 3; i++ {
		keyPath := filepath.Join("testdata", fmt.Sprintf("kra%d.pem", i))
		certPath := filepath.Join("testdata", fmt.Sprintf("kra%d.crt", i))
		if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) && *update {
			makeKRA(t, i, keyPath, certPath)
		}
		k, err := readPEM(keyPath, "PRIVATE KEY")
		if err != nil {
			t.Fatal(err)
		}
		priv, err := x509.ParsePKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		c, err := readPEM(certPath, "CERTIFICATE")
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(c)
		if err != nil {
			t.Fatal(err)
		}
		kras = append(kras, kra{key: priv.(*rsa.PrivateKey), cert: cert})
	}
	return kras
}

func makeKRA(t testing.TB, i int, keyPath, certPath string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(int64(1000 + i)),
		Subject:      pkix.Name{CommonName: fmt.Sprintf("keyarc test KRA %d", i), Organization: []string{"keyarc test"}},
		NotBefore:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2045, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyPath, "PRIVATE KEY", mustPKCS8(t, key))
	writePEM(t, certPath, "CERTIFICATE", der)
}

// loadSubject reads (or under -update creates) the P-256 key sealed in the
// golden records, returning its PKCS#8 and the SHA-256 of its SPKI.
func loadSubject(t testing.TB) ([]byte, [32]byte) {
	t.Helper()
	path := filepath.Join("testdata", "subject.pem")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && *update {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, path, "PRIVATE KEY", mustPKCS8(t, k))
	}
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(priv.(crypto.Signer).Public())
	if err != nil {
		t.Fatal(err)
	}
	return der, sha256.Sum256(spki)
}

func mustPKCS8(t testing.TB, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func readPEM(path, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w (run go test ./escrow/record -update to create it)", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("%s: no %s PEM block", path, typ)
	}
	return blk.Bytes, nil
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// goldenHeader is the header of every golden vector but for m, n and hash.
func goldenHeader(spkiHash [32]byte, m, n uint8, h crypto.Hash) Header {
	return Header{
		Version:  Version,
		ID:       [16]byte{0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f},
		Issuer:   "CN=keyarc test CA,O=keyarc test",
		Serial:   []byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10},
		SPKIHash: spkiHash,
		Epoch:    7,
		M:        m,
		N:        n,
		OAEPHash: h,
	}
}

var goldenVectors = []struct {
	name string
	m, n uint8
	hash crypto.Hash
}{
	{"sha1-2of3", 2, 3, crypto.SHA1}, // what SoftHSM 2.6 can decrypt
	{"sha256-2of3", 2, 3, crypto.SHA256},
	{"sha1-1of2", 1, 2, crypto.SHA1},
}

// TestGolden parses and opens the committed records. They were sealed by an
// earlier build; a change that stops them opening breaks every archived key.
func TestGolden(t *testing.T) {
	kras := loadKRAs(t)
	subject, spkiHash := loadSubject(t)
	for _, v := range goldenVectors {
		t.Run(v.name, func(t *testing.T) {
			path := filepath.Join("testdata", v.name+".karc")
			want := goldenHeader(spkiHash, v.m, v.n, v.hash)
			if *update {
				var rcpts []Recipient
				for _, k := range kras[:v.n] {
					rcpts = append(rcpts, k.recipient(t))
				}
				r, err := Seal(want, subject, rcpts)
				if err != nil {
					t.Fatal(err)
				}
				b, err := r.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
				writeFuzzSeed(t, v.name, b)
			}

			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (regenerate with go test ./escrow/record -run TestGolden -update)", err)
			}
			r, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			again, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, b) {
				t.Fatal("Parse then MarshalBinary does not give the golden bytes back")
			}
			if err := equalHeader(r.Header, want); err != nil {
				t.Fatal(err)
			}

			// Every m-subset of KRAs opens the record; m-1 do not.
			shares := make([][]byte, v.n)
			for i, k := range kras[:v.n] {
				idx, ct, err := r.ShareFor(KeyID(k.cert))
				if err != nil {
					t.Fatal(err)
				}
				if idx != i {
					t.Fatalf("KRA %d share at index %d", i, idx)
				}
				if shares[i], err = DecryptShare(k.key, r.Header.OAEPHash, ct); err != nil {
					t.Fatal(err)
				}
			}
			for mask := 1; mask < 1<<v.n; mask++ {
				var sub [][]byte
				for i := range int(v.n) {
					if mask&(1<<i) != 0 {
						sub = append(sub, shares[i])
					}
				}
				got, err := Open(r, sub)
				switch {
				case len(sub) >= int(v.m):
					if err != nil {
						t.Fatalf("subset %b: %v", mask, err)
					}
					if !bytes.Equal(got, subject) {
						t.Fatalf("subset %b: wrong key", mask)
					}
				default:
					if !errors.Is(err, ErrOpen) {
						t.Fatalf("subset %b of %d shares: err = %v, want ErrOpen", mask, len(sub), err)
					}
					if _, err := open(r, sub); !errors.Is(err, ErrOpen) {
						t.Fatalf("subset %b: below-quorum shares opened the record", mask)
					}
				}
			}
		})
	}
}

func equalHeader(got, want Header) error {
	if got.Version != want.Version || got.ID != want.ID || got.Issuer != want.Issuer ||
		!bytes.Equal(got.Serial, want.Serial) || got.SPKIHash != want.SPKIHash || got.Epoch != want.Epoch ||
		got.M != want.M || got.N != want.N || got.OAEPHash != want.OAEPHash {
		return fmt.Errorf("header = %+v, want %+v", got, want)
	}
	return nil
}

// writeFuzzSeed writes b into the FuzzParse seed corpus, with two broken
// variants (truncated, and with a trailing byte).
func writeFuzzSeed(t testing.TB, name string, b []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		name:                b,
		name + "-truncated": b[:len(b)-1],
		name + "-trailing":  append(bytes.Clone(b), 0),
	}
	for n, s := range seeds {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, n), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
