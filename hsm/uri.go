package hsm

import (
	"fmt"
	"net/url"
	"os"
	"strings"
)

// URI is a parsed RFC 7512 PKCS#11 URI naming a token (by label) and optionally a key
// (by label and/or ID), with the module to load and where to read the user PIN.
//
// The PIN itself is never part of a URI: pin-value is refused, pin-source must be
// "file:PATH" (the file's content, without its trailing newline) or "env:NAME".
type URI struct {
	Token  string // path attribute token: the token label
	Object string // path attribute object: the key label
	ID     []byte // path attribute id: the CKA_ID, percent-decoded bytes

	ModulePath string // query attribute module-path
	PINSource  string // query attribute pin-source: "file:PATH" or "env:NAME"

	// Parsed for completeness; Open selects the token by label only.
	Manufacturer string // path attribute manufacturer
	Serial       string // path attribute serial
	SlotID       string // path attribute slot-id (decimal)
}

// ParseURI parses an RFC 7512 PKCS#11 URI. It accepts the path attributes token,
// object, id, manufacturer, serial, slot-id and type, and the query attributes
// module-path and pin-source. Unknown or repeated attributes, pin-value and malformed
// pin-source values are refused with an error wrapping [ErrInvalidURI].
func ParseURI(s string) (*URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return nil, fmt.Errorf("%w: scheme must be pkcs11:", ErrInvalidURI)
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			name, value, err := splitAttr(attr, seen)
			if err != nil {
				return nil, err
			}
			switch name {
			case "token":
				u.Token = value
			case "object":
				u.Object = value
			case "id":
				u.ID = []byte(value)
			case "manufacturer":
				u.Manufacturer = value
			case "serial":
				u.Serial = value
			case "slot-id":
				if value == "" || strings.Trim(value, "0123456789") != "" {
					return nil, fmt.Errorf("%w: slot-id must be a decimal number", ErrInvalidURI)
				}
				u.SlotID = value
			case "type":
				switch value {
				case "private", "public", "cert", "secret-key", "data":
				default:
					return nil, fmt.Errorf("%w: unknown type %q", ErrInvalidURI, value)
				}
			default:
				return nil, fmt.Errorf("%w: unsupported path attribute %q", ErrInvalidURI, name)
			}
		}
	}
	if query != "" {
		for _, attr := range strings.Split(query, "&") {
			name, value, err := splitAttr(attr, seen)
			if err != nil {
				return nil, err
			}
			switch name {
			case "module-path":
				u.ModulePath = value
			case "pin-source":
				if err := checkPINSource(value); err != nil {
					return nil, err
				}
				u.PINSource = value
			case "pin-value":
				// Never echo the value: it is a PIN.
				return nil, fmt.Errorf("%w: pin-value is refused; put the PIN in a file or the environment and use pin-source", ErrInvalidURI)
			default:
				return nil, fmt.Errorf("%w: unsupported query attribute %q", ErrInvalidURI, name)
			}
		}
	}
	return u, nil
}

// splitAttr splits name=value, percent-decodes the value and refuses repeats.
func splitAttr(attr string, seen map[string]bool) (string, string, error) {
	name, raw, ok := strings.Cut(attr, "=")
	if !ok || name == "" {
		return "", "", fmt.Errorf("%w: attribute %q lacks a name or '='", ErrInvalidURI, name)
	}
	if seen[name] {
		return "", "", fmt.Errorf("%w: attribute %q repeated", ErrInvalidURI, name)
	}
	seen[name] = true
	if name == "pin-value" {
		return name, "", nil
	}
	value, err := url.PathUnescape(raw)
	if err != nil {
		return "", "", fmt.Errorf("%w: attribute %q: bad percent-encoding", ErrInvalidURI, name)
	}
	return name, value, nil
}

func checkPINSource(v string) error {
	if p, ok := strings.CutPrefix(v, "file:"); ok {
		if p == "" {
			return fmt.Errorf("%w: pin-source file: needs a path", ErrInvalidURI)
		}
		return nil
	}
	if name, ok := strings.CutPrefix(v, "env:"); ok {
		if !validEnvName(name) {
			return fmt.Errorf("%w: pin-source env: needs a variable name", ErrInvalidURI)
		}
		return nil
	}
	return fmt.Errorf("%w: pin-source must be file:PATH or env:NAME", ErrInvalidURI)
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// String returns the URI in RFC 7512 form, percent-encoding every byte outside the
// unreserved set (and "/" in query values). It holds no secret: only the PIN's source.
func (u *URI) String() string {
	var path []string
	add := func(name, value string) {
		if value != "" {
			path = append(path, name+"="+escape(value, false))
		}
	}
	add("token", u.Token)
	add("manufacturer", u.Manufacturer)
	add("serial", u.Serial)
	add("slot-id", u.SlotID)
	add("object", u.Object)
	if len(u.ID) > 0 {
		var b strings.Builder
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		path = append(path, "id="+b.String())
	}
	var query []string
	if u.ModulePath != "" {
		query = append(query, "module-path="+escape(u.ModulePath, true))
	}
	if u.PINSource != "" {
		kind, v, _ := strings.Cut(u.PINSource, ":")
		query = append(query, "pin-source="+kind+":"+escape(v, true))
	}
	s := "pkcs11:" + strings.Join(path, ";")
	if len(query) > 0 {
		s += "?" + strings.Join(query, "&")
	}
	return s
}

// escape percent-encodes s for a PKCS#11 URI attribute value.
func escape(s string, query bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		case query && c == '/':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}

// readPIN reads the PIN named by a pin-source. A file's trailing newline (LF or CRLF)
// is removed. Errors name the source, never the content.
func readPIN(source string) (string, error) {
	if p, ok := strings.CutPrefix(source, "file:"); ok {
		// A PIN any local user can read or change is refused, as ssh refuses such a key; the
		// token's owner group may read it (a service group).
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o007 != 0 {
			return "", fmt.Errorf("%w: pin-source file %s can be read or changed by any user (mode %v): chmod 600 it", ErrPINSource, p, fi.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("%w: read pin-source file: %w", ErrPINSource, err)
		}
		pin := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if pin == "" {
			return "", fmt.Errorf("%w: pin-source file %s is empty", ErrPINSource, p)
		}
		return pin, nil
	}
	if name, ok := strings.CutPrefix(source, "env:"); ok {
		pin, ok := os.LookupEnv(name)
		if !ok || pin == "" {
			return "", fmt.Errorf("%w: environment variable %s is unset or empty", ErrPINSource, name)
		}
		return pin, nil
	}
	return "", fmt.Errorf("%w: pin-source must be file:PATH or env:NAME", ErrPINSource)
}
