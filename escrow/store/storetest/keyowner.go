package storetest

import (
	"github.com/keyarc/keyarc/escrow/store"

	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	escrowrecord "github.com/keyarc/keyarc/escrow/record"
)

var kraKey struct {
	once sync.Once
	key  *rsa.PrivateKey
	err  error
}

// SealedKey makes a real escrow record (format 1) of a fresh P-256 key: its blob and the
// key's fingerprint. issuerLen and serialLen shape the header, so that the fingerprint sits
// at different offsets. Backend tests use it for their own record rows.
func SealedKey(t *testing.T, id byte, issuerLen, serialLen int) (blob []byte, fp string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return sealFor(t, k, id, issuerLen, serialLen)
}

// sealFor seals k as SealedKey does.
func sealFor(t *testing.T, k *ecdsa.PrivateKey, id byte, issuerLen, serialLen int) (blob []byte, fp string) {
	t.Helper()
	kraKey.once.Do(func() { kraKey.key, kraKey.err = rsa.GenerateKey(rand.Reader, 2048) })
	if kraKey.err != nil {
		t.Fatal(kraKey.err)
	}
	spki, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	h := escrowrecord.Header{Issuer: strings.Repeat("i", issuerLen), Serial: []byte(strings.Repeat("\x7f", serialLen)),
		SPKIHash: sha256.Sum256(spki), Epoch: 1, M: 1, N: 1, OAEPHash: crypto.SHA256}
	h.ID[0], h.ID[15] = 1, id
	r, err := escrowrecord.Seal(h, pkcs8, []escrowrecord.Recipient{{KeyID: []byte("kra"), Key: &kraKey.key.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	if blob, err = r.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	return blob, hex.EncodeToString(h.SPKIHash[:])
}

// testHeaderFingerprint: the store reads a record's key fingerprint from the header of a sealed
// record (escrow/record's format 1), whatever the lengths of issuer and serial before it; for
// another blob it keeps the fingerprint the caller gave, or none.
func testHeaderFingerprint(t *testing.T, h *Harness) {
	s := h.Open(t)
	want := map[string]string{}
	var rs []store.Record
	for i, shape := range [][2]int{{1, 1}, {40, 16}, {255, 20}, {256, 64}, {4096, 64}} {
		blob, fp := SealedKey(t, byte(i+1), shape[0], shape[1])
		r := store.Record{ID: fmt.Sprintf("r%d", i), Email: fmt.Sprintf("u%d@example.com", i), Epoch: 1, Blob: blob, CreatedAt: t0}
		if i%2 == 1 {
			r.Fingerprint = fp // agreeing with the header is allowed
		}
		rs, want[r.ID] = append(rs, r), fp
	}
	given := strings.Repeat("ab", 32)
	rs = append(rs, store.Record{ID: "given", Email: "g@example.com", Epoch: 1, Blob: []byte("another format"), Fingerprint: given, CreatedAt: t0},
		store.Record{ID: "none", Email: "n@example.com", Epoch: 1, Blob: []byte("KARC\x02 not format 1"), CreatedAt: t0})
	want["given"], want["none"] = given, ""
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		return tx.InsertRecords(rs)
	})
	mustView(t, s, func(tx store.Tx) error {
		for id, fp := range want {
			r, err := tx.GetRecord(id)
			if err != nil {
				return err
			}
			if r.Fingerprint != fp {
				t.Errorf("record %s: fingerprint %q, want %q", id, r.Fingerprint, fp)
			}
		}
		if err := tx.KeyArchivedElsewhere(want["r1"], "someone@example.com"); !errors.Is(err, store.ErrKeyArchivedElsewhere) {
			t.Errorf("KeyArchivedElsewhere(another mailbox) = %v, want ErrKeyArchivedElsewhere", err)
		}
		if err := tx.KeyArchivedElsewhere(want["r1"], "u1@example.com"); err != nil {
			t.Errorf("KeyArchivedElsewhere(its own mailbox) = %v, want nil", err)
		}
		if err := tx.KeyArchivedElsewhere(given, "x@example.com"); !errors.Is(err, store.ErrKeyArchivedElsewhere) {
			t.Errorf("KeyArchivedElsewhere(a caller's fingerprint) = %v, want ErrKeyArchivedElsewhere", err)
		}
		if err := tx.KeyArchivedElsewhere(strings.Repeat("cd", 32), "x@example.com"); err != nil {
			t.Errorf("KeyArchivedElsewhere(an unknown key) = %v, want nil", err)
		}
		return nil
	})
}

// testInsertRecordKeyOwner: one key is archived for one mailbox only, on every insert path and
// within one batch; the same mailbox may archive it again; an abandoned record does not count.
func testInsertRecordKeyOwner(t *testing.T, h *Harness) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var fp string
	blob := func(id byte) []byte {
		b, f := sealFor(t, k, id, 40, 16)
		fp = f
		return b
	}
	rec := func(id byte, email, state string) store.Record {
		return store.Record{ID: fmt.Sprintf("r%d", id), Email: email, Epoch: 1, Blob: blob(id), State: state, CreatedAt: t0}
	}
	tests := []struct {
		name    string
		first   []store.Record
		then    []store.Record
		wantErr error
	}{
		{"another mailbox", []store.Record{rec(1, "alice@example.com", "")}, []store.Record{rec(2, "bob@example.com", "")}, store.ErrKeyArchivedElsewhere},
		{"another mailbox, first active", []store.Record{rec(1, "alice@example.com", store.StateActive)}, []store.Record{rec(2, "bob@example.com", "")}, store.ErrKeyArchivedElsewhere},
		{"another mailbox in one batch", nil, []store.Record{rec(1, "alice@example.com", ""), rec(2, "bob@example.com", "")}, store.ErrKeyArchivedElsewhere},
		{"the same mailbox", []store.Record{rec(1, "alice@example.com", store.StateActive)}, []store.Record{rec(2, "alice@example.com", "")}, nil},
		{"the same mailbox in one batch", nil, []store.Record{rec(1, "alice@example.com", ""), rec(2, "alice@example.com", "")}, nil},
		{"after an abandoned record", []store.Record{rec(1, "alice@example.com", store.StateAbandoned)}, []store.Record{rec(2, "bob@example.com", "")}, nil},
		{"a fingerprint that contradicts the header", nil, []store.Record{{ID: "r1", Email: "a@example.com", Epoch: 1, Blob: blob(1), Fingerprint: strings.Repeat("0", 64)}}, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := h.Open(t)
			mustUpdate(t, s, func(tx store.Tx) error {
				if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
					return err
				}
				return tx.InsertRecords(tt.first)
			})
			err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertRecords(tt.then) })
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("insert: %v, want %v", err, tt.wantErr)
			}
			var n int
			mustView(t, s, func(tx store.Tx) error {
				for _, r := range tt.then {
					if got, err := tx.GetRecord(r.ID); err == nil {
						n++
						if got.Fingerprint != fp {
							t.Errorf("record %s: fingerprint %q, want %q", r.ID, got.Fingerprint, fp)
						}
					}
				}
				return nil
			})
			if tt.wantErr != nil && n != 0 {
				t.Errorf("%d record(s) of a refused insert stored", n)
			}
			if tt.wantErr == nil && n != len(tt.then) {
				t.Errorf("%d of %d records stored", n, len(tt.then))
			}
		})
	}
}
