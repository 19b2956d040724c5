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
// error. Nothing was signed by the CA key. It matches [ErrLint]
// with errors.Is.
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
	return nil
}

// run lints the certificate of l's TBS, algID and the placeholder signature; smime picks the
// S/MIME registry. The certificate is assembled in l's buffer, where the real one goes after.
func (z *zlinter) run(l linted, algID []byte) (*zlint.ResultSet, error) {
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
	reg := z.rfc
	if l.smime {
		reg = z.smime
	}
	return zlint.LintCertificateEx(c, reg), nil
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
	rs, err := i.z.run(l, i.profile.algID)
	if err != nil {
		return err
	}
	f := findings(rs)
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
