package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors of request checks. Each *RejectError wraps ErrRejected and one of the others.
var (
	ErrRejected        = errors.New("policy: request rejected")
	ErrSignature       = errors.New("policy: request signature does not verify")
	ErrWeakSignature   = errors.New("policy: request signature algorithm not accepted")
	ErrKeyNotAllowed   = errors.New("policy: public key not accepted")
	ErrExtension       = errors.New("policy: requested extension not accepted")
	ErrSubject         = errors.New("policy: subject not accepted")
	ErrMailboxMismatch = errors.New("policy: name does not match the mailbox")
)

// RejectError is a request refused by policy. Reason is written for the person who sent the
// request: it says what is wrong and, where it can, what to do instead.
type RejectError struct {
	Reason string
	// Cause is the precise sentinel (ErrSignature, ErrKeyNotAllowed, ...); may be nil.
	Cause error
}

// Error implements error.
func (e *RejectError) Error() string { return "policy: request rejected: " + e.Reason }

// Unwrap returns ErrRejected and Cause, so errors.Is matches either.
func (e *RejectError) Unwrap() []error {
	if e.Cause == nil {
		return []error{ErrRejected}
	}
	return []error{ErrRejected, e.Cause}
}

func reject(cause error, format string, args ...any) error {
	return &RejectError{Reason: fmt.Sprintf(format, args...), Cause: cause}
}

// OIDs of extensions and attributes the checks name.
var (
	oidSAN          = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
	oidCommonName   = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidCountry      = asn1.ObjectIdentifier{2, 5, 4, 6}
)

var extensionNames = map[string]string{
	"2.5.29.14":               "subjectKeyIdentifier",
	"2.5.29.15":               "keyUsage",
	"2.5.29.17":               "subjectAltName",
	"2.5.29.18":               "issuerAltName",
	"2.5.29.19":               "basicConstraints",
	"2.5.29.30":               "nameConstraints",
	"2.5.29.31":               "cRLDistributionPoints",
	"2.5.29.32":               "certificatePolicies",
	"2.5.29.35":               "authorityKeyIdentifier",
	"2.5.29.37":               "extKeyUsage",
	"1.3.6.1.5.5.7.1.1":       "authorityInfoAccess",
	"1.3.6.1.5.5.7.1.24":      "tlsFeature",
	"1.2.840.113549.1.9.15":   "sMIMECapabilities",
	"1.3.6.1.4.1.311.20.2":    "Microsoft certificate template name",
	"1.3.6.1.4.1.311.21.7":    "Microsoft certificate template",
	"1.3.6.1.4.1.311.21.10":   "Microsoft application policies",
	"1.3.6.1.4.1.11129.2.4.3": "CT precertificate poison",
}

var ekuNames = map[string]string{
	"1.3.6.1.5.5.7.3.1":        "serverAuth",
	"1.3.6.1.5.5.7.3.2":        "clientAuth",
	"1.3.6.1.5.5.7.3.3":        "codeSigning",
	"1.3.6.1.5.5.7.3.4":        "emailProtection",
	"1.3.6.1.5.5.7.3.8":        "timeStamping",
	"1.3.6.1.5.5.7.3.9":        "OCSPSigning",
	"2.5.29.37.0":              "anyExtendedKeyUsage",
	"1.3.6.1.4.1.311.21.6":     "keyRecovery",
	"1.3.6.1.4.1.311.10.3.4":   "encryptedFileSystem",
	"1.3.6.1.4.1.311.20.2.2":   "smartcardLogon",
	"1.3.6.1.4.1.311.10.3.12":  "documentSigning",
	"1.3.6.1.4.1.311.10.3.4.1": "fileRecovery",
}

// subjectAttrs are the subject attributes a request may carry, with their names and the most
// characters each may hold (RFC 5280 upper bounds).
var subjectAttrs = map[string]struct {
	name string
	max  int
}{
	"2.5.4.3":                    {"CN", 64},
	"2.5.4.4":                    {"surname", 64},
	"2.5.4.5":                    {"serialNumber", 64},
	"2.5.4.6":                    {"C", 2},
	"2.5.4.7":                    {"L", 128},
	"2.5.4.8":                    {"ST", 128},
	"2.5.4.9":                    {"street", 128},
	"2.5.4.10":                   {"O", 64},
	"2.5.4.11":                   {"OU", 64},
	"2.5.4.12":                   {"title", 64},
	"2.5.4.17":                   {"postalCode", 40},
	"2.5.4.42":                   {"givenName", 64},
	"2.5.4.43":                   {"initials", 64},
	"2.5.4.65":                   {"pseudonym", 128},
	"1.2.840.113549.1.9.1":       {"emailAddress", 254},
	"0.9.2342.19200300.100.1.1":  {"UID", 64},
	"0.9.2342.19200300.100.1.25": {"DC", 63},
}

var generalNameKinds = [...]string{
	0: "an otherName",
	1: "an e-mail address",
	2: "a DNS name",
	3: "an X.400 address",
	4: "a directory name",
	5: "an EDI party name",
	6: "a URI",
	7: "an IP address",
	8: "a registered ID",
}

// CheckCSR decides whether csr may be issued under this template for mailbox. It checks, in
// order: the signature algorithm (no MD5, no SHA-1), the public key ([Template.CheckPublicKey]),
// the signature, the requested extensions (only a subjectAltName naming mailbox and nothing
// else), and the subject (known attributes, no control characters, an emailAddress or an
// address-like CN must be mailbox).
//
// A template without emailProtection (a KRA's or an operator's credential) may be checked
// with an empty mailbox: the request may then name no mailbox at all.
//
// A broken rule gives a *[RejectError]; an invalid mailbox gives an error wrapping
// [ErrInvalidMailbox] (that is the caller's mistake, not the requester's).
func (t *Template) CheckCSR(csr *x509.CertificateRequest, mailbox string) error {
	if mailbox != "" || t.IsSMIME() {
		if err := ValidateMailbox(mailbox); err != nil {
			return err
		}
	}
	if csr == nil {
		return reject(nil, "no certificate request was given")
	}
	switch alg := csr.SignatureAlgorithm; alg {
	case x509.MD2WithRSA, x509.MD5WithRSA, x509.SHA1WithRSA, x509.DSAWithSHA1, x509.ECDSAWithSHA1:
		return reject(ErrWeakSignature, "the request is signed with %s, which is no longer accepted; sign it with SHA-256 or stronger", alg)
	case x509.DSAWithSHA256:
		return reject(ErrWeakSignature, "the request is signed with DSA, which is not accepted; use an RSA or ECDSA key")
	case x509.UnknownSignatureAlgorithm:
		return reject(ErrWeakSignature, "the request is signed with an algorithm this CA does not know; use RSA or ECDSA with SHA-256 or stronger")
	}
	if err := t.CheckPublicKey(csr.PublicKey); err != nil {
		return err
	}
	if err := csr.CheckSignature(); err != nil {
		return reject(ErrSignature, "the request's signature does not verify: it was changed after signing or signed with another key")
	}
	if err := checkExtensions(csr.Extensions, mailbox); err != nil {
		return err
	}
	return checkSubject(csr.Subject, mailbox)
}

func checkExtensions(exts []pkix.Extension, mailbox string) error {
	seen := map[string]bool{}
	for _, ext := range exts {
		id := ext.Id.String()
		if seen[id] {
			return reject(ErrExtension, "the request holds the %s extension twice", extName(ext.Id))
		}
		seen[id] = true
		if ext.Id.Equal(oidSAN) {
			if err := checkSAN(ext.Value, mailbox); err != nil {
				return err
			}
			continue
		}
		what := extName(ext.Id)
		if id == "2.5.29.37" {
			what = "extKeyUsage " + describeEKU(ext.Value)
		}
		return reject(ErrExtension, "the request asks for the %s extension; a request may only hold a subjectAltName with your mailbox %s: the CA sets everything else from the template", what, mailbox)
	}
	return nil
}

func extName(oid asn1.ObjectIdentifier) string {
	if n, ok := extensionNames[oid.String()]; ok {
		return n + " (" + oid.String() + ")"
	}
	return oid.String()
}

func describeEKU(der []byte) string {
	var oids []asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(der, &oids); err != nil || len(rest) > 0 {
		return "(malformed)"
	}
	names := make([]string, 0, len(oids))
	for _, o := range oids {
		if n, ok := ekuNames[o.String()]; ok {
			names = append(names, n)
		} else {
			names = append(names, o.String())
		}
	}
	return "(" + strings.Join(names, ", ") + ")"
}

func checkSAN(der []byte, mailbox string) error {
	var names []asn1.RawValue
	rest, err := asn1.Unmarshal(der, &names)
	if err != nil || len(rest) > 0 {
		return reject(ErrExtension, "the request's subjectAltName is malformed")
	}
	if len(names) == 0 {
		return reject(ErrExtension, "the request's subjectAltName is empty")
	}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag >= len(generalNameKinds) {
			return reject(ErrExtension, "the request's subjectAltName holds a name of an unknown kind; only your mailbox %s may be named", mailbox)
		}
		if n.Tag != 1 {
			return reject(ErrExtension, "the request's subjectAltName holds %s%s; only your mailbox %s may be named", generalNameKinds[n.Tag], sanValue(n), mailbox)
		}
		addr := string(n.Bytes)
		if !SameMailbox(addr, mailbox) {
			return reject(ErrMailboxMismatch, "the request's subjectAltName names the e-mail address %q, but this enrollment is for %s", truncate(addr), mailbox)
		}
	}
	return nil
}

// sanValue renders the value of a DNS name, URI or IP address for a message.
func sanValue(n asn1.RawValue) string {
	switch n.Tag {
	case 2, 6:
		return fmt.Sprintf(" %q", truncate(string(n.Bytes)))
	case 7:
		if len(n.Bytes) == net.IPv4len || len(n.Bytes) == net.IPv6len {
			return " " + net.IP(n.Bytes).String()
		}
	}
	return ""
}

// badRune reports characters that have no place in a name: control characters, line and
// paragraph separators, and the bidirectional controls that make text display other than it is.
func badRune(r rune) bool {
	switch {
	case unicode.IsControl(r), r == '\u2028', r == '\u2029', r == utf8.RuneError:
		return true
	case r == '\u200e', r == '\u200f', r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

func checkSubject(subject pkix.Name, mailbox string) error {
	count := map[string]int{}
	for _, atv := range subject.Names {
		id := atv.Type.String()
		attr, ok := subjectAttrs[id]
		if !ok {
			return reject(ErrSubject, "the subject holds attribute %s, which is not accepted; use CN, O, OU, L, ST, C, emailAddress and the like", id)
		}
		count[id]++
		if count[id] > 1 && (atv.Type.Equal(oidCommonName) || atv.Type.Equal(oidEmailAddress) || atv.Type.Equal(oidCountry)) {
			return reject(ErrSubject, "the subject holds %s more than once", attr.name)
		}
		s, ok := atv.Value.(string)
		if !ok {
			return reject(ErrSubject, "the subject attribute %s is not text", attr.name)
		}
		if !utf8.ValidString(s) {
			return reject(ErrSubject, "the subject attribute %s is not valid UTF-8", attr.name)
		}
		if strings.TrimSpace(s) == "" {
			return reject(ErrSubject, "the subject attribute %s is empty", attr.name)
		}
		for _, r := range s {
			if badRune(r) {
				return reject(ErrSubject, "the subject attribute %s holds a control character (such as a line break); remove it", attr.name)
			}
		}
		if n := utf8.RuneCountInString(s); n > attr.max {
			return reject(ErrSubject, "the subject attribute %s is %d characters long; at most %d are allowed", attr.name, n, attr.max)
		}
		switch {
		case atv.Type.Equal(oidCountry):
			if len(s) != 2 || s[0] < 'A' || s[0] > 'Z' || s[1] < 'A' || s[1] > 'Z' {
				return reject(ErrSubject, "the subject country (C) must be a two-letter code such as DE or US, not %q", s)
			}
		case atv.Type.Equal(oidEmailAddress):
			if !SameMailbox(s, mailbox) {
				return reject(ErrMailboxMismatch, "the subject's emailAddress is %q, but this enrollment is for %s", s, mailbox)
			}
		case atv.Type.Equal(oidCommonName):
			if strings.Contains(s, "@") && !SameMailbox(s, mailbox) {
				return reject(ErrMailboxMismatch, "the subject's common name %q looks like an e-mail address other than %s; use your name or your mailbox", s, mailbox)
			}
		}
	}
	return nil
}

// CheckPublicKey checks a public key against the template's key rules: RSA with exponent 65537
// and a size that is a multiple of 8 within the allowed range, or ECDSA on an allowed curve
// with a valid point. It also refuses a key that can do none of the template's key usages
// (an ECDSA key for a keyEncipherment-only template). Errors are *[RejectError] wrapping
// [ErrKeyNotAllowed].
func (t *Template) CheckPublicKey(pub crypto.PublicKey) error {
	var rule *KeyRule
	find := func(alg string) {
		for _, r := range t.keyRules() {
			if r.Algorithm == alg {
				rule = &r
				return
			}
		}
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		find(AlgorithmRSA)
		if rule == nil {
			return reject(ErrKeyNotAllowed, "template %s does not accept RSA keys; %s", t.Name, t.allowedKeys())
		}
		if k == nil || k.N == nil || k.N.Sign() <= 0 || k.N.Bit(0) == 0 {
			return reject(ErrKeyNotAllowed, "the RSA public key is malformed")
		}
		bits := k.N.BitLen()
		if bits%8 != 0 {
			return reject(ErrKeyNotAllowed, "the RSA key has %d bits; the size must be a multiple of 8 (2048, 3072, 4096, ...)", bits)
		}
		if min, max := rule.bits(); bits < min || bits > max {
			return reject(ErrKeyNotAllowed, "the RSA key has %d bits; template %s accepts %d to %d", bits, t.Name, min, max)
		}
		if k.E != 65537 {
			return reject(ErrKeyNotAllowed, "the RSA public exponent is %d; only 65537 is accepted", k.E)
		}
	case *ecdsa.PublicKey:
		find(AlgorithmECDSA)
		if rule == nil {
			return reject(ErrKeyNotAllowed, "template %s does not accept ECDSA keys; %s", t.Name, t.allowedKeys())
		}
		if k == nil || k.Curve == nil {
			return reject(ErrKeyNotAllowed, "the ECDSA public key is malformed")
		}
		var name string
		switch k.Curve {
		case elliptic.P256():
			name = CurveP256
		case elliptic.P384():
			name = CurveP384
		case elliptic.P521():
			name = "P-521"
		default:
			return reject(ErrKeyNotAllowed, "the ECDSA key is on an unknown curve; use P-256 or P-384")
		}
		allowed := false
		for _, c := range rule.curves() {
			allowed = allowed || c == name
		}
		if !allowed {
			return reject(ErrKeyNotAllowed, "the ECDSA key is on curve %s; template %s accepts %s", name, t.Name, strings.Join(rule.curves(), ", "))
		}
		if _, err := k.ECDH(); err != nil {
			return reject(ErrKeyNotAllowed, "the ECDSA public key is not a valid point on %s", name)
		}
	case ed25519.PublicKey:
		return reject(ErrKeyNotAllowed, "Ed25519 keys are not accepted; %s", t.allowedKeys())
	case nil:
		return reject(ErrKeyNotAllowed, "the request carries no public key this CA can read; %s", t.allowedKeys())
	default:
		return reject(ErrKeyNotAllowed, "keys of type %T are not accepted; %s", pub, t.allowedKeys())
	}
	if t.KeyUsageFor(pub) == 0 {
		return reject(ErrKeyNotAllowed, "a key of this type cannot be used for %s, which template %s is for", strings.Join(t.KeyUsage, ", "), t.Name)
	}
	return nil
}

// allowedKeys describes the template's key rules for a message.
func (t *Template) allowedKeys() string {
	var parts []string
	for _, r := range t.keyRules() {
		switch r.Algorithm {
		case AlgorithmRSA:
			min, max := r.bits()
			parts = append(parts, fmt.Sprintf("RSA %d to %d bits", min, max))
		case AlgorithmECDSA:
			parts = append(parts, "ECDSA "+strings.Join(r.curves(), " or "))
		}
	}
	return "use " + strings.Join(parts, ", or ")
}

// KeyUsageFor returns the key usage bits for a certificate of this template whose subject key
// is pub: the template's usages minus those the key type cannot do (keyAgreement for RSA;
// keyEncipherment and dataEncipherment for ECDSA). That is how one smime-encryption template
// serves RSA (keyEncipherment) and ECDSA (keyAgreement) keys, as the S/MIME Baseline
// Requirements want.
func (t *Template) KeyUsageFor(pub crypto.PublicKey) x509.KeyUsage {
	ku := t.KeyUsageBits()
	switch pub.(type) {
	case *rsa.PublicKey:
		ku &^= x509.KeyUsageKeyAgreement
	case *ecdsa.PublicKey:
		ku &^= x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment
	case ed25519.PublicKey:
		ku &^= x509.KeyUsageKeyAgreement | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment
	}
	return ku
}
