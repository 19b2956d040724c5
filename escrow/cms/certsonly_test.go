package cms

import (
	"bytes"
	"strings"
	"testing"
)

// TestCertsOnly checks the certs-only encoding against openssl, its parse back, and that it is
// deterministic.
func TestCertsOnly(t *testing.T) {
	needOpenSSL(t)
	tr := loadTransport(t)
	_, other := otherCert(t)

	der, err := CertsOnly(tr.cert, other)
	if err != nil {
		t.Fatal(err)
	}
	again, err := CertsOnly(tr.cert, other)
	if err != nil || !bytes.Equal(der, again) {
		t.Fatalf("two encodings of the same certificates differ (err %v)", err)
	}
	printed := string(openssl(t, der, "pkcs7", "-inform", "DER", "-print_certs", "-noout"))
	for _, c := range []string{tr.cert.Subject.CommonName, other.Subject.CommonName} {
		if !strings.Contains(printed, c) {
			t.Errorf("openssl pkcs7 -print_certs does not show %q:\n%s", c, printed)
		}
	}
	got := CertsOnlyCertificates(der)
	if len(got) != 2 || !bytes.Equal(got[0].Raw, tr.cert.Raw) || !bytes.Equal(got[1].Raw, other.Raw) {
		t.Fatalf("parsed back %d certificates, want the two encoded, in order", len(got))
	}

	empty, err := CertsOnly()
	if err != nil {
		t.Fatal(err)
	}
	openssl(t, empty, "pkcs7", "-inform", "DER", "-noout")
	if cs := CertsOnlyCertificates(empty); len(cs) != 0 {
		t.Errorf("an empty certs-only gave %d certificates", len(cs))
	}
	for name, v := range map[string][]byte{"a certificate": tr.cert.Raw, "nothing": nil, "truncated": der[:len(der)/2]} {
		if cs := CertsOnlyCertificates(v); cs != nil {
			t.Errorf("%s parsed as a SignedData with %d certificates", name, len(cs))
		}
	}
}
