package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const minimal = "token:\n  uri: pkcs11:token=x?module-path=/m.so&pin-source=file:/p\n"

// TestConfigPublicURL: public_url and ca.policy_oid are checked where they are written; an
// error names the file, the line and the field. A file without them gets the defaults.
func TestConfigPublicURL(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		// want are the parts the error must contain; none means the file loads.
		want    []string
		wantURL string
	}{
		{name: "default", yaml: minimal, wantURL: "http://127.0.0.1:8080"},
		{name: "public name", yaml: minimal + "public_url: http://pki.example.org/keyarc\n", wantURL: "http://pki.example.org/keyarc"},
		{name: "policy oid", yaml: minimal + "ca:\n  policy_oid: 1.3.6.1.4.1.32473.1\n", wantURL: "http://127.0.0.1:8080"},
		{name: "https", yaml: minimal + "public_url: https://pki.example.org\n", want: []string{"line 3", "public_url", "http://"}},
		{name: "query", yaml: minimal + "public_url: http://pki.example.org/?a=b\n", want: []string{"line 3", "public_url", "query"}},
		{name: "fragment", yaml: minimal + "public_url: http://pki.example.org/#x\n", want: []string{"line 3", "public_url", "fragment"}},
		{name: "internal name", yaml: minimal + "public_url: http://pki.corp\n", want: []string{"line 3", "public_url", "internal name"}},
		{name: "not an oid", yaml: minimal + "ca:\n  policy_oid: my-policy\n", want: []string{"line 4", "ca.policy_oid", "object identifier"}},
		{name: "reserved oid", yaml: minimal + "ca:\n  policy_oid: 2.23.140.1.5.1.3\n", want: []string{"line 4", "ca.policy_oid", "reserved"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if string(c.PublicURL) != tt.wantURL {
					t.Errorf("public_url %q, want %q", c.PublicURL, tt.wantURL)
				}
				if _, err := c.CAOptions(); err != nil {
					t.Errorf("CAOptions: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Load accepted the file")
			}
			for _, w := range append(tt.want, filepath.Join(dir, Name)) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestValidatePublicURL: a configuration made in code (keyarc init --public-url) is checked
// by Validate, which names the field.
func TestValidatePublicURL(t *testing.T) {
	c := Default()
	c.Token.URI = "pkcs11:token=x"
	c.PublicURL = "ftp://pki.example.org"
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "public_url: ") {
		t.Errorf("Validate() = %v, want an error naming public_url", err)
	}
}

// TestConfigPublicListen: public_listen is a plain-HTTP host:port; a URL (an https:// one
// with the reason), port 443 and an address shared with another listener are refused with the
// field named. Unset, it is the address of the default public_url.
func TestConfigPublicListen(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    []string // parts of the error; none means the file loads
		wantLn  string
		implied bool
	}{
		{name: "default", yaml: minimal, wantLn: "127.0.0.1:8080", implied: true},
		{name: "set", yaml: minimal + "public_listen: 0.0.0.0:80\n", wantLn: "0.0.0.0:80"},
		{name: "ipv6", yaml: minimal + "public_listen: '[::1]:8081'\n", wantLn: "[::1]:8081"},
		{name: "https url", yaml: minimal + "public_listen: https://pki.example.org\n", want: []string{"public_listen", "plain HTTP"}},
		{name: "http url", yaml: minimal + "public_listen: http://0.0.0.0:80\n", want: []string{"public_listen", "host:port"}},
		{name: "port 443", yaml: minimal + "public_listen: 0.0.0.0:443\n", want: []string{"public_listen", "443", "plain HTTP"}},
		{name: "no port", yaml: minimal + "public_listen: pki.example.org\n", want: []string{"public_listen", "host:port"}},
		{name: "bad port", yaml: minimal + "public_listen: 0.0.0.0:http80\n", want: []string{"public_listen", "port"}},
		{name: "same as listen", yaml: minimal + "public_listen: 127.0.0.1:8443\n", want: []string{"public_listen", "listen"}},
		{name: "listen port not a number", yaml: minimal + "listen: 127.0.0.1:https\n", want: []string{"listen", "port"}},
		{name: "metrics port out of range", yaml: minimal + "metrics_listen: 127.0.0.1:91800\n", want: []string{"metrics_listen", "port"}},
		{name: "audit checkpoints negative", yaml: minimal + "audit:\n  checkpoint_every: -5\n", want: []string{"audit.checkpoint_every"}},
		{name: "same as metrics", yaml: minimal + "public_listen: 127.0.0.1:9180\n", want: []string{"public_listen", "metrics_listen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if c.PublicListenAddr() != tt.wantLn || c.PublicListenDefault() != tt.implied {
					t.Errorf("public listener %q (implied %v), want %q (%v)", c.PublicListenAddr(), c.PublicListenDefault(), tt.wantLn, tt.implied)
				}
				return
			}
			if err == nil {
				t.Fatal("Load accepted the file")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
