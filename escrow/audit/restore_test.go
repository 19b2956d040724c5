package audit

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestVerifyRestoreGap: a database restored from an older backup, with a restore entry that
// records the head of the time and a new checkpoint after it, verifies again, and the report
// shows the gap and that the old head was the audit key's.
func TestVerifyRestoreGap(t *testing.T) {
	f := newFixture(t, 3)
	f.db.Close()
	backup := filepath.Join(f.dir, "backup.db")
	copyFile(t, f.dbPath, backup)
	f.open(t)
	f.append(t, 4)
	if _, err := f.cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	old, err := ReadHead(f.headPath)
	if err != nil {
		t.Fatal(err)
	}
	f.db.Close()
	copyFile(t, backup, f.dbPath)
	os.Remove(f.dbPath + "-wal")
	os.Remove(f.dbPath + "-shm")
	f.open(t)

	forgedHead := *old
	forgedHead.Seq = 99
	for _, tc := range []struct {
		name         string
		head         *Head
		headVerified bool
	}{
		{name: "signed head", head: old, headVerified: true},
		{name: "forged head", head: &forgedHead},
	} {
		r := &Restore{Backup: backup, RestoredSeq: 3, TrailSeq: tc.head.Seq, Head: tc.head, Forced: true}
		if err := f.db.Update(ctx, func(tx store.Tx) error {
			_, err := Append(tx, time.Now(), KindRestore, "os:tester", "backup.db", Details{Restore: r})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.cp.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		rep, err := f.verify(t)
		if err != nil {
			t.Fatalf("%s: after the recorded restore: %v", tc.name, err)
		}
		g := rep.Restores[len(rep.Restores)-1]
		from, to, lost := g.Lost()
		if !lost || from != 4 || to != tc.head.Seq || g.Actor != "os:tester" || g.HeadVerified != tc.headVerified {
			t.Errorf("%s: gap %+v (lost %d..%d %v), want 4..%d by os:tester, head verified %v", tc.name, g, from, to, lost, tc.head.Seq, tc.headVerified)
		}
	}
}
