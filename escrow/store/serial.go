package store

import (
	"fmt"
	"math/big"
	"strings"
)

// maxSerialDigits bounds a serial's hex digits: 64 digits (32 octets) is more
// than RFC 5280's 20 octets, to keep certificates migrated from sloppy CAs.
const maxSerialDigits = 64

// NormalizeSerial returns the canonical form of a certificate serial number:
// lower-case hex of the big-endian magnitude, without leading zeros ("0" for
// zero). It accepts upper or lower case, leading zeros, an optional "0x"
// prefix and colon separators ("00:3A:FF" gives "3aff"). An empty or
// malformed serial gives [ErrInvalid].
func NormalizeSerial(s string) (string, error) {
	t := strings.TrimSpace(s)
	if len(t) >= 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X') {
		t = t[2:]
	}
	var b strings.Builder
	b.Grow(len(t))
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c == ':':
			continue
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			c += 'a' - 'A'
		default:
			return "", fmt.Errorf("store: serial %q is not hexadecimal: %w", s, ErrInvalid)
		}
		if c == '0' && b.Len() == 0 {
			continue // leading zero
		}
		b.WriteByte(c)
	}
	if !strings.ContainsAny(t, "0123456789abcdefABCDEF") {
		return "", fmt.Errorf("store: empty serial: %w", ErrInvalid)
	}
	if b.Len() > maxSerialDigits {
		return "", fmt.Errorf("store: serial longer than %d hex digits: %w", maxSerialDigits, ErrInvalid)
	}
	if b.Len() == 0 {
		return "0", nil
	}
	return b.String(), nil
}

// FormatSerial returns the canonical form of n (see [NormalizeSerial]); a
// negative n gives its magnitude, nil gives "".
func FormatSerial(n *big.Int) string {
	if n == nil {
		return ""
	}
	return new(big.Int).Abs(n).Text(16)
}
