package config

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
		want    *FieldError
		wantErr error
	}{
		{"nested typo", "listen: 127.0.0.1:1\nenrollment:\n  code_tll: 24h\n",
			&FieldError{Line: 3, Field: "enrollment.code_tll", Suggestion: "code_ttl"}, nil},
		{"top-level typo", "lisen: 127.0.0.1:1\n",
			&FieldError{Line: 1, Field: "lisen", Suggestion: "listen"}, nil},
		{"transposition", "token:\n  uri: pkcs11:token=x\n  ca_kye: k\n",
			&FieldError{Line: 3, Field: "token.ca_kye", Suggestion: "ca_key"}, nil},
		{"template field", "templates:\n  - name: x\n    arhcive: true\n",
			&FieldError{Line: 3, Field: "templates.arhcive", Suggestion: "archive"}, nil},
		{"nothing close", "enrollment:\n  colour: blue\n",
			&FieldError{Line: 2, Field: "enrollment.colour"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(dir)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("loadConfig: %v, want a FieldError", err)
			}
			if fe.File != filepath.Join(dir, Name) || fe.Line != tc.want.Line || fe.Field != tc.want.Field || fe.Suggestion != tc.want.Suggestion {
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

// TestConfigTypeMismatch: a value of the wrong type is reported with its line, the field's path
// and the expected type in words, never with the decoder's Go type names.
func TestConfigTypeMismatch(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"int field", "http:\n  login_failures_per_source: eight\n",
			[]string{"line 2", "http.login_failures_per_source", "whole number", "eight"}},
		{"list field", "templates:\n  - name: x\n    key_usage: digitalSignature\n",
			[]string{"line 3", "templates.key_usage", "a list"}},
		{"bool field", "templates:\n  - name: x\n    archive: maybe\n",
			[]string{"line 3", "templates.archive", "true or false"}},
		{"duration field", "http:\n  login_failure_window: soon\n",
			[]string{"line 2", "http.login_failure_window", "not a duration"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(dir)
			if err == nil {
				t.Fatal("Load accepted a value of the wrong type")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, goName := range []string{"!!str", "into int", "into []string", "into bool", "unmarshal"} {
				if strings.Contains(err.Error(), goName) {
					t.Errorf("error %q shows the decoder's %q", err, goName)
				}
			}
		})
	}
}
