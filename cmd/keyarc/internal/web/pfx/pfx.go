// Package pfx builds the enrollment page's PKCS#12 files: go-pkcs12's Modern2023 profile (the
// encoder escrow uses for recovered files: AES-256-CBC, PBKDF2-SHA-256, MAC HMAC-SHA-256), with a
// friendlyName on the key and on its certificate, which mail programs and certificate stores show
// as the certificate's name. go-pkcs12 writes only a localKeyId on them, so [Encode] opens the
// file it made, adds the name to both bags, encrypts the certificates again under the same
// derived key with a fresh IV, and computes the MAC again with the same salt and iteration count.
//
// It imports the standard library and go-pkcs12 only, and is compiled into the page's
// WebAssembly as well as tested natively. Its functions are safe for concurrent use.
package pfx

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"unicode/utf16"

	"software.sslmate.com/src/go-pkcs12"
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
)

// ErrUnexpected is returned when go-pkcs12's output is not of the shape this package knows
// (the Modern2023 profile); it would mean a change of go-pkcs12.
var ErrUnexpected = errors.New("pfx: unexpected PKCS#12 structure")

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

// Encode returns the PKCS#12 of key, cert and chain under password, from go-pkcs12's Modern2023
// profile at iterations, with friendlyName (when not empty) on the key and the certificate.
func Encode(key any, cert *x509.Certificate, chain []*x509.Certificate, password, friendlyName string, iterations int) ([]byte, error) {
	der, err := pkcs12.Modern2023.WithIterations(iterations).Encode(key, cert, chain, password)
	if err != nil || friendlyName == "" {
		return der, err
	}
	return addFriendlyName(der, password, friendlyName)
}

func addFriendlyName(der []byte, password, name string) ([]byte, error) {
	nameAttr, err := friendlyNameAttribute(name)
	if err != nil {
		return nil, err
	}
	var pfx pfxPDU
	if rest, err := asn1.Unmarshal(der, &pfx); err != nil || len(rest) > 0 || !pfx.AuthSafe.ContentType.Equal(oidData) ||
		!pfx.MacData.Mac.Algorithm.Algorithm.Equal(oidSHA256) {
		return nil, fmt.Errorf("%w: PFX", ErrUnexpected)
	}
	var safeBytes []byte
	if _, err := asn1.Unmarshal(pfx.AuthSafe.Content.Bytes, &safeBytes); err != nil {
		return nil, fmt.Errorf("%w: authSafe: %v", ErrUnexpected, err)
	}
	var safe []contentInfo
	if _, err := asn1.Unmarshal(safeBytes, &safe); err != nil {
		return nil, fmt.Errorf("%w: AuthenticatedSafe: %v", ErrUnexpected, err)
	}
	named := 0
	for i := range safe {
		ci := &safe[i]
		switch {
		case ci.ContentType.Equal(oidData):
			var bags []byte
			if _, err := asn1.Unmarshal(ci.Content.Bytes, &bags); err != nil {
				return nil, fmt.Errorf("%w: data: %v", ErrUnexpected, err)
			}
			out, n, err := nameBags(bags, nameAttr)
			if err != nil {
				return nil, err
			}
			named += n
			if ci.Content.Bytes, err = asn1.Marshal(out); err != nil {
				return nil, err
			}
		case ci.ContentType.Equal(oidEncryptedData):
			n, err := nameEncrypted(ci, password, nameAttr)
			if err != nil {
				return nil, err
			}
			named += n
		default:
			return nil, fmt.Errorf("%w: content type %v", ErrUnexpected, ci.ContentType)
		}
		ci.Content.FullBytes = nil
	}
	if named != 2 {
		return nil, fmt.Errorf("%w: %d bags with a localKeyId, want the key and its certificate", ErrUnexpected, named)
	}
	if safeBytes, err = asn1.Marshal(safe); err != nil {
		return nil, err
	}
	// The MAC, again: HMAC-SHA-256 under the RFC 7292 B.2 key of the BMPString password.
	mac := hmac.New(sha256.New, macKey(bmpZeroTerminated(password), pfx.MacData.MacSalt, pfx.MacData.Iterations))
	mac.Write(safeBytes)
	pfx.MacData.Mac.Digest = mac.Sum(nil)
	if pfx.AuthSafe.Content.Bytes, err = asn1.Marshal(safeBytes); err != nil {
		return nil, err
	}
	pfx.AuthSafe.Content.FullBytes = nil
	return asn1.Marshal(pfx)
}

// nameBags adds the friendlyName to each bag of a DER SafeContents that has a localKeyId (the
// key, and the certificate of the key), and returns the new SafeContents and how many it named.
func nameBags(der []byte, name attribute) ([]byte, int, error) {
	var bags []safeBag
	if _, err := asn1.Unmarshal(der, &bags); err != nil {
		return nil, 0, fmt.Errorf("%w: SafeContents: %v", ErrUnexpected, err)
	}
	n := 0
	for i := range bags {
		local := false
		for _, a := range bags[i].Attributes {
			if a.ID.Equal(oidFriendlyName) {
				return nil, 0, fmt.Errorf("%w: a bag already has a friendlyName", ErrUnexpected)
			}
			local = local || a.ID.Equal(oidLocalKeyID)
		}
		if local {
			bags[i].Attributes = append(bags[i].Attributes, name)
			n++
		}
	}
	out, err := asn1.Marshal(bags)
	return out, n, err
}

// nameEncrypted opens a PBES2 (PBKDF2-HMAC-SHA-256, AES-256-CBC) EncryptedData, names its bags,
// and encrypts them again under the same key with a fresh IV.
func nameEncrypted(ci *contentInfo, password string, name attribute) (int, error) {
	var ed encryptedData
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &ed); err != nil {
		return 0, fmt.Errorf("%w: EncryptedData: %v", ErrUnexpected, err)
	}
	alg := &ed.EncryptedContentInfo.ContentEncryptionAlgorithm
	var params pbes2Params
	if !alg.Algorithm.Equal(oidPBES2) {
		return 0, fmt.Errorf("%w: certificates not under PBES2", ErrUnexpected)
	}
	if _, err := asn1.Unmarshal(alg.Parameters.FullBytes, &params); err != nil {
		return 0, fmt.Errorf("%w: PBES2 parameters: %v", ErrUnexpected, err)
	}
	var kdf pbkdf2Params
	if !params.KDF.Algorithm.Equal(oidPBKDF2) || !params.EncryptionScheme.Algorithm.Equal(oidAES256CBC) {
		return 0, fmt.Errorf("%w: PBES2 not with PBKDF2 and AES-256-CBC", ErrUnexpected)
	}
	if _, err := asn1.Unmarshal(params.KDF.Parameters.FullBytes, &kdf); err != nil || !kdf.PRF.Algorithm.Equal(oidHMACSHA256) {
		return 0, fmt.Errorf("%w: PBKDF2 parameters", ErrUnexpected)
	}
	var iv []byte
	if _, err := asn1.Unmarshal(params.EncryptionScheme.Parameters.FullBytes, &iv); err != nil || len(iv) != aes.BlockSize {
		return 0, fmt.Errorf("%w: AES-CBC IV", ErrUnexpected)
	}
	// PBES2 takes the password as UTF-8 (RFC 8018 3), as go-pkcs12 and OpenSSL do.
	key, err := pbkdf2.Key(sha256.New, password, kdf.Salt, kdf.Iterations, 32)
	if err != nil {
		return 0, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return 0, err
	}
	ct := ed.EncryptedContentInfo.EncryptedContent
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return 0, fmt.Errorf("%w: ciphertext length", ErrUnexpected)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	pad := int(pt[len(pt)-1])
	if pad == 0 || pad > aes.BlockSize || !bytes.Equal(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return 0, fmt.Errorf("%w: padding (a wrong password?)", ErrUnexpected)
	}
	named, n, err := nameBags(pt[:len(pt)-pad], name)
	if err != nil {
		return 0, err
	}
	pad = aes.BlockSize - len(named)%aes.BlockSize
	named = append(named, bytes.Repeat([]byte{byte(pad)}, pad)...)
	if _, err := rand.Read(iv); err != nil {
		return 0, err
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(named, named)
	ed.EncryptedContentInfo.EncryptedContent = named
	ivDER, err := asn1.Marshal(iv)
	if err != nil {
		return 0, err
	}
	params.EncryptionScheme.Parameters = asn1.RawValue{FullBytes: ivDER}
	if alg.Parameters.FullBytes, err = asn1.Marshal(params); err != nil {
		return 0, err
	}
	if ci.Content.Bytes, err = asn1.Marshal(ed); err != nil {
		return 0, err
	}
	return n, nil
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
