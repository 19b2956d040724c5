package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/storetest"

	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

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
		b, fp := storetest.SealedKey(t, byte(i+1), shape[0], shape[1])
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
