package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigRecoveryDurations: the recovery section's durations are refused outside their
// bounds, with an error naming the field and the bounds; a drill window or certificate
// margin of years would make the quorum health say nothing.
func TestConfigRecoveryDurations(t *testing.T) {
	tests := []struct {
		field, value string
		want         string // part of the error; "" means the file loads
	}{
		{"drill_window", "2160h", ""},
		{"drill_window", "1h", ""},
		{"drill_window", "17520h", ""},
		{"drill_window", "30m", "recovery.drill_window must be between 1h and 17520h"},
		{"drill_window", "876000h", "recovery.drill_window must be between 1h and 17520h"},
		{"cert_margin", "0s", ""},
		{"cert_margin", "8760h", ""},
		{"cert_margin", "-1h", "recovery.cert_margin must be between 0s and 8760h"},
		{"cert_margin", "87600h", "recovery.cert_margin must be between 0s and 8760h"},
		{"drill_ttl", "720h", ""},
		{"drill_ttl", "721h", "recovery.drill_ttl must be between 1m and 720h"},
		{"request_ttl", "30s", "recovery.request_ttl must be between 1m and 720h"},
	}
	for _, tt := range tests {
		t.Run(tt.field+"="+tt.value, func(t *testing.T) {
			dir := t.TempDir()
			yaml := minimal + "recovery:\n  " + tt.field + ": " + tt.value + "\n"
			wantLoad(t, dir, yaml, tt.want)
		})
	}
}

// TestConfigTokenAndCodeBounds: the token's waits and an enrollment code's validity have an
// upper bound as well as a lower one; a value past it is refused at load, naming the field.
func TestConfigTokenAndCodeBounds(t *testing.T) {
	tests := []struct {
		section, field, value string
		want                  string // part of the error; "" means the file loads
	}{
		{"enrollment", "code_ttl", "2160h", ""},
		{"enrollment", "code_ttl", "2161h", "enrollment.code_ttl must be between 1m and 2160h"},
		{"enrollment", "code_ttl", "1000000h", "enrollment.code_ttl must be between 1m and 2160h"},
		{"enrollment", "code_ttl", "30s", "enrollment.code_ttl must be between 1m and 2160h"},
		{"token", "pool_wait_timeout", "5m", ""},
		{"token", "pool_wait_timeout", "1h", "token.pool_wait_timeout must be positive and at most 5m"},
		{"token", "call_timeout", "10m", ""},
		{"token", "call_timeout", "24h", "token.call_timeout must be between 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.field+"="+tt.value, func(t *testing.T) {
			dir := t.TempDir()
			yaml := minimal + tt.section + ":\n  " + tt.field + ": " + tt.value + "\n"
			if tt.section == "token" { // the minimal file has a token section already
				yaml = minimal + "  " + tt.field + ": " + tt.value + "\n"
			}
			wantLoad(t, dir, yaml, tt.want)
		})
	}
}

// wantLoad writes yaml as the configuration in dir and loads it: want is part of the error
// expected, or "" for a file that loads.
func wantLoad(t *testing.T, dir, yaml, want string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, Name), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir)
	switch {
	case want == "" && err != nil:
		t.Fatalf("Load: %v, want it to load", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Fatalf("Load: %v, want an error containing %q", err, want)
	}
}
