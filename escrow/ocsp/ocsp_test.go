package ocsp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"
)

type pki struct {
	ca, leaf, responder *x509.Certificate
	caKey, respKey      crypto.Signer
}

func newPKI(t testing.TB, respKey crypto.Signer) *pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA", Organization: []string{"keyarc"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, pub crypto.PublicKey, eku []x509.ExtKeyUsage) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if respKey == nil {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		respKey = k
	}
	return &pki{ca: ca, caKey: caKey, respKey: respKey,
		leaf:      issue(0x3aff00112233, leafKey.Public(), []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}),
		responder: issue(77, respKey.Public(), []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning})}
}

// TestParseRequestCrossCheck parses requests made by x/crypto/ocsp (SHA-1 and SHA-256), and
// has x/crypto/ocsp parse the requests MarshalRequest makes.
func TestParseRequestCrossCheck(t *testing.T) {
	p := newPKI(t, nil)
	is, err := NewIssuer(p.ca)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		der, err := xocsp.CreateRequest(p.leaf, p.ca, &xocsp.RequestOptions{Hash: h})
		if err != nil {
			t.Fatal(err)
		}
		req, err := ParseRequest(der)
		if err != nil {
			t.Fatalf("%v: %v", h, err)
		}
		if len(req.CertIDs) != 1 || req.CertIDs[0].Hash != h || req.CertIDs[0].Serial.Cmp(p.leaf.SerialNumber) != 0 || !is.Matches(req.CertIDs[0]) {
			t.Fatalf("%v: parsed %+v", h, req.CertIDs)
		}
		mine, err := MarshalRequest([]CertID{is.CertID(h, p.leaf.SerialNumber)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := xocsp.ParseRequest(mine)
		if err != nil {
			t.Fatalf("x/crypto/ocsp cannot parse MarshalRequest's output: %v", err)
		}
		if theirs.HashAlgorithm != h || theirs.SerialNumber.Cmp(p.leaf.SerialNumber) != 0 {
			t.Fatalf("x/crypto/ocsp read %+v", theirs)
		}
	}
	other := newPKI(t, nil)
	der, _ := xocsp.CreateRequest(p.leaf, other.ca, nil)
	req, err := ParseRequest(der)
	if err != nil || is.Matches(req.CertIDs[0]) {
		t.Fatalf("a CertID of another issuer matched our CA (err %v)", err)
	}
	nonce := []byte("0123456789abcdef")
	der, _ = MarshalRequest([]CertID{is.CertID(crypto.SHA1, big.NewInt(5)), is.CertID(crypto.SHA256, big.NewInt(6))}, nonce)
	req, err = ParseRequest(der)
	if err != nil || len(req.CertIDs) != 2 || string(req.Nonce) != string(nonce) {
		t.Fatalf("two CertIDs and a nonce: %+v, %v", req, err)
	}
}

// TestSignCrossCheck signs good and revoked responses and reads them with x/crypto/ocsp,
// which checks the signature, the responder certificate's issuer and the fields.
func TestSignCrossCheck(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []crypto.Signer{nil, rsaKey} {
		p := newPKI(t, key)
		r, err := NewResponder(p.ca, p.responder, p.respKey, nil)
		if err != nil {
			t.Fatal(err)
		}
		produced := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
		r = r.WithClock(func() time.Time { return produced })
		this := produced.Add(-time.Minute)
		next := this.Add(7 * 24 * time.Hour)
		revokedAt := this.Add(-time.Hour)
		tests := []struct {
			name       string
			st         Status
			wantStatus int
			wantReason int
		}{
			{"good", Status{Serial: p.leaf.SerialNumber, ThisUpdate: this, NextUpdate: next}, xocsp.Good, 0},
			{"keyCompromise", Status{Serial: p.leaf.SerialNumber, Revoked: true, RevokedAt: revokedAt, Reason: 1, ThisUpdate: this, NextUpdate: next}, xocsp.Revoked, 1},
			{"unspecified", Status{Serial: p.leaf.SerialNumber, Revoked: true, RevokedAt: revokedAt, Reason: 0, ThisUpdate: this, NextUpdate: next}, xocsp.Revoked, 0},
			{"superseded", Status{Serial: p.leaf.SerialNumber, Revoked: true, RevokedAt: revokedAt, Reason: 4, ThisUpdate: this, NextUpdate: next}, xocsp.Revoked, 4},
		}
		for _, tt := range tests {
			der, err := r.Sign(tt.st)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			resp, err := xocsp.ParseResponseForCert(der, p.leaf, p.ca)
			if err != nil {
				t.Fatalf("%s: x/crypto/ocsp: %v", tt.name, err)
			}
			if resp.Status != tt.wantStatus || resp.RevocationReason != tt.wantReason {
				t.Errorf("%s: status %d reason %d, want %d %d", tt.name, resp.Status, resp.RevocationReason, tt.wantStatus, tt.wantReason)
			}
			if !resp.ProducedAt.Equal(produced) || !resp.ThisUpdate.Equal(this) || !resp.NextUpdate.Equal(next) {
				t.Errorf("%s: times %v %v %v", tt.name, resp.ProducedAt, resp.ThisUpdate, resp.NextUpdate)
			}
			if tt.wantStatus == xocsp.Revoked && !resp.RevokedAt.Equal(revokedAt) {
				t.Errorf("%s: revokedAt %v", tt.name, resp.RevokedAt)
			}
			if resp.Certificate == nil || !resp.Certificate.Equal(p.responder) {
				t.Errorf("%s: responder certificate not in certs", tt.name)
			}
			if len(resp.ResponderKeyHash) != 20 || resp.RawResponderName != nil {
				t.Errorf("%s: responderID is not byKey", tt.name)
			}
			if len(resp.Extensions) != 0 {
				t.Errorf("%s: single extensions %v (BR §7.3.2: no reasonCode there)", tt.name, resp.Extensions)
			}
			// The SHA-256 CertID is there too (x/crypto reads the first of the serial).
			if resp.IssuerHash != crypto.SHA1 {
				t.Errorf("%s: first CertID hash %v", tt.name, resp.IssuerHash)
			}
		}
	}
}

func TestSignRefuses(t *testing.T) {
	p := newPKI(t, nil)
	r, err := NewResponder(p.ca, p.responder, p.respKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for name, st := range map[string]Status{
		"no serial":       {ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
		"next before":     {Serial: big.NewInt(1), ThisUpdate: now, NextUpdate: now},
		"no revokedAt":    {Serial: big.NewInt(1), Revoked: true, ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
		"certificateHold": {Serial: big.NewInt(1), Revoked: true, RevokedAt: now, Reason: 6, ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
		"reason 7":        {Serial: big.NewInt(1), Revoked: true, RevokedAt: now, Reason: 7, ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
		"good w/ reason":  {Serial: big.NewInt(1), Reason: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
	} {
		if _, err := r.Sign(st); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

func TestNewResponderRefuses(t *testing.T) {
	p := newPKI(t, nil)
	other := newPKI(t, nil)
	if _, err := NewResponder(p.ca, p.leaf, p.respKey, nil); !errors.Is(err, ErrResponderCert) {
		t.Errorf("no OCSPSigning EKU: %v", err)
	}
	if _, err := NewResponder(other.ca, p.responder, p.respKey, nil); !errors.Is(err, ErrResponderCert) {
		t.Errorf("another CA: %v", err)
	}
	if _, err := NewResponder(p.ca, p.responder, other.respKey, nil); !errors.Is(err, ErrResponderCert) {
		t.Errorf("another key: %v", err)
	}
	if _, err := NewResponder(p.ca, p.responder, p.respKey, []crypto.Hash{crypto.MD5}); !errors.Is(err, ErrUnsupportedHash) {
		t.Errorf("MD5: %v", err)
	}
}

func TestErrorResponse(t *testing.T) {
	for _, s := range []ResponseStatus{MalformedRequest, InternalError, TryLater, SigRequired, Unauthorized} {
		_, err := xocsp.ParseResponse(ErrorResponse(s), nil)
		var re xocsp.ResponseError
		if !errors.As(err, &re) || int(re.Status) != int(s) {
			t.Errorf("%v: x/crypto/ocsp read %v", s, err)
		}
	}
}

func TestParseRequestRefuses(t *testing.T) {
	p := newPKI(t, nil)
	is, _ := NewIssuer(p.ca)
	good, _ := MarshalRequest([]CertID{is.CertID(crypto.SHA1, big.NewInt(9))}, nil)
	five := make([]CertID, MaxCertIDs+1)
	for i := range five {
		five[i] = is.CertID(crypto.SHA256, big.NewInt(int64(i+1)))
	}
	tooMany, _ := MarshalRequest(five, nil)
	badHash := is.CertID(crypto.SHA1, big.NewInt(9))
	badHash.IssuerKeyHash = badHash.IssuerKeyHash[:19]
	shortHash, _ := MarshalRequest([]CertID{badHash}, nil)
	huge := is.CertID(crypto.SHA1, new(big.Int).Lsh(big.NewInt(1), 8*40))
	hugeSerial, _ := MarshalRequest([]CertID{huge}, nil)
	md5 := append([]byte{}, good...)
	// Swap the SHA-1 OID (1.3.14.3.2.26) for 1.3.14.3.2.29 (sha1WithRSASignature, not a hash).
	for i := 0; i+5 <= len(md5); i++ {
		if string(md5[i:i+5]) == "\x2b\x0e\x03\x02\x1a" {
			md5[i+4] = 0x1d
		}
	}
	tests := []struct {
		name    string
		der     []byte
		wantErr error
	}{
		{"empty", nil, ErrMalformed},
		{"garbage", []byte("hello, responder"), ErrMalformed},
		{"truncated", good[:len(good)-3], ErrMalformed},
		{"trailing", append(append([]byte{}, good...), 0), ErrMalformed},
		{"too many", tooMany, ErrMalformed},
		{"short hash", shortHash, ErrMalformed},
		{"huge serial", hugeSerial, ErrMalformed},
		{"oversized", make([]byte, MaxRequestSize+1), ErrTooLarge},
		{"empty list", []byte{0x30, 0x04, 0x30, 0x02, 0x30, 0x00}, ErrMalformed},
		{"other hash", md5, ErrUnsupportedHash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRequest(tt.der)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeGET(t *testing.T) {
	p := newPKI(t, nil)
	is, _ := NewIssuer(p.ca)
	var der []byte
	// Find a request whose base64 has '+', '/' and '=' in it.
	for n := int64(1); ; n++ {
		der, _ = MarshalRequest([]CertID{is.CertID(crypto.SHA1, big.NewInt(n))}, nil)
		s := base64.StdEncoding.EncodeToString(der)
		if containsAll(s, "+/=") {
			break
		}
		if n > 100000 {
			t.Fatal("no request with + / = in its base64")
		}
	}
	std := base64.StdEncoding.EncodeToString(der)
	for name, path := range map[string]string{
		"plain":       std,
		"escaped":     url.PathEscape(std),
		"all escaped": url.QueryEscape(std),
		"url-safe":    base64.RawURLEncoding.EncodeToString(der),
	} {
		got, err := DecodeGET(path)
		if err != nil || string(got) != string(der) {
			t.Errorf("%s (%s): %v", name, path, err)
		}
	}
	if _, err := DecodeGET("%zz"); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad escape: %v", err)
	}
	if _, err := DecodeGET("!!!!"); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad base64: %v", err)
	}
	if _, err := DecodeGET(string(make([]byte, 20000))); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge: %v", err)
	}
}

func containsAll(s, chars string) bool {
	for _, c := range chars {
		found := false
		for _, d := range s {
			if c == d {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func BenchmarkSignSoftware(b *testing.B) {
	p := newPKI(b, nil)
	r, _ := NewResponder(p.ca, p.responder, p.respKey, nil)
	now := time.Now()
	st := Status{Serial: p.leaf.SerialNumber, ThisUpdate: now, NextUpdate: now.Add(time.Hour)}
	for b.Loop() {
		if _, err := r.Sign(st); err != nil {
			b.Fatal(err)
		}
	}
}
