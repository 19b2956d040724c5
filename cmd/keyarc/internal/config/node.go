package config

import (
	"errors"
	"fmt"
	"os"
)

// MaxNodeLen is the longest node name: it is written in log lines, audit entries and lease
// rows, so it stays short.
const MaxNodeLen = 63

// ErrNodeName is returned (wrapped) for a node name that is empty, too long, or holds a space
// or a character that is not printable ASCII.
var ErrNodeName = errors.New("config: invalid node name")

// CheckNodeName reports whether name may name a node: 1 to [MaxNodeLen] printable ASCII
// characters, no space. The error wraps [ErrNodeName] and says which rule the name breaks.
func CheckNodeName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrNodeName)
	}
	if len(name) > MaxNodeLen {
		return fmt.Errorf("%w: %d characters, at most %d", ErrNodeName, len(name), MaxNodeLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: character %d is %q; use printable ASCII without spaces (a host name, say)", ErrNodeName, i+1, c)
		}
	}
	return nil
}

// NodeName is the name of this node: the node field (or `serve --node`) when set, else the
// host name. Several nodes sharing one PostgreSQL database must have different names: the
// name holds leases and is written into the audit entries the node makes.
func (c *Config) NodeName() (string, error) {
	if c.Node != "" {
		return c.Node, CheckNodeName(c.Node)
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node: not set, and the host name is unknown (%w); set node in %s or pass --node", err, Name)
	}
	if err := CheckNodeName(h); err != nil {
		return "", fmt.Errorf("node: not set, and the host name %q cannot name a node (%w); set node in %s or pass --node", h, err, Name)
	}
	return h, nil
}
