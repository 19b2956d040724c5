package pemfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretFileModes: a private key that any user can read or change is refused, with the
// remedy in the message; one its owner's group may read is taken, as for the token's PIN.
func TestSecretFileModes(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := Write(path, "PRIVATE KEY", der, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o640, true}, {0o400, true}, {0o644, false}, {0o602, false}, {0o666, false}} {
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		_, err := ReadPrivateKey(path)
		switch {
		case tc.ok && err != nil:
			t.Errorf("mode %v: %v", tc.mode, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "chmod 600")):
			t.Errorf("mode %v: %v, want a refusal that says chmod 600", tc.mode, err)
		}
	}
}
