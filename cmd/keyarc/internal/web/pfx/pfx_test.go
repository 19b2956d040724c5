package pfx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

func issue(t *testing.T) (*rsa.PrivateKey, *x509.Certificate, *x509.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pfx test CA"}, NotBefore: now, NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice@example.org"},
		EmailAddresses: []string{"alice@example.org"}, NotBefore: now, NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageKeyEncipherment}, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, cert, ca
}

// TestEncode: go-pkcs12 opens the file (MAC and decryption with the password), finds the key,
// the certificate and the chain; a wrong password is refused.
func TestEncode(t *testing.T) {
	key, cert, ca := issue(t)
	const password = "tränenüberströmt Käse"
	der, err := Encode(key, cert, []*x509.Certificate{ca}, password, "alice@example.org (encryption)", 2048)
	if err != nil {
		t.Fatal(err)
	}
	k, c, chain, err := pkcs12.DecodeChain(der, password)
	if err != nil {
		t.Fatalf("go-pkcs12 cannot open the named file: %v", err)
	}
	if !key.Equal(k) || !c.Equal(cert) || len(chain) != 1 || !chain[0].Equal(ca) {
		t.Fatal("the file does not hold the key, the certificate and the chain")
	}
	if _, _, _, err := pkcs12.DecodeChain(der, password+"x"); !errors.Is(err, pkcs12.ErrIncorrectPassword) {
		t.Errorf("a wrong password: %v, want ErrIncorrectPassword", err)
	}
	blocks, err := pkcs12.ToPEM(der, password)
	if err != nil {
		t.Fatal(err)
	}
	named := 0
	for _, b := range blocks {
		if b.Headers["friendlyName"] == "alice@example.org (encryption)" {
			named++
		}
	}
	if named != 2 {
		t.Errorf("%d bags carry the friendly name, want 2 (the key and its certificate)", named)
	}
	if _, err := Encode(key, cert, nil, password, "𝄞 clef", 2048); err == nil {
		t.Error("a friendly name outside the BMP was accepted")
	}
}

// TestOpenSSL: OpenSSL and NSS open the file as the page makes it (600,000 iterations) and show
// the friendly name.
func TestOpenSSL(t *testing.T) {
	for _, tool := range []string{"openssl", "pk12util", "certutil"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	key, cert, ca := issue(t)
	const password = "correct horse battery staple"
	der, err := Encode(key, cert, []*x509.Certificate{ca}, password, "alice@example.org (encryption)", 600_000)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p12, pw := filepath.Join(dir, "a.p12"), filepath.Join(dir, "pw")
	os.WriteFile(p12, der, 0o600)
	os.WriteFile(pw, []byte(password+"\n"), 0o600)
	out, err := exec.Command("openssl", "pkcs12", "-info", "-in", p12, "-passin", "file:"+pw, "-nodes").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl pkcs12: %v\n%s", err, out)
	}
	info := string(out)
	for _, want := range []string{"MAC: sha256, Iteration 600000", "PBES2, PBKDF2, AES-256-CBC, Iteration 600000, PRF hmacWithSHA256", "friendlyName: alice@example.org (encryption)"} {
		if !strings.Contains(info, want) {
			t.Errorf("openssl pkcs12 -info lacks %q", want)
		}
	}
	if n := strings.Count(info, "friendlyName: alice@example.org (encryption)"); n != 2 {
		t.Errorf("openssl shows the friendly name %d times, want 2", n)
	}
	nss := filepath.Join(dir, "nss")
	os.Mkdir(nss, 0o700)
	for _, args := range [][]string{
		{"certutil", "-N", "-d", "sql:" + nss, "--empty-password"},
		{"pk12util", "-i", p12, "-d", "sql:" + nss, "-w", pw},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, _ = exec.Command("certutil", "-L", "-d", "sql:"+nss).CombinedOutput()
	if !strings.Contains(string(out), "alice@example.org (encryption)") {
		t.Errorf("NSS does not name the certificate by its friendly name:\n%s", out)
	}
}

// TestBuildWithDerivedKeys: Build uses the PBKDF2 keys it is given, as the page derives them
// with WebCrypto: keys derived from the password with the salts give a file go-pkcs12 opens;
// keys of another password give one it cannot open (the MAC, from the password, still
// verifies); keys of the wrong length are refused.
func TestBuildWithDerivedKeys(t *testing.T) {
	key, cert, ca := issue(t)
	const password = "correct horse battery staple"
	derive := func(pw string, salt []byte) []byte {
		k, err := pbkdf2.Key(sha256.New, pw, salt, 1000, 32)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	certSalt, keySalt := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)
	k := &Keys{Iterations: 1000, CertSalt: certSalt, KeySalt: keySalt, CertKey: derive(password, certSalt), KeyKey: derive(password, keySalt)}
	der, err := Build(key, cert, []*x509.Certificate{ca}, password, "alice", k)
	if err != nil {
		t.Fatal(err)
	}
	if got, c, _, err := pkcs12.DecodeChain(der, password); err != nil || !key.Equal(got) || !c.Equal(cert) {
		t.Fatalf("go-pkcs12 cannot open a file built with keys derived from its password: %v", err)
	}
	other := &Keys{Iterations: 1000, CertSalt: certSalt, KeySalt: keySalt, CertKey: derive("another password", certSalt), KeyKey: derive("another password", keySalt)}
	if der, err = Build(key, cert, nil, password, "alice", other); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := pkcs12.DecodeChain(der, password); err == nil {
		t.Fatal("a file whose keys came from another password opened with its password")
	}
	if _, err := Build(key, cert, nil, password, "", &Keys{Iterations: 1000, CertSalt: certSalt, KeySalt: keySalt, CertKey: []byte("short"), KeyKey: k.KeyKey}); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}
