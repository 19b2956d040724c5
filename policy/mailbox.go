package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidMailbox means a string is not a mailbox keyarc accepts.
var ErrInvalidMailbox = errors.New("policy: invalid mailbox")

// Limits on mailboxes (RFC 5321 section 4.5.3.1, with the 254 of a usable forward-path).
const (
	maxMailboxLen = 254
	maxLocalLen   = 64
	maxLabelLen   = 63
)

// ValidateMailbox checks that s is an address keyarc can put in an rfc822Name: ASCII only
// (rfc822Name is an IA5String), local@domain, a dot-atom local part of at most 64 characters,
// a domain of letter-digit-hyphen labels, at most 254 characters in all, and no control
// characters, spaces, quotes or IP literals. Domains compare case-insensitively; see
// [NormalizeMailbox]. The error wraps [ErrInvalidMailbox] and says what is wrong, without
// repeating s: a string that is no mailbox may be a password or a code typed in the wrong
// field, and the error goes to the log, the audit trail and bulk results.
func ValidateMailbox(s string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: %s", ErrInvalidMailbox, why)
	}
	if s == "" {
		return fmt.Errorf("%w: empty", ErrInvalidMailbox)
	}
	if len(s) > maxMailboxLen {
		return bad(fmt.Sprintf("longer than %d characters", maxMailboxLen))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return bad("only printable ASCII characters without spaces are allowed")
		}
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return bad("missing @")
	}
	local, domain := s[:at], s[at+1:]
	if err := checkLocal(local); err != "" {
		return bad(err)
	}
	if err := checkDomain(domain); err != "" {
		return bad(err)
	}
	return nil
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

func checkLocal(l string) string {
	if l == "" {
		return "empty local part"
	}
	if len(l) > maxLocalLen {
		return fmt.Sprintf("local part longer than %d characters", maxLocalLen)
	}
	if l[0] == '.' || l[len(l)-1] == '.' || strings.Contains(l, "..") {
		return "local part must not start or end with a dot or hold two dots in a row"
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; c != '.' && !isAtext(c) {
			return fmt.Sprintf("character %q is not allowed in the local part", c)
		}
	}
	return ""
}

func checkDomain(d string) string {
	if d == "" {
		return "empty domain"
	}
	if d[0] == '[' {
		return "address literals are not allowed; use a domain name"
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" {
			return "empty label in domain"
		}
		if len(label) > maxLabelLen {
			return fmt.Sprintf("domain label longer than %d characters", maxLabelLen)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "a domain label must not start or end with a hyphen"
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Sprintf("character %q is not allowed in a domain", c)
			}
		}
	}
	return ""
}

// NormalizeMailbox validates s and returns it with the domain in lower case. The local part is
// kept as written: RFC 5321 leaves its case to the receiving system.
func NormalizeMailbox(s string) (string, error) {
	if err := ValidateMailbox(s); err != nil {
		return "", err
	}
	at := strings.LastIndexByte(s, '@')
	return s[:at+1] + strings.ToLower(s[at+1:]), nil
}

// SameMailbox reports whether a and b name the same mailbox: equal local parts, domains equal
// ignoring case.
func SameMailbox(a, b string) bool {
	ia, ib := strings.LastIndexByte(a, '@'), strings.LastIndexByte(b, '@')
	if ia < 0 || ib < 0 {
		return false
	}
	return a[:ia] == b[:ib] && strings.EqualFold(a[ia+1:], b[ib+1:])
}

// truncate cuts s to a length fit for an error message.
func truncate(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
