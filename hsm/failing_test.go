package hsm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// faultyToken opens a fresh SoftHSM token through tests/internal/p11fault, built here with
// gcc, and returns it with a function that sets the module's trigger ("" ends every fault).
// It skips (fails under CI) when gcc is missing. Not parallel: the trigger's path is in the
// environment.
func faultyToken(t *testing.T) (*Token, func(rules string)) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("gcc is required in CI (make test installs it)")
		}
		t.Skip("gcc not installed; run `make deps`")
	}
	_, toks := softhsmtest.Tokens(t, "faulty")
	inc, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/miekg/pkcs11").Output()
	if err != nil {
		t.Fatalf("go list github.com/miekg/pkcs11: %v", err)
	}
	dir := t.TempDir()
	so := filepath.Join(dir, "p11fault.so")
	if out, err := exec.Command("gcc", "-Wall", "-Werror", "-shared", "-fPIC", "-I", strings.TrimSpace(string(inc)),
		"-o", so, "../tests/internal/p11fault/p11fault.c", "-ldl", "-lpthread").CombinedOutput(); err != nil {
		t.Fatalf("gcc p11fault.c: %v\n%s", err, out)
	}
	trigger := filepath.Join(dir, "trigger")
	t.Setenv("P11FAULT_MODULE", toks[0].Module)
	t.Setenv("P11FAULT_TRIGGER", trigger)
	u, err := ParseURI(toks[0].URI(""))
	if err != nil {
		t.Fatal(err)
	}
	u.ModulePath = so
	tok, err := Open(u.String(), Options{})
	if err != nil {
		t.Fatalf("Open through p11fault: %v", err)
	}
	t.Cleanup(func() { tok.Close() })
	set := func(rules string) {
		t.Helper()
		if rules == "" {
			if err := os.Remove(trigger); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			return
		}
		if err := os.WriteFile(trigger, []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return tok, set
}

// TestPingProbesFailingOperation: a token that answers but fails a key's signatures or
// decryptions (CKR_FUNCTION_FAILED, CKR_DEVICE_MEMORY) is not ready: Ping repeats the failed
// operation and returns ErrTokenFault, not ErrTokenGone (nothing to reconnect), until it
// succeeds; one that answers CKR_DEVICE_ERROR is reconnected, and not ready either until the
// operation succeeds; a one-off failure costs nothing once the token works, and a failed key that is
// destroyed is no longer probed.
func TestPingProbesFailingOperation(t *testing.T) {
	tok, fail := faultyToken(t)
	if _, err := tok.GenerateKey("s", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"d", "gone"} {
		if _, err := tok.GenerateKey(l, RSA2048, UsageDecrypt); err != nil {
			t.Fatal(err)
		}
	}
	s, err := tok.Signer("s")
	if err != nil {
		t.Fatal(err)
	}
	decrypter := func(label string) crypto.Decrypter {
		d, err := tok.Decrypter(label)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d, gone := decrypter("d"), decrypter("gone")
	digest := sha256.Sum256([]byte("probe"))
	sign := func() error { _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); return err }
	decrypt := func(d crypto.Decrypter) error {
		// RSA-OAEP with SHA-1: what SoftHSM 2.6 decrypts.
		ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, d.Public().(*rsa.PublicKey), []byte("secret"), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA1})
		return err
	}

	steps := []struct {
		name     string
		rules    string
		op       func() error
		opErr    error // what the operation returns
		pingErr  error // what Ping returns right after, with the fault still on
		healedOK bool  // Ping succeeds once the fault is over
	}{
		{"sign fails", "C_Sign=0x6", sign, ErrTokenFault, ErrTokenFault, true},
		{"decrypt fails", "C_Decrypt=0x31", func() error { return decrypt(d) }, ErrTokenFault, ErrTokenFault, true},
		// CKR_DEVICE_ERROR reads as a token gone: the next Ping reconnects, and the probe
		// keeps it not ready while the decryptions fail.
		{"decrypt device error", "C_Decrypt=0x30", func() error { return decrypt(d) }, ErrTokenGone, ErrTokenGone, true},
		{"another call fails", "C_GenerateKeyPair=0x6", sign, nil, nil, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			fail(st.rules)
			if err := st.op(); !errors.Is(err, st.opErr) || (st.opErr == nil && err != nil) {
				t.Fatalf("operation = %v, want %v", err, st.opErr)
			}
			err := tok.Ping()
			if !errors.Is(err, st.pingErr) || (st.pingErr == nil && err != nil) {
				t.Fatalf("Ping with the fault on = %v, want %v", err, st.pingErr)
			}
			if errors.Is(st.pingErr, ErrTokenFault) && errors.Is(err, ErrTokenGone) {
				t.Errorf("Ping = %v: a token that answers is not gone", err)
			}
			if err := tok.Ping(); !errors.Is(err, st.pingErr) || (st.pingErr == nil && err != nil) {
				t.Fatalf("second Ping with the fault on = %v, want %v", err, st.pingErr)
			}
			fail("")
			if err := tok.Ping(); err != nil {
				t.Fatalf("Ping once the fault is over = %v", err)
			}
		})
	}

	t.Run("one-off", func(t *testing.T) {
		fail("C_Sign=0x6")
		if err := sign(); !errors.Is(err, ErrTokenFault) {
			t.Fatalf("sign = %v, want ErrTokenFault", err)
		}
		fail("")
		if err := sign(); err != nil {
			t.Fatal(err)
		}
		if err := tok.Ping(); err != nil {
			t.Fatalf("Ping after the key signed again = %v", err)
		}
	})

	t.Run("failed key destroyed", func(t *testing.T) {
		fail("C_Decrypt=0x6")
		if err := decrypt(gone); !errors.Is(err, ErrTokenFault) {
			t.Fatalf("decrypt = %v, want ErrTokenFault", err)
		}
		fail("")
		if err := tok.DestroyKey("gone"); err != nil {
			t.Fatal(err)
		}
		if err := tok.Ping(); err != nil {
			t.Fatalf("Ping after the failed key was destroyed = %v", err)
		}
	})
}
