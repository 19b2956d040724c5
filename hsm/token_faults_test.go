package hsm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// TestExpect: a pinned label must name exactly one key pair with the given public key.
func TestExpect(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	pubA, err := tok.GenerateKey("a", P256, UsageSign)
	if err != nil {
		t.Fatal(err)
	}
	pubB, err := tok.GenerateKey("b", P256, UsageSign)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		label   string
		pub     any
		wantErr error
	}{
		{"the key itself", "a", pubA, nil},
		{"another key under the label", "a", pubB, ErrKeyChanged},
		{"no key under the label", "missing", pubA, ErrKeyChanged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tok.Expect(tt.label, tt.pub)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Expect = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, ErrTokenGone) {
					t.Errorf("Expect = %v: a changed key is a fault of the token (ErrTokenGone)", err)
				}
				if !strings.Contains(err.Error(), `"`+tt.label+`"`) {
					t.Errorf("Expect = %v: the error does not name the key", err)
				}
			}
		})
	}
	// Only the passing expectation was pinned: the token is usable.
	if err := tok.Ping(); err != nil {
		t.Fatalf("Ping after Expect: %v", err)
	}
}

// TestPINStamp: a PIN file's stamp changes with its content or its modification time, and
// not otherwise; an environment variable's with its value.
func TestPINStamp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pin")
	src := "file:" + p
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, when, when); err != nil {
			t.Fatal(err)
		}
	}
	write("123456\n")
	first := stampPIN(src)
	write("123456\n")
	if stampPIN(src) != first {
		t.Error("the stamp changed although content and time did not")
	}
	write("654321\n")
	if stampPIN(src) == first {
		t.Error("the stamp did not change with the content (same size, same time)")
	}
	write("123456\n")
	later := when.Add(time.Second)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	if stampPIN(src) == first {
		t.Error("the stamp did not change with the modification time")
	}
	os.Remove(p)
	if stampPIN(src) == first {
		t.Error("a missing file has the stamp of the file")
	}
	t.Setenv("KEYARC_TEST_PIN", "1111")
	env := stampPIN("env:KEYARC_TEST_PIN")
	t.Setenv("KEYARC_TEST_PIN", "2222")
	if stampPIN("env:KEYARC_TEST_PIN") == env {
		t.Error("the stamp did not change with the variable")
	}
}

// TestExplainStore: SoftHSM's bare CKR_GENERAL_ERROR at initialisation becomes
// ErrTokenStoreNotFound naming the configuration file and the token directory.
func TestExplainStore(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("# test\ndirectories.tokendir = "+tokens+"\nobjectstore.backend = file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	initErr := errors.New("failed to initialize module: pkcs11: 0x5: CKR_GENERAL_ERROR")
	const module = "/usr/lib/softhsm/libsofthsm2.so"
	tests := []struct {
		name      string
		conf      string
		mkdir     bool
		module    string
		err       error
		wantErr   error
		wantNames []string
	}{
		{"token directory missing", conf, false, module, initErr, ErrTokenStoreNotFound, []string{tokens, conf}},
		{"configuration missing", filepath.Join(dir, "none.conf"), false, module, initErr, ErrTokenStoreNotFound, []string{filepath.Join(dir, "none.conf"), "SOFTHSM2_CONF"}},
		{"store present", conf, true, module, initErr, initErr, nil},
		{"not SoftHSM", conf, false, "/usr/lib/other-pkcs11.so", initErr, initErr, nil},
		{"refused PIN", conf, false, module, ErrPINIncorrect, ErrPINIncorrect, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SOFTHSM2_CONF", tt.conf)
			os.RemoveAll(tokens)
			if tt.mkdir {
				if err := os.Mkdir(tokens, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			err := explainStore(tt.module, tt.err)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("explainStore = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != ErrTokenStoreNotFound && errors.Is(err, ErrTokenStoreNotFound) {
				t.Fatalf("explainStore = %v, want it unchanged", err)
			}
			for _, n := range tt.wantNames {
				if !strings.Contains(err.Error(), n) {
					t.Errorf("explainStore = %v: does not name %s", err, n)
				}
			}
		})
	}
}

// TestReconnectPINAndKeys puts a SoftHSM token behind `p11-kit server` and loses it twice:
// once it comes back with another PIN, once with another key under a pinned label. A refused
// PIN costs one login per attempt, and an attempt is made only when the PIN file changes or
// RetryLogin asks; a changed key keeps the token unused until the right key is back.
func TestReconnectPINAndKeys(t *testing.T) {
	client := "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
	for _, tool := range []string{"p11-kit", "pkcs11-tool"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	if _, err := os.Stat(client); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit-client.so is required in CI")
		}
		t.Skip("p11-kit-client.so missing")
	}
	in, toks := softhsmtest.Tokens(t, "reconnect")
	st := toks[0]
	socket := filepath.Join(t.TempDir(), "p11.sock")
	var server *exec.Cmd
	start := func() {
		t.Helper()
		os.Remove(socket)
		server = exec.Command("p11-kit", "server", "-f", "-n", socket, "--provider", st.Module, "pkcs11:token="+st.Label)
		server.Env = append(os.Environ(), in.Env()...)
		server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := server.Start(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			if _, err := os.Stat(socket); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("p11-kit server made no socket")
	}
	stop := func() {
		syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
		server.Wait()
	}
	tool := func(args ...string) {
		t.Helper()
		cmd := exec.Command("pkcs11-tool", append([]string{"--module", st.Module, "--token-label", st.Label}, args...)...)
		cmd.Env = append(os.Environ(), in.Env()...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pkcs11-tool %v: %v\n%s", args, err, out)
		}
	}
	start()
	t.Cleanup(func() { stop() })
	t.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+socket)

	u, err := ParseURI(st.URI(""))
	if err != nil {
		t.Fatal(err)
	}
	u.ModulePath = client
	reg := prometheus.NewRegistry()
	tok, err := Open(u.String(), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	pub, err := tok.GenerateKey("pinned", P256, UsageSign)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Expect("pinned", pub); err != nil {
		t.Fatal(err)
	}
	signer, err := tok.Signer("pinned")
	if err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	refused := func() float64 { return counter(t, reg, "login", "pin_incorrect") }
	pingUntil := func(what string, ok func(error) bool) error {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := tok.Ping()
			if ok(err) {
				return err
			}
			if time.Now().After(deadline) {
				t.Fatalf("Ping never %s; last: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	oldPIN, err := os.ReadFile(st.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	const newPIN = "97531975"

	// Back with another PIN: one refused login, none more on an unchanged PIN file.
	stop()
	tool("--login", "--pin", strings.TrimSpace(string(oldPIN)), "--change-pin", "--new-pin", newPIN)
	start()
	err = pingUntil("reports the refused PIN", func(err error) bool { return errors.Is(err, ErrPINIncorrect) })
	if !errors.Is(err, ErrTokenGone) {
		t.Errorf("Ping = %v: a refused PIN must also be ErrTokenGone", err)
	}
	for i := 0; i < 5; i++ {
		tok.Ping()
	}
	if got := refused(); got != 1 {
		t.Fatalf("%v refused logins on an unchanged PIN file, want 1", got)
	}
	if _, err := signer.Sign(nil, digest, crypto.SHA256); !errors.Is(err, ErrPINIncorrect) {
		t.Errorf("Sign while the PIN is refused = %v, want ErrPINIncorrect", err)
	}
	tok.RetryLogin()
	tok.RetryLogin()
	for i := 0; i < 5; i++ {
		tok.Ping()
	}
	if got := refused(); got != 2 {
		t.Fatalf("%v refused logins after RetryLogin, want 2 (one attempt)", got)
	}
	if err := os.WriteFile(st.PINFile, []byte(newPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pingUntil("succeeds after the PIN file was fixed", func(err error) bool { return err == nil })
	if got := refused(); got != 2 {
		t.Errorf("%v refused logins in all, want 2", got)
	}
	if _, err := signer.Sign(nil, digest, crypto.SHA256); err != nil {
		t.Fatalf("Sign after the PIN was fixed: %v", err)
	}

	// Back with another key under the pinned label.
	stop()
	tool("--login", "--pin", newPIN, "--delete-object", "--type", "privkey", "--label", "pinned")
	tool("--login", "--pin", newPIN, "--delete-object", "--type", "pubkey", "--label", "pinned")
	tool("--login", "--pin", newPIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "pinned", "--usage-sign")
	start()
	err = pingUntil("reports the changed key", func(err error) bool { return errors.Is(err, ErrKeyChanged) })
	if !errors.Is(err, ErrTokenGone) || !strings.Contains(err.Error(), `"pinned"`) {
		t.Errorf("Ping = %v: want ErrTokenGone naming the key", err)
	}
	if err := tok.Ping(); !errors.Is(err, ErrKeyChanged) {
		t.Errorf("second Ping = %v, want ErrKeyChanged still", err)
	}
	if _, err := signer.Sign(nil, digest, crypto.SHA256); !errors.Is(err, ErrKeyChanged) {
		t.Errorf("Sign with another key under the label = %v, want ErrKeyChanged", err)
	}
}

// failingKey is a token key whose operations the token answers with rv, as a failing HSM
// answers CKR_FUNCTION_FAILED or CKR_DEVICE_MEMORY to one operation and not the next.
type failingKey struct {
	crypto11.SignerDecrypter
	rv pkcs11.Error
}

func (k failingKey) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, fmt.Errorf("crypto11 sign: %w", k.rv)
}

func (k failingKey) Decrypt(io.Reader, []byte, crypto.DecrypterOpts) ([]byte, error) {
	return nil, k.rv
}

// TestTokenFaultOperation: a PKCS#11 error that is no verdict on the request (the token's own
// failure) is ErrTokenFault from Sign and Decrypt, with the return value kept and no client
// sentinel (ErrDecrypt, ErrMechanism); the token stays in use (no reconnection), and the next
// operation that the token does not fail succeeds. Such codes were passed on unclassified and
// reached HTTP clients as a bare 500.
func TestTokenFaultOperation(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, _, tok := newToken(t, Options{Registerer: reg})
	if _, err := tok.GenerateKey("signing", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	pub, err := tok.GenerateKey("unwrap", RSA2048, UsageDecrypt)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("signing")
	if err != nil {
		t.Fatal(err)
	}
	d, err := tok.Decrypter("unwrap")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("tbs"))
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub.(*rsa.PublicKey), []byte("a share"), nil)
	if err != nil {
		t.Fatal(err)
	}
	oaep := &rsa.OAEPOptions{Hash: crypto.SHA1}
	if _, err := d.Decrypt(nil, ct, oaep); err != nil {
		t.Fatal(err)
	}
	for _, rv := range []pkcs11.Error{pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_GENERAL_ERROR} {
		t.Run(rv.Error(), func(t *testing.T) {
			sh, dh := s.(*signer).handle, d.(*decrypter).handle
			sh.mu.Lock()
			sk := sh.key
			sh.key = failingKey{SignerDecrypter: nil, rv: rv}
			sh.mu.Unlock()
			dh.mu.Lock()
			dk := dh.key
			dh.key = failingKey{SignerDecrypter: dk.(crypto11.SignerDecrypter), rv: rv}
			dh.mu.Unlock()
			_, serr := s.Sign(nil, digest[:], crypto.SHA256)
			_, derr := d.Decrypt(nil, ct, oaep)
			sh.mu.Lock()
			sh.key = sk
			sh.mu.Unlock()
			dh.mu.Lock()
			dh.key = dk
			dh.mu.Unlock()
			for name, err := range map[string]error{"Sign": serr, "Decrypt": derr} {
				if !errors.Is(err, ErrTokenFault) || !errors.Is(err, rv) {
					t.Errorf("%s = %v, want ErrTokenFault keeping %v", name, err, rv)
				}
				for _, client := range []error{ErrDecrypt, ErrMechanism, ErrPINIncorrect} {
					if errors.Is(err, client) {
						t.Errorf("%s = %v, also %v", name, err, client)
					}
				}
			}
			if tok.broken.Load() {
				t.Error("one failed operation marked the token gone")
			}
			if err := tok.Ping(); err != nil {
				t.Errorf("Ping after a failed operation: %v", err)
			}
			if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
				t.Errorf("Sign once the token answers again: %v", err)
			}
			if _, err := d.Decrypt(nil, ct, oaep); err != nil {
				t.Errorf("Decrypt once the token answers again: %v", err)
			}
		})
	}
	if got := counter(t, reg, "sign", "token_fault"); got != 3 {
		t.Errorf("sign token_fault = %v, want 3", got)
	}
}
