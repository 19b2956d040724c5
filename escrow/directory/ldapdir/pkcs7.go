package ldapdir

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
)

// CertsOnly encodes the userSMIMECertificate value of cert: a degenerate PKCS#7 SignedData
// (RFC 2315, RFC 5652 §5 "certs-only") holding cert and, when not nil, the CA certificate. The
// encoding is deterministic: the same certificates give the same bytes.
func CertsOnly(cert, ca *x509.Certificate) ([]byte, error) {
	if cert == nil {
		return nil, errors.New("ldapdir: no certificate")
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(ci *cryptobyte.Builder) {
		ci.AddASN1ObjectIdentifier(oidSignedData)
		ci.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(ex *cryptobyte.Builder) {
			ex.AddASN1(cbasn1.SEQUENCE, func(sd *cryptobyte.Builder) {
				sd.AddASN1Int64(1)                                   // version
				sd.AddASN1(cbasn1.SET, func(*cryptobyte.Builder) {}) // digestAlgorithms
				sd.AddASN1(cbasn1.SEQUENCE, func(eci *cryptobyte.Builder) {
					eci.AddASN1ObjectIdentifier(oidData)
				})
				sd.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(cs *cryptobyte.Builder) {
					cs.AddBytes(cert.Raw)
					if ca != nil {
						cs.AddBytes(ca.Raw)
					}
				})
				sd.AddASN1(cbasn1.SET, func(*cryptobyte.Builder) {}) // signerInfos
			})
		})
	})
	return b.Bytes()
}

// Certificates returns the certificates of a PKCS#7 SignedData (a userSMIMECertificate value),
// or nil when v is not one. Certificates that do not parse are left out.
func Certificates(v []byte) []*x509.Certificate {
	in := cryptobyte.String(v)
	var ci, content, sd, certs cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !in.ReadASN1(&ci, cbasn1.SEQUENCE) || !ci.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidSignedData) ||
		!ci.ReadASN1(&content, cbasn1.Tag(0).Constructed().ContextSpecific()) || !content.ReadASN1(&sd, cbasn1.SEQUENCE) {
		return nil
	}
	var version int64
	if !sd.ReadASN1Integer(&version) || !sd.SkipASN1(cbasn1.SET) || !sd.SkipASN1(cbasn1.SEQUENCE) {
		return nil
	}
	var present bool
	if !sd.ReadOptionalASN1(&certs, &present, cbasn1.Tag(0).Constructed().ContextSpecific()) || !present {
		return nil
	}
	var out []*x509.Certificate
	for !certs.Empty() {
		var raw cryptobyte.String
		if !certs.ReadASN1Element(&raw, cbasn1.SEQUENCE) {
			return out
		}
		if c, err := x509.ParseCertificate(raw); err == nil {
			out = append(out, c)
		}
	}
	return out
}

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
