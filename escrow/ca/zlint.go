package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
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

// LintError is a refusal by zlint: the to-be-signed certificate, signed with a throwaway key,
// drew at least one warning or error. Nothing was signed by the CA key. It matches [ErrLint]
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
// Encrypt's boulder does: the template is signed by a throwaway key of the CA key's algorithm
// and size under a throwaway issuer certificate that has the CA's subject, and the result is
// linted. The key, the issuer and the two filtered registries are made once per Issuer, on
// first use (an RSA-4096 throwaway key takes a second to make, which commands that issue
// nothing should not pay).
type zlinter struct {
	caCert *x509.Certificate
	sigAlg x509.SignatureAlgorithm

	once   sync.Once
	err    error
	key    crypto.Signer
	issuer *x509.Certificate
	// smime lints S/MIME certificates (sources CABF_SMIME_BR and RFC5280); rfc every other
	// certificate (RFC5280 only: the S/MIME lints presume an S/MIME subscriber certificate,
	// and the CA/Browser Forum's TLS lints do not apply to keyarc's TLS client and server
	// certificates, which no public browser trusts).
	smime, rfc lint.Registry
}

func newZlinter(caCert *x509.Certificate, sigAlg x509.SignatureAlgorithm) *zlinter {
	return &zlinter{caCert: caCert, sigAlg: sigAlg}
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
	if z.key, err = throwawayKey(z.caCert.PublicKey); err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          z.caCert.SerialNumber,
		RawSubject:            z.caCert.RawSubject,
		NotBefore:             z.caCert.NotBefore,
		NotAfter:              z.caCert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          z.caCert.SubjectKeyId,
		SignatureAlgorithm:    z.sigAlg,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, z.key.Public(), z.key)
	if err != nil {
		return fmt.Errorf("ca: zlint issuer: %w", err)
	}
	if z.issuer, err = x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("ca: zlint issuer: %w", err)
	}
	return nil
}

// throwawayKey makes a software key of the same algorithm and size as pub.
func throwawayKey(pub crypto.PublicKey) (crypto.Signer, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.GenerateKey(k.Curve, rand.Reader)
	case *rsa.PublicKey:
		return rsa.GenerateKey(rand.Reader, k.N.BitLen())
	case ed25519.PublicKey:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// run signs tmpl with the throwaway key and lints it; smime picks the S/MIME registry.
func (z *zlinter) run(tmpl *x509.Certificate, pub crypto.PublicKey, smime bool) (*zlint.ResultSet, error) {
	if err := z.init(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, z.issuer, pub, z.key)
	if err != nil {
		return nil, fmt.Errorf("%w: the to-be-signed certificate cannot be made: %w", ErrLint, err)
	}
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: zlint cannot parse the to-be-signed certificate: %w", ErrLint, err)
	}
	reg := z.rfc
	if smime {
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

// zlintCheck refuses tmpl if zlint warns or errs on it.
func (i *Issuer) zlintCheck(l linted, pub crypto.PublicKey) error {
	if i.noZlint {
		return nil
	}
	rs, err := i.z.run(l.tmpl, pub, l.smime)
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
