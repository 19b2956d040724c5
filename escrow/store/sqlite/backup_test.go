package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestBackupAndCheck(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(filepath.Join(dir, "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	now := time.Now()
	if err := db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertCode(store.Code{ID: "ABCDEFGH", Email: "a@example.org", Template: "t", Hash: []byte{1}, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Check(ctx); err != nil {
		t.Fatalf("Check on a sound database: %v", err)
	}
	copyPath := filepath.Join(dir, "backup.db")
	if err := db.Backup(ctx, copyPath); err != nil {
		t.Fatal(err)
	}
	if err := db.Backup(ctx, copyPath); err == nil {
		t.Fatal("Backup overwrote an existing file")
	}
	if st, err := os.Stat(copyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup mode %v, err %v; want 0600", st.Mode().Perm(), err)
	}
	b, err := Open(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("ABCDEFGH"); return err }); err != nil {
		t.Fatalf("the backup lacks the code: %v", err)
	}

	// Corrupt a page of the copy: Check (or Open) must say so.
	b.Close()
	raw, err := os.ReadFile(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	// The b-tree page headers of every page after the first: page type, cell counts, offsets.
	for page := 4096; page+12 <= len(raw); page += 4096 {
		for i := page; i < page+12; i++ {
			raw[i] ^= 0x5a
		}
	}
	if err := os.WriteFile(copyPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(copyPath)
	if err == nil {
		err = c.Check(ctx)
		c.Close()
	}
	if err == nil {
		t.Fatal("a corrupted database file passed Open and Check")
	}
	t.Logf("corruption reported as: %v", err)
}
