// Package ca issues X.509 certificates from a crypto.Signer: end-entity certificates for the
// templates in policy, the self-signed root of a development install, and the CSR that asks an
// external root for keyarc's CA certificate.
//
// It owns serial numbers, the certificate profile (basicConstraints CA:false, critical key
// usage, subject and authority key identifiers, rfc822Name SANs, the S/MIME Baseline
// Requirements' certificate policy, and the public URLs of the CRL, OCSP and the CA
// certificate), the encoding of the to-be-signed certificate (its own, byte for byte
// crypto/x509's, see tbs.go), the lint that runs before the signer is asked for anything
// (keyarc's own checks, then zlint on exactly the bytes the CA key will sign), and the
// self-check that verifies every signature after it was made. It keeps no records and revokes
// nothing: it only writes the URLs where a CRL and OCSP answers will be served.
//
// # What it must not import
//
// The standard library, policy and zlint (with its zcrypto) only. It never imports hsm: the CA
// key is any crypto.Signer (an HSM key from hsm in production, a software key in tests). It
// exports no metrics: [WithLintObserver] hands refusals to the caller's counter.
//
// # Concurrency
//
// An [Issuer] is immutable after [New] and safe for concurrent use, provided its signer is
// (crypto11 signers and the standard library's keys are). Issue does no locking of its own,
// except the once-only set-up of the zlint registries on the first Issue.
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"time"

	"github.com/keyarc/keyarc/policy"
)

// Errors.
var (
	// ErrKeyMismatch means the signer's public key is not the certificate's.
	ErrKeyMismatch = errors.New("ca: signer does not match the CA certificate")
	// ErrNotCA means the certificate given to New cannot sign certificates.
	ErrNotCA = errors.New("ca: certificate is not a CA certificate")
	// ErrUnsupportedKey means the key type or curve has no signature algorithm here.
	ErrUnsupportedKey = errors.New("ca: unsupported key")
	// ErrLint means a request broke the certificate profile; nothing was signed.
	ErrLint = errors.New("ca: certificate lint failed")
	// ErrSelfCheck means the signature made by the signer does not verify with the CA's public
	// key; the certificate was thrown away.
	ErrSelfCheck = errors.New("ca: self-check of the signature failed")
)

// Profile limits.
const (
	// MaxSMIMEValidity is the longest lifetime of a certificate with emailProtection.
	MaxSMIMEValidity = 825 * 24 * time.Hour
	// MaxClockSkew is how far in the future NotBefore may be.
	MaxClockSkew = time.Minute
	// serialBits is the size of a fresh serial number.
	serialBits = 128
)

// Issuer signs certificates with one CA key and certificate.
type Issuer struct {
	signer crypto.Signer
	cert   *x509.Certificate
	pub    crypto.PublicKey
	sigAlg x509.SignatureAlgorithm
	aki    []byte
	now    func() time.Time
	// profile is the encoded part of every certificate (issuer, algorithm, fixed extensions).
	profile certProfile

	urls     PublicURLs
	caPolicy asn1.ObjectIdentifier
	onLint   func(lint string)
	z        *zlinter
	noZlint  bool // benchmarks only
	// aiaIPPort: the public URL's host is an IP address with a port (see zlintCheck).
	aiaIPPort bool
}

// New returns an Issuer for the CA certificate cert whose private key is behind signer. It fails
// with [ErrKeyMismatch] if signer.Public() is not cert's public key, with [ErrNotCA] if cert is
// not a CA certificate allowed to sign certificates, and with [ErrUnsupportedKey] for a key
// that has no signature algorithm here. Options set the public URLs ([WithPublicURL]), the
// CA's own policy OID ([WithPolicy]) and an observer of lint refusals ([WithLintObserver]).
func New(signer crypto.Signer, cert *x509.Certificate, opts ...Option) (*Issuer, error) {
	if signer == nil || cert == nil {
		return nil, errors.New("ca: nil signer or certificate")
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, ErrKeyMismatch
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("%w: %s has no basicConstraints CA:true", ErrNotCA, cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: %s lacks keyCertSign", ErrNotCA, cert.Subject)
	}
	alg, err := signatureAlgorithm(cert.PublicKey)
	if err != nil {
		return nil, err
	}
	aki := cert.SubjectKeyId
	if len(aki) == 0 {
		if aki, err = keyID(cert.PublicKey); err != nil {
			return nil, err
		}
	}
	z, err := newZlinter(cert.PublicKey)
	if err != nil {
		return nil, err
	}
	i := &Issuer{signer: signer, cert: cert, pub: cert.PublicKey, sigAlg: alg, aki: aki, now: time.Now, z: z}
	if i.urls, err = ParsePublicURL(DefaultPublicURL); err != nil {
		return nil, err
	}
	for _, o := range opts {
		if err := o(i); err != nil {
			return nil, err
		}
	}
	i.aiaIPPort = i.urls.ipWithPort()
	if i.profile, err = i.newCertProfile(); err != nil {
		return nil, err
	}
	return i, nil
}

// PublicURLs returns the URLs the Issuer writes into certificates.
func (i *Issuer) PublicURLs() PublicURLs { return i.urls }

// WithClock returns a copy of the Issuer that reads the time from now (used only by the lint
// that refuses a NotBefore in the future). Tests use it; the default is time.Now.
func (i *Issuer) WithClock(now func() time.Time) *Issuer {
	c := *i
	c.now = now
	return &c
}

// Certificate returns the CA certificate. The caller must not modify it.
func (i *Issuer) Certificate() *x509.Certificate { return i.cert }

// SignatureAlgorithm returns the algorithm the Issuer signs with.
func (i *Issuer) SignatureAlgorithm() x509.SignatureAlgorithm { return i.sigAlg }

// signatureAlgorithm picks the signature algorithm for a CA key: ECDSA with the hash that
// matches the curve; RSA PKCS#1 v1.5 with SHA-256, which every S/MIME client verifies (PSS is
// not universally supported by mail clients); Ed25519 as is.
func signatureAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return x509.ECDSAWithSHA256, nil
		case elliptic.P384():
			return x509.ECDSAWithSHA384, nil
		case elliptic.P521():
			return x509.ECDSAWithSHA512, nil
		}
		return 0, fmt.Errorf("%w: ECDSA curve", ErrUnsupportedKey)
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < 2048 {
			return 0, fmt.Errorf("%w: RSA key shorter than 2048 bits", ErrUnsupportedKey)
		}
		return x509.SHA256WithRSA, nil
	case ed25519.PublicKey:
		return x509.PureEd25519, nil
	}
	return 0, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// keyID returns a key identifier for pub: the leftmost 160 bits of the SHA-256 of the
// subjectPublicKey BIT STRING (RFC 7093 section 2, method 1), computed without SHA-1.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	_, id, err := subjectPublicKeyInfo(pub)
	return id, err
}

// NewSerial returns a fresh serial number of 128 bits: the current Unix second (32 bits,
// big-endian) and its fraction in units of 2^-24 s (24 bits), then 72 bits from crypto/rand.
// CA/Browser Forum requirements ask for at least 64 bits from a CSPRNG and non-sequential
// serials; 72 random bits are both. Its DER encoding is 17 bytes, within the 20 that RFC 5280
// allows.
//
// The leading time is for the store: every index keyed by serial (the certificates, their OCSP
// responses and the due rows that schedule them) takes new serials at its right edge, in the
// order they were made, so a group commit of issuances appends to one B-tree page per index
// instead of dirtying one page per certificate and index, and the pages a writer needs stay in
// its cache. The second alone already took about 0.15 ms of server CPU off each certificate
// under the EST storm; ordered within the second too, the store's work per certificate writes
// 4.4 WAL pages instead of 6.0. The second's top bit is set from 2038 and the counter wraps
// in 2106; until then every serial has 32 hex digits, so their hex forms, which the store
// compares as text, sort like the numbers.
func NewSerial() (*big.Int, error) {
	return newSerial(rand.Reader, time.Now())
}

func newSerial(r io.Reader, now time.Time) (*big.Int, error) {
	var b [serialBits / 8]byte
	binary.BigEndian.PutUint32(b[:4], uint32(now.Unix()))
	frac := uint32(uint64(now.Nanosecond()) << 24 / uint64(time.Second)) // < 2^24
	b[4], b[5], b[6] = byte(frac>>16), byte(frac>>8), byte(frac)
	if _, err := io.ReadFull(r, b[7:]); err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	return new(big.Int).SetBytes(b[:]), nil
}

// Request is what Issue needs to make one end-entity certificate. The caller (the escrow
// engine, with a policy.Template) decides every field; Issue only lints and signs.
type Request struct {
	// Serial is the serial number; nil means a fresh one from [NewSerial].
	Serial *big.Int
	// PublicKey is the subject public key.
	PublicKey crypto.PublicKey
	// Subject is the subject DN; it may be empty when EmailAddresses is set (the SAN then
	// becomes critical, as RFC 5280 requires).
	Subject        pkix.Name
	EmailAddresses []string
	DNSNames       []string
	IPAddresses    []net.IP
	// KeyUsage is written as a critical extension; it must not be empty and must not hold
	// keyCertSign or cRLSign.
	KeyUsage           x509.KeyUsage
	ExtKeyUsage        []x509.ExtKeyUsage
	UnknownExtKeyUsage []asn1.ObjectIdentifier
	// NotBefore comes from the caller's clock; NotAfter is NotBefore + Validity.
	NotBefore time.Time
	Validity  time.Duration
	// Policies is the reserved S/MIME Baseline Requirements policy of an emailProtection
	// certificate (exactly one OID under 2.23.140.1.5; nil means [policy.OIDSMIMEMailboxStrict]).
	// The Issuer adds the CA's own policy OID ([WithPolicy]) to it. Other certificates carry
	// the policies given here, if any.
	Policies []asn1.ObjectIdentifier
	// OCSPNoCheck marks a delegated OCSP responder's certificate with id-pkix-ocsp-nocheck
	// (RFC 6960 4.2.2.2.1, S/MIME BR 4.9.9): relying parties trust it for its life without
	// asking for its own status, so keep it short. Only for a certificate whose one extended
	// key usage is OCSPSigning.
	OCSPNoCheck bool
}

// oidOCSPNoCheck is id-pkix-ocsp-nocheck; its value is an ASN.1 NULL.
var oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

// linted is a to-be-signed certificate that passed lint; only lint makes one, and only a
// linted TBS is ever signed. tbs is buf[certHeadroom:], buf has room after it for the
// signature (see [assemble]); smime says which zlint sources apply.
type linted struct {
	buf, tbs []byte
	smime    bool
}

func lintErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrLint, fmt.Sprintf(format, args...))
}

// lint checks req against the profile and returns the encoded TBS to sign.
func (i *Issuer) lint(req *Request) (linted, error) {
	if req.PublicKey == nil {
		return linted{}, lintErr("no public key")
	}
	if req.NotBefore.IsZero() {
		return linted{}, lintErr("NotBefore is not set")
	}
	if req.Validity <= 0 {
		return linted{}, lintErr("validity %v is not positive", req.Validity)
	}
	if now := i.now(); req.NotBefore.After(now.Add(MaxClockSkew)) {
		return linted{}, lintErr("NotBefore %s is more than %v in the future", req.NotBefore.UTC().Format(time.RFC3339), MaxClockSkew)
	}
	notAfter := req.NotBefore.Add(req.Validity)
	if notAfter.After(i.cert.NotAfter) {
		return linted{}, lintErr("NotAfter %s is after the CA certificate expires (%s)", notAfter.UTC().Format(time.RFC3339), i.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	smime := slices.Contains(req.ExtKeyUsage, x509.ExtKeyUsageEmailProtection)
	if smime {
		if req.Validity > MaxSMIMEValidity {
			return linted{}, lintErr("validity %v exceeds 825 days for an emailProtection certificate", req.Validity)
		}
		if len(req.EmailAddresses) == 0 {
			return linted{}, lintErr("an emailProtection certificate needs an rfc822Name subjectAltName")
		}
	}
	for _, e := range req.EmailAddresses {
		if err := policy.ValidateMailbox(e); err != nil {
			return linted{}, fmt.Errorf("%w: %w", ErrLint, err)
		}
	}
	subject, err := asn1.Marshal(req.Subject.ToRDNSequence())
	if err != nil {
		return linted{}, lintErr("subject cannot be encoded: %v", err)
	}
	if bytes.Equal(subject, emptyName) && len(req.EmailAddresses)+len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return linted{}, lintErr("neither a subject nor a subjectAltName")
	}
	if req.KeyUsage == 0 {
		return linted{}, lintErr("no key usage")
	}
	if req.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return linted{}, lintErr("keyCertSign and cRLSign are for CA certificates only")
	}
	switch req.PublicKey.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
		if req.KeyUsage&(x509.KeyUsageKeyEncipherment|x509.KeyUsageDataEncipherment) != 0 {
			return linted{}, lintErr("an elliptic-curve key cannot do keyEncipherment or dataEncipherment (policy.Template.KeyUsageFor drops them)")
		}
	case *rsa.PublicKey:
		if req.KeyUsage&x509.KeyUsageKeyAgreement != 0 {
			return linted{}, lintErr("an RSA key cannot do keyAgreement (policy.Template.KeyUsageFor drops it)")
		}
	}
	if slices.Contains(req.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return linted{}, lintErr("anyExtendedKeyUsage is not issued")
	}
	if req.OCSPNoCheck {
		if !slices.Equal(req.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}) || len(req.UnknownExtKeyUsage) > 0 {
			return linted{}, lintErr("id-pkix-ocsp-nocheck is only for a certificate whose one extended key usage is OCSPSigning")
		}
	}
	serial := req.Serial
	if serial == nil {
		if serial, err = NewSerial(); err != nil {
			return linted{}, err
		}
	} else if serial.Sign() <= 0 || len(serial.Bytes()) > 19 {
		// 19 bytes of magnitude keeps the DER INTEGER within RFC 5280's 20 octets.
		return linted{}, lintErr("serial must be positive and at most 20 octets")
	}
	spki, ski, err := subjectPublicKeyInfo(req.PublicKey)
	if err != nil {
		return linted{}, fmt.Errorf("%w: %w", ErrLint, err)
	}
	policies := req.Policies
	if smime {
		if policies == nil {
			policies = []asn1.ObjectIdentifier{policy.OIDSMIMEMailboxStrict}
		}
		if i.caPolicy != nil {
			policies = append(slices.Clip(policies), i.caPolicy)
		}
	}
	for _, p := range policies {
		if !validOID(p) {
			return linted{}, lintErr("certificate policy %v is not a valid OID", p)
		}
	}
	buf, err := i.encodeTBSCertificate(req, &tbsFields{serial: serial, notAfter: notAfter, subject: subject,
		spki: spki, ski: ski, policies: policies})
	if err != nil {
		return linted{}, err
	}
	return linted{buf: buf, tbs: buf[certHeadroom:], smime: smime}, nil
}

// Issue lints req, encodes its to-be-signed certificate, has zlint lint those bytes, signs
// them with the CA key, assembles the certificate around them, verifies the signature with
// the CA certificate's public key and parses the result. The CA key signs nothing that was
// not linted: zlint reads the very bytes signed, with a placeholder where the signature goes.
//
// # Errors
//
// [ErrLint] (nothing was signed) when the request breaks the profile: no public key, no or
// non-positive validity, NotBefore more than a minute ahead of the clock, NotAfter after the
// CA's, an emailProtection certificate valid for more than 825 days or without an rfc822Name,
// an invalid mailbox, neither a subject nor a subjectAltName, a subject that cannot be encoded,
// a DNS name that is not an IA5String or an IP address neither 4 nor 16 bytes long, no key
// usage or a CA key usage, a key usage the key type cannot do, an extended key usage or policy
// that cannot be encoded; or
// a *[LintError] (which matches ErrLint) when zlint warns or errs on the to-be-signed
// certificate: sources CABF_SMIME_BR and RFC5280 for an emailProtection certificate, RFC5280
// for any other. [ErrSelfCheck] when the signature the signer returned does not verify.
// Anything else is an error of the signer (an HSM error, for example), wrapped.
func (i *Issuer) Issue(req Request) (*x509.Certificate, error) {
	l, err := i.lint(&req)
	if err != nil {
		return nil, err
	}
	if err := i.zlintCheck(l); err != nil {
		return nil, err
	}
	sig, err := signTBS(i.signer, i.sigAlg, l.tbs)
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate: %w", err)
	}
	der, err := assemble(l.buf, certHeadroom, i.profile.algID, sig)
	if err != nil {
		return nil, err
	}
	cert, err := i.selfCheck(der)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(cert.RawTBSCertificate, l.tbs) {
		return nil, fmt.Errorf("%w: the signed certificate is not the one linted", ErrSelfCheck)
	}
	return cert, nil
}

// selfCheck parses der and verifies, once, that the CA key signed it: its signature algorithm
// is the Issuer's, its issuer the CA's subject, and its signature verifies with the CA
// certificate's public key (whose fitness to sign certificates New checked).
func (i *Issuer) selfCheck(der []byte) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %w", ErrSelfCheck, err)
	}
	if cert.SignatureAlgorithm != i.sigAlg {
		return nil, fmt.Errorf("%w: signature algorithm %v, want %v", ErrSelfCheck, cert.SignatureAlgorithm, i.sigAlg)
	}
	if !bytes.Equal(cert.RawIssuer, i.profile.issuer) {
		return nil, fmt.Errorf("%w: issuer name is not the CA subject", ErrSelfCheck)
	}
	if err := i.cert.CheckSignature(i.sigAlg, cert.RawTBSCertificate, cert.Signature); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSelfCheck, err)
	}
	return cert, nil
}

// recordingSigner notes that the wrapped signer returned a signature, so that SelfSignedRoot
// can tell a bad signature (crypto/x509's own check fails after Sign) from a signer error.
type recordingSigner struct {
	crypto.Signer
	signed bool
}

// Sign implements crypto.Signer.
func (r *recordingSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := r.Signer.Sign(rand, digest, opts)
	if err == nil {
		r.signed = true
	}
	return sig, err
}

// SelfSignedRoot makes a self-signed root CA certificate for signer's key, suitable to issue
// S/MIME certificates: basicConstraints CA:true with pathLen 0 (critical), key usage
// keyCertSign and cRLSign (critical), a subject key identifier, no extended key usage. The
// caller passes the clock and the validity (ten years is usual for a development root). The
// result is parsed and its signature verified.
func SelfSignedRoot(signer crypto.Signer, subject pkix.Name, notBefore time.Time, validity time.Duration) (*x509.Certificate, error) {
	if signer == nil {
		return nil, errors.New("ca: nil signer")
	}
	if subject.String() == "" {
		return nil, fmt.Errorf("%w: a root needs a subject", ErrLint)
	}
	if notBefore.IsZero() || validity <= 0 {
		return nil, fmt.Errorf("%w: a root needs NotBefore and a positive validity", ErrLint)
	}
	pub := signer.Public()
	alg, err := signatureAlgorithm(pub)
	if err != nil {
		return nil, err
	}
	ski, err := keyID(pub)
	if err != nil {
		return nil, err
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
		SignatureAlgorithm:    alg,
	}
	s := &recordingSigner{Signer: signer}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, s)
	if err != nil {
		if s.signed {
			return nil, fmt.Errorf("%w: %w", ErrSelfCheck, err)
		}
		return nil, fmt.Errorf("ca: sign root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %w", ErrSelfCheck, err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSelfCheck, err)
	}
	return cert, nil
}

// CSR returns a DER PKCS#10 request for signer's key with subject, to have keyarc's CA
// certificate signed by an external root. It requests basicConstraints CA:true, pathLen 0 and
// key usage keyCertSign + cRLSign; the external CA decides what it actually grants.
func CSR(signer crypto.Signer, subject pkix.Name) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("ca: nil signer")
	}
	if subject.String() == "" {
		return nil, fmt.Errorf("%w: a CA request needs a subject", ErrLint)
	}
	alg, err := signatureAlgorithm(signer.Public())
	if err != nil {
		return nil, err
	}
	bc, err := asn1.Marshal(struct {
		IsCA       bool
		MaxPathLen int
	}{true, 0})
	if err != nil {
		return nil, fmt.Errorf("ca: csr: %w", err)
	}
	// keyCertSign (bit 5) and cRLSign (bit 6).
	ku, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})
	if err != nil {
		return nil, fmt.Errorf("ca: csr: %w", err)
	}
	tmpl := &x509.CertificateRequest{
		Subject:            subject,
		SignatureAlgorithm: alg,
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: ku},
		},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("ca: csr: %w", err)
	}
	return der, nil
}
