package record

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"hash"

	"github.com/keyarc/keyarc/escrow/shamir"
)

// MaxPayload is the largest PKCS#8 key Seal accepts: what fits in
// [MaxSealed] with the nonce and tag.
const MaxPayload = MaxSealed - NonceSize - TagSize

// Seal seals a PKCS#8 private key into a new record for rcpts, with quorum
// h.M, following the steps in the package documentation. It makes no HSM
// call and no I/O; all randomness comes from crypto/rand.
//
// h.Version 0 means [Version]; h.N must equal len(rcpts). Errors:
// [ErrVersion] and [ErrInvalidHeader] for header fields out of bounds,
// [ErrHash] for an OAEP hash other than SHA-1 and SHA-256, [ErrRecipient]
// for a bad recipient, [ErrPayload] for an empty or oversized key. Seal
// neither keeps nor modifies pkcs8 or rcpts; the record holds copies of the
// key IDs.
func Seal(h Header, pkcs8 []byte, rcpts []Recipient) (*Record, error) {
	if h.Version == 0 {
		h.Version = Version
	}
	if err := checkHeader(&h); err != nil {
		return nil, err
	}
	if len(rcpts) != int(h.N) {
		return nil, fmt.Errorf("%w: %d recipients, header says n=%d", ErrRecipient, len(rcpts), h.N)
	}
	ids := make([][]byte, len(rcpts))
	for i, rc := range rcpts {
		if err := checkRSAKey(rc.Key); err != nil {
			return nil, fmt.Errorf("recipient %d: %w", i, err)
		}
		ids[i] = rc.KeyID
	}
	if err := checkKeyIDs(ids); err != nil {
		return nil, err
	}
	if len(pkcs8) == 0 || len(pkcs8) > MaxPayload {
		return nil, fmt.Errorf("%w: length %d, want 1..%d", ErrPayload, len(pkcs8), MaxPayload)
	}
	h.Serial = clone(h.Serial)

	// 1. The data key.
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRandom, err)
	}

	// 2. AES-256-GCM of the private key, the header as additional data.
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	sealed := make([]byte, NonceSize, NonceSize+len(pkcs8)+TagSize)
	if _, err := rand.Read(sealed); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRandom, err)
	}
	sealed = aead.Seal(sealed, sealed[:NonceSize], pkcs8, aad(&h))

	// 3. Shamir m-of-n.
	shares, err := shamir.Split(key, int(h.N), int(h.M))
	if err != nil {
		return nil, fmt.Errorf("record: split data key: %w", err)
	}
	defer func() {
		for _, s := range shares {
			clear(s)
		}
	}()

	// 4. RSA-OAEP of each share to its recipient.
	r := &Record{Header: h, Shares: make([]EncShare, len(rcpts)), Sealed: sealed}
	for i, rc := range rcpts {
		ct, err := rsa.EncryptOAEP(newHash(h.OAEPHash), rand.Reader, rc.Key, shares[i], nil)
		if err != nil {
			return nil, fmt.Errorf("%w: recipient %d: encrypt share: %w", ErrRecipient, i, err)
		}
		r.Shares[i] = EncShare{KeyID: clone(rc.KeyID), Ciphertext: ct}
	}
	return r, nil
}

// Open recovers the PKCS#8 private key sealed in r from decrypted Shamir
// shares (the plaintexts of [DecryptShare], in any order, at least
// r.Header.M of them). The caller owns the result and should clear it after
// use; Open clears the data key it reconstructs (best effort).
//
// Every failure matches [ErrOpen]: fewer than m shares ([*QuorumError]),
// shares of the wrong size or repeated, shares from another record, or any
// change to the header or the sealed bytes (the AES-GCM tag does not
// verify). The count check is a courtesy: m-1 genuine shares combine to a
// wrong key, and the tag check would refuse it anyway. A record that does
// not pass the checks of [Record.MarshalBinary] gives [ErrMalformed].
func Open(r *Record, shares [][]byte) ([]byte, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: nil record", ErrMalformed)
	}
	if err := checkRecord(r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(shares) < int(r.Header.M) {
		return nil, &QuorumError{Have: len(shares), Need: int(r.Header.M)}
	}
	return open(r, shares)
}

// open is Open without the share count, so that tests can show the quorum
// holds cryptographically.
func open(r *Record, shares [][]byte) ([]byte, error) {
	for i, s := range shares {
		if len(s) != ShareSize {
			return nil, fmt.Errorf("%w: share %d has %d bytes, want %d", ErrOpen, i, len(s), ShareSize)
		}
	}
	key, err := shamir.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOpen, err)
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, r.Sealed[:NonceSize], r.Sealed[NonceSize:], aad(&r.Header))
	if err != nil {
		// Do not wrap err: say only that authentication failed.
		return nil, fmt.Errorf("%w: authentication failed (too few or wrong shares, or a modified record)", ErrOpen)
	}
	return pt, nil
}

// DecryptShare decrypts one encrypted share with a KRA's key (for example a
// token's crypto.Decrypter), calling d.Decrypt with *rsa.OAEPOptions (hash
// and MGF1 hash h, empty label), never with nil options, which would mean
// PKCS#1 v1.5. h is the record's Header.OAEPHash. The plaintext is a
// [ShareSize]-byte Shamir share, secret: the caller clears it after use.
// Errors: [ErrHash], or [ErrShare] wrapping the decrypter's error.
func DecryptShare(d crypto.Decrypter, h crypto.Hash, ct []byte) ([]byte, error) {
	if _, err := hashCode(h); err != nil {
		return nil, err
	}
	if d == nil {
		return nil, fmt.Errorf("%w: no decrypter", ErrShare)
	}
	pt, err := d.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: h, MGFHash: h})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrShare, err)
	}
	if len(pt) != ShareSize {
		n := len(pt)
		clear(pt)
		return nil, fmt.Errorf("%w: plaintext has %d bytes, want %d", ErrShare, n, ShareSize)
	}
	return pt, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("record: aes: %w", err) // only ever a key size error
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("record: gcm: %w", err)
	}
	return aead, nil
}

// newHash returns a fresh hash for OAEP; h has passed hashCode.
func newHash(h crypto.Hash) hash.Hash {
	if h == crypto.SHA1 {
		return sha1.New()
	}
	return sha256.New()
}
