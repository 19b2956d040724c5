package api

import (
	"encoding/asn1"
	"encoding/base64"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/policy"
)

// decodedAttrs is a CsrAttrs read back: bare OIDs, and attributes by type with their values.
type decodedAttrs struct {
	oids  []string
	attrs map[string][]asn1.RawValue
	order []string // every entry, bare OIDs and attribute types, in order
}

func decodeCSRAttrs(t *testing.T, der []byte) decodedAttrs {
	t.Helper()
	var seq []asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &seq); err != nil || len(rest) > 0 {
		t.Fatalf("CsrAttrs is not a DER SEQUENCE: %v (%d trailing bytes)", err, len(rest))
	}
	d := decodedAttrs{attrs: map[string][]asn1.RawValue{}}
	for _, e := range seq {
		switch {
		case e.Class == asn1.ClassUniversal && e.Tag == asn1.TagOID:
			var o asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(e.FullBytes, &o); err != nil {
				t.Fatal(err)
			}
			d.oids = append(d.oids, o.String())
			d.order = append(d.order, o.String())
		case e.Class == asn1.ClassUniversal && e.Tag == asn1.TagSequence:
			var a csrAttribute
			if rest, err := asn1.Unmarshal(e.FullBytes, &a); err != nil || len(rest) > 0 {
				t.Fatalf("attribute: %v", err)
			}
			if len(a.Values) == 0 {
				t.Errorf("attribute %s has no values (SET SIZE (1..MAX))", a.Type)
			}
			d.attrs[a.Type.String()] = a.Values
			d.order = append(d.order, a.Type.String())
		default:
			t.Fatalf("AttrOrOID of class %d tag %d, want an OID or an Attribute", e.Class, e.Tag)
		}
	}
	return d
}

func valueOIDs(t *testing.T, vs []asn1.RawValue) []string {
	t.Helper()
	var out []string
	for _, v := range vs {
		var o asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(v.FullBytes, &o); err != nil {
			t.Fatalf("value is not an OID: %v", err)
		}
		out = append(out, o.String())
	}
	return out
}

func valueInt(t *testing.T, vs []asn1.RawValue) int {
	t.Helper()
	if len(vs) != 1 {
		t.Fatalf("%d values, want one INTEGER", len(vs))
	}
	var n *big.Int
	if _, err := asn1.Unmarshal(vs[0].FullBytes, &n); err != nil {
		t.Fatalf("value is not an INTEGER: %v", err)
	}
	return int(n.Int64())
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func builtin(t *testing.T, name string) *policy.Template {
	t.Helper()
	ts, err := policy.Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	return ts[name]
}

// TestCSRAttrs: each template's CsrAttrs names its signature algorithms, its key types (the
// curves as id-ecPublicKey values, the smallest RSA size as the rsaEncryption value) and, for
// S/MIME templates only, emailAddress and subjectAltName.
func TestCSRAttrs(t *testing.T) {
	const (
		ecPub, rsaEnc        = "1.2.840.10045.2.1", "1.2.840.113549.1.1.1"
		p256, p384           = "1.2.840.10045.3.1.7", "1.3.132.0.34"
		ecdsa256, ecdsa384   = "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3"
		sha256RSA            = "1.2.840.113549.1.1.11"
		emailAddress, sanOID = "1.2.840.113549.1.9.1", "2.5.29.17"
	)
	tests := []struct {
		name    string
		tmpl    *policy.Template
		oids    []string // the bare OIDs, in order
		curves  []string // nil: no id-ecPublicKey attribute
		rsaBits int      // 0: no rsaEncryption attribute
	}{
		{"smime-signature (default keys)", builtin(t, policy.TemplateSMIMESignature),
			[]string{ecdsa256, ecdsa384, sha256RSA, emailAddress, sanOID}, []string{p256, p384}, 2048},
		{"smime-encryption (default keys)", builtin(t, policy.TemplateSMIMEEncryption),
			[]string{ecdsa256, ecdsa384, sha256RSA, emailAddress, sanOID}, []string{p256, p384}, 2048},
		{"kra (RSA only, no mailbox)", builtin(t, policy.TemplateKRA), []string{sha256RSA}, nil, 2048},
		{"P-384 only", &policy.Template{Name: "p384", KeyUsage: []string{policy.KUDigitalSignature},
			ExtKeyUsage: []string{policy.EKUEmailProtection}, ValidityDays: 30,
			Keys: []policy.KeyRule{{Algorithm: policy.AlgorithmECDSA, Curves: []string{policy.CurveP384}}}},
			[]string{ecdsa384, emailAddress, sanOID}, []string{p384}, 0},
		{"RSA 3072 and up", &policy.Template{Name: "rsa3072", KeyUsage: []string{policy.KUKeyEncipherment},
			ExtKeyUsage: []string{policy.EKUEmailProtection}, ValidityDays: 30,
			Keys: []policy.KeyRule{{Algorithm: policy.AlgorithmRSA, MinBits: 3072}}},
			[]string{sha256RSA, emailAddress, sanOID}, nil, 3072},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.tmpl.Validate(); err != nil {
				t.Fatal(err)
			}
			der, err := csrAttrs(tc.tmpl)
			if err != nil {
				t.Fatal(err)
			}
			d := decodeCSRAttrs(t, der)
			if !slices.Equal(d.oids, tc.oids) {
				t.Errorf("bare OIDs %v, want %v", d.oids, tc.oids)
			}
			if got, ok := d.attrs[ecPub]; ok != (tc.curves != nil) {
				t.Errorf("id-ecPublicKey attribute present=%v, want %v", ok, tc.curves != nil)
			} else if curves := valueOIDs(t, got); ok && !sameSet(curves, tc.curves) {
				// A SET OF in DER is sorted by encoding, not kept in the template's order.
				t.Errorf("curves %v, want %v", curves, tc.curves)
			}
			if got, ok := d.attrs[rsaEnc]; ok != (tc.rsaBits != 0) {
				t.Errorf("rsaEncryption attribute present=%v, want %v", ok, tc.rsaBits != 0)
			} else if ok && valueInt(t, got) != tc.rsaBits {
				t.Errorf("rsaEncryption size %d, want %d", valueInt(t, got), tc.rsaBits)
			}
			if len(d.attrs) > 2 {
				t.Errorf("unexpected attributes: %v", d.order)
			}
		})
	}
}

// TestCSRAttrsRoute: the label's CsrAttrs as base64 with the RFC 7030 headers, 404 for an
// unknown label, 204 without one.
func TestCSRAttrsRoute(t *testing.T) {
	ts, err := policy.Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &Server{svc: &escrow.Service{Templates: ts}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/est/csrattrs", a.handleCSRAttrs)
	mux.HandleFunc("GET /.well-known/est/{template}/csrattrs", a.handleCSRAttrs)
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec
	}

	rec := get("/.well-known/est/smime-signature/csrattrs")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct, cte := rec.Header().Get("Content-Type"), rec.Header().Get("Content-Transfer-Encoding"); ct != "application/csrattrs" || cte != "base64" {
		t.Errorf("Content-Type %q, Content-Transfer-Encoding %q; want application/csrattrs, base64", ct, cte)
	}
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(rec.Body.String()))
	if err != nil {
		t.Fatalf("body is not base64: %v", err)
	}
	want, _ := csrAttrs(ts[policy.TemplateSMIMESignature])
	if string(der) != string(want) {
		t.Error("body is not the template's CsrAttrs")
	}

	if rec := get("/.well-known/est/no-such-template/csrattrs"); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), policy.TemplateSMIMESignature) ||
		strings.Contains(rec.Body.String(), "no-such-template") {
		t.Errorf("unknown template: %d %q, want 404 naming the templates, not repeating the label", rec.Code, rec.Body)
	}
	if rec := get("/.well-known/est/csrattrs"); rec.Code != http.StatusNoContent || rec.Body.Len() != 0 {
		t.Errorf("without a label: %d %q, want 204 and no body", rec.Code, rec.Body)
	}
}
