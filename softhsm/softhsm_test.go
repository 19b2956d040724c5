package softhsm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestProvisionIdempotent(t *testing.T) {
	if _, err := ModulePath(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("SoftHSM is required in CI (make test installs it)")
		}
		t.Skip("SoftHSM not installed")
	}
	dir := t.TempDir()
	a, err := Provision(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Provision(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.ConfPath != b.ConfPath || a.TokenDir != b.TokenDir || a.PINDir != b.PINDir {
		t.Fatalf("second Provision differs: %+v vs %+v", a, b)
	}
	conf, err := os.ReadFile(a.ConfPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"directories.tokendir = " + a.TokenDir + "\n",
		"objectstore.backend = file\n",
		"log.level = ERROR\n",
		"slots.removable = false\n",
	} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("config lacks %q", want)
		}
	}
	for _, d := range []string{a.TokenDir, a.PINDir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", d, fi.Mode().Perm())
		}
	}
	if got := a.Env(); len(got) != 1 || got[0] != "SOFTHSM2_CONF="+a.ConfPath {
		t.Errorf("Env() = %q", got)
	}
}

func TestTokenLifecycle(t *testing.T) {
	in, toks := ForTest(t, "lifecycle")
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
	if _, err := in.InitToken(tok.Label); !errors.Is(err, ErrTokenExists) {
		t.Errorf("InitToken(existing) = %v, want ErrTokenExists", err)
	}
	got, err := in.Token(tok.Label)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *tok {
		t.Errorf("Token() = %+v, want %+v", got, tok)
	}
	if _, err := in.Token("no-such-token"); !errors.Is(err, ErrTokenNotFound) {
		t.Errorf("Token(missing) = %v, want ErrTokenNotFound", err)
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
	if err := in.DeleteToken(extra.Label); !errors.Is(err, ErrTokenNotFound) {
		t.Errorf("DeleteToken(deleted) = %v, want ErrTokenNotFound", err)
	}
}

func TestInitTokenLabel(t *testing.T) {
	in, _ := ForTest(t)
	tests := []struct {
		name    string
		label   string
		wantErr error
	}{
		{"empty", "", ErrInvalidLabel},
		{"too long", strings.Repeat("a", 33), ErrInvalidLabel},
		{"slash", "a/b", ErrInvalidLabel},
		{"dotdot", "..", ErrInvalidLabel},
		{"space", "a b", ErrInvalidLabel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := in.InitToken(tt.label); !errors.Is(err, tt.wantErr) {
				t.Errorf("InitToken(%q) = %v, want %v", tt.label, err, tt.wantErr)
			}
		})
	}
}

func TestURI(t *testing.T) {
	tests := []struct {
		name   string
		tok    Token
		object string
		want   string
	}{
		{
			name:   "plain",
			tok:    Token{Label: "keyarc", PINFile: "/run/keyarc/pin", Module: "/usr/lib/softhsm/libsofthsm2.so"},
			object: "ca-key",
			want:   "pkcs11:token=keyarc;object=ca-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/keyarc/pin",
		},
		{
			name:   "escaped",
			tok:    Token{Label: "a b;c", PINFile: "/tmp/p&q=r.pin", Module: "/m?x.so"},
			object: "k%y/z",
			want:   "pkcs11:token=a%20b%3Bc;object=k%25y%2Fz?module-path=/m%3Fx.so&pin-source=file:/tmp/p%26q%3Dr.pin",
		},
		{
			name: "no object",
			tok:  Token{Label: "t", PINFile: "/p", Module: "/m"},
			want: "pkcs11:token=t?module-path=/m&pin-source=file:/p",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.tok.URI(tt.object); got != tt.want {
				t.Errorf("URI() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseLabels(t *testing.T) {
	out := `Available slots:
Slot 5
    Slot info:
        Token present:    yes
    Token info:
        Initialized:      yes
        Label:            alpha                           
Slot 1
    Slot info:
    Token info:
        Initialized:      no
        Label:                                            
`
	got := parseLabels([]byte(out))
	if len(got) != 1 || !got["alpha"] {
		t.Errorf("parseLabels = %v", got)
	}
}
