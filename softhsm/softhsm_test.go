package softhsm

import (
	"os"
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
