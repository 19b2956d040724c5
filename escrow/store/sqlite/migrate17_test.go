package sqlite

import (
	"errors"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion16: a version-16 database loses codes_email and keeps its codes: a
// used code still reads as used, with its certificate; a free one is claimed once, and the
// sweep still releases the code of a pending certificate left behind.
func TestMigrateFromVersion16(t *testing.T) {
	path, old := oldDatabase(t, 16)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	expires := created.AddDate(1, 0, 0).UnixMicro()
	if _, err := old.Exec(`INSERT INTO codes (id, email, template, hash, created_at, expires_at, used_at, serial) VALUES
			('USED0001', 'a@example.org', 'smime-signature', x'01', ?1, ?2, ?1, 'c01'),
			('FREE0001', 'b@example.org', 'smime-signature', x'02', ?1, ?2, NULL, NULL),
			('LEFT0001', 'c@example.org', 'smime-signature', x'03', ?1, ?2, ?1, 'c02');
		INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, code_id, role, kra) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?2, ?1, 'USED0001', '', ''),
			('c02', 'smime-signature', 'c@example.org', 'CN=c', 'pending', NULL, NULL, ?1, 'LEFT0001', '', '');`,
		created.UnixMicro(), expires); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 16 database: %v", err)
	}
	defer db.Close()

	var version, indexes int
	if err := db.r.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if err := db.r.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = 'codes_email'`).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if version != len(migrations) || indexes != 0 {
		t.Fatalf("after the migration: version %d (want %d), codes_email %d times", version, len(migrations), indexes)
	}

	now := created.Add(time.Hour)
	if err := db.View(ctx, func(tx store.Tx) error {
		c, err := tx.GetCode("USED0001")
		if err != nil {
			return err
		}
		if c.UsedAt == nil || c.Serial != "c01" || c.Email != "a@example.org" {
			t.Errorf("the used code came through as %+v", c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx store.Tx) error { return tx.ClaimCode("FREE0001", now) })
	if err := db.Update(ctx, func(tx store.Tx) error { return tx.ClaimCode("FREE0001", now) }); !errors.Is(err, store.ErrCodeUsed) {
		t.Fatalf("second claim of a code: %v, want ErrCodeUsed", err)
	}
	var swept store.Swept
	mustUpdate(t, db, func(tx store.Tx) (err error) {
		swept, err = tx.SweepPending(now)
		return err
	})
	if swept.Codes != 1 || swept.Certificates != 1 {
		t.Fatalf("sweep after the migration: %+v, want the pending certificate and its code", swept)
	}
	if err := db.View(ctx, func(tx store.Tx) error {
		c, err := tx.GetCode("LEFT0001")
		if err == nil && c.UsedAt != nil {
			t.Errorf("the swept code is still used: %+v", c)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
