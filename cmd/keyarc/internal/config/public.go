package config

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/keyarc/keyarc/escrow/ca"
)

// PublicURL is the public base URL written into every certificate (public_url): plain http://,
// a host that relying parties can reach (a public DNS name, or an IP address for development),
// no query and no fragment. Certificates point under it at
//
//	<public_url>/crl/ca.crl   the CA's CRL (cRLDistributionPoints)
//	<public_url>/ocsp         OCSP (authorityInfoAccess id-ad-ocsp)
//	<public_url>/ca.crt       the CA certificate, DER (authorityInfoAccess id-ad-caIssuers)
//
// These paths are fixed for the life of the CA: whatever serves them (keyarc's public
// listener, or a web server or CDN in front of it) must answer exactly these.
type PublicURL string

// UnmarshalYAML checks the URL where it is written, so that the error names the line.
func (p *PublicURL) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	if err := checkPublicURL(s); err != nil {
		return fmt.Errorf("line %d: %s", n.Line, err)
	}
	*p = PublicURL(s)
	return nil
}

func checkPublicURL(s string) error {
	if _, err := ca.ParsePublicURL(s); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), ca.ErrPublicURL.Error()+": "))
	}
	return nil
}

// PolicyOID is an object identifier written as dotted decimal (ca.policy_oid): the CA's own
// certificate policy, from its CP/CPS, added to every S/MIME certificate beside the reserved
// S/MIME Baseline Requirements policy.
type PolicyOID string

// UnmarshalYAML checks the OID where it is written, so that the error names the line.
func (p *PolicyOID) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	if _, err := parseOID(s); err != nil {
		return fmt.Errorf("line %d: %s", n.Line, err)
	}
	*p = PolicyOID(s)
	return nil
}

// OID returns the parsed OID, nil when none is set.
func (p PolicyOID) OID() (asn1.ObjectIdentifier, error) {
	if p == "" {
		return nil, nil
	}
	return parseOID(string(p))
}

func parseOID(s string) (asn1.ObjectIdentifier, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 3 {
		return nil, fmt.Errorf("%q is not an object identifier such as 1.3.6.1.4.1.99999.1.1 (dotted decimal, 3 arcs at least)", s)
	}
	oid := make(asn1.ObjectIdentifier, len(parts))
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || (len(p) > 1 && p[0] == '0') || (i == 0 && v > 2) || (i == 1 && v > 39 && oid[0] < 2) {
			return nil, fmt.Errorf("%q is not an object identifier such as 1.3.6.1.4.1.99999.1.1 (dotted decimal, 3 arcs at least)", s)
		}
		oid[i] = v
	}
	if ca.IsSMIMEPolicy(oid) {
		return nil, fmt.Errorf("%s is reserved for the S/MIME Baseline Requirements, which keyarc adds by itself (see smime_policy in templates); give the CA's own policy OID", s)
	}
	return oid, nil
}

// CAOptions returns the options of the CA's issuer that the configuration sets: the public
// URL and the CA's own policy OID.
func (c *Config) CAOptions() ([]ca.Option, error) {
	opts := []ca.Option{ca.WithPublicURL(string(c.PublicURL))}
	oid, err := c.CA.PolicyOID.OID()
	if err != nil {
		return nil, fmt.Errorf("ca.policy_oid: %w", err)
	}
	if oid != nil {
		opts = append(opts, ca.WithPolicy(oid))
	}
	return opts, nil
}

// DefaultPublicListen is the public listener's address when public_listen is not set: the
// address of the default public_url (http://127.0.0.1:8080), on loopback, for development.
const DefaultPublicListen = "127.0.0.1:8080"

// PublicListenAddr returns the public listener's address: public_listen, or
// [DefaultPublicListen] when it is not set.
func (c *Config) PublicListenAddr() string {
	if c.PublicListen == "" {
		return DefaultPublicListen
	}
	return c.PublicListen
}

// PublicListenDefault reports whether the public listener's address is the implicit default
// (public_listen not set), which serve does not insist on: see cmd/keyarc serve.
func (c *Config) PublicListenDefault() bool { return c.PublicListen == "" }

// checkPublicListen checks public_listen: a host:port for plain HTTP. A URL is refused, an
// https:// one with the reason: CRLs and OCSP are fetched over plain HTTP (RFC 5280 §4.2.1.13
// and RFC 6960 Appendix A: a relying party checking a TLS certificate's revocation over TLS
// would need revocation data to fetch revocation data; the S/MIME BR require http:// CDP
// URLs), and they are signed, so they need no channel security. TLS in front of keyarc (a
// web server or CDN) is the operator's choice for other clients, not keyarc's listener's.
func checkPublicListen(s string) error {
	if s == "" {
		return nil
	}
	if strings.Contains(s, "://") {
		if strings.HasPrefix(strings.ToLower(s), "https://") {
			return fmt.Errorf("public_listen: %q: the public listener serves plain HTTP only (CRLs and OCSP are signed and fetched over http://, RFC 5280 §4.2.1.13, RFC 6960 Appendix A); give host:port, such as 0.0.0.0:80", s)
		}
		return fmt.Errorf("public_listen: %q is a URL; give host:port, such as 0.0.0.0:80 (public_url is where certificates point)", s)
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("public_listen: %q is not host:port, such as 0.0.0.0:80", s)
	}
	if port == "443" {
		return fmt.Errorf("public_listen: %q: port 443 is for TLS, and the public listener serves plain HTTP only (CRLs and OCSP are signed and fetched over http://); use port 80 or another", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("public_listen: %q: port %q is not a number in 0..65535", s, port)
	}
	return nil
}

// validPort reports whether port is a TCP port number, 1..65535.
func validPort(port string) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}
