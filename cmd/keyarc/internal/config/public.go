package config

import (
	"encoding/asn1"
	"errors"
	"fmt"
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
