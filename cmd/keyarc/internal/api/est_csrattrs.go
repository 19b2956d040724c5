package api

import (
	"encoding/asn1"
	"fmt"
	"net/http"

	"github.com/keyarc/keyarc/policy"
)

// Object identifiers of a CSR attributes response.
var (
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}      // id-ecPublicKey
	oidP256            = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}   // secp256r1
	oidP384            = asn1.ObjectIdentifier{1, 3, 132, 0, 34}            // secp384r1
	oidRSAEncryption   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}  // rsaEncryption
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}   // ecdsa-with-SHA256
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}   // ecdsa-with-SHA384
	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11} // sha256WithRSAEncryption
	oidEmailAddress    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}  // pkcs-9-at-emailAddress
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}                // id-ce-subjectAltName
)

// csrAttribute is the Attribute choice of AttrOrOID (RFC 7030 4.5.2): a type and a SET of
// values.
type csrAttribute struct {
	Type   asn1.ObjectIdentifier
	Values []asn1.RawValue `asn1:"set"`
}

// csrAttrs encodes what a request for t should hold as a DER CsrAttrs (RFC 7030 4.5.2,
// SEQUENCE OF AttrOrOID), in this order:
//
//   - the signature algorithms, as bare OIDs: ecdsa-with-SHA256 (P-256), ecdsa-with-SHA384
//     (P-384), sha256WithRSAEncryption (RSA). CheckCSR accepts any SHA-2 signature; these are
//     the ones that match the key sizes;
//   - the key types, as attributes (RFC 7030 4.5.2's own example, and RFC 9908 3.4):
//     id-ecPublicKey whose values are the accepted curves, and rsaEncryption whose value is
//     the smallest accepted modulus size in bits (an INTEGER);
//   - for an emailProtection template, the bare OIDs of emailAddress and subjectAltName: the
//     request may name the enrollee's mailbox there (and nowhere else; the CA writes the
//     mailbox into the certificate either way).
func csrAttrs(t *policy.Template) ([]byte, error) {
	w := t.CSRWants()
	var sig, names []asn1.ObjectIdentifier
	var attrs []any
	if len(w.Curves) > 0 {
		ec := csrAttribute{Type: oidECPublicKey}
		for _, c := range w.Curves {
			curve, hash := oidP256, oidECDSAWithSHA256
			if c == policy.CurveP384 {
				curve, hash = oidP384, oidECDSAWithSHA384
			}
			v, err := rawOf(curve)
			if err != nil {
				return nil, err
			}
			ec.Values = append(ec.Values, v)
			sig = append(sig, hash)
		}
		attrs = append(attrs, ec)
	}
	if w.RSA {
		v, err := rawOf(w.RSAMinBits)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, csrAttribute{Type: oidRSAEncryption, Values: []asn1.RawValue{v}})
		sig = append(sig, oidSHA256WithRSA)
	}
	if w.Mailbox {
		names = append(names, oidEmailAddress, oidSubjectAltName)
	}
	var seq []asn1.RawValue
	add := func(v any) error {
		raw, err := rawOf(v)
		seq = append(seq, raw)
		return err
	}
	for _, o := range sig {
		if err := add(o); err != nil {
			return nil, err
		}
	}
	for _, a := range attrs {
		if err := add(a); err != nil {
			return nil, err
		}
	}
	for _, o := range names {
		if err := add(o); err != nil {
			return nil, err
		}
	}
	der, err := asn1.Marshal(seq)
	if err != nil {
		return nil, fmt.Errorf("api: encode the CSR attributes of template %q: %w", t.Name, err)
	}
	return der, nil
}

// rawOf encodes v as DER and returns it as a RawValue to place in a SEQUENCE or SET.
func rawOf(v any) (asn1.RawValue, error) {
	der, err := asn1.Marshal(v)
	if err != nil {
		return asn1.RawValue{}, fmt.Errorf("api: encode a CSR attribute: %w", err)
	}
	return asn1.RawValue{FullBytes: der}, nil
}

// handleCSRAttrs serves EST csrattrs (RFC 7030 4.5): what a request for the template of the
// label should hold, as base64 DER CsrAttrs (application/csrattrs). It needs no
// authentication: it tells what the template's configuration says, nothing about anyone.
//
// Without a label (/.well-known/est/csrattrs) the template is not known before the client
// authenticates to enroll (the enrollment code or certificate decides it), so the answer is
// 204 No Content, which RFC 7030 4.5.2 allows when the server has nothing to ask for; a client
// wanting the hints asks /.well-known/est/<template>/csrattrs. An unknown label is 404.
func (a *Server) handleCSRAttrs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("template")
	if name == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	t, err := a.svc.Template(name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	der, err := csrAttrs(t)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeBase64(w, "application/csrattrs", der)
}
