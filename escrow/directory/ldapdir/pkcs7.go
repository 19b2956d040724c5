package ldapdir

import (
	"crypto/x509"
	"errors"

	"github.com/keyarc/keyarc/escrow/cms"
)

// CertsOnly encodes the userSMIMECertificate value of cert: a certs-only SignedData
// ([cms.CertsOnly]) holding cert and, when not nil, the CA certificate.
func CertsOnly(cert, ca *x509.Certificate) ([]byte, error) {
	if cert == nil {
		return nil, errors.New("ldapdir: no certificate")
	}
	if ca == nil {
		return cms.CertsOnly(cert)
	}
	return cms.CertsOnly(cert, ca)
}

// Certificates returns the certificates of a userSMIMECertificate value, or nil when v is not a
// SignedData ([cms.CertsOnlyCertificates]).
func Certificates(v []byte) []*x509.Certificate { return cms.CertsOnlyCertificates(v) }

// Leaf returns the one end-entity certificate (not a CA) of a userSMIMECertificate value, or
// nil when it holds none or several.
func Leaf(v []byte) *x509.Certificate {
	var leaf *x509.Certificate
	for _, c := range Certificates(v) {
		if c.BasicConstraintsValid && c.IsCA {
			continue
		}
		if leaf != nil {
			return nil
		}
		leaf = c
	}
	return leaf
}
