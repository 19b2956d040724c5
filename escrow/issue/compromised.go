package issue

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// KeyID is the key identity of pub as the store keeps it for a certificate of that key
// ([store.Certificate.KeyID]): the hex SHA-256 of its SubjectPublicKeyInfo, which the CA
// encodes as crypto/x509 does.
func KeyID(pub crypto.PublicKey) (string, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("public key: %w", err)
	}
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:]), nil
}

// CompromisedKeyError refuses a request whose public key a certificate revoked for
// keyCompromise holds: S/MIME BR §6.1.1.3 forbids certifying such a key again, for any
// mailbox. It is a [policy.RejectError] (the client's fault: make a new key pair), matching
// [policy.ErrRejected] and [policy.ErrKeyNotAllowed].
func CompromisedKeyError(revokedSerial string) error {
	return &policy.RejectError{Cause: policy.ErrKeyNotAllowed, Reason: fmt.Sprintf(
		"the public key of this request is that of certificate %s, revoked for keyCompromise: a compromised key is never certified again; make a new key pair",
		revokedSerial)}
}

// refuseCompromised returns a [CompromisedKeyError] for the first of keyIDs that a
// certificate revoked for keyCompromise holds.
func refuseCompromised(tx store.Tx, keyIDs []string) error {
	bad, err := tx.CompromisedKeys(keyIDs)
	if err != nil || len(bad) == 0 {
		return err
	}
	for _, id := range keyIDs {
		if serial, ok := bad[id]; ok {
			return CompromisedKeyError(serial)
		}
	}
	return nil
}
