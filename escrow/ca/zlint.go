package ca

import (
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
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
	// certificates, which no public browser trusts).
	smime, rfc lint.Registry
	// The certificate lints of each registry and its configuration, read once: run executes
	// them itself (see run).
	smimeLints, rfcLints []*lint.CertificateLint
	smimeConf, rfcConf   lint.Configuration
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
	}); err != nil {
		return fmt.Errorf("ca: zlint registry: %w", err)
	}
	if z.rfc, err = lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{lint.RFC5280},
	}); err != nil {
		return fmt.Errorf("ca: zlint registry: %w", err)
	}
	z.smimeLints, z.smimeConf = z.smime.CertificateLints().Lints(), z.smime.GetConfiguration()
	z.rfcLints, z.rfcConf = z.rfc.CertificateLints().Lints(), z.rfc.GetConfiguration()
	return nil
}

// run lints the certificate of l's TBS, algID and the placeholder signature with every
// certificate lint of the registry (smime picks the S/MIME one) and returns the warnings,
// errors and fatal results, sorted by lint name. The certificate is assembled in l's buffer,
// where the real one goes after.
//
// It executes each lint as zlint.LintCertificateEx does (CertificateLint.Execute with the
// registry's configuration), without what LintCertificateEx adds per certificate for a
// caller that wants every result: a sorted copy of all lint names and a map of all results.
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
	var out []Finding
	for _, x := range lints {
		if r := x.Execute(c, conf); r != nil && r.Status >= lint.Warn {
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
