// Package ocsp reads OCSP requests and writes signed OCSP responses (RFC 6960, in the
// lightweight profile of RFC 5019 and RFC 9919), by hand on cryptobyte: golang.org/x/crypto/ocsp
// is frozen, ignores ProducedAt when signing and cannot put several SingleResponses in one
// response. It parses untrusted input strictly and within fixed limits ([MaxRequestSize],
// [MaxCertIDs]), and signs with any crypto.Signer (the delegated responder key in the token).
//
// The responses it signs follow the CA/Browser Forum S/MIME Baseline Requirements: the responder
// is identified by key hash; a revoked certificate's RevokedInfo carries its revocationReason
// (left out for unspecified, as the CRL leaves out reasonCode, §7.2.2), and no SingleResponse
// carries a reasonCode single extension (§7.3.2); the responder certificate goes in certs.
//
// # What it must not import
//
// The standard library and golang.org/x/crypto/cryptobyte only: no store, no HSM, no HTTP.
// Tests may import golang.org/x/crypto/ocsp to cross-check.
//
// # Concurrency
//
// Functions are pure. An [Issuer] and a [Responder] are immutable after they are made and safe
// for concurrent use, provided the Responder's signer is.
package ocsp

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Limits on requests.
const (
	// MaxRequestSize is the largest DER OCSPRequest accepted. One CertID with SHA-256 is about
	// 120 bytes; a signed request with a certificate chain fits in 4 KiB too.
	MaxRequestSize = 4096
	// MaxCertIDs is the most Requests (CertIDs) one OCSPRequest may hold.
	MaxCertIDs = 4
	// maxSerialOctets bounds a CertID serial: 32 octets, as escrow/store's serials.
	maxSerialOctets = 32
)

// Errors.
var (
	// ErrMalformed means the request is not a DER OCSPRequest within the limits: answer
	// malformedRequest.
	ErrMalformed = errors.New("ocsp: malformed request")
	// ErrTooLarge means the request is longer than [MaxRequestSize] (HTTP 413).
	ErrTooLarge = errors.New("ocsp: request too large")
	// ErrUnsupportedHash means a CertID is hashed with another algorithm than SHA-1 or
	// SHA-256: a well-formed request this responder cannot match with its CA (unauthorized).
	ErrUnsupportedHash = errors.New("ocsp: unsupported CertID hash algorithm")
)

// Object identifiers.
var (
	oidSHA1         = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256       = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidOCSPBasic    = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
	oidOCSPNonce    = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}
	oidECDSASHA256  = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSASHA384  = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidRSASHA256    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidEd25519      = asn1.ObjectIdentifier{1, 3, 101, 112}
	hashAlgorithmOf = map[crypto.Hash]asn1.ObjectIdentifier{crypto.SHA1: oidSHA1, crypto.SHA256: oidSHA256}
	// DER contents of the CertID hash OIDs, compared as bytes by the parser.
	derSHA1   = []byte{0x2b, 0x0e, 0x03, 0x02, 0x1a}
	derSHA256 = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01}
)

// CertID names one certificate in a request or a response (RFC 6960 §4.1.1).
type CertID struct {
	// Hash is crypto.SHA1 or crypto.SHA256: the hash of IssuerNameHash and IssuerKeyHash.
	Hash           crypto.Hash
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	// Serial is the certificate serial number (positive for any certificate keyarc issued;
	// the parser does not refuse zero or a negative one, which simply match none).
	Serial *big.Int
}

// Request is a parsed OCSPRequest. A signature on the request, a requestorName and request
// extensions other than the nonce are accepted and ignored (RFC 5019 §2.1: responses are
// pre-signed, so neither a signature nor a nonce can change them).
type Request struct {
	CertIDs []CertID
	// Nonce is the value of the id-pkix-ocsp-nonce request extension, nil without one.
	Nonce []byte
	// Signed reports whether the request carried an optionalSignature.
	Signed bool
	// one holds the CertID of a request with one (RFC 5019 §2.1.1), saving an allocation.
	one [1]CertID
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// ParseRequest parses a DER OCSPRequest (RFC 6960 §4.1.1).
//
// # Errors
//
// [ErrTooLarge] above [MaxRequestSize] bytes; [ErrMalformed], naming what is wrong, for
// anything that is not one DER OCSPRequest of version 1 with 1 to [MaxCertIDs] Requests, or
// that has trailing bytes, a serial longer than 32 octets or hash values of the wrong
// length; [ErrUnsupportedHash] (after the whole request parsed) for a CertID hashed with
// another algorithm than SHA-1 or SHA-256.
func ParseRequest(der []byte) (*Request, error) {
	if len(der) > MaxRequestSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(der), MaxRequestSize)
	}
	if len(der) == 0 {
		return nil, malformed("empty request")
	}
	input := cryptobyte.String(der)
	var req, tbs cryptobyte.String
	if !input.ReadASN1(&req, cbasn1.SEQUENCE) {
		return nil, malformed("not a DER SEQUENCE")
	}
	if !input.Empty() {
		return nil, malformed("trailing bytes after the OCSPRequest")
	}
	if !req.ReadASN1(&tbs, cbasn1.SEQUENCE) {
		return nil, malformed("no tbsRequest")
	}
	out := &Request{}
	out.CertIDs = out.one[:0]
	if req.PeekASN1Tag(cbasn1.Tag(0).Constructed().ContextSpecific()) {
		var sig cryptobyte.String
		if !req.ReadASN1(&sig, cbasn1.Tag(0).Constructed().ContextSpecific()) {
			return nil, malformed("bad optionalSignature")
		}
		out.Signed = true
	}
	if !req.Empty() {
		return nil, malformed("trailing bytes in OCSPRequest")
	}
	// version [0] EXPLICIT Version DEFAULT v1
	if tbs.PeekASN1Tag(cbasn1.Tag(0).Constructed().ContextSpecific()) {
		var v cryptobyte.String
		var version int
		if !tbs.ReadASN1(&v, cbasn1.Tag(0).Constructed().ContextSpecific()) || !v.ReadASN1Integer(&version) || !v.Empty() {
			return nil, malformed("bad version")
		}
		if version != 0 {
			return nil, malformed("version %d, only v1 (0) is defined", version+1)
		}
	}
	// requestorName [1] EXPLICIT GeneralName OPTIONAL
	if tbs.PeekASN1Tag(cbasn1.Tag(1).Constructed().ContextSpecific()) {
		var name cryptobyte.String
		if !tbs.ReadASN1(&name, cbasn1.Tag(1).Constructed().ContextSpecific()) {
			return nil, malformed("bad requestorName")
		}
	}
	var list cryptobyte.String
	if !tbs.ReadASN1(&list, cbasn1.SEQUENCE) {
		return nil, malformed("no requestList")
	}
	unsupported := false
	for !list.Empty() {
		if len(out.CertIDs) == MaxCertIDs {
			return nil, malformed("more than %d requests", MaxCertIDs)
		}
		var one, certID cryptobyte.String
		if !list.ReadASN1(&one, cbasn1.SEQUENCE) || !one.ReadASN1(&certID, cbasn1.SEQUENCE) {
			return nil, malformed("request %d: no CertID", len(out.CertIDs)+1)
		}
		if one.PeekASN1Tag(cbasn1.Tag(0).Constructed().ContextSpecific()) {
			var ext cryptobyte.String
			if !one.ReadASN1(&ext, cbasn1.Tag(0).Constructed().ContextSpecific()) {
				return nil, malformed("request %d: bad singleRequestExtensions", len(out.CertIDs)+1)
			}
		}
		if !one.Empty() {
			return nil, malformed("request %d: trailing bytes", len(out.CertIDs)+1)
		}
		id, err := parseCertID(certID)
		if errors.Is(err, ErrUnsupportedHash) {
			unsupported = true
		} else if err != nil {
			return nil, fmt.Errorf("%w (request %d)", err, len(out.CertIDs)+1)
		}
		out.CertIDs = append(out.CertIDs, id)
	}
	if len(out.CertIDs) == 0 {
		return nil, malformed("empty requestList")
	}
	// requestExtensions [2] EXPLICIT Extensions OPTIONAL
	if tbs.PeekASN1Tag(cbasn1.Tag(2).Constructed().ContextSpecific()) {
		var wrapper, exts cryptobyte.String
		if !tbs.ReadASN1(&wrapper, cbasn1.Tag(2).Constructed().ContextSpecific()) ||
			!wrapper.ReadASN1(&exts, cbasn1.SEQUENCE) || !wrapper.Empty() {
			return nil, malformed("bad requestExtensions")
		}
		for !exts.Empty() {
			var ext cryptobyte.String
			var oid asn1.ObjectIdentifier
			var value []byte
			if !exts.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1ObjectIdentifier(&oid) {
				return nil, malformed("bad request extension")
			}
			if ext.PeekASN1Tag(cbasn1.BOOLEAN) {
				var critical bool
				if !ext.ReadASN1Boolean(&critical) {
					return nil, malformed("bad critical flag of extension %v", oid)
				}
			}
			if !ext.ReadASN1Bytes(&value, cbasn1.OCTET_STRING) || !ext.Empty() {
				return nil, malformed("bad value of extension %v", oid)
			}
			if oid.Equal(oidOCSPNonce) {
				if out.Nonce != nil {
					return nil, malformed("two nonce extensions")
				}
				out.Nonce = append([]byte{}, value...)
			}
		}
	}
	if !tbs.Empty() {
		return nil, malformed("trailing bytes in tbsRequest")
	}
	if unsupported {
		return out, ErrUnsupportedHash
	}
	return out, nil
}

// parseCertID parses the contents of a CertID SEQUENCE.
func parseCertID(s cryptobyte.String) (CertID, error) {
	var alg, oid cryptobyte.String
	// The OID is compared as DER contents, without decoding it into a new slice; only an
	// unknown one is decoded, to tell a malformed OID from an unsupported one.
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
		return CertID{}, malformed("bad CertID hashAlgorithm")
	}
	if alg.PeekASN1Tag(cbasn1.NULL) {
		var null cryptobyte.String
		if !alg.ReadASN1(&null, cbasn1.NULL) || !null.Empty() {
			return CertID{}, malformed("bad hashAlgorithm parameters")
		}
	}
	if !alg.Empty() {
		return CertID{}, malformed("hashAlgorithm parameters are not NULL")
	}
	var id CertID
	serial := new(big.Int)
	var serialBytes cryptobyte.String
	if !s.ReadASN1Bytes(&id.IssuerNameHash, cbasn1.OCTET_STRING) || !s.ReadASN1Bytes(&id.IssuerKeyHash, cbasn1.OCTET_STRING) {
		return CertID{}, malformed("bad issuerNameHash or issuerKeyHash")
	}
	// Read the INTEGER's bytes first to bound its length before big.Int sees it.
	peek := s
	if !peek.ReadASN1(&serialBytes, cbasn1.INTEGER) {
		return CertID{}, malformed("bad serialNumber")
	}
	if len(serialBytes) > maxSerialOctets+1 {
		return CertID{}, malformed("serialNumber longer than %d octets", maxSerialOctets)
	}
	if !s.ReadASN1Integer(serial) || !s.Empty() {
		return CertID{}, malformed("bad serialNumber")
	}
	id.Serial = serial
	switch {
	case bytes.Equal(oid, derSHA1):
		id.Hash = crypto.SHA1
	case bytes.Equal(oid, derSHA256):
		id.Hash = crypto.SHA256
	default:
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(oid) })
		whole := cryptobyte.String(b.BytesOrPanic())
		var parsed asn1.ObjectIdentifier
		if !whole.ReadASN1ObjectIdentifier(&parsed) {
			return CertID{}, malformed("bad CertID hashAlgorithm")
		}
		return id, ErrUnsupportedHash
	}
	if len(id.IssuerNameHash) != id.Hash.Size() || len(id.IssuerKeyHash) != id.Hash.Size() {
		return CertID{}, malformed("issuer hashes are not %d bytes", id.Hash.Size())
	}
	return id, nil
}

// MarshalRequest encodes an unsigned OCSPRequest for ids, with a nonce extension if nonce is
// not nil: the request a client sends (tests and benchmarks use it; the responder never does).
// An id with an unsupported hash or a nil serial gives an error.
func MarshalRequest(ids []CertID, nonce []byte) ([]byte, error) {
	var b cryptobyte.Builder
	var err error
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, id := range ids {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						if e := addCertID(b, id); e != nil {
							err = e
						}
					})
				}
			})
			if nonce != nil {
				b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(oidOCSPNonce)
							b.AddASN1OctetString(nonce)
						})
					})
				})
			}
		})
	})
	if err != nil {
		return nil, err
	}
	return b.Bytes()
}

func addCertID(b *cryptobyte.Builder, id CertID) error {
	oid, ok := hashAlgorithmOf[id.Hash]
	if !ok {
		return ErrUnsupportedHash
	}
	if id.Serial == nil {
		return errors.New("ocsp: CertID without a serial")
	}
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1NULL()
		})
		b.AddASN1OctetString(id.IssuerNameHash)
		b.AddASN1OctetString(id.IssuerKeyHash)
		b.AddASN1BigInt(id.Serial)
	})
	return nil
}

// DecodeGET returns the DER request of an RFC 6960 Appendix A.1 GET: the part of the URL path
// after the responder's prefix, the base64 encoding of the DER request, itself URL-encoded
// (clients escape "+", "/" and "=" as %2B, %2F and %3D, or not at all). Standard and
// URL-safe base64, with or without padding, are accepted.
//
// # Errors
//
// [ErrTooLarge] when the encoded request is longer than a [MaxRequestSize]-byte request
// could be; [ErrMalformed] for a bad escape or bad base64.
func DecodeGET(escapedPath string) ([]byte, error) {
	if len(escapedPath) > 3*base64.StdEncoding.EncodedLen(MaxRequestSize) {
		return nil, fmt.Errorf("%w: GET path of %d bytes", ErrTooLarge, len(escapedPath))
	}
	s, err := url.PathUnescape(escapedPath)
	if err != nil {
		return nil, malformed("bad URL escape in GET path")
	}
	// Some clients (and proxies) turn "+" into a space.
	s = strings.ReplaceAll(s, " ", "+")
	if len(s) > base64.StdEncoding.EncodedLen(MaxRequestSize) {
		return nil, fmt.Errorf("%w: base64 request of %d bytes", ErrTooLarge, len(s))
	}
	if strings.ContainsAny(s, "-_") {
		s = strings.NewReplacer("-", "+", "_", "/").Replace(s)
	}
	s = strings.TrimRight(s, "=")
	der, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		return nil, malformed("GET path is not base64")
	}
	return der, nil
}

// Issuer holds the hashes of a CA's name and key that CertIDs of its certificates carry.
type Issuer struct {
	name map[crypto.Hash][]byte
	key  map[crypto.Hash][]byte
}

// NewIssuer computes the SHA-1 and SHA-256 hashes of ca's subject (DER) and of its
// subjectPublicKey BIT STRING value. It fails only for a certificate whose public key info
// cannot be read.
func NewIssuer(ca *x509.Certificate) (*Issuer, error) {
	keyBits, err := subjectPublicKey(ca.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, err
	}
	is := &Issuer{name: map[crypto.Hash][]byte{}, key: map[crypto.Hash][]byte{}}
	n1, k1 := sha1.Sum(ca.RawSubject), sha1.Sum(keyBits)
	n2, k2 := sha256.Sum256(ca.RawSubject), sha256.Sum256(keyBits)
	is.name[crypto.SHA1], is.key[crypto.SHA1] = n1[:], k1[:]
	is.name[crypto.SHA256], is.key[crypto.SHA256] = n2[:], k2[:]
	return is, nil
}

// Matches reports whether id names a certificate of this issuer (both hashes equal, with a
// supported hash algorithm); the serial is not looked at.
func (is *Issuer) Matches(id CertID) bool {
	n, ok := is.name[id.Hash]
	return ok && bytes.Equal(n, id.IssuerNameHash) && bytes.Equal(is.key[id.Hash], id.IssuerKeyHash)
}

// CertID returns the CertID of serial under this issuer with hash h (SHA-1 or SHA-256).
func (is *Issuer) CertID(h crypto.Hash, serial *big.Int) CertID {
	return CertID{Hash: h, IssuerNameHash: is.name[h], IssuerKeyHash: is.key[h], Serial: serial}
}

// subjectPublicKey returns the contents of the subjectPublicKey BIT STRING of a DER
// SubjectPublicKeyInfo (the bytes RFC 6960 hashes for issuerKeyHash and KeyHash).
func subjectPublicKey(spki []byte) ([]byte, error) {
	s := cryptobyte.String(spki)
	var inner, alg cryptobyte.String
	var bits asn1.BitString
	if !s.ReadASN1(&inner, cbasn1.SEQUENCE) || !inner.ReadASN1(&alg, cbasn1.SEQUENCE) || !inner.ReadASN1BitString(&bits) {
		return nil, errors.New("ocsp: cannot read the certificate's subjectPublicKeyInfo")
	}
	return bits.Bytes, nil
}

// ResponseStatus is an OCSPResponseStatus (RFC 6960 §4.2.1).
type ResponseStatus int

// Response statuses. 4 is not used.
const (
	Successful       ResponseStatus = 0
	MalformedRequest ResponseStatus = 1
	InternalError    ResponseStatus = 2
	TryLater         ResponseStatus = 3
	SigRequired      ResponseStatus = 5
	Unauthorized     ResponseStatus = 6
)

// String returns the status's ASN.1 name.
func (s ResponseStatus) String() string {
	switch s {
	case Successful:
		return "successful"
	case MalformedRequest:
		return "malformedRequest"
	case InternalError:
		return "internalError"
	case TryLater:
		return "tryLater"
	case SigRequired:
		return "sigRequired"
	case Unauthorized:
		return "unauthorized"
	}
	return fmt.Sprintf("ResponseStatus(%d)", int(s))
}

// ErrorResponse returns the DER OCSPResponse of an unsuccessful status: a SEQUENCE holding
// only the ENUMERATED status, with no responseBytes (RFC 6960 §2.3: unsigned). It panics for
// [Successful], which needs a signed response.
func ErrorResponse(s ResponseStatus) []byte {
	if s == Successful || s < 0 || s > 127 {
		panic("ocsp: ErrorResponse of " + s.String())
	}
	return []byte{0x30, 0x03, 0x0a, 0x01, byte(s)}
}

// Status is what a signed response says of one certificate.
type Status struct {
	Serial *big.Int
	// Revoked: revoked at RevokedAt with Reason (a CRLReason; 0, unspecified, is written
	// without revocationReason); good otherwise.
	Revoked   bool
	RevokedAt time.Time
	Reason    int
	// ThisUpdate and NextUpdate bound the response's validity.
	ThisUpdate time.Time
	NextUpdate time.Time
}

// Responder signs responses for the certificates of one CA with a delegated responder key.
type Responder struct {
	issuer  *Issuer
	signer  crypto.Signer
	cert    *x509.Certificate
	keyHash []byte
	sigAlg  asn1.ObjectIdentifier
	hash    crypto.Hash
	opts    crypto.SignerOpts
	hashes  []crypto.Hash
	now     func() time.Time
	// Prepared DER around the per-response parts, made once by NewResponder (see
	// [Responder.Sign]): responderID, the start of each CertID up to its serial, and the
	// end of BasicOCSPResponse after its signature value.
	responderID []byte
	certIDHeads [][]byte
	sigAlgID    []byte
	certsField  []byte
}

// Errors of NewResponder.
var (
	// ErrResponderCert means the responder certificate cannot sign responses for the CA.
	ErrResponderCert = errors.New("ocsp: unusable responder certificate")
)

// NewResponder returns a Responder for the CA certificate ca, signing with signer whose
// certificate is cert (a delegated responder, RFC 6960 §4.2.2.2). Its responses hold one
// SingleResponse per hash of hashes (nil means SHA-1 then SHA-256, so that clients asking
// with either CertID hash find theirs in one pre-signed response: RFC 5019 §2.2.1 allows
// additional SingleResponses for pre-generation).
//
// # Errors
//
// [ErrResponderCert] when cert is not issued and signed by ca, lacks the OCSPSigning
// extended key usage, or is not signer's key; an error naming the key for a signer key
// type without a signature algorithm here (ECDSA P-256/P-384, RSA and Ed25519 have one).
func NewResponder(ca, cert *x509.Certificate, signer crypto.Signer, hashes []crypto.Hash) (*Responder, error) {
	if ca == nil || cert == nil || signer == nil {
		return nil, errors.New("ocsp: nil CA, responder certificate or signer")
	}
	if err := cert.CheckSignatureFrom(ca); err != nil || !bytes.Equal(cert.RawIssuer, ca.RawSubject) {
		return nil, fmt.Errorf("%w: not issued by %s", ErrResponderCert, ca.Subject)
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
		return nil, fmt.Errorf("%w: no OCSPSigning extended key usage", ErrResponderCert)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%w: the signer's key is not the certificate's", ErrResponderCert)
	}
	is, err := NewIssuer(ca)
	if err != nil {
		return nil, err
	}
	keyBits, err := subjectPublicKey(cert.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, err
	}
	kh := sha1.Sum(keyBits)
	r := &Responder{issuer: is, signer: signer, cert: cert, keyHash: kh[:], now: time.Now}
	switch k := signer.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve.Params().BitSize {
		case 256:
			r.sigAlg, r.hash = oidECDSASHA256, crypto.SHA256
		case 384:
			r.sigAlg, r.hash = oidECDSASHA384, crypto.SHA384
		default:
			return nil, fmt.Errorf("ocsp: responder key: unsupported curve %s", k.Curve.Params().Name)
		}
		r.opts = r.hash
	case *rsa.PublicKey:
		r.sigAlg, r.hash, r.opts = oidRSASHA256, crypto.SHA256, crypto.SHA256
	case ed25519.PublicKey:
		r.sigAlg, r.hash, r.opts = oidEd25519, 0, crypto.Hash(0)
	default:
		return nil, fmt.Errorf("ocsp: responder key: unsupported key type %T", k)
	}
	if hashes == nil {
		hashes = []crypto.Hash{crypto.SHA1, crypto.SHA256}
	}
	for _, h := range hashes {
		if _, ok := hashAlgorithmOf[h]; !ok {
			return nil, fmt.Errorf("ocsp: CertID hash %v: %w", h, ErrUnsupportedHash)
		}
	}
	r.hashes = slices.Clone(hashes)
	r.prepare()
	return r, nil
}

// prepare encodes the parts of every response that depend only on the responder: the
// responderID (byKey), the CertID fields before the serial for each hash, the signature
// algorithm and the certs field holding the responder certificate.
func (r *Responder) prepare() {
	r.responderID = appendTLV(nil, 0xa2, appendTLV(nil, 0x04, r.keyHash))
	r.certIDHeads = make([][]byte, len(r.hashes))
	for i, h := range r.hashes {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(hashAlgorithmOf[h])
			b.AddASN1NULL()
		})
		b.AddASN1OctetString(r.issuer.name[h])
		b.AddASN1OctetString(r.issuer.key[h])
		r.certIDHeads[i] = b.BytesOrPanic()
	}
	var alg cryptobyte.Builder
	alg.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(r.sigAlg)
		if r.sigAlg.Equal(oidRSASHA256) {
			b.AddASN1NULL()
		}
	})
	r.sigAlgID = alg.BytesOrPanic()
	r.certsField = appendTLV(nil, 0xa0, appendTLV(nil, 0x30, r.cert.Raw))
}

// appendLength appends a DER length.
func appendLength(b []byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, byte(n))
	case n <= 0xff:
		return append(b, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, 0x82, byte(n>>8), byte(n))
	case n <= 0xffffff:
		return append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// headerLen is the length of the tag and length octets of a DER element of n content octets.
func headerLen(n int) int {
	switch {
	case n < 0x80:
		return 2
	case n <= 0xff:
		return 3
	case n <= 0xffff:
		return 4
	case n <= 0xffffff:
		return 5
	}
	return 6
}

// appendTLV appends the DER element of one-octet tag with content.
func appendTLV(b []byte, tag byte, content []byte) []byte {
	return append(appendLength(append(b, tag), len(content)), content...)
}

// generalizedTimeLen is the length of a DER GeneralizedTime to the second: tag, length and
// the 15 octets YYYYMMDDHHMMSSZ.
const generalizedTimeLen = 17

// appendGeneralizedTime appends the DER GeneralizedTime of t in UTC. A response holds five:
// the digits are written directly, at about a tenth of AppendFormat's cost. Years outside 0
// to 9999, which Sign refuses, go through AppendFormat.
func appendGeneralizedTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	b = append(b, byte(cbasn1.GeneralizedTime), 15)
	y, mo, d := t.Date()
	if y < 0 || y > 9999 {
		return t.AppendFormat(b, "20060102150405Z")
	}
	h, mi, s := t.Clock()
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10))
	for _, v := range [...]int{int(mo), d, h, mi, s} {
		b = append(b, byte('0'+v/10), byte('0'+v%10))
	}
	return append(b, 'Z')
}

// integerContent returns the content octets of the DER INTEGER n.
func integerContent(n *big.Int) []byte {
	if n.Sign() >= 0 {
		c := n.Bytes()
		if len(c) == 0 || c[0]&0x80 != 0 {
			c = append([]byte{0}, c...)
		}
		return c
	}
	var b cryptobyte.Builder
	b.AddASN1BigInt(n)
	der := cryptobyte.String(b.BytesOrPanic())
	var c cryptobyte.String
	der.ReadASN1(&c, cbasn1.INTEGER)
	return c
}

// Certificate returns the responder certificate.
func (r *Responder) Certificate() *x509.Certificate { return r.cert }

// Issuer returns the CA's name and key hashes.
func (r *Responder) Issuer() *Issuer { return r.issuer }

// WithClock returns a copy of r whose producedAt comes from now.
func (r *Responder) WithClock(now func() time.Time) *Responder {
	c := *r
	c.now = now
	return &c
}

// Sign returns a complete, successful DER OCSPResponse for st, signed now: a
// BasicOCSPResponse with responderID byKey, producedAt (now, to the second), one
// SingleResponse per CertID hash, no extensions, and the responder certificate in certs.
//
// # Errors
//
// An error naming the field for a nil serial, a zero ThisUpdate, a NextUpdate not after it,
// a revoked status without RevokedAt, or a reason outside RFC 5280's CRLReason (0 to 10, not
// 7) or certificateHold (6, which the S/MIME BR forbid); or the signer's error, wrapped (a
// token fault: nothing was produced).
func (r *Responder) Sign(st Status) ([]byte, error) {
	switch {
	case st.Serial == nil:
		return nil, errors.New("ocsp: sign: no serial")
	case st.ThisUpdate.IsZero() || !st.NextUpdate.After(st.ThisUpdate):
		return nil, errors.New("ocsp: sign: NextUpdate must be after a non-zero ThisUpdate")
	case st.Revoked && st.RevokedAt.IsZero():
		return nil, errors.New("ocsp: sign: revoked without a revocation time")
	case st.Revoked && (st.Reason < 0 || st.Reason > 10 || st.Reason == 7 || st.Reason == 6):
		return nil, fmt.Errorf("ocsp: sign: reason %d is not a CRLReason the S/MIME BR allow", st.Reason)
	case !st.Revoked && st.Reason != 0:
		return nil, errors.New("ocsp: sign: a reason for a certificate that is not revoked")
	}
	for _, t := range []time.Time{st.ThisUpdate, st.NextUpdate, st.RevokedAt} {
		if y := t.UTC().Year(); y < 0 || y > 9999 {
			return nil, fmt.Errorf("ocsp: sign: %v cannot be a GeneralizedTime", t)
		}
	}
	tbs := r.responseData(st)
	digest := tbs
	switch r.hash {
	case 0:
	case crypto.SHA256:
		sum := sha256.Sum256(tbs)
		digest = sum[:]
	default:
		h := r.hash.New()
		h.Write(tbs)
		digest = h.Sum(nil)
	}
	sig, err := r.signer.Sign(rand.Reader, digest, r.opts)
	if err != nil {
		return nil, fmt.Errorf("ocsp: sign response: %w", err)
	}
	return r.response(tbs, sig), nil
}

// responseData returns the DER ResponseData of st, produced now: the prepared responderID and
// CertID heads around the serial, status and times of st, with the lengths computed first so
// that it is written in one buffer (the bytes of a cryptobyte encoding, faster).
func (r *Responder) responseData(st Status) []byte {
	serial := integerContent(st.Serial)
	// certStatus: good [0] IMPLICIT NULL, or revoked [1] { revocationTime, [0] EXPLICIT reason }.
	statusLen := 2
	if st.Revoked {
		n := generalizedTimeLen
		if st.Reason != 0 {
			n += 5
		}
		statusLen = headerLen(n) + n
	}
	timesLen := generalizedTimeLen + 2 + generalizedTimeLen // thisUpdate, [0] { nextUpdate }
	singles := 0
	singleLens := make([]int, len(r.hashes))
	for i, head := range r.certIDHeads {
		idLen := len(head) + headerLen(len(serial)) + len(serial)
		singleLens[i] = headerLen(idLen) + idLen + statusLen + timesLen
		singles += headerLen(singleLens[i]) + singleLens[i]
	}
	dataLen := len(r.responderID) + generalizedTimeLen + headerLen(singles) + singles
	b := make([]byte, 0, headerLen(dataLen)+dataLen)
	b = appendLength(append(b, 0x30), dataLen)
	b = append(b, r.responderID...)
	b = appendGeneralizedTime(b, r.now())
	b = appendLength(append(b, 0x30), singles)
	for i, head := range r.certIDHeads {
		b = appendLength(append(b, 0x30), singleLens[i])
		idLen := len(head) + headerLen(len(serial)) + len(serial)
		b = appendLength(append(b, 0x30), idLen)
		b = append(b, head...)
		b = appendTLV(b, byte(cbasn1.INTEGER), serial)
		if st.Revoked {
			n := generalizedTimeLen
			if st.Reason != 0 {
				n += 5
			}
			b = appendLength(append(b, 0xa1), n)
			b = appendGeneralizedTime(b, st.RevokedAt)
			if st.Reason != 0 {
				b = append(b, 0xa0, 3, byte(cbasn1.ENUM), 1, byte(st.Reason))
			}
		} else {
			b = append(b, 0x80, 0)
		}
		b = appendGeneralizedTime(b, st.ThisUpdate)
		b = append(b, 0xa0, generalizedTimeLen)
		b = appendGeneralizedTime(b, st.NextUpdate)
	}
	return b
}

// response returns the DER OCSPResponse (successful, id-pkix-ocsp-basic) of the signed
// ResponseData tbs.
func (r *Responder) response(tbs, sig []byte) []byte {
	bitsLen := 1 + len(sig)
	basicLen := len(tbs) + len(r.sigAlgID) + headerLen(bitsLen) + bitsLen + len(r.certsField)
	octetsLen := headerLen(basicLen) + basicLen
	typedLen := len(oidOCSPBasicDER) + headerLen(octetsLen) + octetsLen
	bytesLen := headerLen(typedLen) + typedLen
	respLen := 3 + headerLen(bytesLen) + bytesLen
	b := make([]byte, 0, headerLen(respLen)+respLen)
	b = appendLength(append(b, 0x30), respLen)
	b = append(b, byte(cbasn1.ENUM), 1, byte(Successful))
	b = appendLength(append(b, 0xa0), bytesLen)
	b = appendLength(append(b, 0x30), typedLen)
	b = append(b, oidOCSPBasicDER...)
	b = appendLength(append(b, 0x04), octetsLen)
	b = appendLength(append(b, 0x30), basicLen)
	b = append(b, tbs...)
	b = append(b, r.sigAlgID...)
	b = appendLength(append(b, 0x03), bitsLen)
	b = append(append(b, 0), sig...)
	return append(b, r.certsField...)
}

// oidOCSPBasicDER is the DER OBJECT IDENTIFIER id-pkix-ocsp-basic.
var oidOCSPBasicDER = func() []byte {
	var b cryptobyte.Builder
	b.AddASN1ObjectIdentifier(oidOCSPBasic)
	return b.BytesOrPanic()
}()
