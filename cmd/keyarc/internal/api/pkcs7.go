package api

import (
	"crypto/x509"
	"encoding/asn1"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
)

// certsOnly encodes a degenerate CMS SignedData holding only certificates (RFC 5652 section 5,
// "certs-only"), the form EST uses for /cacerts and enrollment responses (RFC 7030 4.1.3).
func certsOnly(certs []*x509.Certificate) ([]byte, error) {
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
					for _, c := range certs {
						cs.AddBytes(c.Raw)
					}
				})
				sd.AddASN1(cbasn1.SET, func(*cryptobyte.Builder) {}) // signerInfos
			})
		})
	})
	return b.Bytes()
}
