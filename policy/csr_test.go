package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
)

const mailbox = "alice@example.com"

var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	p256Key  *ecdsa.PrivateKey
	p384Key  *ecdsa.PrivateKey
	p521Key  *ecdsa.PrivateKey
	edKey    ed25519.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		p256Key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		p384Key, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		p521Key, _ = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		_, edKey, _ = ed25519.GenerateKey(rand.Reader)
	})
}

// makeCSR returns a parsed CSR built by crypto/x509.
func makeCSR(t testing.TB, key crypto.Signer, edit func(*x509.CertificateRequest)) *x509.CertificateRequest {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "Alice Example", Organization: []string{"Example"}}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("ParseCertificateRequest: %v", err)
	}
	return csr
}

// resign re-signs the TBS part of a CSR by hand with any algorithm, so tests can make requests
// that crypto/x509 refuses to make (MD5) or corrupt the signature.
func resign(t testing.TB, csr *x509.CertificateRequest, algOID asn1.ObjectIdentifier, sign func([]byte) []byte) *x509.CertificateRequest {
	t.Helper()
	outer := struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{
		TBS: asn1.RawValue{FullBytes: csr.RawTBSCertificateRequest},
		Alg: pkix.AlgorithmIdentifier{Algorithm: algOID, Parameters: asn1.NullRawValue},
	}
	sig := sign(csr.RawTBSCertificateRequest)
	outer.Sig = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	der, err := asn1.Marshal(outer)
	if err != nil {
		t.Fatal(err)
	}
	out, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("parse hand-built CSR: %v", err)
	}
	return out
}

func sanExt(t testing.TB, names ...asn1.RawValue) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidSAN, Value: v}
}

func gn(tag int, b []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, Bytes: b}
}

func ext(t testing.TB, oid asn1.ObjectIdentifier, v any) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oid, Value: b}
}

func TestCheckCSR(t *testing.T) {
	keys(t)
	tmpls, err := Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	enc, kra := tmpls[TemplateSMIMEEncryption], tmpls[TemplateKRA]

	type tc struct {
		name    string
		tmpl    *Template // default enc
		csr     func(t *testing.T) *x509.CertificateRequest
		mailbox string // default mailbox
		wantErr error
	}
	withKey := func(k crypto.Signer, edit func(*x509.CertificateRequest)) func(t *testing.T) *x509.CertificateRequest {
		return func(t *testing.T) *x509.CertificateRequest { return makeCSR(t, k, edit) }
	}
	subj := func(s pkix.Name) func(*x509.CertificateRequest) {
		return func(r *x509.CertificateRequest) { r.Subject = s }
	}
	tests := []tc{
		{name: "rsa no extensions", csr: withKey(rsaKey, nil)},
		{name: "p256 san mailbox", csr: withKey(p256Key, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{mailbox} })},
		{name: "p384 san domain case", csr: withKey(p384Key, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"alice@EXAMPLE.com"} })},
		{name: "empty subject", csr: withKey(p256Key, subj(pkix.Name{}))},
		{name: "subject email and cn are the mailbox", csr: withKey(p256Key, subj(pkix.Name{
			CommonName: mailbox,
			ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidEmailAddress, Value: mailbox}},
		}))},
		{name: "unicode name", csr: withKey(p256Key, subj(pkix.Name{CommonName: "Zoë Ñúñez 山田", Country: []string{"DE"}}))},
		{name: "kra rsa", tmpl: kra, csr: withKey(rsaKey, nil)},

		{name: "nil csr", csr: func(*testing.T) *x509.CertificateRequest { return nil }, wantErr: ErrRejected},
		{name: "invalid mailbox", csr: withKey(rsaKey, nil), mailbox: "alice", wantErr: ErrInvalidMailbox},

		{name: "sha1 rsa", csr: withKey(rsaKey, func(r *x509.CertificateRequest) { r.SignatureAlgorithm = x509.SHA1WithRSA }), wantErr: ErrWeakSignature},
		{name: "sha1 ecdsa", csr: withKey(p256Key, func(r *x509.CertificateRequest) { r.SignatureAlgorithm = x509.ECDSAWithSHA1 }), wantErr: ErrWeakSignature},
		{name: "md5 rsa hand-built", csr: func(t *testing.T) *x509.CertificateRequest {
			return resign(t, makeCSR(t, rsaKey, nil), asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 4}, func(tbs []byte) []byte {
				h := md5.Sum(tbs)
				s, err := rsa.SignPKCS1v15(rand.Reader, rsaKey, crypto.MD5, h[:])
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		}, wantErr: ErrWeakSignature},
		{name: "bad signature", csr: func(t *testing.T) *x509.CertificateRequest {
			good := makeCSR(t, rsaKey, nil)
			return resign(t, good, asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, func([]byte) []byte {
				s := append([]byte(nil), good.Signature...)
				s[10] ^= 1
				return s
			})
		}, wantErr: ErrSignature},
		{name: "signed by another key", csr: func(t *testing.T) *x509.CertificateRequest {
			csr := makeCSR(t, p256Key, nil)
			other := makeCSR(t, p384Key, nil) // ecdsa-with-SHA384 over a different TBS
			return resign(t, csr, asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}, func([]byte) []byte { return other.Signature })
		}, wantErr: ErrSignature},

		{name: "p521", csr: withKey(p521Key, nil), wantErr: ErrKeyNotAllowed},
		{name: "ed25519", csr: withKey(edKey, nil), wantErr: ErrKeyNotAllowed},
		{name: "kra ecdsa", tmpl: kra, csr: withKey(p256Key, nil), wantErr: ErrKeyNotAllowed},

		{name: "basicConstraints", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{ext(t, asn1.ObjectIdentifier{2, 5, 29, 19}, struct{ IsCA bool }{true})}
		}), wantErr: ErrExtension},
		{name: "eku serverAuth", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{ext(t, asn1.ObjectIdentifier{2, 5, 29, 37}, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}})}
		}), wantErr: ErrExtension},
		{name: "keyUsage", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{ext(t, asn1.ObjectIdentifier{2, 5, 29, 15}, asn1.BitString{Bytes: []byte{0x80}, BitLength: 1})}
		}), wantErr: ErrExtension},
		{name: "unknown extension", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{ext(t, asn1.ObjectIdentifier{1, 2, 3, 4}, 1)}
		}), wantErr: ErrExtension},
		{name: "san other mailbox", csr: withKey(rsaKey, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"bob@example.com"} }), wantErr: ErrMailboxMismatch},
		{name: "san mailbox and another", csr: withKey(rsaKey, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{mailbox, "ceo@example.com"} }), wantErr: ErrMailboxMismatch},
		{name: "san local part case", csr: withKey(rsaKey, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"Alice@example.com"} }), wantErr: ErrMailboxMismatch},
		{name: "san dns", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.EmailAddresses = []string{mailbox}
			r.DNSNames = []string{"www.example.com"}
		}), wantErr: ErrExtension},
		{name: "san ip", csr: withKey(rsaKey, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} }), wantErr: ErrExtension},
		{name: "san uri", csr: withKey(rsaKey, func(r *x509.CertificateRequest) { r.URIs = []*url.URL{{Scheme: "https", Host: "example.com"}} }), wantErr: ErrExtension},
		{name: "san otherName hand-built", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			upn, _ := asn1.Marshal(struct {
				ID  asn1.ObjectIdentifier
				Val asn1.RawValue `asn1:"explicit,tag:0"`
			}{asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte("admin@example.com")}})
			var raw asn1.RawValue
			asn1.Unmarshal(upn, &raw)
			r.ExtraExtensions = []pkix.Extension{sanExt(t, gn(1, []byte(mailbox)), asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: raw.Bytes})}
		}), wantErr: ErrExtension},
		{name: "san directoryName hand-built", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{sanExt(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: []byte{0x30, 0x00}})}
		}), wantErr: ErrExtension},
		{name: "san empty hand-built", csr: withKey(rsaKey, func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{{Id: oidSAN, Value: []byte{0x30, 0x00}}}
		}), wantErr: ErrExtension},

		{name: "cn with newline", csr: withKey(rsaKey, subj(pkix.Name{CommonName: "Alice\nadmin"})), wantErr: ErrSubject},
		{name: "o with cr", csr: withKey(rsaKey, subj(pkix.Name{Organization: []string{"Example\r"}})), wantErr: ErrSubject},
		{name: "ou with nul", csr: withKey(rsaKey, subj(pkix.Name{OrganizationalUnit: []string{"a\x00b"}})), wantErr: ErrSubject},
		{name: "cn with bidi override", csr: withKey(rsaKey, subj(pkix.Name{CommonName: "Alice \u202egnp.exe"})), wantErr: ErrSubject},
		{name: "cn too long", csr: withKey(rsaKey, subj(pkix.Name{CommonName: strings.Repeat("a", 65)})), wantErr: ErrSubject},
		{name: "empty o", csr: withKey(rsaKey, subj(pkix.Name{Organization: []string{" "}})), wantErr: ErrSubject},
		{name: "bad country", csr: withKey(rsaKey, subj(pkix.Name{Country: []string{"Germany"}})), wantErr: ErrSubject},
		{name: "two cns", csr: withKey(rsaKey, subj(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidCommonName, Value: "Alice"}, {Type: oidCommonName, Value: "Bob"},
		}})), wantErr: ErrSubject},
		{name: "unknown attribute", csr: withKey(rsaKey, subj(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: "x"},
		}})), wantErr: ErrSubject},
		{name: "non-text attribute", csr: withKey(rsaKey, subj(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidCommonName, Value: 42},
		}})), wantErr: ErrSubject},
		{name: "subject email other", csr: withKey(rsaKey, subj(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidEmailAddress, Value: "bob@example.com"},
		}})), wantErr: ErrMailboxMismatch},
		{name: "cn other address", csr: withKey(rsaKey, subj(pkix.Name{CommonName: "ceo@example.com"})), wantErr: ErrMailboxMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := tt.tmpl
			if tmpl == nil {
				tmpl = enc
			}
			mb := tt.mailbox
			if mb == "" {
				mb = mailbox
			}
			err := tmpl.CheckCSR(tt.csr(t), mb)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckCSR() = %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				return
			}
			if errors.Is(tt.wantErr, ErrInvalidMailbox) {
				return
			}
			var re *RejectError
			if !errors.As(err, &re) || !errors.Is(err, ErrRejected) || re.Reason == "" {
				t.Fatalf("CheckCSR() = %#v, want a *RejectError wrapping ErrRejected", err)
			}
			for _, r := range err.Error() {
				if badRune(r) {
					t.Fatalf("message carries a control character: %q", err)
				}
			}
			t.Log(err)
		})
	}
}

func TestCheckCSRDuplicateExtension(t *testing.T) {
	// crypto/x509 may refuse to parse such a request; the check must refuse it too.
	san := sanExt(t, gn(1, []byte(mailbox)))
	err := checkExtensions([]pkix.Extension{san, san}, mailbox)
	if !errors.Is(err, ErrExtension) {
		t.Fatalf("got %v", err)
	}
}

func rsaPub(bits, e int) *rsa.PublicKey {
	n := new(big.Int).SetBit(big.NewInt(1), bits-1, 1)
	return &rsa.PublicKey{N: n, E: e}
}

func TestCheckPublicKey(t *testing.T) {
	keys(t)
	tmpls, err := Templates([]Template{{
		Name: "rsa3072", KeyUsage: []string{KUKeyEncipherment}, ExtKeyUsage: []string{EKUEmailProtection}, ValidityDays: 30,
		Keys: []KeyRule{{Algorithm: AlgorithmRSA, MinBits: 3072, MaxBits: 4096}},
	}, {
		Name: "p384only", KeyUsage: []string{KUKeyAgreement}, ExtKeyUsage: []string{EKUEmailProtection}, ValidityDays: 30,
		Keys: []KeyRule{{Algorithm: AlgorithmECDSA, Curves: []string{CurveP384}}},
	}, {
		Name: "encipher-only", KeyUsage: []string{KUKeyEncipherment}, ExtKeyUsage: []string{EKUEmailProtection}, ValidityDays: 30,
	}})
	if err != nil {
		t.Fatal(err)
	}
	def := tmpls[TemplateSMIMESignature]
	tests := []struct {
		name    string
		tmpl    string
		pub     crypto.PublicKey
		wantErr error
	}{
		{name: "rsa 2048", pub: rsaPub(2048, 65537)},
		{name: "rsa 16384", pub: rsaPub(16384, 65537)},
		{name: "real rsa", pub: rsaKey.Public()},
		{name: "p256", pub: p256Key.Public()},
		{name: "p384", pub: p384Key.Public()},
		{name: "rsa 4096 in 3072..4096", tmpl: "rsa3072", pub: rsaPub(4096, 65537)},
		{name: "p384 only", tmpl: "p384only", pub: p384Key.Public()},
		{name: "rsa 2047", pub: rsaPub(2047, 65537), wantErr: ErrKeyNotAllowed},
		{name: "rsa 2052 not multiple of 8", pub: rsaPub(2052, 65537), wantErr: ErrKeyNotAllowed},
		{name: "rsa 1024", pub: rsaPub(1024, 65537), wantErr: ErrKeyNotAllowed},
		{name: "rsa 16392", pub: rsaPub(16392, 65537), wantErr: ErrKeyNotAllowed},
		{name: "rsa e=3", pub: rsaPub(2048, 3), wantErr: ErrKeyNotAllowed},
		{name: "rsa even modulus", pub: &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 2047), E: 65537}, wantErr: ErrKeyNotAllowed},
		{name: "rsa nil modulus", pub: &rsa.PublicKey{E: 65537}, wantErr: ErrKeyNotAllowed},
		{name: "rsa 2048 below 3072", tmpl: "rsa3072", pub: rsaPub(2048, 65537), wantErr: ErrKeyNotAllowed},
		{name: "ecdsa where rsa only", tmpl: "rsa3072", pub: p256Key.Public(), wantErr: ErrKeyNotAllowed},
		{name: "p256 where p384 only", tmpl: "p384only", pub: p256Key.Public(), wantErr: ErrKeyNotAllowed},
		{name: "rsa where ecdsa only", tmpl: "p384only", pub: rsaPub(2048, 65537), wantErr: ErrKeyNotAllowed},
		{name: "p521", pub: p521Key.Public(), wantErr: ErrKeyNotAllowed},
		{name: "unknown curve p224", pub: &ecdsa.PublicKey{Curve: elliptic.P224(), X: big.NewInt(1), Y: big.NewInt(1)}, wantErr: ErrKeyNotAllowed},
		{name: "point not on curve", pub: &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}, wantErr: ErrKeyNotAllowed},
		{name: "ecdsa for keyEncipherment only", tmpl: "encipher-only", pub: p256Key.Public(), wantErr: ErrKeyNotAllowed},
		{name: "ed25519", pub: edKey.Public(), wantErr: ErrKeyNotAllowed},
		{name: "nil", pub: nil, wantErr: ErrKeyNotAllowed},
		{name: "other type", pub: "not a key", wantErr: ErrKeyNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := def
			if tt.tmpl != "" {
				tmpl = tmpls[tt.tmpl]
			}
			err := tmpl.CheckPublicKey(tt.pub)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckPublicKey() = %v, want %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrRejected) {
				t.Fatalf("%v does not wrap ErrRejected", err)
			}
		})
	}
}
