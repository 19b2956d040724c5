package record

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testRecipients returns n recipients with distinct key IDs, cycling through
// the three testdata KRA keys, and the matching private keys.
func testRecipients(t testing.TB, n int) ([]Recipient, []*rsa.PrivateKey) {
	t.Helper()
	kras := loadKRAs(t)
	var rcpts []Recipient
	var keys []*rsa.PrivateKey
	for i := range n {
		k := kras[i%len(kras)]
		id := KeyID(k.cert)
		id[0] ^= byte(i / len(kras)) // distinct IDs for reused keys
		rcpts = append(rcpts, Recipient{KeyID: id, Key: &k.key.PublicKey})
		keys = append(keys, k.key)
	}
	return rcpts, keys
}

func testHeader(m, n uint8, h crypto.Hash) Header {
	hd := goldenHeader([32]byte{0xaa, 0xbb}, m, n, h)
	hd.Version = 0 // Seal fills it in
	return hd
}

func decryptAll(t testing.TB, r *Record, keys []*rsa.PrivateKey) [][]byte {
	t.Helper()
	out := make([][]byte, len(keys))
	for i, k := range keys {
		pt, err := DecryptShare(k, r.Header.OAEPHash, r.Shares[i].Ciphertext)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = pt
	}
	return out
}

func TestSealOpenRoundTrip(t *testing.T) {
	payload := []byte("-- a PKCS#8 key stands here --")
	for _, p := range []struct {
		m, n uint8
		h    crypto.Hash
	}{{1, 1, crypto.SHA1}, {1, 3, crypto.SHA256}, {2, 3, crypto.SHA1}, {3, 3, crypto.SHA256}, {3, 5, crypto.SHA1}, {4, 7, crypto.SHA256}} {
		t.Run(fmt.Sprintf("m%d_n%d_%v", p.m, p.n, p.h), func(t *testing.T) {
			rcpts, keys := testRecipients(t, int(p.n))
			r, err := Seal(testHeader(p.m, p.n, p.h), payload, rcpts)
			if err != nil {
				t.Fatal(err)
			}
			if r.Header.Version != Version {
				t.Fatalf("version %d, want %d", r.Header.Version, Version)
			}
			b, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			r2, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			b2, err := r2.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, b2) {
				t.Fatal("round trip changed the encoding")
			}
			shares := decryptAll(t, r2, keys)
			if p.m == 1 {
				for _, s := range shares[1:] {
					if !bytes.Equal(s[:KeySize], shares[0][:KeySize]) {
						t.Fatal("m = 1 shares are not all the data key")
					}
				}
			}
			// The last m shares, in reverse order.
			var sub [][]byte
			for i := len(shares) - 1; i >= len(shares)-int(p.m); i-- {
				sub = append(sub, shares[i])
			}
			got, err := Open(r2, sub)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("wrong payload")
			}
			if got, err = Open(r2, shares); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("all shares: %v", err)
			}
		})
	}
}

// TestQuorumIsCryptographic shows that m-1 genuine shares cannot open a
// record even when the share count check is bypassed or the header's m is
// rewritten.
func TestQuorumIsCryptographic(t *testing.T) {
	rcpts, keys := testRecipients(t, 5)
	payload := []byte("secret key")
	r, err := Seal(testHeader(3, 5, crypto.SHA256), payload, rcpts)
	if err != nil {
		t.Fatal(err)
	}
	shares := decryptAll(t, r, keys)

	// Below the count check: every 2-subset fails on the GCM tag.
	for i := range shares {
		for j := i + 1; j < len(shares); j++ {
			if _, err := open(r, [][]byte{shares[i], shares[j]}); !errors.Is(err, ErrOpen) {
				t.Fatalf("shares %d,%d: err = %v, want ErrOpen", i, j, err)
			}
		}
	}
	// A record rewritten to m = 2 no longer authenticates.
	forged := *r
	forged.Header.M = 2
	if _, err := Open(&forged, shares[:2]); !errors.Is(err, ErrOpen) {
		t.Fatalf("forged m = 2: err = %v, want ErrOpen", err)
	}
	if _, err := Open(&forged, shares[:3]); !errors.Is(err, ErrOpen) {
		t.Fatalf("forged m = 2 with 3 shares: err = %v, want ErrOpen", err)
	}
	// And the honest record opens with three.
	if got, err := Open(r, shares[1:4]); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("3 shares: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	rcpts, keys := testRecipients(t, 3)
	r, err := Seal(testHeader(2, 3, crypto.SHA1), []byte("payload"), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	shares := decryptAll(t, r, keys)
	other, err := Seal(testHeader(2, 3, crypto.SHA1), []byte("payload"), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	otherShares := decryptAll(t, other, keys)

	mutate := func(f func(*Record)) *Record {
		c := *r
		c.Header.Serial = bytes.Clone(r.Header.Serial)
		c.Sealed = bytes.Clone(r.Sealed)
		f(&c)
		return &c
	}
	flipped := bytes.Clone(shares[1])
	flipped[0] ^= 1
	tests := []struct {
		name    string
		rec     *Record
		shares  [][]byte
		wantErr error
	}{
		{"ok", r, shares[:2], nil},
		{"nil record", nil, shares[:2], ErrMalformed},
		{"no shares", r, nil, ErrOpen},
		{"one share", r, shares[:1], ErrOpen},
		{"duplicate share", r, [][]byte{shares[0], shares[0]}, ErrOpen},
		{"short share", r, [][]byte{shares[0], shares[1][:KeySize]}, ErrOpen},
		{"long share", r, [][]byte{shares[0], append(bytes.Clone(shares[1]), 0)}, ErrOpen},
		{"flipped share", r, [][]byte{shares[0], flipped}, ErrOpen},
		{"shares of another record", r, otherShares[:2], ErrOpen},
		{"mixed records", r, [][]byte{shares[0], otherShares[1]}, ErrOpen},
		{"other ID", mutate(func(c *Record) { c.Header.ID[15] ^= 1 }), shares[:2], ErrOpen},
		{"other issuer", mutate(func(c *Record) { c.Header.Issuer += "x" }), shares[:2], ErrOpen},
		{"other serial", mutate(func(c *Record) { c.Header.Serial[0] ^= 1 }), shares[:2], ErrOpen},
		{"other SPKI hash", mutate(func(c *Record) { c.Header.SPKIHash[31] ^= 1 }), shares[:2], ErrOpen},
		{"other epoch", mutate(func(c *Record) { c.Header.Epoch++ }), shares[:2], ErrOpen},
		{"other OAEP hash", mutate(func(c *Record) { c.Header.OAEPHash = crypto.SHA256 }), shares[:2], ErrOpen},
		{"other nonce", mutate(func(c *Record) { c.Sealed[0] ^= 1 }), shares[:2], ErrOpen},
		{"other ciphertext", mutate(func(c *Record) { c.Sealed[NonceSize] ^= 1 }), shares[:2], ErrOpen},
		{"other tag", mutate(func(c *Record) { c.Sealed[len(c.Sealed)-1] ^= 1 }), shares[:2], ErrOpen},
		{"invalid record", mutate(func(c *Record) { c.Sealed = c.Sealed[:MinSealed-1] }), shares[:2], ErrMalformed},
		{"bad version", mutate(func(c *Record) { c.Header.Version = 2 }), shares[:2], ErrVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Open(tt.rec, tt.shares)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && !bytes.Equal(got, []byte("payload")) {
				t.Fatal("wrong payload")
			}
			if err != nil {
				for _, s := range shares {
					if strings.Contains(err.Error(), fmt.Sprintf("%x", s[:8])) {
						t.Fatalf("error %q shows share bytes", err)
					}
				}
			}
		})
	}

	var qe *QuorumError
	if _, err := Open(r, shares[:1]); !errors.As(err, &qe) || qe.Have != 1 || qe.Need != 2 {
		t.Fatalf("Open with 1 share: err = %v, want *QuorumError{1, 2}", err)
	}
}

func TestSealErrors(t *testing.T) {
	rcpts, _ := testRecipients(t, 3)
	small := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 1023), E: 65537}
	huge := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), maxRSABits), E: 65537}
	with := func(f func(*Header)) Header {
		h := testHeader(2, 3, crypto.SHA1)
		f(&h)
		return h
	}
	withRcpt := func(i int, f func(*Recipient)) []Recipient {
		c := append([]Recipient(nil), rcpts...)
		f(&c[i])
		return c
	}
	tests := []struct {
		name    string
		h       Header
		payload []byte
		rcpts   []Recipient
		wantErr error
	}{
		{"ok", testHeader(2, 3, crypto.SHA1), []byte("k"), rcpts, nil},
		{"ok version 1", with(func(h *Header) { h.Version = 1 }), []byte("k"), rcpts, nil},
		{"ok largest payload", testHeader(2, 3, crypto.SHA1), make([]byte, MaxPayload), rcpts, nil},
		{"version 2", with(func(h *Header) { h.Version = 2 }), []byte("k"), rcpts, ErrVersion},
		{"zero ID", with(func(h *Header) { h.ID = [16]byte{} }), []byte("k"), rcpts, ErrInvalidHeader},
		{"empty issuer", with(func(h *Header) { h.Issuer = "" }), []byte("k"), rcpts, ErrInvalidHeader},
		{"long issuer", with(func(h *Header) { h.Issuer = strings.Repeat("a", MaxIssuer+1) }), []byte("k"), rcpts, ErrInvalidHeader},
		{"issuer not UTF-8", with(func(h *Header) { h.Issuer = "CN=\xff" }), []byte("k"), rcpts, ErrInvalidHeader},
		{"empty serial", with(func(h *Header) { h.Serial = nil }), []byte("k"), rcpts, ErrInvalidHeader},
		{"long serial", with(func(h *Header) { h.Serial = make([]byte, MaxSerial+1) }), []byte("k"), rcpts, ErrInvalidHeader},
		{"m zero", with(func(h *Header) { h.M = 0 }), []byte("k"), rcpts, ErrInvalidHeader},
		{"m above n", with(func(h *Header) { h.M = 4 }), []byte("k"), rcpts, ErrInvalidHeader},
		{"n not recipients", with(func(h *Header) { h.N = 2 }), []byte("k"), rcpts, ErrRecipient},
		{"hash MD5", with(func(h *Header) { h.OAEPHash = crypto.MD5 }), []byte("k"), rcpts, ErrHash},
		{"hash SHA-512", with(func(h *Header) { h.OAEPHash = crypto.SHA512 }), []byte("k"), rcpts, ErrHash},
		{"hash unset", with(func(h *Header) { h.OAEPHash = 0 }), []byte("k"), rcpts, ErrHash},
		{"nil key", testHeader(2, 3, crypto.SHA1), []byte("k"), withRcpt(1, func(r *Recipient) { r.Key = nil }), ErrRecipient},
		{"1024-bit key", testHeader(2, 3, crypto.SHA1), []byte("k"), withRcpt(1, func(r *Recipient) { r.Key = small }), ErrRecipient},
		{"8193-bit key", testHeader(2, 3, crypto.SHA1), []byte("k"), withRcpt(1, func(r *Recipient) { r.Key = huge }), ErrRecipient},
		{"empty key ID", testHeader(2, 3, crypto.SHA1), []byte("k"), withRcpt(2, func(r *Recipient) { r.KeyID = nil }), ErrRecipient},
		{"long key ID", testHeader(2, 3, crypto.SHA1), []byte("k"), withRcpt(2, func(r *Recipient) { r.KeyID = make([]byte, MaxKeyID+1) }), ErrRecipient},
		{"repeated key ID", testHeader(2, 3, crypto.SHA1), []byte("k"), withRcpt(2, func(r *Recipient) { r.KeyID = rcpts[0].KeyID }), ErrRecipient},
		{"empty payload", testHeader(2, 3, crypto.SHA1), nil, rcpts, ErrPayload},
		{"oversized payload", testHeader(2, 3, crypto.SHA1), make([]byte, MaxPayload+1), rcpts, ErrPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Seal(tt.h, tt.payload, tt.rcpts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Seal error = %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				if _, err := r.MarshalBinary(); err != nil {
					t.Fatalf("sealed record does not marshal: %v", err)
				}
			}
		})
	}
}

func TestSealIsFresh(t *testing.T) {
	rcpts, keys := testRecipients(t, 3)
	h := testHeader(2, 3, crypto.SHA1)
	a, err := Seal(h, []byte("same"), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Seal(h, []byte("same"), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Sealed, b.Sealed) {
		t.Fatal("two seals gave the same sealed bytes")
	}
	sa, sb := decryptAll(t, a, keys), decryptAll(t, b, keys)
	if bytes.Equal(sa[0], sb[0]) {
		t.Fatal("two seals gave the same share")
	}
	// Seal must not keep the caller's slices.
	serial := bytes.Clone(h.Serial)
	h.Serial[0] ^= 0xff
	rcpts[0].KeyID[0] ^= 0xff
	if !bytes.Equal(a.Header.Serial, serial) || bytes.Equal(a.Shares[0].KeyID, rcpts[0].KeyID) {
		t.Fatal("record aliases the caller's slices")
	}
}

// rawRecord is an unchecked encoder written from the format table in the
// package documentation, to build invalid records and to check the layout.
type rawRecord struct {
	magic           string
	version         byte
	id              [16]byte
	issuer, serial  []byte
	spki            [32]byte
	epoch           uint32
	m, n, hash      byte
	shares          []EncShare
	sealed          []byte
	trailing        []byte
	issuerLen       *int // overrides, for lengths that disagree with the data
	sealedLenOffset int
}

func (w rawRecord) encode() []byte {
	var b []byte
	b = append(b, w.magic...)
	b = append(b, w.version)
	b = append(b, w.id[:]...)
	il := len(w.issuer)
	if w.issuerLen != nil {
		il = *w.issuerLen
	}
	b = binary.BigEndian.AppendUint16(b, uint16(il))
	b = append(b, w.issuer...)
	b = append(b, byte(len(w.serial)))
	b = append(b, w.serial...)
	b = append(b, w.spki[:]...)
	b = binary.BigEndian.AppendUint32(b, w.epoch)
	b = append(b, w.m, w.n, w.hash)
	for _, s := range w.shares {
		b = append(b, byte(len(s.KeyID)))
		b = append(b, s.KeyID...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.Ciphertext)))
		b = append(b, s.Ciphertext...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(w.sealed)+w.sealedLenOffset))
	b = append(b, w.sealed...)
	return append(b, w.trailing...)
}

func validRaw() rawRecord {
	return rawRecord{
		magic: "KARC", version: 1, id: [16]byte{1}, issuer: []byte("CN=CA"), serial: []byte{0x01},
		spki: [32]byte{2}, epoch: 3, m: 2, n: 3, hash: 0x01,
		shares: []EncShare{
			{KeyID: []byte{1}, Ciphertext: []byte{0xc1}},
			{KeyID: []byte{2}, Ciphertext: make([]byte, 256)},
			{KeyID: bytes.Repeat([]byte{3}, 32), Ciphertext: make([]byte, 512)},
		},
		sealed: make([]byte, 100),
	}
}

func TestLayout(t *testing.T) {
	// The documented layout and the encoder agree, field by field.
	rcpts, _ := testRecipients(t, 2)
	r, err := Seal(testHeader(1, 2, crypto.SHA256), []byte("payload"), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	h := r.Header
	want := rawRecord{
		magic: "KARC", version: 1, id: h.ID, issuer: []byte(h.Issuer), serial: h.Serial, spki: h.SPKIHash,
		epoch: h.Epoch, m: h.M, n: h.N, hash: 0x02, shares: r.Shares, sealed: r.Sealed,
	}.encode()
	if !bytes.Equal(got, want) {
		t.Fatal("MarshalBinary disagrees with the documented layout")
	}
	if string(got[:4]) != "KARC" || got[4] != 1 || !bytes.Equal(got[5:21], h.ID[:]) {
		t.Fatal("fixed prefix wrong")
	}
	hdrLen := 4 + 1 + 16 + 2 + len(h.Issuer) + 1 + len(h.Serial) + 32 + 4 + 3
	if !bytes.Equal(aad(&h), got[:hdrLen]) {
		t.Fatal("additional data is not the encoded header")
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := Parse(validRaw().encode()); err != nil {
		t.Fatalf("valid raw record: %v", err)
	}
	with := func(f func(*rawRecord)) []byte {
		w := validRaw()
		f(&w)
		return w.encode()
	}
	tests := []struct {
		name    string
		b       []byte
		wantErr error
	}{
		{"empty", nil, ErrMalformed},
		{"magic only", []byte("KARC"), ErrMalformed},
		{"bad magic", with(func(w *rawRecord) { w.magic = "KARD" }), ErrMalformed},
		{"version 0", with(func(w *rawRecord) { w.version = 0 }), ErrVersion},
		{"version 2", with(func(w *rawRecord) { w.version = 2 }), ErrVersion},
		{"zero ID", with(func(w *rawRecord) { w.id = [16]byte{} }), ErrInvalidHeader},
		{"empty issuer", with(func(w *rawRecord) { w.issuer = nil }), ErrInvalidHeader},
		{"long issuer", with(func(w *rawRecord) { w.issuer = bytes.Repeat([]byte("a"), MaxIssuer+1) }), ErrInvalidHeader},
		{"issuer not UTF-8", with(func(w *rawRecord) { w.issuer = []byte{'C', 0xc3} }), ErrInvalidHeader},
		{"issuer length past end", with(func(w *rawRecord) { n := 0xffff; w.issuerLen = &n }), ErrMalformed},
		{"empty serial", with(func(w *rawRecord) { w.serial = nil }), ErrInvalidHeader},
		{"long serial", with(func(w *rawRecord) { w.serial = make([]byte, MaxSerial+1) }), ErrInvalidHeader},
		{"m zero", with(func(w *rawRecord) { w.m = 0 }), ErrInvalidHeader},
		{"m above n", with(func(w *rawRecord) { w.m = 4 }), ErrInvalidHeader},
		{"n zero", with(func(w *rawRecord) { w.m, w.n, w.shares = 0, 0, nil }), ErrInvalidHeader},
		{"hash code 0", with(func(w *rawRecord) { w.hash = 0 }), ErrHash},
		{"hash code 3", with(func(w *rawRecord) { w.hash = 3 }), ErrHash},
		{"fewer shares than n", with(func(w *rawRecord) { w.shares = w.shares[:2] }), ErrMalformed},
		{"more shares than n", with(func(w *rawRecord) { w.n = 2 }), ErrMalformed},
		{"empty key ID", with(func(w *rawRecord) { w.shares[1].KeyID = nil }), ErrRecipient},
		{"long key ID", with(func(w *rawRecord) { w.shares[1].KeyID = make([]byte, MaxKeyID+1) }), ErrRecipient},
		{"repeated key ID", with(func(w *rawRecord) { w.shares[2].KeyID = []byte{1} }), ErrRecipient},
		{"empty share", with(func(w *rawRecord) { w.shares[0].Ciphertext = nil }), ErrMalformed},
		{"share too long", with(func(w *rawRecord) { w.shares[0].Ciphertext = make([]byte, MaxShareCiphertext+1) }), ErrMalformed},
		{"sealed too short", with(func(w *rawRecord) { w.sealed = make([]byte, MinSealed-1) }), ErrMalformed},
		{"sealed too long", with(func(w *rawRecord) { w.sealed = make([]byte, MaxSealed+1) }), ErrMalformed},
		{"sealed length past end", with(func(w *rawRecord) { w.sealedLenOffset = 1 }), ErrMalformed},
		{"trailing byte", with(func(w *rawRecord) { w.trailing = []byte{0} }), ErrMalformed},
		{"trailing record", with(func(w *rawRecord) { w.trailing = validRaw().encode() }), ErrMalformed},
		{"ok largest sizes", with(func(w *rawRecord) {
			w.issuer = bytes.Repeat([]byte("a"), MaxIssuer)
			w.serial = make([]byte, MaxSerial)
			w.shares[0].KeyID = make([]byte, MaxKeyID)
			w.shares[0].Ciphertext = make([]byte, MaxShareCiphertext)
			w.sealed = make([]byte, MaxSealed)
		}), nil},
		{"ok smallest sizes", with(func(w *rawRecord) {
			w.m, w.n, w.shares = 1, 1, w.shares[:1]
			w.sealed = make([]byte, MinSealed)
		}), nil},
		{"ok 255 shares", with(func(w *rawRecord) {
			w.n, w.shares = 255, nil
			for i := range 255 {
				w.shares = append(w.shares, EncShare{KeyID: []byte{byte(i)}, Ciphertext: []byte{1}})
			}
		}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Parse error %v does not match ErrMalformed", err)
				}
				return
			}
			b, err := r.MarshalBinary()
			if err != nil || !bytes.Equal(b, tt.b) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}

func TestParseEveryTruncation(t *testing.T) {
	b := validRaw().encode()
	for n := range len(b) {
		if _, err := Parse(b[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Parse of %d of %d bytes: err = %v, want ErrMalformed", n, len(b), err)
		}
	}
}

func TestParseDoesNotAlias(t *testing.T) {
	b := validRaw().encode()
	r, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := r.MarshalBinary()
	for i := range b {
		b[i] ^= 0x55
	}
	after, _ := r.MarshalBinary()
	if !bytes.Equal(before, after) {
		t.Fatal("parsed record aliases its input")
	}
}

func TestMarshalErrors(t *testing.T) {
	good, err := Parse(validRaw().encode())
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(*Record)) *Record {
		c := *good
		c.Shares = append([]EncShare(nil), good.Shares...)
		f(&c)
		return &c
	}
	tests := []struct {
		name    string
		r       *Record
		wantErr error
	}{
		{"ok", good, nil},
		{"version 0", mutate(func(r *Record) { r.Header.Version = 0 }), ErrVersion},
		{"shares mismatch n", mutate(func(r *Record) { r.Shares = r.Shares[:2] }), ErrRecipient},
		{"hash", mutate(func(r *Record) { r.Header.OAEPHash = crypto.SHA384 }), ErrHash},
		{"no sealed", mutate(func(r *Record) { r.Sealed = nil }), ErrMalformed},
		{"empty ciphertext", mutate(func(r *Record) { r.Shares[0] = EncShare{KeyID: []byte{9}} }), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.r.MarshalBinary()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("MarshalBinary error = %v, want %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("MarshalBinary error %v does not match ErrMalformed", err)
			}
		})
	}
}

func TestShareFor(t *testing.T) {
	r, err := Parse(validRaw().encode())
	if err != nil {
		t.Fatal(err)
	}
	i, ct, err := r.ShareFor(bytes.Repeat([]byte{3}, 32))
	if err != nil || i != 2 || len(ct) != 512 {
		t.Fatalf("ShareFor = %d, %d bytes, %v", i, len(ct), err)
	}
	ct[0] = 0xff
	if r.Shares[2].Ciphertext[0] != 0 {
		t.Fatal("ShareFor returned the record's own slice")
	}
	if _, _, err := r.ShareFor([]byte{4}); !errors.Is(err, ErrNoShare) {
		t.Fatalf("unknown key ID: err = %v, want ErrNoShare", err)
	}
	if _, _, err := r.ShareFor(nil); !errors.Is(err, ErrNoShare) {
		t.Fatalf("nil key ID: err = %v, want ErrNoShare", err)
	}
}

// spyDecrypter records the options it is called with and returns canned
// output.
type spyDecrypter struct {
	crypto.Decrypter
	opts crypto.DecrypterOpts
	out  []byte
}

func (s *spyDecrypter) Decrypt(_ io.Reader, _ []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	s.opts = opts
	return s.out, nil
}

func TestDecryptShare(t *testing.T) {
	kras := loadKRAs(t)
	share := bytes.Repeat([]byte{7}, ShareSize)
	ct1, err := rsa.EncryptOAEP(newHash(crypto.SHA1), rand.Reader, &kras[0].key.PublicKey, share, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		d       crypto.Decrypter
		h       crypto.Hash
		ct      []byte
		wantErr error
	}{
		{"ok", kras[0].key, crypto.SHA1, ct1, nil},
		{"wrong key", kras[1].key, crypto.SHA1, ct1, ErrShare},
		{"wrong hash", kras[0].key, crypto.SHA256, ct1, ErrShare},
		{"unsupported hash", kras[0].key, crypto.SHA512, ct1, ErrHash},
		{"no decrypter", nil, crypto.SHA1, ct1, ErrShare},
		{"garbage", kras[0].key, crypto.SHA1, []byte{1, 2, 3}, ErrShare},
		{"short plaintext", &spyDecrypter{out: make([]byte, 10)}, crypto.SHA1, ct1, ErrShare},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pt, err := DecryptShare(tt.d, tt.h, tt.ct)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("DecryptShare error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && !bytes.Equal(pt, share) {
				t.Fatal("wrong plaintext")
			}
		})
	}

	spy := &spyDecrypter{out: share}
	if _, err := DecryptShare(spy, crypto.SHA256, ct1); err != nil {
		t.Fatal(err)
	}
	o, ok := spy.opts.(*rsa.OAEPOptions)
	if !ok || o.Hash != crypto.SHA256 || o.MGFHash != crypto.SHA256 || o.Label != nil {
		t.Fatalf("Decrypt called with %#v, want *rsa.OAEPOptions SHA-256, MGF1 SHA-256, no label", spy.opts)
	}
}

func TestKeyIDAndRecipient(t *testing.T) {
	kras := loadKRAs(t)
	id := KeyID(kras[0].cert)
	if len(id) != 32 || bytes.Equal(id, KeyID(kras[1].cert)) {
		t.Fatal("KeyID not a distinct SHA-256")
	}
	r, err := RecipientFromCertificate(kras[0].cert)
	if err != nil || !bytes.Equal(r.KeyID, id) || !r.Key.Equal(&kras[0].key.PublicKey) {
		t.Fatalf("RecipientFromCertificate: %v", err)
	}

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ec"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1e9, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ec.PublicKey, ec)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RecipientFromCertificate(cert); !errors.Is(err, ErrRecipient) {
		t.Fatalf("EC certificate: err = %v, want ErrRecipient", err)
	}
}

func TestNewID(t *testing.T) {
	a, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a == [16]byte{} {
		t.Fatal("NewID not random")
	}
	// Later IDs sort later, whatever their random part.
	t0 := time.UnixMilli(1_790_000_000_000)
	for i := range 100 {
		x, err1 := newIDAt(t0.Add(time.Duration(i) * time.Millisecond))
		y, err2 := newIDAt(t0.Add(time.Duration(i+1) * time.Millisecond))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if bytes.Compare(x[:], y[:]) >= 0 {
			t.Fatalf("ID %x made 1 ms before %x does not sort first", x, y)
		}
		if binary.BigEndian.Uint64(x[:8])>>16 != uint64(t0.UnixMilli()+int64(i)) {
			t.Fatalf("ID %x does not start with its time", x)
		}
	}
}
