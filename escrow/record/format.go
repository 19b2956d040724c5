package record

import (
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
)

// OAEP hash codes on the wire.
const (
	hashSHA1   = 0x01
	hashSHA256 = 0x02
)

func hashCode(h crypto.Hash) (byte, error) {
	switch h {
	case crypto.SHA1:
		return hashSHA1, nil
	case crypto.SHA256:
		return hashSHA256, nil
	}
	return 0, fmt.Errorf("%w: %v", ErrHash, h)
}

func hashFromCode(c byte) (crypto.Hash, error) {
	switch c {
	case hashSHA1:
		return crypto.SHA1, nil
	case hashSHA256:
		return crypto.SHA256, nil
	}
	return 0, fmt.Errorf("%w: code %#02x", ErrHash, c)
}

// appendHeader appends the encoded header (the AES-GCM additional data) to b.
// h must have passed checkHeader.
func appendHeader(b []byte, h *Header) []byte {
	code, _ := hashCode(h.OAEPHash)
	b = append(b, Magic...)
	b = append(b, h.Version)
	b = append(b, h.ID[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Issuer)))
	b = append(b, h.Issuer...)
	b = append(b, byte(len(h.Serial)))
	b = append(b, h.Serial...)
	b = append(b, h.SPKIHash[:]...)
	b = binary.BigEndian.AppendUint32(b, h.Epoch)
	b = append(b, h.M, h.N, code)
	return b
}

// aad returns the additional data that binds h to the sealed key.
func aad(h *Header) []byte { return appendHeader(nil, h) }

// encodedLen is the exact length of r's encoding.
func encodedLen(r *Record) int {
	n := len(Magic) + 1 + 16 + 2 + len(r.Header.Issuer) + 1 + len(r.Header.Serial) + 32 + 4 + 3
	for _, s := range r.Shares {
		n += 1 + len(s.KeyID) + 2 + len(s.Ciphertext)
	}
	return n + 4 + len(r.Sealed)
}

// MarshalBinary encodes r in the version 1 format described in the package
// documentation. A record that Parse would refuse is refused here too, with
// the same errors (all matching [ErrMalformed]).
func (r *Record) MarshalBinary() ([]byte, error) {
	if err := checkRecord(r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	b := make([]byte, 0, encodedLen(r))
	b = appendHeader(b, &r.Header)
	for _, s := range r.Shares {
		b = append(b, byte(len(s.KeyID)))
		b = append(b, s.KeyID...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.Ciphertext)))
		b = append(b, s.Ciphertext...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Sealed)))
	b = append(b, r.Sealed...)
	return b, nil
}

// cursor reads an encoding front to back; the first short read sets short
// and every later read returns zero values.
type cursor struct {
	b     []byte
	short bool
}

func (c *cursor) next(n int) []byte {
	if c.short || n < 0 || n > len(c.b) {
		c.short = true
		return nil
	}
	v := c.b[:n:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) u8() byte {
	if v := c.next(1); v != nil {
		return v[0]
	}
	return 0
}

func (c *cursor) u16() int {
	if v := c.next(2); v != nil {
		return int(binary.BigEndian.Uint16(v))
	}
	return 0
}

func (c *cursor) u32() uint32 {
	if v := c.next(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

// clone copies a field out of the input so the Record never aliases it.
func clone(b []byte) []byte { return append([]byte(nil), b...) }

// Parse decodes a record in the format described in the package
// documentation. It is strict: wrong magic, an unknown version
// ([ErrVersion]), a length or count out of bounds, a field the encoder would
// refuse, a truncated input or trailing bytes are all refused. Every error
// matches [ErrMalformed]. On success, MarshalBinary of the result returns b
// exactly. The Record does not alias b.
func Parse(b []byte) (*Record, error) {
	r, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return r, nil
}

func parse(b []byte) (*Record, error) {
	c := &cursor{b: b}
	if string(c.next(len(Magic))) != Magic {
		return nil, fmt.Errorf("not a keyarc record (bad magic)")
	}
	r := &Record{}
	h := &r.Header
	if h.Version = c.u8(); !c.short && h.Version != Version {
		return nil, fmt.Errorf("%w %d", ErrVersion, h.Version)
	}
	copy(h.ID[:], c.next(16))
	issuerLen := c.u16()
	if !c.short && (issuerLen == 0 || issuerLen > MaxIssuer) {
		return nil, fmt.Errorf("%w: issuer length %d, want 1..%d", ErrInvalidHeader, issuerLen, MaxIssuer)
	}
	h.Issuer = string(c.next(issuerLen))
	serialLen := int(c.u8())
	if !c.short && (serialLen == 0 || serialLen > MaxSerial) {
		return nil, fmt.Errorf("%w: serial length %d, want 1..%d", ErrInvalidHeader, serialLen, MaxSerial)
	}
	h.Serial = clone(c.next(serialLen))
	copy(h.SPKIHash[:], c.next(32))
	h.Epoch = c.u32()
	h.M = c.u8()
	h.N = c.u8()
	code := c.u8()
	if c.short {
		return nil, errTruncated
	}
	var err error
	if h.OAEPHash, err = hashFromCode(code); err != nil {
		return nil, err
	}
	if err := checkHeader(h); err != nil {
		return nil, err
	}

	r.Shares = make([]EncShare, h.N)
	for i := range r.Shares {
		s := &r.Shares[i]
		idLen := int(c.u8())
		if !c.short && (idLen == 0 || idLen > MaxKeyID) {
			return nil, fmt.Errorf("%w: recipient %d key ID length %d, want 1..%d", ErrRecipient, i, idLen, MaxKeyID)
		}
		s.KeyID = clone(c.next(idLen))
		ctLen := c.u16()
		if !c.short && (ctLen == 0 || ctLen > MaxShareCiphertext) {
			return nil, fmt.Errorf("share %d ciphertext length %d, want 1..%d", i, ctLen, MaxShareCiphertext)
		}
		s.Ciphertext = clone(c.next(ctLen))
		if c.short {
			return nil, errTruncated
		}
	}
	sealedLen := c.u32()
	if !c.short && (sealedLen < MinSealed || sealedLen > MaxSealed) {
		return nil, fmt.Errorf("sealed length %d, want %d..%d", sealedLen, MinSealed, MaxSealed)
	}
	r.Sealed = clone(c.next(int(sealedLen)))
	if c.short {
		return nil, errTruncated
	}
	if len(c.b) != 0 {
		return nil, fmt.Errorf("%d trailing bytes", len(c.b))
	}
	if err := checkRecord(r); err != nil {
		return nil, err
	}
	return r, nil
}

var errTruncated = errors.New("truncated")
