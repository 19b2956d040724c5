package cli

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"

	"github.com/keyarc/keyarc/hsm"
)

// The KRA's side of approvals and drills: a share is decrypted in the KRA's own token,
// re-encrypted to a key the appliance holds in its token (a recovery request's or a drill's),
// and what the KRA answers is signed with its auth key.

// rsaKeyFromSPKI decodes the appliance's key (base64 DER SubjectPublicKeyInfo) a share is
// re-encrypted to; what names it in errors ("recovery key", "drill key").
func rsaKeyFromSPKI(b64, what string) (spki []byte, key *rsa.PublicKey, err error) {
	spki, err = base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	key, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("the %s is not RSA", what)
	}
	return spki, key, nil
}

// decryptShare decrypts one base64 share in the token with RSA-OAEP under the hash named. The
// caller clears the plaintext.
func decryptShare(unwrap crypto.Decrypter, b64, hashName string) ([]byte, error) {
	ct, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, err
	}
	h, err := hashNamed(hashName)
	if err != nil {
		return nil, err
	}
	return unwrap.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: h, MGFHash: h})
}

// signAsKRA signs a SHA-256 digest with the KRA auth key in tok; what names the answer.
func signAsKRA(tok *hsm.Token, digest []byte, what string) ([]byte, error) {
	auth, err := tok.Signer(kraAuthLabel)
	if err != nil {
		return nil, err
	}
	sig, err := auth.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign the %s with the auth key: %w", what, err)
	}
	return sig, nil
}
