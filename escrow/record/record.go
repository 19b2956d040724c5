// Package record defines keyarc's escrow record: the sealed, versioned,
// m-of-n envelope in which an archived private key is kept (DESIGN.md
// section 4), and its binary format.
//
// It owns sealing ([Seal]), opening ([Open]) given already decrypted shares,
// the binary encoding ([Record.MarshalBinary], [Parse]) and the small helpers
// the escrow engine needs around them ([Record.ShareFor], [DecryptShare],
// [KeyID], [RecipientFromCertificate]). It imports only the standard library
// and keyarc/escrow/shamir; it must never import hsm, policy, a store or
// anything that does I/O. Sealing is software only: no HSM call, crypto/rand
// as the only source of randomness. Whether a quorum of KRAs has approved is
// policy's business; this package only makes it cryptographically necessary.
//
// # Sealing
//
//  1. a fresh 256-bit data key K is read from crypto/rand;
//  2. the PKCS#8 private key is sealed with AES-256-GCM under K, with a
//     12-byte random nonce and, as additional data, the encoded header (all
//     bytes from the magic through the OAEP hash code, below). The header
//     binds the format version, record ID, issuer, certificate serial (or
//     request ID), SHA-256 of the subject public key info, recovery-set
//     epoch, m, n and the OAEP hash;
//  3. K is split into n Shamir shares with threshold m (package shamir). A
//     share is 33 bytes: 32 y bytes and the x coordinate. With m == 1 the y
//     bytes of every share are K itself;
//  4. share i is encrypted with RSA-OAEP (hash and MGF1 hash both
//     Header.OAEPHash, SHA-1 or SHA-256, empty label) to recipient i.
//
// K and the plaintext shares are cleared after use. This is best effort: the
// AES key schedule inside crypto/aes and copies made by the Go runtime cannot
// be cleared from here.
//
// Opening needs at least m decrypted shares: they are combined into K and the
// GCM tag is checked against the header. Fewer than m shares, wrong shares,
// or any change to the header or the sealed bytes all fail with [ErrOpen]:
// the quorum is enforced by the cryptography, not by a count alone.
//
// # Binary format, version 1
//
// All integers are unsigned big-endian. Lengths are checked against the
// bounds given; a record that violates any of them, or has bytes after the
// sealed field, is refused. Parsing then encoding gives the input bytes back
// exactly.
//
//	size   field
//	4      magic "KARC" (4b 41 52 43)
//	1      version, 0x01
//	16     record ID, not all zero
//	2      issuer length Li, 1..4096
//	Li     issuer: CA subject DN string or SKI hex, valid UTF-8
//	1      serial length Ls, 1..64
//	Ls     certificate serial (or request ID), big-endian bytes
//	32     SHA-256 of the subject's SubjectPublicKeyInfo (DER)
//	4      recovery-set epoch
//	1      m, the quorum, 1..n
//	1      n, the number of shares, 1..255
//	1      OAEP hash: 0x01 SHA-1, 0x02 SHA-256
//	       -- end of header: bytes 0 up to here are the AES-GCM additional data --
//	n times, in recipient order:
//	  1    key ID length Lk, 1..64 (32 for a SHA-256 certificate ID)
//	  Lk   key ID of the recipient (unique within the record)
//	  2    ciphertext length Lc, 1..1024
//	  Lc   RSA-OAEP ciphertext of the recipient's 33-byte share
//	4      sealed length Lg, 29..65536 (the key sealed is never empty)
//	Lg     12-byte GCM nonce || AES-256-GCM ciphertext || 16-byte tag
//
// A future version changes the version byte; Parse refuses versions it does
// not know ([ErrVersion]).
//
// # Concurrency
//
// All functions are safe for concurrent use. A *Record is a plain value:
// [Open], [Record.ShareFor] and [Record.MarshalBinary] only read it, so one
// record may be used by many goroutines as long as none modifies it.
//
// # Errors
//
// Errors are the sentinels below (or [*QuorumError]), wrapped with %w to add
// non-secret context such as an index or a length. No error ever contains key
// material, a share or plaintext. Every error from [Parse] matches
// [ErrMalformed]; every failure of [Open] matches [ErrOpen].
package record

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Format constants and bounds.
const (
	Magic   = "KARC" // first four bytes of every record
	Version = 1      // the format version this package writes and reads

	KeySize   = 32          // bytes of the data key K (AES-256)
	ShareSize = KeySize + 1 // bytes of one plaintext Shamir share
	NonceSize = 12          // bytes of the AES-GCM nonce
	TagSize   = 16          // bytes of the AES-GCM tag

	MaxIssuer          = 4096                    // bytes of Header.Issuer
	MaxSerial          = 64                      // bytes of Header.Serial
	MaxShares          = 255                     // shares (recipients) per record
	MaxKeyID           = 64                      // bytes of a recipient key ID
	MaxShareCiphertext = 1024                    // bytes of one share ciphertext (RSA-8192)
	MaxSealed          = 64 << 10                // bytes of Record.Sealed, nonce and tag included
	MinSealed          = NonceSize + TagSize + 1 // bytes of Record.Sealed for a 1-byte key
)

// Bounds on recipient RSA keys.
const (
	minRSABits = 2048
	maxRSABits = 8 * MaxShareCiphertext
)

var (
	// ErrMalformed reports an encoded record that is not valid; every error
	// returned by Parse matches it.
	ErrMalformed = errors.New("record: malformed record")
	// ErrVersion reports a format version this package does not know.
	ErrVersion = errors.New("record: unsupported record version")
	// ErrInvalidHeader reports a header field out of its bounds.
	ErrInvalidHeader = errors.New("record: invalid header")
	// ErrHash reports an OAEP hash other than SHA-1 or SHA-256.
	ErrHash = errors.New("record: unsupported OAEP hash")
	// ErrRecipient reports an unusable recipient: missing or non-RSA key, key
	// size outside 2048..8192 bits, bad or duplicate key ID, or a recipient
	// count that does not match Header.N.
	ErrRecipient = errors.New("record: invalid recipient")
	// ErrPayload reports an empty or oversized private key to seal.
	ErrPayload = errors.New("record: invalid payload")
	// ErrOpen reports that a record could not be opened with the given
	// shares: too few, wrong or tampered shares, or a tampered record.
	ErrOpen = errors.New("record: cannot open record")
	// ErrNoShare reports that a record holds no share for a key ID.
	ErrNoShare = errors.New("record: no share for this key")
	// ErrShare reports that a share could not be decrypted or has the wrong
	// size after decryption.
	ErrShare = errors.New("record: cannot decrypt share")
	// ErrRandom reports a failure of the random source.
	ErrRandom = errors.New("record: random source failed")
)

// QuorumError reports an [Open] call with fewer shares than the record's
// quorum m. It matches [ErrOpen] with errors.Is. Even without this check the
// record would not open: see [Open].
type QuorumError struct{ Have, Need int }

// Error says how many shares were given and how many are needed.
func (e *QuorumError) Error() string {
	return fmt.Sprintf("record: quorum not met: have %d shares, need %d", e.Have, e.Need)
}

// Unwrap returns [ErrOpen].
func (e *QuorumError) Unwrap() error { return ErrOpen }

// Header is the authenticated, unencrypted part of a record. Every field is
// bound to the sealed key as AES-GCM additional data.
type Header struct {
	Version  uint8       // format version; Seal takes 0 as [Version]
	ID       [16]byte    // record ID, not all zero (see [NewID])
	Issuer   string      // CA subject DN string or SKI hex, 1..4096 bytes of UTF-8
	Serial   []byte      // certificate serial (or request ID), big-endian, 1..64 bytes
	SPKIHash [32]byte    // SHA-256 of the subject's DER SubjectPublicKeyInfo
	Epoch    uint32      // recovery-set epoch the record is sealed under
	M, N     uint8       // quorum and number of shares, 1 <= M <= N
	OAEPHash crypto.Hash // crypto.SHA1 or crypto.SHA256, for shares' RSA-OAEP
}

// Recipient is a Key Recovery Agent as seen by [Seal]: the ID under which its
// share is filed and its RSA unwrap public key.
type Recipient struct {
	KeyID []byte         // normally [KeyID] of the KRA certificate
	Key   *rsa.PublicKey // 2048..8192 bits
}

// EncShare is one recipient's share, RSA-OAEP encrypted to it.
type EncShare struct {
	KeyID      []byte
	Ciphertext []byte
}

// Record is a sealed escrow record.
type Record struct {
	Header Header
	Shares []EncShare // one per recipient, in recipient order; len == Header.N
	Sealed []byte     // GCM nonce || ciphertext || tag
}

// NewID returns a new 16-byte record ID: the time in milliseconds since 1970 (48 bits, big
// endian), then 80 bits from crypto/rand. IDs made later sort later, so an archive's record index
// grows at its end instead of at random places: a commit of many records then rewrites a few
// index pages, not one page per record. The random part keeps IDs unguessable, and unique with
// overwhelming probability even at millions of records per millisecond.
func NewID() ([16]byte, error) {
	return newIDAt(time.Now())
}

func newIDAt(now time.Time) ([16]byte, error) {
	var id [16]byte
	binary.BigEndian.PutUint64(id[:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(id[6:]); err != nil {
		return id, fmt.Errorf("%w: %w", ErrRandom, err)
	}
	return id, nil
}

// KeyID returns the ID under which a KRA's share is filed: the SHA-256 of
// its certificate's DER encoding.
func KeyID(cert *x509.Certificate) []byte {
	sum := sha256.Sum256(cert.Raw)
	return sum[:]
}

// RecipientFromCertificate returns the [Recipient] for a KRA certificate:
// [KeyID] of the certificate and its RSA public key. A certificate whose key
// is not RSA, or is outside 2048..8192 bits, gives [ErrRecipient].
func RecipientFromCertificate(cert *x509.Certificate) (Recipient, error) {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return Recipient{}, fmt.Errorf("%w: certificate key is %T, not RSA", ErrRecipient, cert.PublicKey)
	}
	r := Recipient{KeyID: KeyID(cert), Key: pub}
	if err := checkRSAKey(pub); err != nil {
		return Recipient{}, err
	}
	return r, nil
}

// ShareFor returns the index and a copy of the encrypted share filed under
// keyID, or [ErrNoShare].
func (r *Record) ShareFor(keyID []byte) (int, []byte, error) {
	for i, s := range r.Shares {
		if string(s.KeyID) == string(keyID) { // key IDs are public
			return i, append([]byte(nil), s.Ciphertext...), nil
		}
	}
	return -1, nil, ErrNoShare
}

// checkHeader validates h as Seal, MarshalBinary and Parse require it.
func checkHeader(h *Header) error {
	if h.Version != Version {
		return fmt.Errorf("%w %d", ErrVersion, h.Version)
	}
	if h.ID == [16]byte{} {
		return fmt.Errorf("%w: record ID is all zero", ErrInvalidHeader)
	}
	if n := len(h.Issuer); n == 0 || n > MaxIssuer {
		return fmt.Errorf("%w: issuer length %d, want 1..%d", ErrInvalidHeader, n, MaxIssuer)
	}
	if !utf8.ValidString(h.Issuer) {
		return fmt.Errorf("%w: issuer is not valid UTF-8", ErrInvalidHeader)
	}
	if n := len(h.Serial); n == 0 || n > MaxSerial {
		return fmt.Errorf("%w: serial length %d, want 1..%d", ErrInvalidHeader, n, MaxSerial)
	}
	if h.M < 1 || h.M > h.N {
		return fmt.Errorf("%w: need 1 <= m <= n, have m=%d n=%d", ErrInvalidHeader, h.M, h.N)
	}
	if _, err := hashCode(h.OAEPHash); err != nil {
		return err
	}
	return nil
}

// checkRSAKey bounds a recipient key.
func checkRSAKey(k *rsa.PublicKey) error {
	if k == nil || k.N == nil {
		return fmt.Errorf("%w: no public key", ErrRecipient)
	}
	if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
		return fmt.Errorf("%w: RSA key of %d bits, want %d..%d", ErrRecipient, bits, minRSABits, maxRSABits)
	}
	return nil
}

// checkKeyIDs validates the key IDs of a record's shares or recipients:
// 1..MaxKeyID bytes each, no two equal.
func checkKeyIDs(ids [][]byte) error {
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		if len(id) == 0 || len(id) > MaxKeyID {
			return fmt.Errorf("%w: recipient %d key ID length %d, want 1..%d", ErrRecipient, i, len(id), MaxKeyID)
		}
		if seen[string(id)] {
			return fmt.Errorf("%w: recipient %d key ID repeated", ErrRecipient, i)
		}
		seen[string(id)] = true
	}
	return nil
}

// checkRecord validates everything MarshalBinary, Parse and Open require.
// Callers wrap its errors with ErrMalformed.
func checkRecord(r *Record) error {
	if err := checkHeader(&r.Header); err != nil {
		return err
	}
	if len(r.Shares) != int(r.Header.N) {
		return fmt.Errorf("%w: %d shares, header says n=%d", ErrRecipient, len(r.Shares), r.Header.N)
	}
	ids := make([][]byte, len(r.Shares))
	for i, s := range r.Shares {
		ids[i] = s.KeyID
	}
	if err := checkKeyIDs(ids); err != nil {
		return err
	}
	for i, s := range r.Shares {
		if n := len(s.Ciphertext); n == 0 || n > MaxShareCiphertext {
			return fmt.Errorf("share %d ciphertext length %d, want 1..%d", i, n, MaxShareCiphertext)
		}
	}
	if n := len(r.Sealed); n < MinSealed || n > MaxSealed {
		return fmt.Errorf("sealed length %d, want %d..%d", n, MinSealed, MaxSealed)
	}
	return nil
}
