package cms

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/ with the openssl binary")

// oaepOnly wraps a Decrypter and fails the test if Decrypt is ever called
// with anything but *rsa.OAEPOptions (SHA-1 or SHA-256, MGF1 hash the same,
// no label), the way the HSM-backed transport key requires.
type oaepOnly struct {
	tb    testing.TB
	key   crypto.Decrypter
	calls atomic.Int32
	err   error // returned instead of decrypting, if set
}

var _ crypto.Decrypter = (*oaepOnly)(nil)

func (o *oaepOnly) Public() crypto.PublicKey { return o.key.Public() }

func (o *oaepOnly) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	o.calls.Add(1)
	oo, ok := opts.(*rsa.OAEPOptions)
	if !ok || oo == nil {
		o.tb.Errorf("Decrypt called with %T, want *rsa.OAEPOptions", opts)
		return nil, fmt.Errorf("test decrypter: refused %T", opts)
	}
	if oo.Hash != crypto.SHA1 && oo.Hash != crypto.SHA256 {
		o.tb.Errorf("Decrypt called with OAEP hash %v", oo.Hash)
	}
	if oo.MGFHash != 0 && oo.MGFHash != oo.Hash {
		o.tb.Errorf("Decrypt called with MGF hash %v != hash %v", oo.MGFHash, oo.Hash)
	}
	if len(oo.Label) != 0 {
		o.tb.Errorf("Decrypt called with a label")
	}
	if o.err != nil {
		return nil, o.err
	}
	return o.key.Decrypt(r, msg, opts)
}

// transport holds the committed test-only transport key and certificate.
type transport struct {
	cert     *x509.Certificate
	key      *rsa.PrivateKey
	certPath string
	keyPath  string
}

func loadTransport(tb testing.TB) *transport {
	tb.Helper()
	tr := &transport{certPath: filepath.Join("testdata", "transport.pem"), keyPath: filepath.Join("testdata", "transport.key")}
	tr.cert = readCert(tb, tr.certPath)
	b, err := os.ReadFile(tr.keyPath)
	if err != nil {
		tb.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		tb.Fatal("no PEM in transport.key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	tr.key = k.(*rsa.PrivateKey)
	return tr
}

func (tr *transport) decrypter(tb testing.TB) *oaepOnly { return &oaepOnly{tb: tb, key: tr.key} }

func readCert(tb testing.TB, path string) *x509.Certificate {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		tb.Fatalf("no PEM in %s", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// needOpenSSL skips when the openssl binary is missing and $CI is unset.
func needOpenSSL(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatal("openssl not installed")
		}
		tb.Skip("openssl not installed")
	}
}

// openssl runs the openssl binary with stdin and returns stdout.
func openssl(tb testing.TB, stdin []byte, args ...string) []byte {
	tb.Helper()
	out, err := opensslErr(stdin, args...)
	if err != nil {
		tb.Fatalf("openssl %v: %v", args, err)
	}
	return out
}

func opensslErr(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command("openssl", args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// newPKCS8 returns a fresh PKCS#8 private key, the kind of plaintext clients send.
func newPKCS8(tb testing.TB) []byte {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// otherCert makes a self-signed RSA certificate with a fresh key using openssl.
func otherCert(tb testing.TB) (certPath string, cert *x509.Certificate) {
	tb.Helper()
	dir := tb.TempDir()
	certPath = filepath.Join(dir, "other.pem")
	openssl(tb, nil, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(dir, "other.key"),
		"-out", certPath, "-subj", "/CN=someone else", "-days", "2")
	return certPath, readCert(tb, certPath)
}
