package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
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

// sealedKey makes a real escrow record (format 1) of a fresh P-256 key: its blob and the
// key's fingerprint. issuerLen and serialLen shape the header, so that the fingerprint sits
// at different offsets.
func sealedKey(t *testing.T, id byte, issuerLen, serialLen int) (blob []byte, fp string) {
	t.Helper()
	kraKey.once.Do(func() { kraKey.key, kraKey.err = rsa.GenerateKey(rand.Reader, 2048) })
	if kraKey.err != nil {
		t.Fatal(kraKey.err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return sealFor(t, k, id, issuerLen, serialLen)
}

func sealFor(t *testing.T, k *ecdsa.PrivateKey, id byte, issuerLen, serialLen int) (blob []byte, fp string) {
	t.Helper()
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

// TestRecordFingerprint: the store reads a record's key fingerprint where escrow/record puts it,
// whatever the lengths of issuer and serial before it.
func TestRecordFingerprint(t *testing.T) {
	for _, shape := range [][2]int{{1, 1}, {40, 16}, {255, 20}, {256, 64}, {4096, 64}} {
		blob, want := sealedKey(t, 1, shape[0], shape[1])
		if got := recordFingerprint(blob); got != want {
			t.Errorf("issuer %d, serial %d bytes: fingerprint %q, want %q", shape[0], shape[1], got, want)
		}
	}
	for _, bad := range [][]byte{nil, []byte("sealed-r1"), []byte("KARC\x02" + strings.Repeat("x", 100)), []byte("KARC\x01" + strings.Repeat("\x00", 19))} {
		if got := recordFingerprint(bad); got != "" {
			t.Errorf("fingerprint of %q = %q, want none", bad, got)
		}
	}
}

// TestMigrationFingerprints: migration 6 gives the records of an older database their
// fingerprints, read from their headers, so the one-mailbox rule holds for them too.
func TestMigrationFingerprints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", dsn(path, ""))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := raw.Exec(migrations[i]); err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
	}
	want := map[string]string{}
	for i, shape := range [][2]int{{1, 1}, {300, 20}, {4096, 64}} {
		b, fp := sealedKey(t, byte(i+1), shape[0], shape[1])
		id := fmt.Sprintf("r%d", i)
		want[id] = fp
		if _, err := raw.Exec(`INSERT INTO records (id, email, epoch, blob, state, created_at) VALUES (?, ?, 1, ?, 'active', 0)`,
			id, fmt.Sprintf("u%d@example.com", i), b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.Exec(`INSERT INTO records (id, email, epoch, blob, state, created_at) VALUES ('other', 'x@example.com', 1, X'00', 'active', 0); PRAGMA user_version = 5`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	db.View(ctx, func(tx store.Tx) error {
		for id, fp := range want {
			r, err := tx.GetRecord(id)
			if err != nil {
				t.Fatal(err)
			}
			if r.Fingerprint != fp {
				t.Errorf("record %s: fingerprint %q after migration, want %q", id, r.Fingerprint, fp)
			}
		}
		if r, err := tx.GetRecord("other"); err != nil || r.Fingerprint != "" {
			t.Errorf("a blob of another format: %+v, %v; want no fingerprint", r, err)
		}
		return nil
	})
	err = db.Update(ctx, func(tx store.Tx) error { return tx.KeyArchivedElsewhere(want["r1"], "someone@example.com") })
	if !errors.Is(err, store.ErrKeyArchivedElsewhere) {
		t.Errorf("key of a migrated record for another mailbox: %v, want ErrKeyArchivedElsewhere", err)
	}
}
