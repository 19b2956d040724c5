package ca

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/zmap/zlint/v3/util"
)

// ErrPublicURL means a public base URL cannot go into certificates.
var ErrPublicURL = errors.New("ca: invalid public URL")

// DefaultPublicURL is the public base URL of a development install: the loopback address
// where a later `keyarc serve` answers plain HTTP for CRLs, OCSP and the CA certificate. An
// Issuer made without [WithPublicURL] writes it into certificates.
const DefaultPublicURL = "http://127.0.0.1:8080"

// Paths under the public base URL. They are written into every end-entity certificate, so
// they are fixed for the life of the CA: a server of CRLs, OCSP and the CA certificate must
// answer exactly these.
const (
	// CRLPath serves the CA's full CRL (DER, application/pkix-crl): the cRLDistributionPoints
	// URL.
	CRLPath = "/crl/ca.crl"
	// OCSPPath answers OCSP (RFC 6960 / RFC 5019, GET and POST): the AIA id-ad-ocsp URL.
	OCSPPath = "/ocsp"
	// CACertPath serves the CA certificate (DER, application/pkix-cert): the AIA
	// id-ad-caIssuers URL.
	CACertPath = "/ca.crt"
)

// PublicURLs are the URLs written into certificates, all under one plain-HTTP base.
type PublicURLs struct {
	Base   string // e.g. http://pki.example.org or http://pki.example.org/keyarc
	CRL    string // Base + CRLPath
	OCSP   string // Base + OCSPPath
	CACert string // Base + CACertPath
}

// ParsePublicURL checks base and returns the URLs under it. The CA/Browser Forum S/MIME
// Baseline Requirements (7.1.2.3) want http:// for the CRL distribution point and the AIA,
// which relying parties fetch without TLS (a CRL fetch must not need a revocation check of its
// own), so base must be an absolute http:// URL with a host, no user information, no query and
// no fragment. A trailing slash is dropped. The error wraps [ErrPublicURL] and says what to
// change.
func ParsePublicURL(base string) (PublicURLs, error) {
	u, err := url.Parse(base)
	if err != nil {
		return PublicURLs{}, fmt.Errorf("%w: %q is not a URL such as http://pki.example.org", ErrPublicURL, base)
	}
	switch {
	case u.Scheme != "http":
		return PublicURLs{}, fmt.Errorf("%w: %q must start with http:// (CRLs, OCSP and the CA certificate are fetched over plain HTTP, as the S/MIME Baseline Requirements ask)", ErrPublicURL, base)
	case u.Host == "" || u.Hostname() == "":
		return PublicURLs{}, fmt.Errorf("%w: %q has no host", ErrPublicURL, base)
	case u.User != nil:
		return PublicURLs{}, fmt.Errorf("%w: %q must not carry user information", ErrPublicURL, base)
	case u.RawQuery != "" || u.ForceQuery:
		return PublicURLs{}, fmt.Errorf("%w: %q must not have a query (?...)", ErrPublicURL, base)
	case u.Fragment != "" || strings.Contains(base, "#"):
		return PublicURLs{}, fmt.Errorf("%w: %q must not have a fragment (#...)", ErrPublicURL, base)
	case u.Opaque != "":
		return PublicURLs{}, fmt.Errorf("%w: %q is not a URL such as http://pki.example.org", ErrPublicURL, base)
	case net.ParseIP(u.Hostname()) == nil && !util.HasValidTLD(u.Hostname(), time.Now()):
		// zlint's w_smime_aia_contains_internal_names would refuse every S/MIME certificate.
		return PublicURLs{}, fmt.Errorf("%w: %q: host %q is an internal name; relying parties fetch these URLs from anywhere: use a name under a public top-level domain, or an IP address (development)", ErrPublicURL, base, u.Hostname())
	}
	b := strings.TrimRight(u.String(), "/")
	return PublicURLs{Base: b, CRL: b + CRLPath, OCSP: b + OCSPPath, CACert: b + CACertPath}, nil
}

// The reserved S/MIME policy OIDs are [policy.OIDSMIMEMailboxStrict] and its siblings; an
// S/MIME certificate carries exactly one OID under 2.23.140.1.5.
var oidSMIMEArc = asn1.ObjectIdentifier{2, 23, 140, 1, 5}

// IsSMIMEPolicy reports whether oid lies in the arc reserved for the S/MIME Baseline
// Requirements (2.23.140.1.5).
func IsSMIMEPolicy(oid asn1.ObjectIdentifier) bool {
	return len(oid) > len(oidSMIMEArc) && oid[:len(oidSMIMEArc)].Equal(oidSMIMEArc)
}

// Option configures an [Issuer] made by [New].
type Option func(*Issuer) error

// WithPublicURL sets the base of the URLs the Issuer writes into end-entity certificates
// (see [ParsePublicURL] and the *Path constants). Without it, [DefaultPublicURL].
func WithPublicURL(base string) Option {
	return func(i *Issuer) error {
		u, err := ParsePublicURL(base)
		if err != nil {
			return err
		}
		i.urls = u
		return nil
	}
}

// WithPolicy adds the CA's own certificate policy OID (its CP/CPS) to every S/MIME
// certificate, beside the reserved S/MIME policy. It must not lie in the reserved arc.
func WithPolicy(oid asn1.ObjectIdentifier) Option {
	return func(i *Issuer) error {
		if len(oid) < 2 {
			return fmt.Errorf("ca: policy OID %v is too short", oid)
		}
		if IsSMIMEPolicy(oid) {
			return fmt.Errorf("ca: policy OID %v is reserved for the S/MIME Baseline Requirements; give the CA's own OID", oid)
		}
		i.caPolicy = append(asn1.ObjectIdentifier(nil), oid...)
		return nil
	}
}

// WithLintObserver calls observe with the name of every zlint lint that refused a certificate
// (once per lint and refused certificate), for a metric. observe must be safe for concurrent
// use and fast; it must not call the Issuer.
func WithLintObserver(observe func(lint string)) Option {
	return func(i *Issuer) error {
		i.onLint = observe
		return nil
	}
}

// ipWithPort reports whether the base URL's host is an IP address with an explicit port.
func (u PublicURLs) ipWithPort() bool {
	p, err := url.Parse(u.Base)
	return err == nil && p.Port() != "" && net.ParseIP(p.Hostname()) != nil
}
