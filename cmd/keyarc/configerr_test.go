package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigUnknownField: a misspelt field is reported with its line, its path and the nearest
// valid name at its place, without Go's type names.
func TestConfigUnknownField(t *testing.T) {
	for _, tc := range []struct {
		name    string
		yaml    string
		want    *ConfigFieldError
		wantErr error
	}{
		{"nested typo", "listen: 127.0.0.1:1\nenrollment:\n  code_tll: 24h\n",
			&ConfigFieldError{Line: 3, Field: "enrollment.code_tll", Suggestion: "code_ttl"}, nil},
		{"top-level typo", "lisen: 127.0.0.1:1\n",
			&ConfigFieldError{Line: 1, Field: "lisen", Suggestion: "listen"}, nil},
		{"transposition", "token:\n  uri: pkcs11:token=x\n  ca_kye: k\n",
			&ConfigFieldError{Line: 3, Field: "token.ca_kye", Suggestion: "ca_key"}, nil},
		{"template field", "templates:\n  - name: x\n    arhcive: true\n",
			&ConfigFieldError{Line: 3, Field: "templates.arhcive", Suggestion: "archive"}, nil},
		{"nothing close", "enrollment:\n  colour: blue\n",
			&ConfigFieldError{Line: 2, Field: "enrollment.colour"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, configName), []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadConfig(dir)
			var fe *ConfigFieldError
			if !errors.As(err, &fe) {
				t.Fatalf("loadConfig: %v, want a ConfigFieldError", err)
			}
			if fe.File != filepath.Join(dir, configName) || fe.Line != tc.want.Line || fe.Field != tc.want.Field || fe.Suggestion != tc.want.Suggestion {
				t.Errorf("got %+v, want %+v", fe, tc.want)
			}
			if tc.want.Suggestion == "" && len(fe.Valid) == 0 {
				t.Errorf("no suggestion and no list of valid names: %v", err)
			}
			if strings.Contains(err.Error(), "main.") || strings.Contains(err.Error(), "struct {") {
				t.Errorf("error shows Go internals: %v", err)
			}
		})
	}
}
