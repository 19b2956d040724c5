package policy

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"testing"
)

// FuzzCheckCSR feeds DER bytes to the parser and, when they parse, to CheckCSR under every
// built-in template: it must never panic, and every refusal must be a *RejectError.
// Seeds: testdata/fuzz/FuzzCheckCSR (made by openssl req) and requests made here.
func FuzzCheckCSR(f *testing.F) {
	keys(f)
	f.Add(makeCSR(f, rsaKey, nil).Raw)
	f.Add(makeCSR(f, p256Key, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{mailbox} }).Raw)
	f.Add(makeCSR(f, p384Key, func(r *x509.CertificateRequest) {
		r.DNSNames = []string{"x.example"}
		r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}}
	}).Raw)
	f.Add(makeCSR(f, p256Key, func(r *x509.CertificateRequest) { r.Subject.CommonName = "a\nb" }).Raw)
	tmpls, err := Templates(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		for _, tmpl := range tmpls {
			err := tmpl.CheckCSR(csr, mailbox)
			var re *RejectError
			if err != nil && (!errors.As(err, &re) || !errors.Is(err, ErrRejected)) {
				t.Fatalf("%s: unexpected error type %T: %v", tmpl.Name, err, err)
			}
		}
	})
}
