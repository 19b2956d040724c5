package cms

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	tagCtx0Prim = cbasn1.Tag(0).ContextSpecific()
	tagCtx0     = cbasn1.Tag(0).ContextSpecific().Constructed()
	tagCtx1     = cbasn1.Tag(1).ContextSpecific().Constructed()
	tagCtx2     = cbasn1.Tag(2).ContextSpecific().Constructed()
)

// envelope is a parsed EnvelopedData or AuthEnvelopedData.
type envelope struct {
	auth       bool     // AuthEnvelopedData
	recipients [][]byte // RecipientInfo elements, in order
	alg        asn1.ObjectIdentifier
	algParams  cryptobyte.String // parameters element, empty if absent
	ciphertext []byte
	authAttrs  []byte // AAD: authAttrs re-tagged as SET, nil if absent
	mac        []byte

	// set by checkContentAlg
	keyLen int
	iv     []byte // CBC IV or GCM nonce
}

// ktri is a parsed KeyTransRecipientInfo.
type ktri struct {
	issuer       []byte // DER Name, nil when rid is a subjectKeyIdentifier
	serial       *big.Int
	ski          []byte
	alg          asn1.ObjectIdentifier
	params       cryptobyte.String // parameters element, empty if absent
	encryptedKey []byte
}

func malformed(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }

// Decrypt opens a DER ContentInfo holding an EnvelopedData (AES-128/192/256-
// CBC) or AuthEnvelopedData (AES-128/192/256-GCM, 12-byte nonce, 16-byte tag)
// and returns its content.
//
// The content-encryption key must be transported to cert with a
// KeyTransRecipientInfo whose rid (issuerAndSerialNumber or
// subjectKeyIdentifier) matches cert and whose algorithm is RSAES-OAEP with
// SHA-1 or SHA-256. key.Decrypt is only ever called with an
// [*rsa.OAEPOptions]; rsaEncryption (PKCS#1 v1.5) key transport is refused
// with [ErrUnsupported] and the key is not used. Recipient infos of other
// types or for other certificates are skipped.
//
// The input must be at most [MaxEnvelopeSize] bytes of DER, or of BER whose
// only deviation is indefinite lengths and a chunked encryptedContent (as
// `openssl cms -stream` writes). Nothing may follow the ContentInfo.
//
// Errors wrap [ErrMalformed], [ErrNoRecipient], [ErrUnsupported],
// [ErrDecrypt] or [ErrKeyMismatch].
func Decrypt(der []byte, cert *x509.Certificate, key crypto.Decrypter) ([]byte, error) {
	if cert == nil || key == nil {
		return nil, fmt.Errorf("%w: nil certificate or key", ErrNoRecipient)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); ok && !pub.Equal(cert.PublicKey) {
		return nil, ErrKeyMismatch
	}
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: certificate key is %T; only RSA transport keys are supported", ErrUnsupported, cert.PublicKey)
	}
	env, err := parse(der)
	if err != nil {
		return nil, err
	}
	cek, err := unwrapKey(env.recipients, cert, key)
	if err != nil {
		return nil, err
	}
	defer clear(cek)
	return decryptContent(env, cek)
}

// parse checks size, normalises BER and parses the ContentInfo.
func parse(der []byte) (*envelope, error) {
	if len(der) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope is %d bytes; the limit is %d", ErrMalformed, len(der), MaxEnvelopeSize)
	}
	if len(der) == 0 {
		return nil, malformed("empty input")
	}
	if der[0] != 0x30 {
		if der[0] == '-' || der[0] == 'M' {
			return nil, malformed("input looks like PEM or S/MIME; send DER (openssl cms -outform DER)")
		}
		return nil, malformed("input is not a DER SEQUENCE")
	}
	norm, err := normalize(der)
	if err != nil {
		return nil, err
	}
	s := cryptobyte.String(norm)
	var ci, content cryptobyte.String
	var ct asn1.ObjectIdentifier
	if !s.ReadASN1(&ci, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, malformed("bad ContentInfo")
	}
	if !ci.ReadASN1ObjectIdentifier(&ct) {
		return nil, malformed("bad ContentInfo contentType")
	}
	if !ci.ReadASN1(&content, tagCtx0) || !ci.Empty() {
		return nil, malformed("bad ContentInfo content")
	}
	switch {
	case ct.Equal(oidEnvelopedData):
		return parseEnveloped(content, false)
	case ct.Equal(oidAuthEnvelopedData):
		return parseEnveloped(content, true)
	}
	return nil, fmt.Errorf("%w: content type %s is neither EnvelopedData nor AuthEnvelopedData", ErrUnsupported, contentTypeName(ct))
}

// parseEnveloped parses the [0] EXPLICIT content of the ContentInfo.
func parseEnveloped(content cryptobyte.String, auth bool) (*envelope, error) {
	name := "EnvelopedData"
	if auth {
		name = "AuthEnvelopedData"
	}
	var ed cryptobyte.String
	if !content.ReadASN1(&ed, cbasn1.SEQUENCE) || !content.Empty() {
		return nil, malformed("bad " + name)
	}
	var version int64
	if !ed.ReadASN1Integer(&version) {
		return nil, malformed("bad " + name + " version")
	}
	if (auth && version != 0) || (!auth && (version < 0 || version > 4 || version == 1)) {
		return nil, fmt.Errorf("%w: %s version %d", ErrUnsupported, name, version)
	}
	if !ed.SkipOptionalASN1(tagCtx0) { // originatorInfo
		return nil, malformed("bad originatorInfo")
	}
	env := &envelope{auth: auth}
	var ris cryptobyte.String
	if !ed.ReadASN1(&ris, cbasn1.SET) {
		return nil, malformed("bad recipientInfos")
	}
	for !ris.Empty() {
		var ri cryptobyte.String
		var tag cbasn1.Tag
		if !ris.ReadAnyASN1Element(&ri, &tag) {
			return nil, malformed("bad RecipientInfo")
		}
		env.recipients = append(env.recipients, ri)
	}
	if len(env.recipients) == 0 {
		return nil, malformed("no recipientInfos")
	}
	var eci cryptobyte.String
	if !ed.ReadASN1(&eci, cbasn1.SEQUENCE) {
		return nil, malformed("bad encryptedContentInfo")
	}
	var ct asn1.ObjectIdentifier
	if !eci.ReadASN1ObjectIdentifier(&ct) {
		return nil, malformed("bad encryptedContentInfo contentType")
	}
	if !ct.Equal(oidData) {
		return nil, fmt.Errorf("%w: encrypted content type %s; only id-data is accepted", ErrUnsupported, contentTypeName(ct))
	}
	var alg cryptobyte.String
	if !eci.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&env.alg) {
		return nil, malformed("bad contentEncryptionAlgorithm")
	}
	if !alg.Empty() {
		var tag cbasn1.Tag
		if !alg.ReadAnyASN1Element(&env.algParams, &tag) || !alg.Empty() {
			return nil, malformed("bad contentEncryptionAlgorithm parameters")
		}
	}
	ct2, err := readEncryptedContent(&eci)
	if err != nil {
		return nil, err
	}
	env.ciphertext = ct2
	if !eci.Empty() {
		return nil, malformed("trailing data in encryptedContentInfo")
	}
	if auth {
		var present bool
		var attrs cryptobyte.String
		if !ed.ReadOptionalASN1(&attrs, &present, tagCtx1) {
			return nil, malformed("bad authAttrs")
		}
		if present {
			// RFC 5083 section 2.2: the AAD is the DER of authAttrs with
			// an EXPLICIT SET OF tag in place of the IMPLICIT [1].
			env.authAttrs = appendElem(nil, 0x31, attrs)
		}
		if !ed.ReadASN1Bytes(&env.mac, cbasn1.OCTET_STRING) {
			return nil, malformed("bad mac")
		}
		if !ed.SkipOptionalASN1(tagCtx2) { // unauthAttrs: not authenticated, ignored
			return nil, malformed("bad unauthAttrs")
		}
	} else if !ed.SkipOptionalASN1(tagCtx1) { // unprotectedAttrs: ignored
		return nil, malformed("bad unprotectedAttrs")
	}
	if !ed.Empty() {
		return nil, malformed("trailing data in " + name)
	}
	if err := env.checkContentAlg(); err != nil {
		return nil, err
	}
	return env, nil
}

// readEncryptedContent reads encryptedContent [0] IMPLICIT OCTET STRING, in
// primitive form (DER) or constructed from OCTET STRING chunks (BER, as
// openssl -stream writes it).
func readEncryptedContent(eci *cryptobyte.String) ([]byte, error) {
	var out []byte
	switch {
	case eci.PeekASN1Tag(tagCtx0Prim):
		if !eci.ReadASN1Bytes(&out, tagCtx0Prim) {
			return nil, malformed("bad encryptedContent")
		}
	case eci.PeekASN1Tag(tagCtx0):
		var chunks cryptobyte.String
		if !eci.ReadASN1(&chunks, tagCtx0) {
			return nil, malformed("bad encryptedContent")
		}
		for !chunks.Empty() {
			var c []byte
			if !chunks.ReadASN1Bytes(&c, cbasn1.OCTET_STRING) {
				return nil, malformed("bad encryptedContent chunk")
			}
			out = append(out, c...)
		}
	default:
		return nil, fmt.Errorf("%w: detached encryptedContent is not supported", ErrUnsupported)
	}
	return out, nil
}

// parseKTRI parses a KeyTransRecipientInfo SEQUENCE element.
func parseKTRI(ri cryptobyte.String) (*ktri, error) {
	var seq cryptobyte.String
	var version int64
	if !ri.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1Integer(&version) {
		return nil, malformed("bad KeyTransRecipientInfo")
	}
	if version != 0 && version != 2 {
		return nil, malformed(fmt.Sprintf("KeyTransRecipientInfo version %d", version))
	}
	k := &ktri{}
	switch {
	case seq.PeekASN1Tag(cbasn1.SEQUENCE):
		var ias, name cryptobyte.String
		k.serial = new(big.Int)
		if !seq.ReadASN1(&ias, cbasn1.SEQUENCE) ||
			!ias.ReadASN1Element(&name, cbasn1.SEQUENCE) ||
			!ias.ReadASN1Integer(k.serial) || !ias.Empty() {
			return nil, malformed("bad issuerAndSerialNumber")
		}
		k.issuer = name
	case seq.PeekASN1Tag(tagCtx0Prim):
		if !seq.ReadASN1Bytes(&k.ski, tagCtx0Prim) {
			return nil, malformed("bad subjectKeyIdentifier")
		}
	default:
		return nil, malformed("bad RecipientIdentifier")
	}
	var alg cryptobyte.String
	if !seq.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&k.alg) {
		return nil, malformed("bad keyEncryptionAlgorithm")
	}
	if !alg.Empty() {
		var tag cbasn1.Tag
		if !alg.ReadAnyASN1Element(&k.params, &tag) || !alg.Empty() {
			return nil, malformed("bad keyEncryptionAlgorithm parameters")
		}
	}
	if !seq.ReadASN1Bytes(&k.encryptedKey, cbasn1.OCTET_STRING) || !seq.Empty() {
		return nil, malformed("bad encryptedKey")
	}
	return k, nil
}

// matches reports whether the recipient identifier names cert.
func (k *ktri) matches(cert *x509.Certificate) bool {
	if k.issuer != nil {
		return bytes.Equal(k.issuer, cert.RawIssuer) && cert.SerialNumber != nil && k.serial.Cmp(cert.SerialNumber) == 0
	}
	return len(cert.SubjectKeyId) > 0 && bytes.Equal(k.ski, cert.SubjectKeyId)
}

// oaepHash checks the key-transport algorithm and returns the OAEP hash.
func (k *ktri) oaepHash() (crypto.Hash, error) {
	switch {
	case k.alg.Equal(oidRSAEncryption):
		return 0, fmt.Errorf("%w: key transport rsaEncryption (PKCS#1 v1.5) is not accepted; use RSA-OAEP (openssl: -keyopt rsa_padding_mode:oaep)", ErrUnsupported)
	case !k.alg.Equal(oidRSAESOAEP):
		return 0, fmt.Errorf("%w: key transport algorithm %s; only RSAES-OAEP is accepted", ErrUnsupported, k.alg)
	}
	return parseOAEPParams(k.params)
}

// parseOAEPParams parses RSAES-OAEP-params (RFC 4055 section 4.1). Absent
// parameters, an empty SEQUENCE and explicit SHA-1 all mean SHA-1.
func parseOAEPParams(p cryptobyte.String) (crypto.Hash, error) {
	hash, mgfHash := crypto.SHA1, crypto.SHA1
	if len(p) == 0 {
		return hash, nil
	}
	var seq cryptobyte.String
	if !p.ReadASN1(&seq, cbasn1.SEQUENCE) || !p.Empty() {
		return 0, malformed("bad RSAES-OAEP-params")
	}
	var present bool
	var field cryptobyte.String
	if !seq.ReadOptionalASN1(&field, &present, tagCtx0) {
		return 0, malformed("bad OAEP hashAlgorithm")
	}
	if present {
		h, err := readHashAlg(&field)
		if err != nil {
			return 0, err
		}
		if !field.Empty() {
			return 0, malformed("bad OAEP hashAlgorithm")
		}
		hash = h
	}
	if !seq.ReadOptionalASN1(&field, &present, tagCtx1) {
		return 0, malformed("bad OAEP maskGenAlgorithm")
	}
	if present {
		var mgf cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !field.ReadASN1(&mgf, cbasn1.SEQUENCE) || !field.Empty() || !mgf.ReadASN1ObjectIdentifier(&oid) {
			return 0, malformed("bad OAEP maskGenAlgorithm")
		}
		if !oid.Equal(oidMGF1) {
			return 0, fmt.Errorf("%w: OAEP mask generation function %s; only MGF1 is accepted", ErrUnsupported, oid)
		}
		h, err := readHashAlg(&mgf)
		if err != nil {
			return 0, err
		}
		if !mgf.Empty() {
			return 0, malformed("bad MGF1 parameters")
		}
		mgfHash = h
	}
	if !seq.ReadOptionalASN1(&field, &present, tagCtx2) {
		return 0, malformed("bad OAEP pSourceAlgorithm")
	}
	if present {
		var ps cryptobyte.String
		var oid asn1.ObjectIdentifier
		var label []byte
		if !field.ReadASN1(&ps, cbasn1.SEQUENCE) || !field.Empty() || !ps.ReadASN1ObjectIdentifier(&oid) {
			return 0, malformed("bad OAEP pSourceAlgorithm")
		}
		if !oid.Equal(oidPSpecified) {
			return 0, fmt.Errorf("%w: OAEP pSourceAlgorithm %s", ErrUnsupported, oid)
		}
		if !ps.ReadASN1Bytes(&label, cbasn1.OCTET_STRING) || !ps.Empty() {
			return 0, malformed("bad OAEP pSpecified label")
		}
		if len(label) != 0 {
			return 0, fmt.Errorf("%w: OAEP with a non-empty label (%d bytes)", ErrUnsupported, len(label))
		}
	}
	if !seq.Empty() {
		return 0, malformed("trailing data in RSAES-OAEP-params")
	}
	if hash != mgfHash {
		return 0, fmt.Errorf("%w: OAEP hash %v with MGF1 hash %v; they must be the same", ErrUnsupported, hash, mgfHash)
	}
	return hash, nil
}

// readHashAlg reads a hash AlgorithmIdentifier whose parameters are absent or
// NULL.
func readHashAlg(s *cryptobyte.String) (crypto.Hash, error) {
	var alg cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) {
		return 0, malformed("bad hash AlgorithmIdentifier")
	}
	if alg.PeekASN1Tag(cbasn1.NULL) {
		var null cryptobyte.String
		if !alg.ReadASN1(&null, cbasn1.NULL) || !null.Empty() {
			return 0, malformed("bad hash AlgorithmIdentifier parameters")
		}
	}
	if !alg.Empty() {
		return 0, malformed("bad hash AlgorithmIdentifier parameters")
	}
	h, ok := hashFromOID(oid)
	if !ok {
		return 0, fmt.Errorf("%w: OAEP hash %s; only SHA-1 and SHA-256 are accepted", ErrUnsupported, oid)
	}
	return h, nil
}

// unwrapKey finds the KeyTransRecipientInfo for cert and decrypts the
// content-encryption key with OAEP.
func unwrapKey(recipients [][]byte, cert *x509.Certificate, key crypto.Decrypter) ([]byte, error) {
	var refused error
	for _, ri := range recipients {
		if len(ri) == 0 || ri[0] != 0x30 { // kari [1], kekri [2], pwri [3], ori [4]
			continue
		}
		k, err := parseKTRI(ri)
		if err != nil {
			return nil, err
		}
		if !k.matches(cert) {
			continue
		}
		h, err := k.oaepHash()
		if err != nil {
			if refused == nil {
				refused = err
			}
			continue
		}
		cek, err := key.Decrypt(rand.Reader, k.encryptedKey, &rsa.OAEPOptions{Hash: h, MGFHash: h})
		if err != nil {
			if errors.Is(err, rsa.ErrDecryption) {
				return nil, ErrDecrypt
			}
			return nil, fmt.Errorf("%w: unwrap content-encryption key: %w", ErrDecrypt, err)
		}
		return cek, nil
	}
	if refused != nil {
		return nil, refused
	}
	return nil, fmt.Errorf("%w: none of %d recipient infos names issuer %q serial %x or its subject key identifier",
		ErrNoRecipient, len(recipients), cert.Issuer.String(), cert.SerialNumber)
}

// checkContentAlg validates the content-encryption algorithm and its
// parameters, before the key is touched.
func (env *envelope) checkContentAlg() error {
	var gcm bool
	switch {
	case env.alg.Equal(oidAES128CBC):
		env.keyLen = 16
	case env.alg.Equal(oidAES192CBC):
		env.keyLen = 24
	case env.alg.Equal(oidAES256CBC):
		env.keyLen = 32
	case env.alg.Equal(oidAES128GCM):
		env.keyLen, gcm = 16, true
	case env.alg.Equal(oidAES192GCM):
		env.keyLen, gcm = 24, true
	case env.alg.Equal(oidAES256GCM):
		env.keyLen, gcm = 32, true
	default:
		return fmt.Errorf("%w: content encryption algorithm %s; only AES-CBC and AES-GCM are accepted", ErrUnsupported, env.alg)
	}
	if gcm != env.auth {
		if gcm {
			return fmt.Errorf("%w: AES-GCM inside EnvelopedData; use AuthEnvelopedData", ErrUnsupported)
		}
		return fmt.Errorf("%w: AES-CBC inside AuthEnvelopedData", ErrUnsupported)
	}
	p := env.algParams
	if !gcm {
		if !p.ReadASN1Bytes(&env.iv, cbasn1.OCTET_STRING) || !p.Empty() {
			return malformed("bad AES-CBC IV parameter")
		}
		if len(env.iv) != aes.BlockSize {
			return malformed(fmt.Sprintf("AES-CBC IV of %d bytes", len(env.iv)))
		}
		if n := len(env.ciphertext); n == 0 || n%aes.BlockSize != 0 {
			return malformed(fmt.Sprintf("AES-CBC ciphertext of %d bytes is not a positive multiple of 16", n))
		}
		return nil
	}
	var params cryptobyte.String
	if !p.ReadASN1(&params, cbasn1.SEQUENCE) || !p.Empty() || !params.ReadASN1Bytes(&env.iv, cbasn1.OCTET_STRING) {
		return malformed("bad GCMParameters")
	}
	icvLen := int64(12) // RFC 5084 default
	if !params.Empty() {
		if !params.ReadASN1Integer(&icvLen) || !params.Empty() {
			return malformed("bad GCMParameters ICVlen")
		}
	}
	if len(env.iv) != 12 {
		return fmt.Errorf("%w: AES-GCM nonce of %d bytes; only 12 is accepted", ErrUnsupported, len(env.iv))
	}
	if icvLen != 16 {
		return fmt.Errorf("%w: AES-GCM tag of %d bytes; only 16 is accepted", ErrUnsupported, icvLen)
	}
	if len(env.mac) != int(icvLen) {
		return malformed(fmt.Sprintf("mac of %d bytes, GCMParameters say %d", len(env.mac), icvLen))
	}
	return nil
}

// decryptContent decrypts the content with the unwrapped key; the algorithm
// has been checked by checkContentAlg.
func decryptContent(env *envelope, cek []byte) ([]byte, error) {
	if len(cek) != env.keyLen {
		return nil, ErrDecrypt
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, ErrDecrypt
	}
	if env.auth {
		return openGCM(env, block)
	}
	return openCBC(env, block)
}

func openCBC(env *envelope, block cipher.Block) ([]byte, error) {
	pt := make([]byte, len(env.ciphertext))
	cipher.NewCBCDecrypter(block, env.iv).CryptBlocks(pt, env.ciphertext)
	n, ok := unpad(pt)
	if !ok {
		clear(pt)
		return nil, ErrDecrypt
	}
	return pt[:n:n], nil
}

// unpad checks PKCS#7 padding over the last block without branching on the
// padding bytes and returns the content length.
func unpad(pt []byte) (int, bool) {
	last := pt[len(pt)-aes.BlockSize:]
	pad := int(last[aes.BlockSize-1])
	good := subtle.ConstantTimeLessOrEq(1, pad) & subtle.ConstantTimeLessOrEq(pad, aes.BlockSize)
	for i := 0; i < aes.BlockSize; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i+1, pad)
		eq := subtle.ConstantTimeByteEq(last[aes.BlockSize-1-i], byte(pad))
		// Outside the padding any byte is fine; inside it must equal pad.
		good &= eq | (1 ^ inPad)
	}
	return len(pt) - pad, good == 1
}

func openGCM(env *envelope, block cipher.Block) ([]byte, error) {
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, ErrDecrypt
	}
	sealed := make([]byte, 0, len(env.ciphertext)+len(env.mac))
	sealed = append(append(sealed, env.ciphertext...), env.mac...)
	pt, err := aead.Open(sealed[:0], env.iv, sealed, env.authAttrs)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}
