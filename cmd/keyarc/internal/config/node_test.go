package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigNode: node is optional (the host name then), and when set it is short printable
// ASCII without spaces; a bad one is refused at load with an error naming the field.
func TestConfigNode(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no host name: %v", err)
	}
	tests := []struct {
		name    string
		yaml    string
		want    string
		wantErr error
	}{
		{name: "default is the host name", yaml: minimal, want: host},
		{name: "set", yaml: minimal + "node: node-2.example\n", want: "node-2.example"},
		{name: "space", yaml: minimal + "node: \"node 2\"\n", wantErr: ErrNodeName},
		{name: "tab", yaml: minimal + "node: \"a\\tb\"\n", wantErr: ErrNodeName},
		{name: "not ascii", yaml: minimal + "node: nœud\n", wantErr: ErrNodeName},
		{name: "too long", yaml: minimal + "node: " + strings.Repeat("n", MaxNodeLen+1) + "\n", wantErr: ErrNodeName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load: %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "node") {
					t.Errorf("Load: %v does not name the field node", err)
				}
				return
			}
			got, err := c.NodeName()
			if err != nil || got != tt.want {
				t.Errorf("NodeName() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestCheckNodeName covers the limits of a node name.
func TestCheckNodeName(t *testing.T) {
	for _, tt := range []struct {
		name    string
		wantErr error
	}{
		{"a", nil},
		{strings.Repeat("x", MaxNodeLen), nil},
		{"node_1:8443", nil},
		{"", ErrNodeName},
		{"a b", ErrNodeName},
		{"a\x7fb", ErrNodeName},
		{"é", ErrNodeName},
	} {
		if err := CheckNodeName(tt.name); !errors.Is(err, tt.wantErr) {
			t.Errorf("CheckNodeName(%q) = %v, want %v", tt.name, err, tt.wantErr)
		}
	}
}
