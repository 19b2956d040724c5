package ca

import (
	"crypto"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
	"github.com/zmap/zlint/v3/util"
)

// Finding is one zlint result that refused a certificate.
type Finding struct {
	Lint    string // e.g. e_exactly_one_smime_policy
	Status  string // warn, error or fatal
	Details string
}

// LintError is a refusal by zlint: the to-be-signed certificate drew at least one warning or
// error. Nothing was signed by the CA key. It matches [ErrLint] with errors.Is.
type LintError struct {
	Findings []Finding // sorted by lint name
}

func (e *LintError) Error() string {
	var b strings.Builder
	b.WriteString(ErrLint.Error())
	b.WriteString(": zlint")
	for n, f := range e.Findings {
		if n > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " %s (%s", f.Lint, f.Status)
		if f.Details != "" {
			b.WriteString(": " + f.Details)
		}
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns [ErrLint].
func (e *LintError) Unwrap() error { return ErrLint }

// Lints returns the names of the lints that refused.
func (e *LintError) Lints() []string {
	out := make([]string, len(e.Findings))
	for n, f := range e.Findings {
		out[n] = f.Lint
	}
	return out
}

// zlinter runs zlint on a to-be-signed certificate before the CA key signs it, as Let's
// Encrypt's boulder does, but on exactly the bytes the CA key will sign: the TBS, the CA's
// signature AlgorithmIdentifier and a placeholder signature of the CA key's shape. zlint
// verifies no signature, and no lint of the two sources used here reads the signature value
// (lints that do are in other sources: Mozilla's ECDSA encoding and Community's compromised-CA
// lints); the CRL lints read only its length, which the placeholder has (see
// placeholderSignature). The two filtered registries are made once per Issuer, on first use.
type zlinter struct {
	placeholder []byte

	once sync.Once
	err  error
	// smime lints S/MIME certificates (sources CABF_SMIME_BR and RFC5280); rfc every other
	// certificate (RFC5280 only: the S/MIME lints presume an S/MIME subscriber certificate,
	// and the CA/Browser Forum's TLS lints do not apply to keyarc's TLS client and server
	// certificates, which no public browser trusts). Both leave out zlintNeverApplies.
	smime, rfc lint.Registry
	// The certificate lints of each registry and its configuration, read once: run executes
	// them itself (see run).
	smimeLints, rfcLints []gateLint
	smimeConf, rfcConf   lint.Configuration
}

// zlintNeverApplies are the lints of the sources CABF_SMIME_BR and RFC5280 that the gate
// leaves out, grouped by what a certificate must have for them to apply (their CheckApplies
// is false without it). keyarc's encoder never writes any of it: basic constraints
// is always cA FALSE, certificate policies carry no qualifiers, and the extensions are only
// key usage, extended key usage, basic constraints, subject and authority key identifiers,
// authority information access, subject alternative names, certificate policies, CRL
// distribution points and id-pkix-ocsp-nocheck (see encodeTBSCertificate). On every
// certificate keyarc makes they say NA, which refuses nothing, and skipping them saves their
// CheckApplies (mostly a map lookup under an OID turned into a string, for each lint).
// TestZlintNeverApplies proves each group's lints apply once a certificate has that feature,
// and that none applies to any certificate of a wide set of requests; the gate's findings
// are those of the whole sources.
var zlintNeverApplies = []struct {
	feature string
	lints   []string
}{
	{"basic constraints cA TRUE", []string{"e_basic_constraints_not_critical", "e_ca_subject_field_empty",
		"e_ext_subject_key_identifier_missing_ca"}},
	{"issuer alternative name", []string{"e_ext_ian_dns_not_ia5_string", "e_ext_ian_empty_name",
		"e_ext_ian_no_entries", "e_ext_ian_rfc822_format_invalid", "e_ext_ian_space_dns_name",
		"e_ext_ian_uri_format_invalid", "e_ext_ian_uri_host_not_fqdn_or_ip", "e_ext_ian_uri_not_ia5",
		"e_ext_ian_uri_relative", "w_ext_ian_critical"}},
	{"name constraints", []string{"e_ext_name_constraints_not_critical", "e_ext_name_constraints_not_in_ca",
		"e_name_constraint_empty", "e_name_constraint_maximum_not_absent", "e_name_constraint_minimum_non_zero",
		"e_name_constraint_not_fqdn", "w_name_constraint_on_edi_party_name", "w_name_constraint_on_registered_id",
		"w_name_constraint_on_x400"}},
	{"policy constraints", []string{"e_ext_policy_constraints_empty", "e_ext_policy_constraints_not_critical"}},
	{"policy mappings", []string{"e_ext_policy_map_any_policy", "w_ext_policy_map_not_critical",
		"w_ext_policy_map_not_in_cert_policy"}},
	{"inhibit anyPolicy", []string{"e_inhibit_any_policy_not_critical"}},
	{"subject directory attributes", []string{"e_ext_subject_directory_attr_critical"}},
	{"subject information access", []string{"e_subject_info_access_marked_critical"}},
	{"freshest CRL", []string{"e_ext_freshest_crl_marked_critical"}},
	{"QC statements", []string{"e_smime_qc_statements_must_not_be_critical"}},
	{"Adobe time-stamp or archive revocation info", []string{"e_adobe_extensions_legacy_multipurpose_criticality"}},
	{"policy user notice with explicit text", []string{"e_ext_cert_policy_explicit_text_ia5_string",
		"e_ext_cert_policy_explicit_text_too_long", "w_ext_cert_policy_explicit_text_includes_control",
		"w_ext_cert_policy_explicit_text_not_nfc", "w_ext_cert_policy_explicit_text_not_utf8"}},
}

func neverApplies() []string {
	var out []string
	for _, g := range zlintNeverApplies {
		out = append(out, g.lints...)
	}
	return out
}

func newZlinter(caPub crypto.PublicKey) (*zlinter, error) {
	sig, err := placeholderSignature(caPub)
	if err != nil {
		return nil, err
	}
	return &zlinter{placeholder: sig}, nil
}

func (z *zlinter) init() error {
	z.once.Do(func() { z.err = z.build() })
	return z.err
}

func (z *zlinter) build() error {
	var err error
	if z.smime, err = lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{lint.CABFSMIMEBaselineRequirements, lint.RFC5280},
		ExcludeNames:   neverApplies(),
	}); err != nil {
		return fmt.Errorf("ca: zlint registry: %w", err)
	}
	if z.rfc, err = lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{lint.RFC5280},
		ExcludeNames:   neverApplies(),
	}); err != nil {
		return fmt.Errorf("ca: zlint registry: %w", err)
	}
	z.smimeLints, z.smimeConf = gateLints(z.smime), z.smime.GetConfiguration()
	z.rfcLints, z.rfcConf = gateLints(z.rfc), z.rfc.GetConfiguration()
	return nil
}

// gateLint is a certificate lint of the gate, with the one instance of it that every
// certificate shares, if sharing is safe.
type gateLint struct {
	*lint.CertificateLint
	// shared is nil for a lint that run asks zlint to execute, which makes a new instance
	// (and configures it) for each certificate.
	shared lint.CertificateLintInterface
}

// sharedLints are the lints whose instance has fields, shared across certificates and
// goroutines because their CheckApplies and Execute only read them: the fields are made by
// the constructor. An upgrade of zlint must check them again (TestZlintSharedLints lists
// them).
var sharedLints = map[string]string{
	"e_mailbox_validated_enforce_subject_field_restrictions": "*cabf_smime_br.mailboxValidatedEnforceSubjectFieldRestrictions",
}

// gateLints returns the certificate lints of reg, each with the instance every certificate
// shares if its type has no fields (nothing to mutate) or is in sharedLints; a lint that can
// be configured is run by zlint, with a fresh instance each time, as LintCertificateEx does.
func gateLints(reg lint.Registry) []gateLint {
	var out []gateLint
	for _, l := range reg.CertificateLints().Lints() {
		out = append(out, gateLint{CertificateLint: l, shared: shareable(l)})
	}
	return out
}

func shareable(l *lint.CertificateLint) (inst lint.CertificateLintInterface) {
	defer func() {
		if recover() != nil {
			inst = nil // its constructor panics: zlint reports that, per certificate
		}
	}()
	inst = l.Lint()
	if _, ok := inst.(lint.Configurable); ok || inst == nil {
		return nil
	}
	if t := reflect.TypeOf(inst); t.Kind() == reflect.Pointer && t.Elem().Size() == 0 ||
		sharedLints[l.Name] == t.String() {
		return inst
	}
	return nil
}

// frameworkScope is zlint's scoping of the CA/Browser Forum sources (lint.CertificateLint's
// execute), decided once per certificate instead of once per lint: a lint of the TLS,
// S/MIME or code-signing requirements applies only to a certificate of that kind.
type frameworkScope struct {
	c                              *zx509.Certificate
	serverAuth, email, codeSigning int8 // 0 not decided yet, 1 yes, -1 no
}

func (f *frameworkScope) in(l *lint.CertificateLint) bool {
	if l.OverrideFrameworkFilter {
		return true
	}
	switch l.Source {
	case lint.CABFBaselineRequirements:
		return decide(&f.serverAuth, func() bool { return util.IsServerAuthCert(f.c) })
	case lint.CABFSMIMEBaselineRequirements:
		return decide(&f.email, func() bool { return util.IsEmailProtectionCert(f.c) })
	case lint.CABFCSBaselineRequirements:
		return decide(&f.codeSigning, func() bool { return util.IsCodeSigning(f.c.PolicyIdentifiers) })
	}
	return true
}

// decide returns the memo m, computing it with f first if it is not decided yet. A panic of
// f leaves m undecided, so that every lint that asks again panics as it does in zlint.
func decide(m *int8, f func() bool) bool {
	if *m == 0 {
		v := int8(-1)
		if f() {
			v = 1
		}
		*m = v
	}
	return *m > 0
}

// execute runs the lint on c as CertificateLint.Execute does (scope, CheckApplies,
// CheckEffective, Execute; a panic is a fatal result), and returns nil for NA and NE.
func (g *gateLint) execute(c *zx509.Certificate, conf lint.Configuration, scope *frameworkScope) (r *lint.LintResult) {
	if g.shared == nil {
		return g.Execute(c, conf)
	}
	defer func() {
		if err := recover(); err != nil {
			r = &lint.LintResult{Status: lint.Fatal, Details: fmt.Sprintf("'%s' panicked. Error: %v", g.Name, err)}
		}
	}()
	if !scope.in(g.CertificateLint) || !g.shared.CheckApplies(c) || !g.CheckEffective(c) {
		return nil
	}
	return g.shared.Execute(c)
}

// run lints the certificate of l's TBS, algID and the placeholder signature with every
// certificate lint of the registry (smime picks the S/MIME one) and returns the warnings,
// errors and fatal results, sorted by lint name. The certificate is assembled in l's buffer,
// where the real one goes after.
//
// It executes each lint as zlint.LintCertificateEx does (see gateLint.execute), without what
// LintCertificateEx adds per certificate for a caller that wants every result: a sorted copy
// of all lint names, a map of all results, a result allocated for each lint that does not
// apply, a new instance of each lint, and the S/MIME scope decided again for each S/MIME lint.
func (z *zlinter) run(l linted, algID []byte) ([]Finding, error) {
	if err := z.init(); err != nil {
		return nil, err
	}
	der, err := assemble(l.buf, certHeadroom, algID, z.placeholder)
	if err != nil {
		return nil, err
	}
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: zlint cannot parse the to-be-signed certificate: %w", ErrLint, err)
	}
	lints, conf := z.rfcLints, z.rfcConf
	if l.smime {
		lints, conf = z.smimeLints, z.smimeConf
	}
	scope := frameworkScope{c: c}
	var out []Finding
	for n := range lints {
		x := &lints[n]
		if r := x.execute(c, conf, &scope); r != nil && r.Status >= lint.Warn {
			out = append(out, Finding{Lint: x.Name, Status: r.Status.String(), Details: r.Details})
		}
	}
	slices.SortFunc(out, func(a, b Finding) int { return strings.Compare(a.Lint, b.Lint) })
	return out, nil
}

// findings returns the warnings, errors and fatal results of rs, sorted by lint name.
func findings(rs *zlint.ResultSet) []Finding {
	var out []Finding
	for name, r := range rs.Results {
		if r == nil || r.Status < lint.Warn {
			continue
		}
		out = append(out, Finding{Lint: name, Status: r.Status.String(), Details: r.Details})
	}
	slices.SortFunc(out, func(a, b Finding) int { return strings.Compare(a.Lint, b.Lint) })
	return out
}

const lintAIAInternalNames = "w_smime_aia_contains_internal_names"

// zlintCheck refuses l if zlint warns or errs on it.
func (i *Issuer) zlintCheck(l linted) error {
	if i.noZlint {
		return nil
	}
	f, err := i.z.run(l, i.profile.algID)
	if err != nil {
		return err
	}
	if i.aiaIPPort {
		// zlint 3.7.3's w_smime_aia_contains_internal_names passes an IP literal only when the
		// URL has no port (it parses url.Host, port included, as an IP), and takes
		// "127.0.0.1:8080" for an internal domain name. An IP address is not a name: the
		// lint's own rule lets it through. Only this lint, only for the Issuer's own URLs.
		f = slices.DeleteFunc(f, func(x Finding) bool { return x.Lint == lintAIAInternalNames })
	}
	if len(f) == 0 {
		return nil
	}
	if i.onLint != nil {
		for _, x := range f {
			i.onLint(x.Lint)
		}
	}
	return &LintError{Findings: f}
}

// AsLintError returns the zlint findings of an error returned by [Issuer.Issue], if zlint
// refused.
func AsLintError(err error) (*LintError, bool) {
	var le *LintError
	ok := errors.As(err, &le)
	return le, ok
}
