package cms

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"io"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Encrypt envelopes plaintext for recipient, whose certificate must hold an
// RSA key, and returns the DER ContentInfo.
//
// c chooses EnvelopedData with AES-256-CBC ([EnvelopedAESCBC], version 0) or
// AuthEnvelopedData with AES-256-GCM ([AuthEnvelopedAESGCM]). The
// content-encryption key is transported with RSAES-OAEP using oaepHash,
// crypto.SHA1 or crypto.SHA256, and MGF1 with the same hash; the recipient
// is named by issuerAndSerialNumber. Parameters are written the way OpenSSL
// writes them: an empty RSAES-OAEP-params SEQUENCE for SHA-1, explicit hash
// and MGF1 for SHA-256. Randomness comes from crypto/rand.
//
// Errors wrap [ErrUnsupported] for a bad recipient key, hash or Content, or
// an envelope that would exceed [MaxEnvelopeSize].
func Encrypt(plaintext []byte, recipient *x509.Certificate, c Content, oaepHash crypto.Hash) ([]byte, error) {
	return encrypt(rand.Reader, plaintext, recipient, c, oaepHash, encOptions{})
}

// encOptions are knobs for tests; the zero value is what Encrypt does.
type encOptions struct {
	authAttrs  []byte // AuthEnvelopedData authAttrs content (SET OF Attribute without its tag)
	oaepParams []byte // replaces the RSAES-OAEP-params element
	gcmParams  []byte // replaces the GCMParameters element
}

// encrypt is Encrypt with a chosen random source and test options.
func encrypt(rnd io.Reader, plaintext []byte, recipient *x509.Certificate, c Content, oaepHash crypto.Hash, opt encOptions) ([]byte, error) {
	authAttrs := opt.authAttrs
	if recipient == nil {
		return nil, fmt.Errorf("%w: nil recipient certificate", ErrUnsupported)
	}
	pub, ok := recipient.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: recipient key is %T; only RSA is supported", ErrUnsupported, recipient.PublicKey)
	}
	if recipient.SerialNumber == nil || len(recipient.RawIssuer) == 0 {
		return nil, fmt.Errorf("%w: recipient certificate has no issuer or serial number", ErrUnsupported)
	}
	hashOIDv, ok := hashOID(oaepHash)
	if !ok {
		return nil, fmt.Errorf("%w: OAEP hash %v; use SHA-1 or SHA-256", ErrUnsupported, oaepHash)
	}
	if c != EnvelopedAESCBC && c != AuthEnvelopedAESGCM {
		return nil, fmt.Errorf("%w: content %v", ErrUnsupported, c)
	}
	if authAttrs != nil && c != AuthEnvelopedAESGCM {
		return nil, fmt.Errorf("%w: authAttrs need AuthEnvelopedData", ErrUnsupported)
	}
	// Fail early on sizes Decrypt would refuse (the exact check is below).
	if len(plaintext) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: plaintext of %d bytes exceeds the %d-byte envelope limit", ErrUnsupported, len(plaintext), MaxEnvelopeSize)
	}

	cek := make([]byte, 32)
	defer clear(cek)
	if _, err := io.ReadFull(rnd, cek); err != nil {
		return nil, fmt.Errorf("cms: read random key: %w", err)
	}
	wrapped, err := rsa.EncryptOAEP(oaepHash.New(), rnd, pub, cek, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: OAEP encrypt to recipient: %w", ErrUnsupported, err)
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("cms: %w", err)
	}

	var algOID = oidAES256CBC
	var iv, ct, mac []byte
	switch c {
	case EnvelopedAESCBC:
		iv = make([]byte, aes.BlockSize)
		if _, err := io.ReadFull(rnd, iv); err != nil {
			return nil, fmt.Errorf("cms: read random IV: %w", err)
		}
		pad := aes.BlockSize - len(plaintext)%aes.BlockSize
		ct = make([]byte, len(plaintext)+pad)
		copy(ct, plaintext)
		for i := len(plaintext); i < len(ct); i++ {
			ct[i] = byte(pad)
		}
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, ct)
	case AuthEnvelopedAESGCM:
		algOID = oidAES256GCM
		iv = make([]byte, 12)
		if _, err := io.ReadFull(rnd, iv); err != nil {
			return nil, fmt.Errorf("cms: read random nonce: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("cms: %w", err)
		}
		var aad []byte
		if authAttrs != nil {
			aad = appendElem(nil, 0x31, authAttrs)
		}
		sealed := aead.Seal(nil, iv, plaintext, aad)
		ct, mac = sealed[:len(plaintext)], sealed[len(plaintext):]
	}

	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // ContentInfo
		if c == AuthEnvelopedAESGCM {
			b.AddASN1ObjectIdentifier(oidAuthEnvelopedData)
		} else {
			b.AddASN1ObjectIdentifier(oidEnvelopedData)
		}
		b.AddASN1(tagCtx0, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				// RFC 5652 6.1: no originatorInfo, no unprotectedAttrs and
				// only version-0 recipient infos give version 0; RFC 5083
				// fixes AuthEnvelopedData at 0.
				b.AddASN1Int64(0)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // ktri
						b.AddASN1Int64(0) // rid is issuerAndSerialNumber
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddBytes(recipient.RawIssuer)
							b.AddASN1BigInt(recipient.SerialNumber)
						})
						if opt.oaepParams != nil {
							b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
								b.AddASN1ObjectIdentifier(oidRSAESOAEP)
								b.AddBytes(opt.oaepParams)
							})
						} else {
							addOAEPAlg(b, oaepHash, hashOIDv)
						}
						b.AddASN1OctetString(wrapped)
					})
				})
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // EncryptedContentInfo
					b.AddASN1ObjectIdentifier(oidData)
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(algOID)
						if opt.gcmParams != nil {
							b.AddBytes(opt.gcmParams)
						} else if c == AuthEnvelopedAESGCM {
							b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
								b.AddASN1OctetString(iv)
								b.AddASN1Int64(16)
							})
						} else {
							b.AddASN1OctetString(iv)
						}
					})
					b.AddASN1(tagCtx0Prim, func(b *cryptobyte.Builder) { b.AddBytes(ct) })
				})
				if c == AuthEnvelopedAESGCM {
					if authAttrs != nil {
						b.AddASN1(tagCtx1, func(b *cryptobyte.Builder) { b.AddBytes(authAttrs) })
					}
					b.AddASN1OctetString(mac)
				}
			})
		})
	})
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("cms: encode envelope: %w", err)
	}
	if len(out) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes exceeds the %d-byte limit", ErrUnsupported, len(out), MaxEnvelopeSize)
	}
	return out, nil
}

// addOAEPAlg writes the id-RSAES-OAEP AlgorithmIdentifier. For SHA-1 the
// parameters are an empty SEQUENCE (all defaults), as OpenSSL writes them;
// otherwise hashAlgorithm and maskGenAlgorithm are explicit, with absent hash
// parameters (RFC 5754) and the default empty label.
func addOAEPAlg(b *cryptobyte.Builder, h crypto.Hash, hOID asn1.ObjectIdentifier) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidRSAESOAEP)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			if h == crypto.SHA1 {
				return
			}
			b.AddASN1(tagCtx0, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(hOID) })
			})
			b.AddASN1(tagCtx1, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(oidMGF1)
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(hOID) })
				})
			})
		})
	})
}
