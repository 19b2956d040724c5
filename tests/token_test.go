package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tokenObjects lists the appliance token's objects with pkcs11-tool, logged in with the dev PIN.
func tokenObjects(t *testing.T, state, label string) string {
	t.Helper()
	pin, err := os.ReadFile(filepath.Join(state, "softhsm", "pins", label+".pin"))
	if err != nil {
		t.Fatal(err)
	}
	return run2(t, []string{"SOFTHSM2_CONF=" + filepath.Join(state, "softhsm", "softhsm2.conf")},
		"pkcs11-tool", "--module", softhsmModule(), "--token-label", label, "--login", "--pin", strings.TrimSpace(string(pin)), "--list-objects")
}

func run2(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runResult("", env, name, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return out
}

func softhsmModule() string {
	if m := os.Getenv("KEYARC_PKCS11_MODULE"); m != "" {
		return m
	}
	return "/usr/lib/softhsm/libsofthsm2.so"
}

// privateKeyObject returns pkcs11-tool's paragraph about the private key with the given label.
func privateKeyObject(t *testing.T, listing, label string) string {
	t.Helper()
	for _, para := range regexp.MustCompile(`\n(?:Private|Public|Certificate|Secret|Data)[^\n]*Object`).Split("\n"+listing, -1) {
		if strings.Contains(para, "label:      "+label+"\n") && strings.Contains(para, "Access:") && strings.Contains(para, "sensitive") {
			return para
		}
	}
	t.Fatalf("no private key %q in the token:\n%s", label, listing)
	return ""
}

// TestTokenKeyAttributes checks, from outside with pkcs11-tool, that init made the appliance
// keys sensitive, never extractable and single-purpose.
func TestTokenKeyAttributes(t *testing.T) {
	t.Parallel()
	requireTools(t, "pkcs11-tool")
	state := devState(t, "--ca-key", "p256")
	listing := tokenObjects(t, state, "keyarc")
	for _, k := range []struct {
		label     string
		mustHave  []string
		mustNotHv []string
	}{
		{"ca-key", []string{"sign"}, []string{"decrypt", "unwrap", "derive"}},
		{"audit-key", []string{"sign"}, []string{"decrypt", "unwrap", "derive"}},
		{"transport-key", []string{"decrypt"}, []string{"sign", "unwrap"}},
	} {
		obj := privateKeyObject(t, listing, k.label)
		usage := regexp.MustCompile(`Usage:\s*([^\n]*)`).FindStringSubmatch(obj)
		access := regexp.MustCompile(`Access:\s*([^\n]*)`).FindStringSubmatch(obj)
		if usage == nil || access == nil {
			t.Fatalf("%s: no Usage/Access lines:\n%s", k.label, obj)
		}
		if !strings.Contains(access[1], "sensitive") || !strings.Contains(access[1], "never extractable") {
			t.Errorf("%s: access %q, want sensitive and never extractable", k.label, access[1])
		}
		fields := strings.Split(usage[1], ", ")
		has := func(u string) bool {
			for _, f := range fields {
				if strings.TrimSpace(f) == u {
					return true
				}
			}
			return false
		}
		for _, u := range k.mustHave {
			if !has(u) {
				t.Errorf("%s: usage %q lacks %s", k.label, usage[1], u)
			}
		}
		for _, u := range k.mustNotHv {
			if has(u) {
				t.Errorf("%s: usage %q includes %s", k.label, usage[1], u)
			}
		}
	}

	// A second init destroys nothing and says what exists.
	out := keyarc(t, "init", "--dev", "--state", state)
	for _, want := range []string{"exists   CA signing key", "exists   " + filepath.Join(state, "ca.pem"), "exists   SoftHSM token \"keyarc\""} {
		if !strings.Contains(out, want) {
			t.Errorf("second init does not say %q:\n%s", want, out)
		}
	}
	if again := tokenObjects(t, state, "keyarc"); strings.Count(again, "Private Key Object") != strings.Count(listing, "Private Key Object") {
		t.Errorf("second init changed the token's keys:\n%s", again)
	}
}

// serveFails starts `keyarc serve` and expects it to exit at once with an error naming want.
func serveFails(t *testing.T, state string, want ...string) {
	t.Helper()
	cmd := exec.Command(keyarcBin, "serve", "--state", state, "--addr", freePort(t), "--metrics-addr", freePort(t))
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("serve did not refuse to start; output:\n%s", out)
	}
	if err == nil {
		t.Fatalf("serve exited 0; output:\n%s", out)
	}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("serve's refusal does not mention %q:\n%s", w, out)
		}
	}
}

// TestServeRefusesToStart: a wrong PIN, a missing token and a CA certificate that is not the
// pair of the token's key each stop the appliance at once with a message naming the cause.
func TestServeRefusesToStart(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	pinFile := filepath.Join(state, "softhsm", "pins", "keyarc.pin")
	goodPIN, err := os.ReadFile(pinFile)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(state, "keyarc.yaml")
	goodCfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong PIN", func(t *testing.T) {
		writeFile(t, pinFile, []byte("0000000000000000\n"))
		defer writeFile(t, pinFile, goodPIN)
		serveFails(t, state, "PIN")
	})
	t.Run("missing token", func(t *testing.T) {
		writeFile(t, cfgPath, []byte(strings.Replace(string(goodCfg), "pkcs11:token=keyarc", "pkcs11:token=nosuchtoken", 1)))
		defer writeFile(t, cfgPath, goodCfg)
		serveFails(t, state, "token", "nosuchtoken")
	})
	t.Run("CA certificate of another key", func(t *testing.T) {
		caPath := filepath.Join(state, "ca.pem")
		good, err := os.ReadFile(caPath)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		run(t, dir, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
			"-keyout", filepath.Join(dir, "k.pem"), "-subj", "/CN=impostor", "-days", "30", "-out", filepath.Join(dir, "c.pem"))
		other, _ := os.ReadFile(filepath.Join(dir, "c.pem"))
		writeFile(t, caPath, other)
		defer writeFile(t, caPath, good)
		serveFails(t, state, "CA key", "ca.pem")
	})
	t.Run("TLS key any user may read", func(t *testing.T) {
		key := filepath.Join(state, "tls-key.pem")
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(key, 0o600)
		serveFails(t, state, key, "chmod 600")
	})
	// With everything restored the appliance starts: the refusals above were for their causes.
	serve(t, state)
}
