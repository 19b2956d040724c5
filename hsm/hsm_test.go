package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/softhsm"
	"github.com/keyarc/keyarc/softhsm/softhsmtest"
	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// newToken makes a fresh SoftHSM token and opens it.
func newToken(t testing.TB, opts Options) (*softhsm.Install, *softhsm.Token, *Token) {
	t.Helper()
	in, toks := softhsmtest.Tokens(t, "hsm")
	tok, err := Open(toks[0].URI(""), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return in, toks[0], tok
}

func TestOpenErrors(t *testing.T) {
	_, toks := softhsmtest.Tokens(t, "open")
	good := toks[0]
	dir := t.TempDir()
	wrongPIN := filepath.Join(dir, "wrong.pin")
	if err := os.WriteFile(wrongPIN, []byte("0000000000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notLib := filepath.Join(dir, "not-a-module.so")
	if err := os.WriteFile(notLib, []byte("ELF? no"), 0o600); err != nil {
		t.Fatal(err)
	}
	withPIN := func(pinSource string) string {
		u, err := ParseURI(good.URI(""))
		if err != nil {
			t.Fatal(err)
		}
		u.PINSource = pinSource
		return u.String()
	}
	withModule := func(m string) string {
		u, _ := ParseURI(good.URI(""))
		u.ModulePath = m
		return u.String()
	}
	missing := *good
	missing.Label = "no-such-token"
	t.Setenv("KEYARC_TEST_EMPTY_PIN", "")

	tests := []struct {
		name    string
		uri     string
		wantErr error
	}{
		{"wrong PIN", withPIN("file:" + wrongPIN), ErrPINIncorrect},
		{"missing token", missing.URI(""), ErrTokenNotFound},
		{"module missing", withModule(filepath.Join(dir, "nope.so")), ErrModuleNotLoadable},
		{"module not a library", withModule(notLib), ErrModuleNotLoadable},
		{"pin file missing", withPIN("file:" + filepath.Join(dir, "nope.pin")), ErrPINSource},
		{"pin env empty", withPIN("env:KEYARC_TEST_EMPTY_PIN"), ErrPINSource},
		{"no pin-source", "pkcs11:token=" + good.Label + "?module-path=" + good.Module, ErrInvalidURI},
		{"no module", "pkcs11:token=" + good.Label + "?pin-source=file:" + good.PINFile, ErrInvalidURI},
		{"pin-value", good.URI("") + "&pin-value=1234", ErrInvalidURI},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := Open(tt.uri, Options{})
			if err == nil {
				tok.Close()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open = %v, want %v", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "0000000000000000") {
				t.Errorf("error leaks the PIN: %v", err)
			}
		})
	}

	// The wrong PIN was tried once and not retried: the right PIN still opens the token
	// (SoftHSM never locks), and the PIN from the environment works too.
	reg := prometheus.NewRegistry()
	tok, err := Open(good.URI(""), Options{Registerer: reg})
	if err != nil {
		t.Fatalf("Open after wrong PIN: %v", err)
	}
	if got := counter(t, reg, "login", "ok"); got != 1 {
		t.Errorf("login ok = %v, want 1", got)
	}
	// A second Open of the same token is refused (its login would not check the PIN).
	if _, err := Open(withPIN("file:"+wrongPIN), Options{}); !errors.Is(err, ErrTokenInUse) {
		t.Errorf("second Open = %v, want ErrTokenInUse", err)
	}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	pin, err := os.ReadFile(good.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYARC_TEST_PIN", strings.TrimSpace(string(pin)))
	tok, err = Open(withPIN("env:KEYARC_TEST_PIN"), Options{})
	if err != nil {
		t.Fatalf("Open with env PIN: %v", err)
	}
	if tok.Label() != good.Label {
		t.Errorf("Label() = %q", tok.Label())
	}
	tok.Close()
}

// counter returns the value of keyarc_hsm_operations_total{op,result} (0 if absent).
func counter(t *testing.T, reg *prometheus.Registry, op, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keyarc_hsm_operations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["op"] == op && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// series returns the number of series of the named family and the value of its first
// gauge (0 if none).
func series(t *testing.T, reg *prometheus.Registry, name string) (n int, gauge float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return len(mf.GetMetric()), mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0, 0
}

func TestSignKeys(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, _, tok := newToken(t, Options{Registerer: reg})
	digest := sha256.Sum256([]byte("keyarc"))
	for _, alg := range []Algorithm{P256, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			label := "sign-" + string(alg)
			pub, err := tok.GenerateKey(label, alg, UsageSign)
			if err != nil {
				t.Fatal(err)
			}
			errors0 := counter(t, reg, "generate", "error")
			if _, err := tok.GenerateKey(label, alg, UsageSign); !errors.Is(err, ErrKeyExists) {
				t.Fatalf("second GenerateKey = %v, want ErrKeyExists", err)
			}
			// Keeping a key that exists (as every start does with the responder key) is no
			// fault of the token.
			if got := counter(t, reg, "generate", "error") - errors0; got != 0 {
				t.Errorf("a GenerateKey refused for an existing key counted %v token errors", got)
			}
			if got := counter(t, reg, "generate", "exists"); got == 0 {
				t.Error(`a GenerateKey refused for an existing key is not counted as result="exists"`)
			}
			s, err := tok.Signer(label)
			if err != nil {
				t.Fatal(err)
			}
			sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := pub.(type) {
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(pub, digest[:], sig) {
					t.Fatal("ECDSA signature does not verify")
				}
			case *rsa.PublicKey:
				if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
					t.Fatal(err)
				}
				// PSS with SaltLengthAuto (crypto/x509's habit) is signed with salt = hash length.
				sig, err := s.Sign(rand.Reader, digest[:], &rsa.PSSOptions{Hash: crypto.SHA256})
				if err != nil {
					t.Fatal(err)
				}
				if err := rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("public key %T", pub)
			}
			if _, err := s.Sign(rand.Reader, digest[:10], crypto.SHA256); err == nil {
				t.Error("Sign accepted a short digest")
			}
			// A sign key is no decrypter.
			if _, err := tok.Decrypter(label); !errors.Is(err, ErrKeyUsage) {
				t.Errorf("Decrypter(sign key) = %v, want ErrKeyUsage", err)
			}
		})
	}
	if _, err := tok.Signer("nope"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("Signer(missing) = %v, want ErrKeyNotFound", err)
	}
	if got := counter(t, reg, "sign", "ok"); got != 3 {
		t.Errorf("sign ok = %v, want 3", got)
	}
	if got := counter(t, reg, "generate", "ok"); got != 2 {
		t.Errorf("generate ok = %v, want 2", got)
	}
	if got := counter(t, reg, "find", "not_found"); got != 1 {
		t.Errorf("find not_found = %v, want 1", got)
	}
	if n, _ := series(t, reg, "keyarc_hsm_operation_duration_seconds"); n == 0 {
		t.Error("no duration histogram")
	}
	if _, g := series(t, reg, "keyarc_hsm_sessions_max"); g != DefaultMaxSessions {
		t.Errorf("sessions_max = %v, want %d", g, DefaultMaxSessions)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

func TestDecryptKey(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	m, err := tok.SelfTest()
	if err != nil {
		t.Fatal(err)
	}
	// SoftHSM 2.6.1 does RSA-OAEP with SHA-1 only.
	if m.OAEPHash != crypto.SHA1 {
		t.Errorf("SelfTest OAEPHash = %v, want SHA-1 on SoftHSM 2.6", m.OAEPHash)
	}
	pub, err := tok.GenerateKey("transport", RSA2048, UsageDecrypt)
	if err != nil {
		t.Fatal(err)
	}
	d, err := tok.Decrypter("transport")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("a 32-byte AES key, more or less.")
	ct, err := rsa.EncryptOAEP(m.OAEPHash.New(), rand.Reader, pub.(*rsa.PublicKey), msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: m.OAEPHash})
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != string(msg) {
		t.Fatal("plaintext differs")
	}
	ctLabel, err := rsa.EncryptOAEP(m.OAEPHash.New(), rand.Reader, pub.(*rsa.PublicKey), msg, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	v15, err := rsa.EncryptPKCS1v15(rand.Reader, pub.(*rsa.PublicKey), msg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ct      []byte
		opts    crypto.DecrypterOpts
		wantErr error
	}{
		{"nil opts is PKCS#1 v1.5: refused", v15, nil, ErrMechanism},
		{"PKCS#1 v1.5 refused", v15, &rsa.PKCS1v15DecryptOptions{}, ErrMechanism},
		{"nil OAEP pointer", ct, (*rsa.OAEPOptions)(nil), ErrMechanism},
		{"MGF hash mismatch", ct, &rsa.OAEPOptions{Hash: crypto.SHA1, MGFHash: crypto.SHA256}, ErrMechanism},
		{"corrupt ciphertext", append([]byte{0}, ct[1:]...), &rsa.OAEPOptions{Hash: crypto.SHA1}, ErrDecrypt},
		// SoftHSM answers CKR_GENERAL_ERROR to an OAEP label; the key still decrypts a probe,
		// so it is the ciphertext's options at fault, not the token.
		{"OAEP label SoftHSM cannot do", ctLabel, &rsa.OAEPOptions{Hash: crypto.SHA1, Label: []byte("x")}, ErrDecrypt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := d.Decrypt(nil, tt.ct, tt.opts); !errors.Is(err, tt.wantErr) || errors.Is(err, ErrTokenFault) {
				t.Errorf("Decrypt = %v, want %v (and not a fault of the token)", err, tt.wantErr)
			}
		})
	}
	if _, err := tok.Signer("transport"); !errors.Is(err, ErrKeyUsage) {
		t.Errorf("Signer(decrypt key) = %v, want ErrKeyUsage", err)
	}
	if _, err := tok.GenerateKey("ec-decrypt", P256, UsageDecrypt); !errors.Is(err, ErrMechanism) {
		t.Errorf("GenerateKey(p256, decrypt) = %v, want ErrMechanism", err)
	}
	// The self-test left nothing on the token.
	if all, _, err := tok.cur.raw.countByLabel("transport"); err != nil || all != 2 {
		t.Errorf("transport objects = %d, %v; want 2", all, err)
	}
}

func TestKeyAmbiguous(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	if _, err := tok.GenerateKey("twin", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	// GenerateKey refuses a duplicate label, so make the twin behind its back.
	pub, priv, err := keyAttributes("twin", UsageSign, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.cur.c11.GenerateECDSAKeyPairWithAttributes(pub, priv, ecdsaP256()); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Signer("twin"); !errors.Is(err, ErrKeyAmbiguous) {
		t.Errorf("Signer(twin) = %v, want ErrKeyAmbiguous", err)
	}
}

// TestAttributesFromOutside checks the generated keys' attributes with pkcs11-tool.
func TestAttributesFromOutside(t *testing.T) {
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-tool (opensc) is required in CI (make test installs it)")
		}
		t.Skip("pkcs11-tool (opensc) not installed")
	}
	in, st, tok := newToken(t, Options{})
	if _, err := tok.GenerateKey("ca", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("ca-rsa", RSA2048, UsageSign); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("transport", RSA2048, UsageDecrypt); err != nil {
		t.Fatal(err)
	}
	pin, err := os.ReadFile(st.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool, "--module", st.Module, "--token-label", st.Label,
		"--login", "--pin", strings.TrimSpace(string(pin)), "--list-objects")
	cmd.Env = append(os.Environ(), in.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v: %s", err, out)
	}
	objs := parseObjects(string(out))
	for _, tc := range []struct {
		kind, label string
		usage       []string // exact set of usages
		access      []string // required access flags
	}{
		{"Private Key", "ca", []string{"sign"}, []string{"sensitive", "never extractable"}},
		{"Private Key", "ca-rsa", []string{"sign"}, []string{"sensitive", "never extractable"}},
		{"Private Key", "transport", []string{"decrypt"}, []string{"sensitive", "never extractable"}},
		{"Public Key", "ca", []string{"verify"}, nil},
		{"Public Key", "ca-rsa", []string{"verify"}, nil},
		{"Public Key", "transport", []string{"encrypt"}, nil},
	} {
		o, ok := objs[tc.kind+"/"+tc.label]
		if !ok {
			t.Errorf("%s %q not listed by pkcs11-tool:\n%s", tc.kind, tc.label, out)
			continue
		}
		if got := strings.Join(o["Usage"], ","); got != strings.Join(tc.usage, ",") {
			t.Errorf("%s %q usage = %q, want %q", tc.kind, tc.label, got, tc.usage)
		}
		access := strings.Join(o["Access"], ",")
		for _, a := range tc.access {
			if !containsItem(o["Access"], a) {
				t.Errorf("%s %q access %q lacks %q", tc.kind, tc.label, access, a)
			}
		}
		if containsItem(o["Access"], "extractable") {
			t.Errorf("%s %q is extractable", tc.kind, tc.label)
		}
	}
}

// parseObjects turns pkcs11-tool --list-objects output into kind/label -> field -> items.
func parseObjects(out string) map[string]map[string][]string {
	objs := map[string]map[string][]string{}
	var kind string
	var cur map[string][]string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, " ") && strings.Contains(line, " Object;") {
			kind, _, _ = strings.Cut(line, " Object;")
			cur = map[string][]string{}
			continue
		}
		if cur == nil {
			continue
		}
		field, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		if field == "label" {
			objs[kind+"/"+value] = cur
			continue
		}
		for _, item := range strings.Split(value, ",") {
			if item = strings.TrimSpace(item); item != "" {
				cur[field] = append(cur[field], item)
			}
		}
	}
	return objs
}

func containsItem(items []string, s string) bool {
	for _, i := range items {
		if i == s {
			return true
		}
	}
	return false
}

func TestPoolExhausted(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, _, tok := newToken(t, Options{MaxSessions: 1, PoolWaitTimeout: 20 * time.Millisecond, Registerer: reg})
	if _, err := tok.GenerateKey("k", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("k")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(nil)
	// Hold the only session slot, as a long operation would.
	tok.sem <- struct{}{}
	_, err = s.Sign(nil, digest[:], crypto.SHA256)
	<-tok.sem
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Sign with every session busy = %v, want ErrPoolExhausted", err)
	}
	if got := counter(t, reg, "sign", "pool_exhausted"); got != 1 {
		t.Errorf("sign pool_exhausted = %v, want 1", got)
	}
	// Ping takes no pool session.
	tok.sem <- struct{}{}
	if err := tok.Ping(); err != nil {
		t.Errorf("Ping with every session busy: %v", err)
	}
	<-tok.sem
	// Many concurrent signers on one session: every call either succeeds or fails fast
	// with ErrPoolExhausted, none hangs or fails otherwise.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 8 {
				if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrPoolExhausted) {
			t.Errorf("concurrent Sign: %v", err)
		}
	}
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Errorf("Sign after the rush: %v", err)
	}
}

// TestOpenCloseOrder opens two tokens on one module (crypto11 shares the module, each
// Token has its own raw miekg session), closes them in turn, and checks that the
// survivor keeps working, that Close is idempotent and that the module can be loaded
// again after the last Close finalised it.
func TestOpenCloseOrder(t *testing.T) {
	_, toks := softhsmtest.Tokens(t, "order-a", "order-b")
	a, err := Open(toks[0].URI(""), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(toks[1].URI(""), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.GenerateKey("k", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	// A wrong PIN on the module while b is open must not disturb b (crypto11 issue 113).
	bad := filepath.Join(t.TempDir(), "bad.pin")
	os.WriteFile(bad, []byte("nope\n"), 0o600)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	u, _ := ParseURI(toks[0].URI(""))
	u.PINSource = "file:" + bad
	if _, err := Open(u.String(), Options{}); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("Open(wrong PIN) = %v", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := a.Ping(); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after Close = %v, want ErrClosed", err)
	}
	if _, err := a.Signer("k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Signer after Close = %v, want ErrClosed", err)
	}
	s, err := b.Signer("k")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(nil)
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign on b after a closed: %v", err)
	}
	if err := b.Ping(); err != nil {
		t.Fatalf("Ping b: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Errorf("Sign after Close = %v, want ErrClosed", err)
	}
	// The last Close finalised the module; it loads again.
	b, err = Open(toks[1].URI(""), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if s, err = b.Signer("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		wantErr error
	}{
		{"pin incorrect", pkcs11.Error(pkcs11.CKR_PIN_INCORRECT), ErrPINIncorrect},
		{"device removed", pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED), ErrTokenGone},
		{"token not present", pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT), ErrTokenGone},
		{"session handle invalid", pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID), ErrTokenGone},
		{"not initialized", pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED), ErrTokenGone},
		{"wrapped", errors.Join(errors.New("x"), pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)), ErrTokenGone},
		{"mechanism", pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID), ErrMechanism},
		{"bad data", pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID), ErrDecrypt},
		// Codes that are no verdict on the request: the token failed (they passed through
		// unclassified and reached HTTP clients as a bare 500).
		{"function failed", pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED), ErrTokenFault},
		{"general error", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR), ErrTokenFault},
		{"device memory", pkcs11.Error(pkcs11.CKR_DEVICE_MEMORY), ErrTokenFault},
		{"host memory", pkcs11.Error(pkcs11.CKR_HOST_MEMORY), ErrTokenFault},
		{"operation active", pkcs11.Error(pkcs11.CKR_OPERATION_ACTIVE), ErrTokenFault},
		{"a code no header names", pkcs11.Error(0x8000_1234), ErrTokenFault},
		{"function failed under crypto11's words", fmt.Errorf("failed to sign: %w", pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)), ErrTokenFault},
		{"crypto11 pool timeout", errors.New("resource pool timed out"), ErrPoolExhausted},
		{"crypto11 closed", errors.New("context is closed"), ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err); !errors.Is(got, tt.wantErr) {
				t.Errorf("classify(%v) = %v, want %v", tt.err, got, tt.wantErr)
			}
		})
	}
	if got := classify(errors.New("other")); got.Error() != "other" {
		t.Errorf("unknown error changed: %v", got)
	}
	// A verdict on the request or the PIN is never taken for a fault of the token, and a
	// fault of the token never for a verdict.
	for _, rv := range []pkcs11.Error{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_DEVICE_ERROR} {
		if got := classify(rv); errors.Is(got, ErrTokenFault) {
			t.Errorf("classify(%v) = %v, also ErrTokenFault", rv, got)
		}
	}
	got := classify(pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED))
	for _, s := range []error{ErrPINIncorrect, ErrMechanism, ErrDecrypt, ErrTokenGone} {
		if errors.Is(got, s) {
			t.Errorf("classify(CKR_FUNCTION_FAILED) = %v, also %v", got, s)
		}
	}
	if !errors.Is(got, pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)) {
		t.Errorf("classify(CKR_FUNCTION_FAILED) = %v, lost the return value", got)
	}
	if r := result(got); r != "token_fault" {
		t.Errorf("result label of a token fault = %q, want token_fault", r)
	}
}

// TestGeneralVerdict: a CKR_GENERAL_ERROR answered to a decryption is the ciphertext's fault
// (ErrDecrypt) only while the key still decrypts a probe; otherwise the token's (ErrTokenFault),
// never ErrDecrypt, which a caller would pass on as the client's fault.
func TestGeneralVerdict(t *testing.T) {
	general := pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	for _, tt := range []struct {
		name    string
		probe   error
		want    []error
		notWant []error
	}{
		{"the key decrypts a probe", nil, []error{ErrDecrypt, general}, []error{ErrTokenFault}},
		{"the probe fails too", classify(pkcs11.Error(pkcs11.CKR_FUNCTION_FAILED)), []error{ErrTokenFault, general}, []error{ErrDecrypt}},
		{"the probe's own general error", fmt.Errorf("%w: %w", ErrDecrypt, general), []error{ErrTokenFault}, []error{ErrDecrypt}},
		{"the token went away", fmt.Errorf("%w: not answering", ErrTokenGone), []error{ErrTokenFault, ErrTokenGone}, []error{ErrDecrypt}},
		{"the probe's plaintext differs", errors.New("the decrypted probe differs from what was encrypted"), []error{ErrTokenFault}, []error{ErrDecrypt}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := generalVerdict(general, func() error { return tt.probe })
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("generalVerdict = %v, want %v in the chain", err, w)
				}
			}
			for _, w := range tt.notWant {
				if errors.Is(err, w) {
					t.Errorf("generalVerdict = %v, must not be %v", err, w)
				}
			}
		})
	}
}
