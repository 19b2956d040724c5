// Package pfx builds the enrollment page's PKCS#12 files in the shape of go-pkcs12's
// Modern2023 profile (the encoder escrow uses for recovered files: AES-256-CBC, PBKDF2-SHA-256,
// MAC HMAC-SHA-256), with a friendlyName on the key and on its certificate, which mail programs
// and certificate stores show as the certificate's name (go-pkcs12 writes only a localKeyId).
//
// [Build] takes the two PBKDF2 keys already derived, so that the page derives them with the
// browser's WebCrypto: 600,000 rounds of PBKDF2 in WebAssembly take several seconds each.
//
// It imports the standard library only, and is compiled into the page's WebAssembly as well as
// tested natively. Its functions are safe for concurrent use.
package pfx

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"unicode/utf16"
)

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEncryptedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 6}
	oidFriendlyName  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 20}
	oidLocalKeyID    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 21}
	oidPBES2         = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidHMACSHA256    = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidAES256CBC     = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	// RFC 7292 4.2: the bag types, and the certificate type of a CertBag.
	oidShroudedKeyBag  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 10, 1, 2}
	oidCertBag         = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 10, 1, 3}
	oidX509Certificate = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 22, 1}
)

type pfxPDU struct {
	Version  int
	AuthSafe contentInfo
	MacData  macData `asn1:"optional"`
}

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"tag:0,explicit,optional"`
}

type macData struct {
	Mac        digestInfo
	MacSalt    []byte
	Iterations int `asn1:"optional,default:1"`
}

type digestInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	Digest    []byte
}

type encryptedData struct {
	Version              int
	EncryptedContentInfo encryptedContentInfo
}

type encryptedContentInfo struct {
	ContentType                asn1.ObjectIdentifier
	ContentEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedContent           []byte `asn1:"tag:0,optional"`
}

type safeBag struct {
	ID         asn1.ObjectIdentifier
	Value      asn1.RawValue `asn1:"tag:0,explicit"`
	Attributes []attribute   `asn1:"set,optional"`
}

type attribute struct {
	ID    asn1.ObjectIdentifier
	Value asn1.RawValue `asn1:"set"`
}

type pbes2Params struct {
	KDF              pkix.AlgorithmIdentifier
	EncryptionScheme pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt       []byte
	Iterations int
	KeyLength  int                      `asn1:"optional"`
	PRF        pkix.AlgorithmIdentifier `asn1:"optional"`
}

// Keys is what a password yields for one file besides its MAC key: the PBKDF2-HMAC-SHA-256
// keys (32 bytes, for AES-256-CBC) of its two PBES2 encryptions, the certificates' and the
// private key's, each with its salt, and the iteration count of every derivation in the file.
type Keys struct {
	Iterations        int
	CertSalt, CertKey []byte
	KeySalt, KeyKey   []byte
}

// saltLen is the length of every salt in the file, as in go-pkcs12's Modern2023 profile.
const saltLen = 16

// DeriveKeys derives Keys from password with fresh salts. PBES2 takes the password as UTF-8
// (RFC 8018 3), as go-pkcs12 and OpenSSL do. The page derives the same keys with the browser's
// WebCrypto, many times faster than WebAssembly, and passes them to [Build].
func DeriveKeys(password string, iterations int) (*Keys, error) {
	k := &Keys{Iterations: iterations, CertSalt: make([]byte, saltLen), KeySalt: make([]byte, saltLen)}
	rand.Read(k.CertSalt)
	rand.Read(k.KeySalt)
	var err error
	if k.CertKey, err = pbkdf2.Key(sha256.New, password, k.CertSalt, iterations, 32); err != nil {
		return nil, err
	}
	if k.KeyKey, err = pbkdf2.Key(sha256.New, password, k.KeySalt, iterations, 32); err != nil {
		return nil, err
	}
	return k, nil
}

// Wipe clears the derived keys (best effort).
func (k *Keys) Wipe() {
	clear(k.CertKey)
	clear(k.KeyKey)
}

// Encode returns the PKCS#12 of key, cert and chain under password at iterations, with
// friendlyName (when not empty) on the key and the certificate: [DeriveKeys], then [Build].
func Encode(key any, cert *x509.Certificate, chain []*x509.Certificate, password, friendlyName string, iterations int) ([]byte, error) {
	k, err := DeriveKeys(password, iterations)
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	return Build(key, cert, chain, password, friendlyName, k)
}

// Build returns the PKCS#12 of key, cert and chain in the shape of go-pkcs12's Modern2023
// profile: the certificates in a PBES2 EncryptedData under k's CertKey, the key in a PKCS#8
// shrouded key bag under k's KeyKey (PBKDF2-HMAC-SHA-256, AES-256-CBC), and an HMAC-SHA-256
// MAC whose key Build derives from password (RFC 7292 B.2, k.Iterations rounds). The key and
// its certificate carry a localKeyId (the certificate's SHA-1) and friendlyName when not
// empty. k's keys must have been derived from password with k's salts: Build cannot check.
func Build(key any, cert *x509.Certificate, chain []*x509.Certificate, password, friendlyName string, k *Keys) ([]byte, error) {
	if k == nil || k.Iterations < 1 || len(k.CertKey) != 32 || len(k.KeyKey) != 32 || len(k.CertSalt) < 8 || len(k.KeySalt) < 8 {
		return nil, errors.New("pfx: derived keys of 32 bytes with salts of at least 8 bytes are required")
	}
	id := sha1.Sum(cert.Raw)
	idDER, err := asn1.Marshal(id[:])
	if err != nil {
		return nil, err
	}
	attrs := []attribute{{ID: oidLocalKeyID, Value: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: idDER}}}
	if friendlyName != "" {
		name, err := friendlyNameAttribute(friendlyName)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, name)
	}

	certBags := make([]safeBag, 0, 1+len(chain))
	for i, c := range append([]*x509.Certificate{cert}, chain...) {
		bag, err := certBag(c.Raw)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			bag.Attributes = attrs
		}
		certBags = append(certBags, bag)
	}
	certContents, err := asn1.Marshal(certBags)
	if err != nil {
		return nil, err
	}
	certAlg, certCT, err := pbes2Encrypt(certContents, k.CertSalt, k.CertKey, k.Iterations)
	if err != nil {
		return nil, err
	}
	certData, err := asn1.Marshal(encryptedData{EncryptedContentInfo: encryptedContentInfo{
		ContentType: oidData, ContentEncryptionAlgorithm: certAlg, EncryptedContent: certCT}})
	if err != nil {
		return nil, err
	}

	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pfx: %w", err)
	}
	keyAlg, keyCT, err := pbes2Encrypt(pkcs8, k.KeySalt, k.KeyKey, k.Iterations)
	clear(pkcs8)
	if err != nil {
		return nil, err
	}
	shrouded, err := asn1.Marshal(encryptedPrivateKeyInfo{Algorithm: keyAlg, EncryptedData: keyCT})
	if err != nil {
		return nil, err
	}
	keyContents, err := asn1.Marshal([]safeBag{{ID: oidShroudedKeyBag, Value: explicit0(shrouded), Attributes: attrs}})
	if err != nil {
		return nil, err
	}
	keyData, err := asn1.Marshal(keyContents)
	if err != nil {
		return nil, err
	}

	safe, err := asn1.Marshal([]contentInfo{
		{ContentType: oidEncryptedData, Content: explicit0(certData)},
		{ContentType: oidData, Content: explicit0(keyData)},
	})
	if err != nil {
		return nil, err
	}
	macSalt := make([]byte, saltLen)
	rand.Read(macSalt)
	macKey := macKey(bmpZeroTerminated(password), macSalt, k.Iterations)
	mac := hmac.New(sha256.New, macKey)
	clear(macKey)
	mac.Write(safe)
	safeData, err := asn1.Marshal(safe)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(pfxPDU{
		Version:  3,
		AuthSafe: contentInfo{ContentType: oidData, Content: explicit0(safeData)},
		MacData: macData{
			Mac:        digestInfo{Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA256, Parameters: asn1.NullRawValue}, Digest: mac.Sum(nil)},
			MacSalt:    macSalt,
			Iterations: k.Iterations,
		},
	})
}

type encryptedPrivateKeyInfo struct {
	Algorithm     pkix.AlgorithmIdentifier
	EncryptedData []byte
}

type certBagValue struct {
	ID   asn1.ObjectIdentifier
	Data []byte `asn1:"tag:0,explicit"`
}

// explicit0 wraps DER as the [0] EXPLICIT content of a ContentInfo or a SafeBag.
func explicit0(der []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: der}
}

// certBag is a SafeBag of an X.509 certificate (RFC 7292 4.2.3).
func certBag(der []byte) (safeBag, error) {
	v, err := asn1.Marshal(certBagValue{ID: oidX509Certificate, Data: der})
	if err != nil {
		return safeBag{}, err
	}
	return safeBag{ID: oidCertBag, Value: explicit0(v)}, nil
}

// pbes2Encrypt encrypts plaintext with AES-256-CBC under key (derived with PBKDF2-HMAC-SHA-256
// from salt at iterations) and a fresh IV, and returns the PBES2 AlgorithmIdentifier that says
// so and the ciphertext.
func pbes2Encrypt(plaintext, salt, key []byte, iterations int) (pkix.AlgorithmIdentifier, []byte, error) {
	iv := make([]byte, aes.BlockSize)
	rand.Read(iv)
	kdf, err := asn1.Marshal(pbkdf2Params{Salt: salt, Iterations: iterations,
		PRF: pkix.AlgorithmIdentifier{Algorithm: oidHMACSHA256, Parameters: asn1.NullRawValue}})
	if err != nil {
		return pkix.AlgorithmIdentifier{}, nil, err
	}
	ivDER, err := asn1.Marshal(iv)
	if err != nil {
		return pkix.AlgorithmIdentifier{}, nil, err
	}
	params, err := asn1.Marshal(pbes2Params{
		KDF:              pkix.AlgorithmIdentifier{Algorithm: oidPBKDF2, Parameters: asn1.RawValue{FullBytes: kdf}},
		EncryptionScheme: pkix.AlgorithmIdentifier{Algorithm: oidAES256CBC, Parameters: asn1.RawValue{FullBytes: ivDER}},
	})
	if err != nil {
		return pkix.AlgorithmIdentifier{}, nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return pkix.AlgorithmIdentifier{}, nil, err
	}
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	ct := append(bytes.Clone(plaintext), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, ct)
	return pkix.AlgorithmIdentifier{Algorithm: oidPBES2, Parameters: asn1.RawValue{FullBytes: params}}, ct, nil
}

// friendlyNameAttribute is PKCS#9 friendlyName: a SET of one BMPString.
func friendlyNameAttribute(name string) (attribute, error) {
	var b []byte
	for _, r := range name {
		if r > 0xFFFF {
			return attribute{}, fmt.Errorf("pfx: the friendly name holds a character outside the Basic Multilingual Plane")
		}
	}
	for _, u := range utf16.Encode([]rune(name)) {
		b = append(b, byte(u>>8), byte(u))
	}
	bmp, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagBMPString, Bytes: b})
	if err != nil {
		return attribute{}, err
	}
	return attribute{ID: oidFriendlyName, Value: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: bmp}}, nil
}

// bmpZeroTerminated is the password as RFC 7292 B.1 wants it for the MAC key: UTF-16 big-endian
// with a terminating zero.
func bmpZeroTerminated(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = append(b, byte(u>>8), byte(u))
	}
	return append(b, 0, 0)
}

// macKey derives the 32-byte MAC key of RFC 7292 B.2 with SHA-256 (u = 32, v = 64 bytes,
// ID = 3). One block of output is needed, so the procedure ends at A_1.
func macKey(password, salt []byte, iterations int) []byte {
	const v = 64
	fill := func(s []byte) []byte {
		if len(s) == 0 {
			return nil
		}
		out := make([]byte, v*((len(s)+v-1)/v))
		for i := range out {
			out[i] = s[i%len(s)]
		}
		return out
	}
	d := bytes.Repeat([]byte{3}, v)
	h := sha256.New()
	h.Write(d)
	h.Write(fill(salt))
	h.Write(fill(password))
	a := h.Sum(nil)
	for i := 1; i < iterations; i++ {
		sum := sha256.Sum256(a)
		a = sum[:]
	}
	return a
}
