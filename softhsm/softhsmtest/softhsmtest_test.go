package softhsmtest_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/softhsm"
	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// These tests exercise softhsm's token lifecycle through the test helper.

func TestTokenLifecycle(t *testing.T) {
	in, toks := softhsmtest.Tokens(t, "lifecycle")
	tok := toks[0]
	for _, f := range []string{tok.PINFile, tok.SOPINFile} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if p := strings.TrimSpace(string(b)); len(p) != 16 {
			t.Errorf("PIN file %s holds %d characters, want 16", filepath.Base(f), len(p))
		}
	}
	if len(tok.Label) > 32 || !strings.HasPrefix(tok.Label, "lifecycle-") {
		t.Errorf("label %q", tok.Label)
	}
	if _, err := in.InitToken(tok.Label); !errors.Is(err, softhsm.ErrTokenExists) {
		t.Errorf("InitToken(existing) = %v, want softhsm.ErrTokenExists", err)
	}
	got, err := in.Token(tok.Label)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *tok {
		t.Errorf("Token() = %+v, want %+v", got, tok)
	}
	if _, err := in.Token("no-such-token"); !errors.Is(err, softhsm.ErrTokenNotFound) {
		t.Errorf("Token(missing) = %v, want softhsm.ErrTokenNotFound", err)
	}

	// The PIN in the file logs in (checked from outside with pkcs11-tool).
	if tool, err := exec.LookPath("pkcs11-tool"); err == nil {
		pin, _ := os.ReadFile(tok.PINFile)
		cmd := exec.Command(tool, "--module", tok.Module, "--token-label", tok.Label,
			"--login", "--pin", strings.TrimSpace(string(pin)), "--list-objects")
		cmd.Env = append(os.Environ(), in.Env()...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("pkcs11-tool login: %v: %s", err, out)
		}
	}

	// A second, directly made token is deleted with its PIN files.
	extra, err := in.InitToken(tok.Label[:len(tok.Label)-1] + "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := in.DeleteToken(extra.Label); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(extra.PINFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PIN file left behind: %v", err)
	}
	if err := in.DeleteToken(extra.Label); !errors.Is(err, softhsm.ErrTokenNotFound) {
		t.Errorf("DeleteToken(deleted) = %v, want softhsm.ErrTokenNotFound", err)
	}
}

func TestInitTokenLabel(t *testing.T) {
	in, _ := softhsmtest.Tokens(t)
	tests := []struct {
		name    string
		label   string
		wantErr error
	}{
		{"empty", "", softhsm.ErrInvalidLabel},
		{"too long", strings.Repeat("a", 33), softhsm.ErrInvalidLabel},
		{"slash", "a/b", softhsm.ErrInvalidLabel},
		{"dotdot", "..", softhsm.ErrInvalidLabel},
		{"space", "a b", softhsm.ErrInvalidLabel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := in.InitToken(tt.label); !errors.Is(err, tt.wantErr) {
				t.Errorf("InitToken(%q) = %v, want %v", tt.label, err, tt.wantErr)
			}
		})
	}
}
