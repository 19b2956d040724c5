package cms

import (
	"crypto"
	"encoding/asn1"
	"errors"
	"fmt"
)

// Sentinel errors. See the package documentation for the error contract.
var (
	// ErrMalformed reports input that is not a well-formed CMS envelope
	// (bad DER, truncated, trailing data, wrong structure, too large).
	ErrMalformed = errors.New("cms: malformed envelope")
	// ErrNoRecipient reports an envelope with no recipient info addressed to
	// the given certificate.
	ErrNoRecipient = errors.New("cms: no recipient info for this certificate")
	// ErrUnsupported reports a well-formed envelope that uses an algorithm or
	// feature keyarc refuses (PKCS#1 v1.5 key transport, unknown ciphers,
	// OAEP labels, odd GCM parameters, ...).
	ErrUnsupported = errors.New("cms: unsupported envelope")
	// ErrDecrypt reports that decryption failed: the content-encryption key
	// could not be unwrapped, the padding was wrong or the GCM tag did not
	// verify. It deliberately does not say which.
	ErrDecrypt = errors.New("cms: decryption failed")
	// ErrKeyMismatch reports that the Decrypter's public key is not the key of
	// the certificate passed with it.
	ErrKeyMismatch = errors.New("cms: private key does not match certificate")
)

// MaxEnvelopeSize is the largest envelope Decrypt accepts and Encrypt
// produces, in bytes. A PKCS#8 key fits many times over.
const MaxEnvelopeSize = 64 << 10

// maxDepth bounds the nesting of ASN.1 elements. A CMS envelope from OpenSSL
// nests about 12 deep.
const maxDepth = 32

// Content selects the envelope type and content-encryption algorithm that
// Encrypt produces. The zero value is invalid, so callers always choose.
type Content int

const (
	// EnvelopedAESCBC is EnvelopedData with AES-256-CBC.
	EnvelopedAESCBC Content = iota + 1
	// AuthEnvelopedAESGCM is AuthEnvelopedData with AES-256-GCM (12-byte
	// nonce, 16-byte tag).
	AuthEnvelopedAESGCM
)

// String returns the name of the constant.
func (c Content) String() string {
	switch c {
	case EnvelopedAESCBC:
		return "EnvelopedAESCBC"
	case AuthEnvelopedAESGCM:
		return "AuthEnvelopedAESGCM"
	}
	return fmt.Sprintf("Content(%d)", int(c))
}

var (
	oidData              = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEnvelopedData     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidAuthEnvelopedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23}
	oidRSAEncryption     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidRSAESOAEP         = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidMGF1              = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	oidPSpecified        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 9}
	oidSHA1              = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidAES128CBC         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidAES128GCM         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 6}
	oidAES192GCM         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 26}
	oidAES256GCM         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}
	oidSignedData        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidEncryptedData     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 6}
	oidCompressedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 9}
	oidAuthenticatedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 2}
)

// contentTypeName names well-known content types for error messages.
func contentTypeName(oid asn1.ObjectIdentifier) string {
	switch {
	case oid.Equal(oidData):
		return "data"
	case oid.Equal(oidSignedData):
		return "signedData"
	case oid.Equal(oidEncryptedData):
		return "encryptedData"
	case oid.Equal(oidCompressedData):
		return "compressedData"
	case oid.Equal(oidAuthenticatedData):
		return "authenticatedData"
	}
	return oid.String()
}

// hashOID maps the OAEP hashes keyarc accepts to their OIDs.
func hashOID(h crypto.Hash) (asn1.ObjectIdentifier, bool) {
	switch h {
	case crypto.SHA1:
		return oidSHA1, true
	case crypto.SHA256:
		return oidSHA256, true
	}
	return nil, false
}

// hashFromOID is the inverse of hashOID.
func hashFromOID(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	switch {
	case oid.Equal(oidSHA1):
		return crypto.SHA1, true
	case oid.Equal(oidSHA256):
		return crypto.SHA256, true
	}
	return 0, false
}
