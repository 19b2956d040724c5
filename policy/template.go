package policy

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Errors about templates.
var (
	// ErrInvalidTemplate is wrapped by every *FieldError.
	ErrInvalidTemplate = errors.New("policy: invalid template")
	// ErrUnknownTemplate means a request named a template that is not configured.
	ErrUnknownTemplate = errors.New("policy: unknown template")
)

// Names of the built-in templates.
const (
	TemplateSMIMEEncryption = "smime-encryption"
	TemplateSMIMESignature  = "smime-signature"
	TemplateKRA             = "kra"
	TemplateClientAuth      = "client-auth"
)

// Limits on template fields.
const (
	// MaxSMIMEValidityDays is the longest validity of a certificate with emailProtection
	// (CA/Browser Forum S/MIME Baseline Requirements).
	MaxSMIMEValidityDays = 825
	// MaxValidityDays is the longest validity of any other end-entity certificate.
	MaxValidityDays = 3650
	// MinRSABits and MaxRSABits bound every RSA key rule.
	MinRSABits = 2048
	MaxRSABits = 16384
	// maxNameLen bounds a template name.
	maxNameLen = 64
)

// ImportedTemplate is the template name no configured template may take: keyarc gives it to
// the certificates of another CA whose keys a bulk import archived (store.TemplateImport).
// Those are never this CA's to speak for (no OCSP response, no CRL entry, no revocation
// here), so a template of that name would issue certificates that could never be revoked.
const ImportedTemplate = "import"

// Key algorithms of a [KeyRule].
const (
	AlgorithmRSA   = "rsa"
	AlgorithmECDSA = "ecdsa"
)

// Curves a [KeyRule] may allow.
const (
	CurveP256 = "P-256"
	CurveP384 = "P-384"
)

// OIDKeyRecovery is the Microsoft "Key Recovery Agent" extended key usage
// (szOID_KP_KEY_RECOVERY_AGENT, 1.3.6.1.4.1.311.21.6), which crypto/x509 has no constant for.
var OIDKeyRecovery = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 21, 6}

// Certificate policies of the CA/Browser Forum S/MIME Baseline Requirements (7.1.6.1) that a
// template may name in smime_policy. keyarc validates control of the mailbox (an enrollment
// code sent to it, or a certificate of it) and nothing else about the subject, so its S/MIME
// certificates are mailbox-validated.
const (
	// SMIMEMailboxStrict (2.23.140.1.5.1.3), the default: emailProtection is the only
	// extended key usage, and the newest profile.
	SMIMEMailboxStrict = "mailbox-strict"
	// SMIMEMailboxMultipurpose (2.23.140.1.5.1.2) allows other extended key usages beside
	// emailProtection (clientAuth, for example).
	SMIMEMailboxMultipurpose = "mailbox-multipurpose"
	// SMIMEMailboxLegacy (2.23.140.1.5.1.1) is the most lenient generation, being phased out.
	SMIMEMailboxLegacy = "mailbox-legacy"
)

// The reserved policy OIDs of the mailbox-validated S/MIME profiles.
var (
	OIDSMIMEMailboxLegacy       = asn1.ObjectIdentifier{2, 23, 140, 1, 5, 1, 1}
	OIDSMIMEMailboxMultipurpose = asn1.ObjectIdentifier{2, 23, 140, 1, 5, 1, 2}
	OIDSMIMEMailboxStrict       = asn1.ObjectIdentifier{2, 23, 140, 1, 5, 1, 3}
)

var smimePolicies = map[string]asn1.ObjectIdentifier{
	SMIMEMailboxStrict:       OIDSMIMEMailboxStrict,
	SMIMEMailboxMultipurpose: OIDSMIMEMailboxMultipurpose,
	SMIMEMailboxLegacy:       OIDSMIMEMailboxLegacy,
}

// Key usage names as written in templates.
const (
	KUDigitalSignature = "digitalSignature"
	KUNonRepudiation   = "nonRepudiation"
	KUKeyEncipherment  = "keyEncipherment"
	KUKeyAgreement     = "keyAgreement"
	KUDataEncipherment = "dataEncipherment"
)

// Extended key usage names as written in templates.
const (
	EKUEmailProtection = "emailProtection"
	EKUClientAuth      = "clientAuth"
	EKUServerAuth      = "serverAuth"
	EKUKeyRecovery     = "keyRecovery"
)

var keyUsageBits = map[string]x509.KeyUsage{
	KUDigitalSignature: x509.KeyUsageDigitalSignature,
	KUNonRepudiation:   x509.KeyUsageContentCommitment,
	KUKeyEncipherment:  x509.KeyUsageKeyEncipherment,
	KUKeyAgreement:     x509.KeyUsageKeyAgreement,
	KUDataEncipherment: x509.KeyUsageDataEncipherment,
}

var extKeyUsages = map[string]x509.ExtKeyUsage{
	EKUEmailProtection: x509.ExtKeyUsageEmailProtection,
	EKUClientAuth:      x509.ExtKeyUsageClientAuth,
	EKUServerAuth:      x509.ExtKeyUsageServerAuth,
}

// KeyRule allows one key algorithm. For "rsa", MinBits and MaxBits bound the modulus size
// (zero means the default, 2048 and 16384); for "ecdsa", Curves lists the allowed curves
// (empty means P-256 and P-384).
type KeyRule struct {
	Algorithm string   `yaml:"algorithm"` // "rsa" | "ecdsa"
	MinBits   int      `yaml:"min_bits"`
	MaxBits   int      `yaml:"max_bits"`
	Curves    []string `yaml:"curves"` // "P-256", "P-384"
}

// Template is a certificate profile: what a certificate of this kind may be used for, which keys
// it accepts, how long it lives and whether its private key is archived.
type Template struct {
	// Name is [a-z0-9-]+; it appears in URLs (/.well-known/est/<name>/...).
	Name string `yaml:"name"`
	// Purpose is free text shown to users and admins.
	Purpose string `yaml:"purpose"`
	// KeyUsage lists digitalSignature, nonRepudiation, keyEncipherment, keyAgreement,
	// dataEncipherment. Usages that the subject key cannot do are dropped per key (see
	// [Template.KeyUsageFor]).
	KeyUsage []string `yaml:"key_usage"`
	// ExtKeyUsage lists emailProtection, clientAuth, serverAuth, keyRecovery.
	ExtKeyUsage []string `yaml:"ext_key_usage"`
	// Keys lists the allowed key algorithms; empty means RSA 2048..16384, ECDSA P-256/P-384.
	Keys []KeyRule `yaml:"keys"`
	// ValidityDays is the certificate lifetime: 1..825 with emailProtection, else 1..3650.
	ValidityDays int `yaml:"validity_days"`
	// Archive escrows the subject's private key before the certificate is returned. Allowed
	// only for key-management templates (no digitalSignature, no nonRepudiation).
	Archive bool `yaml:"archive"`
	// ServerKeygen lets the appliance generate the key pair (EST serverkeygen); needs Archive.
	ServerKeygen bool `yaml:"server_keygen"`
	// ManualApproval puts every request in the pending queue for an admin to issue or deny.
	ManualApproval bool `yaml:"manual_approval"`
	// Role, for client-auth credentials, is admin, officer, auditor or kra; empty means the
	// role is chosen when the credential is issued.
	Role string `yaml:"role"`
	// ReenrollFrom lists the other templates whose certificates may authenticate an
	// enrollment for this one, in place of an enrollment code. A certificate of this template
	// may always re-enroll for it (RFC 7030 4.2.2); a certificate of any other template may
	// not, unless its template is listed here. See [Template.AuthorizeCredential].
	ReenrollFrom []string `yaml:"reenroll_from"`
	// SMIMEPolicy, for emailProtection templates, names the S/MIME Baseline Requirements
	// profile the certificates claim: mailbox-strict (the default when empty),
	// mailbox-multipurpose or mailbox-legacy. See [Template.CertificatePolicies].
	SMIMEPolicy string `yaml:"smime_policy,omitempty"`
	// RecoveryRevoke, for archiving templates, is what a recovery of a key does with its
	// certificate when the key is fetched, unless the recovery request says otherwise: keep
	// (the default when empty), keyCompromise or superseded. See [Template.RecoveryRevocation].
	RecoveryRevoke string `yaml:"recovery_revoke,omitempty"`
}

// RecoveryRevocation returns the template's recovery_revoke choice, canonical ("keep" when
// empty; see [ParseRecoveryRevocation]). A recovery hands the key to an officer for many
// reasons (a departed employee's mail, legal discovery, a subscriber's broken disk) that do not
// make the certificate untrustworthy, so a template does not revoke unless it says so; the
// stolen laptop is the request's explicit `--revoke keyCompromise`, or a template's
// recovery_revoke: keyCompromise where every recovery is one. It cannot fail on a validated
// template; an invalid value gives "keep" and the validation's error is Validate's.
func (t *Template) RecoveryRevocation() string {
	if t.RecoveryRevoke == "" {
		return RecoveryKeep
	}
	name, _, _, err := ParseRecoveryRevocation(t.RecoveryRevoke)
	if err != nil {
		return RecoveryKeep
	}
	return name
}

// ErrCredential means a client certificate may not authenticate the enrollment it was
// presented for; it wraps [ErrNotAllowed].
var ErrCredential = fmt.Errorf("%w: credential not accepted for this enrollment", ErrNotAllowed)

// Credential is a client certificate presented, instead of an enrollment code, to enroll.
type Credential struct {
	// Template is the template the certificate was issued under.
	Template string
	// Role is the certificate's operator role, empty for an enrollee's certificate.
	Role string
	// Superseded is the serial of a certificate of the requested template, for the same
	// mailbox, issued after the presented one (empty if there is none).
	Superseded string
}

// AuthorizeCredential decides whether a client certificate may authenticate an enrollment
// for t. The rules:
//   - an operator credential (one with a role) never enrolls: operators hold no mailbox;
//   - a certificate of t itself may re-enroll for t (RFC 7030 4.2.2), and a certificate of a
//     template listed in t's reenroll_from may enroll for t; no other may;
//   - a certificate enrolls for t once: when a certificate of t for the same mailbox was
//     issued after it (its renewal, or an enrollment with a code), it no longer may. This is
//     the bound on endless re-enrollment: every certificate is a single-use credential, as an
//     enrollment code is, and only the newest one renews.
//
// The error wraps [ErrCredential] and says which rule refused.
func (t *Template) AuthorizeCredential(c Credential) error {
	if c.Role != "" {
		return fmt.Errorf("%w: an operator credential (role %s) cannot enroll; enroll with the mailbox and an enrollment code (HTTP Basic), or present the certificate being renewed", ErrCredential, c.Role)
	}
	if c.Template != t.Name && !slices.Contains(t.ReenrollFrom, c.Template) {
		return fmt.Errorf("%w: a certificate of template %q may not enroll for template %q (its reenroll_from lists %s); use an enrollment code for %q",
			ErrCredential, c.Template, t.Name, quotedList(t.ReenrollFrom, "no other template"), t.Name)
	}
	if c.Superseded != "" {
		return fmt.Errorf("%w: this certificate has been used to enroll already: a newer %q certificate of this mailbox exists (serial %s); present the newest one",
			ErrCredential, t.Name, c.Superseded)
	}
	return nil
}

func quotedList(names []string, none string) string {
	if len(names) == 0 {
		return none
	}
	s := ""
	for i, n := range names {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%q", n)
	}
	return s
}

// Builtins returns fresh copies of the built-in templates: smime-encryption, smime-signature,
// kra and client-auth.
func Builtins() []Template {
	return []Template{
		{
			Name:         TemplateSMIMEEncryption,
			Purpose:      "S/MIME encryption certificate; the private key is archived for recovery",
			KeyUsage:     []string{KUKeyEncipherment, KUKeyAgreement},
			ExtKeyUsage:  []string{EKUEmailProtection},
			ValidityDays: 365,
			Archive:      true,
			ServerKeygen: true,
		},
		{
			Name:         TemplateSMIMESignature,
			Purpose:      "S/MIME signature certificate; the private key is never archived",
			KeyUsage:     []string{KUDigitalSignature, KUNonRepudiation},
			ExtKeyUsage:  []string{EKUEmailProtection},
			ValidityDays: 365,
		},
		{
			Name:           TemplateKRA,
			Purpose:        "Key Recovery Agent: decrypts its share of archived keys; issued by an admin",
			KeyUsage:       []string{KUKeyEncipherment},
			ExtKeyUsage:    []string{EKUKeyRecovery},
			Keys:           []KeyRule{{Algorithm: AlgorithmRSA, MinBits: 2048, MaxBits: 16384}},
			ValidityDays:   730,
			ManualApproval: true,
		},
		{
			Name:         TemplateClientAuth,
			Purpose:      "TLS client credential of an admin, officer, auditor or KRA",
			KeyUsage:     []string{KUDigitalSignature},
			ExtKeyUsage:  []string{EKUClientAuth},
			ValidityDays: 365,
		},
	}
}

// defaultKeys is used when a template lists no key rules.
func defaultKeys() []KeyRule {
	return []KeyRule{
		{Algorithm: AlgorithmRSA, MinBits: MinRSABits, MaxBits: MaxRSABits},
		{Algorithm: AlgorithmECDSA, Curves: []string{CurveP256, CurveP384}},
	}
}

// FieldError says which field of which template is wrong, and why.
type FieldError struct {
	Template string // template name, as written
	Field    string // YAML field name, e.g. "key_usage"
	Reason   string
}

// Error implements error.
func (e *FieldError) Error() string {
	return fmt.Sprintf("policy: template %q: %s: %s", e.Template, e.Field, e.Reason)
}

// Unwrap returns [ErrInvalidTemplate].
func (e *FieldError) Unwrap() error { return ErrInvalidTemplate }

func (t *Template) fieldErr(field, format string, args ...any) error {
	return &FieldError{Template: t.Name, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Validate checks the template and returns a *[FieldError] for the first problem found.
func (t *Template) Validate() error {
	if !validName(t.Name) {
		return t.fieldErr("name", "must be 1 to %d characters of a-z, 0-9 and -", maxNameLen)
	}
	if t.Name == ImportedTemplate {
		return t.fieldErr("name", "%q is reserved for the certificates of other CAs that a bulk import archives; choose another name", ImportedTemplate)
	}
	if err := t.validateUsages(); err != nil {
		return err
	}
	if err := t.validateKeys(); err != nil {
		return err
	}
	maxDays := MaxValidityDays
	if t.hasEKU(EKUEmailProtection) {
		maxDays = MaxSMIMEValidityDays
	}
	if t.ValidityDays < 1 || t.ValidityDays > maxDays {
		if maxDays == MaxSMIMEValidityDays {
			return t.fieldErr("validity_days", "must be 1 to %d for emailProtection certificates, not %d", maxDays, t.ValidityDays)
		}
		return t.fieldErr("validity_days", "must be 1 to %d, not %d", maxDays, t.ValidityDays)
	}
	seenFrom := map[string]bool{}
	for _, n := range t.ReenrollFrom {
		if !validName(n) || n == t.Name || seenFrom[n] {
			return t.fieldErr("reenroll_from", "%q: list other templates, each once, by name", n)
		}
		seenFrom[n] = true
	}
	if len(t.ReenrollFrom) > 0 && (t.ManualApproval || t.Role != "") {
		return t.fieldErr("reenroll_from", "a template issued by an admin's decision or carrying a role is never enrolled with a certificate")
	}
	if err := t.validateSMIMEPolicy(); err != nil {
		return err
	}
	if t.RecoveryRevoke != "" {
		if !t.Archive {
			return t.fieldErr("recovery_revoke", "applies to archiving templates only (archive: true); remove it")
		}
		if _, _, _, err := ParseRecoveryRevocation(t.RecoveryRevoke); err != nil {
			return t.fieldErr("recovery_revoke", "must be keep, keyCompromise or superseded, not %q", truncate(t.RecoveryRevoke))
		}
	}
	if t.ServerKeygen && !t.Archive {
		return t.fieldErr("server_keygen", "a key generated by the appliance must be archived: set archive: true or remove server_keygen")
	}
	if t.Role != "" {
		if _, err := ParseRole(t.Role); err != nil || Role(t.Role) == RoleEnrollee {
			return t.fieldErr("role", "must be one of admin, officer, auditor, kra, not %q", t.Role)
		}
		if !t.hasEKU(EKUClientAuth) {
			return t.fieldErr("role", "a role credential needs ext_key_usage clientAuth")
		}
	}
	return nil
}

func (t *Template) validateUsages() error {
	if len(t.KeyUsage) == 0 {
		return t.fieldErr("key_usage", "must list at least one usage")
	}
	seen := map[string]bool{}
	for _, u := range t.KeyUsage {
		if _, ok := keyUsageBits[u]; !ok {
			return t.fieldErr("key_usage", "unknown usage %q (known: digitalSignature, nonRepudiation, keyEncipherment, keyAgreement, dataEncipherment)", u)
		}
		if seen[u] {
			return t.fieldErr("key_usage", "%q listed twice", u)
		}
		seen[u] = true
	}
	if t.Archive {
		for _, u := range []string{KUDigitalSignature, KUNonRepudiation} {
			if seen[u] {
				return t.fieldErr("key_usage", "archive is allowed only for key-management templates; %s allows signing", u)
			}
		}
		if !seen[KUKeyEncipherment] && !seen[KUKeyAgreement] && !seen[KUDataEncipherment] {
			return t.fieldErr("key_usage", "archive needs a key-management usage (keyEncipherment or keyAgreement)")
		}
	}
	if len(t.ExtKeyUsage) == 0 {
		return t.fieldErr("ext_key_usage", "must list at least one extended key usage")
	}
	seenEKU := map[string]bool{}
	for _, u := range t.ExtKeyUsage {
		if _, ok := extKeyUsages[u]; !ok && u != EKUKeyRecovery {
			return t.fieldErr("ext_key_usage", "unknown extended key usage %q (known: emailProtection, clientAuth, serverAuth, keyRecovery)", u)
		}
		if seenEKU[u] {
			return t.fieldErr("ext_key_usage", "%q listed twice", u)
		}
		seenEKU[u] = true
	}
	if seenEKU[EKUEmailProtection] && seenEKU[EKUServerAuth] {
		return t.fieldErr("ext_key_usage", "emailProtection and serverAuth must not be combined in one certificate")
	}
	return nil
}

func (t *Template) validateSMIMEPolicy() error {
	if !t.IsSMIME() {
		if t.SMIMEPolicy != "" {
			return t.fieldErr("smime_policy", "applies to emailProtection templates only; remove it")
		}
		return nil
	}
	if t.SMIMEPolicy != "" {
		if _, ok := smimePolicies[t.SMIMEPolicy]; !ok {
			return t.fieldErr("smime_policy", "unknown S/MIME policy %q (known: %s, %s, %s)", t.SMIMEPolicy, SMIMEMailboxStrict, SMIMEMailboxMultipurpose, SMIMEMailboxLegacy)
		}
	}
	if t.smimePolicy() == SMIMEMailboxStrict && len(t.ExtKeyUsage) != 1 {
		return t.fieldErr("ext_key_usage", "the strict S/MIME profile (smime_policy %s, the default) allows emailProtection alone; list only emailProtection, or set smime_policy: %s", SMIMEMailboxStrict, SMIMEMailboxMultipurpose)
	}
	return nil
}

// smimePolicy returns the effective smime_policy.
func (t *Template) smimePolicy() string {
	if t.SMIMEPolicy == "" {
		return SMIMEMailboxStrict
	}
	return t.SMIMEPolicy
}

// CertificatePolicies returns the certificate policies a certificate of t claims: for an
// emailProtection template, exactly one reserved S/MIME policy OID (smime_policy, strict by
// default); for any other, none. The CA adds its own policy OID, when it has one.
func (t *Template) CertificatePolicies() []asn1.ObjectIdentifier {
	if !t.IsSMIME() {
		return nil
	}
	oid, ok := smimePolicies[t.smimePolicy()]
	if !ok {
		return nil // Validate refuses this template
	}
	return []asn1.ObjectIdentifier{slices.Clone(oid)}
}

func (t *Template) validateKeys() error {
	seen := map[string]bool{}
	for i, r := range t.Keys {
		if seen[r.Algorithm] {
			return t.fieldErr("keys", "algorithm %q listed twice", r.Algorithm)
		}
		seen[r.Algorithm] = true
		switch r.Algorithm {
		case AlgorithmRSA:
			min, max := r.bits()
			if len(r.Curves) > 0 {
				return t.fieldErr("keys", "entry %d: curves apply to ecdsa, not rsa", i+1)
			}
			if min < MinRSABits {
				return t.fieldErr("keys", "entry %d: min_bits %d is below %d", i+1, min, MinRSABits)
			}
			if max > MaxRSABits {
				return t.fieldErr("keys", "entry %d: max_bits %d is above %d", i+1, max, MaxRSABits)
			}
			if min > max {
				return t.fieldErr("keys", "entry %d: min_bits %d is above max_bits %d", i+1, min, max)
			}
		case AlgorithmECDSA:
			if r.MinBits != 0 || r.MaxBits != 0 {
				return t.fieldErr("keys", "entry %d: min_bits and max_bits apply to rsa; for ecdsa list curves", i+1)
			}
			seenCurve := map[string]bool{}
			for _, c := range r.Curves {
				if c != CurveP256 && c != CurveP384 {
					return t.fieldErr("keys", "entry %d: unknown curve %q (allowed: P-256, P-384)", i+1, c)
				}
				if seenCurve[c] {
					return t.fieldErr("keys", "entry %d: curve %q listed twice", i+1, c)
				}
				seenCurve[c] = true
			}
		default:
			return t.fieldErr("keys", "entry %d: unknown algorithm %q (allowed: rsa, ecdsa)", i+1, r.Algorithm)
		}
	}
	return nil
}

// bits returns the effective RSA bounds of a rule.
func (r KeyRule) bits() (min, max int) {
	min, max = r.MinBits, r.MaxBits
	if min == 0 {
		min = MinRSABits
	}
	if max == 0 {
		max = MaxRSABits
	}
	return min, max
}

// curves returns the effective curve list of an ECDSA rule.
func (r KeyRule) curves() []string {
	if len(r.Curves) == 0 {
		return []string{CurveP256, CurveP384}
	}
	return r.Curves
}

// CSRWants says what a certification request for a template should hold, for a client asking
// beforehand (EST csrattrs, RFC 7030 4.5): the keys the template accepts and whether the
// request names a mailbox. It describes [Template.CheckCSR]'s rules, it does not replace them.
type CSRWants struct {
	// RSA is set when RSA keys are accepted, of RSAMinBits to RSAMaxBits.
	RSA                    bool
	RSAMinBits, RSAMaxBits int
	// Curves lists the accepted ECDSA curves (P-256, P-384), none when ECDSA is not accepted.
	Curves []string
	// Mailbox is set for emailProtection templates: the request may name the enrollee's
	// mailbox (an emailAddress in the subject, an rfc822Name subjectAltName) and no other.
	Mailbox bool
}

// CSRWants returns what a request for t should hold; see [CSRWants]. The rules come in the
// template's order; a template without key rules accepts the defaults (RSA 2048 to 16384 bits,
// ECDSA P-256 and P-384).
func (t *Template) CSRWants() CSRWants {
	w := CSRWants{Mailbox: t.IsSMIME()}
	for _, r := range t.keyRules() {
		switch r.Algorithm {
		case AlgorithmRSA:
			w.RSA = true
			w.RSAMinBits, w.RSAMaxBits = r.bits()
		case AlgorithmECDSA:
			w.Curves = slices.Clone(r.curves())
		}
	}
	return w
}

// keyRules returns the template's key rules, or the defaults.
func (t *Template) keyRules() []KeyRule {
	if len(t.Keys) == 0 {
		return defaultKeys()
	}
	return t.Keys
}

func (t *Template) hasEKU(name string) bool { return slices.Contains(t.ExtKeyUsage, name) }

// IsSMIME reports whether certificates of this template carry emailProtection.
func (t *Template) IsSMIME() bool { return t.hasEKU(EKUEmailProtection) }

// Validity returns the certificate lifetime, ValidityDays days of 24 hours.
func (t *Template) Validity() time.Duration { return time.Duration(t.ValidityDays) * 24 * time.Hour }

// clone returns a deep copy.
func (t *Template) clone() *Template {
	c := *t
	c.KeyUsage = slices.Clone(t.KeyUsage)
	c.ExtKeyUsage = slices.Clone(t.ExtKeyUsage)
	c.ReenrollFrom = slices.Clone(t.ReenrollFrom)
	c.Keys = make([]KeyRule, len(t.Keys))
	for i, r := range t.Keys {
		r.Curves = slices.Clone(r.Curves)
		c.Keys[i] = r
	}
	if t.Keys == nil {
		c.Keys = nil
	}
	return &c
}

// UnknownTemplateError is a request naming a template that is not configured. It lists the
// names that are, and matches [ErrUnknownTemplate] with errors.Is.
//
// Its message does not repeat Name: a name that is no template may be anything the client
// typed in the wrong place (an enrollment code as the EST label, say), and the message goes to
// the log and the audit trail. A caller that knows the name is harmless to show (the command
// line, to its own operator) adds it.
type UnknownTemplateError struct {
	Name  string
	Known []string
}

func (e *UnknownTemplateError) Error() string {
	return fmt.Sprintf("policy: unknown template (the templates are %s)", strings.Join(e.Known, ", "))
}

// Unwrap returns [ErrUnknownTemplate].
func (e *UnknownTemplateError) Unwrap() error { return ErrUnknownTemplate }

// UnknownTemplate returns an [UnknownTemplateError] for name, listing the names of known.
func UnknownTemplate(name string, known map[string]*Template) error {
	e := &UnknownTemplateError{Name: name}
	for n := range known {
		e.Known = append(e.Known, n)
	}
	sort.Strings(e.Known)
	return e
}

// Templates returns the built-in templates extended by fromConfig: a configured template with
// the name of a built-in one replaces it. Every template is validated; a name listed twice in
// fromConfig is an error. The map holds fresh copies, keyed by name.
func Templates(fromConfig []Template) (map[string]*Template, error) {
	out := map[string]*Template{}
	for _, b := range Builtins() {
		out[b.Name] = b.clone()
	}
	seen := map[string]bool{}
	for i := range fromConfig {
		t := &fromConfig[i]
		if seen[t.Name] {
			return nil, t.fieldErr("name", "template defined twice in the configuration")
		}
		seen[t.Name] = true
		out[t.Name] = t.clone()
	}
	// Validate in a stable order so the same file gives the same first error.
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := out[n].Validate(); err != nil {
			return nil, err
		}
		for _, from := range out[n].ReenrollFrom {
			if f, ok := out[from]; !ok {
				return nil, out[n].fieldErr("reenroll_from", "unknown template %q", from)
			} else if f.Role != "" || f.ManualApproval {
				return nil, out[n].fieldErr("reenroll_from", "template %q makes operator or KRA credentials, which never enroll", from)
			}
		}
	}
	return out, nil
}

// KeyUsageBits returns the union of the template's key usages, whatever the key type.
// Use [Template.KeyUsageFor] when issuing.
func (t *Template) KeyUsageBits() x509.KeyUsage {
	var ku x509.KeyUsage
	for _, u := range t.KeyUsage {
		ku |= keyUsageBits[u]
	}
	return ku
}

// ExtKeyUsages returns the template's extended key usages: those crypto/x509 knows, and the
// others as OIDs (keyRecovery).
func (t *Template) ExtKeyUsages() ([]x509.ExtKeyUsage, []asn1.ObjectIdentifier) {
	var known []x509.ExtKeyUsage
	var unknown []asn1.ObjectIdentifier
	for _, u := range t.ExtKeyUsage {
		if eku, ok := extKeyUsages[u]; ok {
			known = append(known, eku)
		} else if u == EKUKeyRecovery {
			unknown = append(unknown, slices.Clone(OIDKeyRecovery))
		}
	}
	return known, unknown
}
