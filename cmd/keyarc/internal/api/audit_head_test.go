package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// TestTrailHeadOfAnotherNode: a node starting on a shared state folder just after another
// node committed the database's first signed checkpoint, and before that node wrote the head
// file, waits for the head file and starts; a head file that never comes still refuses the
// start.
func TestTrailHeadOfAnotherNode(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, key := trailFixture(t, dir)
	for i := range 3 {
		if err := db.Update(ctx, func(tx store.Tx) error {
			_, err := audit.Append(tx, time.Time{}, audit.KindCodeCreated, "local", string(rune('a'+i)), audit.Details{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The other node's checkpoint, in the database only for now.
	cp, err := (&audit.Checkpointer{DB: db, Signer: key}).Checkpoint(ctx)
	if err != nil || cp == nil {
		t.Fatalf("checkpoint: %v %v", cp, err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	headPath := filepath.Join(dir, "audit-head.json")

	err = checkTrailHead(headPath, db, key.Public(), log, "WAY", 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "is missing although the database holds 1 signed checkpoints") {
		t.Fatalf("no head file at all: %v, want the refusal", err)
	}

	go func() {
		time.Sleep(200 * time.Millisecond)
		if err := audit.WriteHead(headPath, &audit.Head{Seq: cp.Seq, Hash: cp.Hash, At: cp.At, KeyID: cp.KeyID, Signature: cp.Signature}); err != nil {
			t.Error(err)
		}
	}()
	if err := checkTrailHead(headPath, db, key.Public(), log, "WAY", 10*time.Second); err != nil {
		t.Fatalf("the head file written after the check began: %v, want a start", err)
	}
}

// TestTrailHeadOlderCopy: a node on another machine starts with a copy of the state folder
// made earlier, whose head file names an older checkpoint than the database's last: the
// database is not behind it, so the node starts. A head file of a checkpoint the database
// does not hold (another history) still refuses it.
func TestTrailHeadOlderCopy(t *testing.T) {
	ctx := context.Background()
	db, key := trailFixture(t, t.TempDir())
	cpr := &audit.Checkpointer{DB: db, Signer: key}
	var cps []*audit.Head
	for i := range 3 {
		if err := db.Update(ctx, func(tx store.Tx) error {
			_, err := audit.Append(tx, time.Time{}, audit.KindCodeCreated, "local", string(rune('a'+i)), audit.Details{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		cp, err := cpr.Checkpoint(ctx)
		if err != nil || cp == nil {
			t.Fatalf("checkpoint %d: %v %v", i, cp, err)
		}
		cps = append(cps, &audit.Head{Seq: cp.Seq, Hash: cp.Hash, At: cp.At, KeyID: cp.KeyID, Signature: cp.Signature})
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	headPath := filepath.Join(t.TempDir(), "audit-head.json")
	if err := audit.WriteHead(headPath, cps[0]); err != nil {
		t.Fatal(err)
	}
	if err := checkTrailHead(headPath, db, key.Public(), log, "WAY", 0); err != nil {
		t.Fatalf("a head file of the first of 3 checkpoints: %v, want a start", err)
	}

	other, err := sqlite.Open(filepath.Join(t.TempDir(), "other.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Update(ctx, func(tx store.Tx) error {
		_, err := audit.Append(tx, time.Time{}, audit.KindCodeCreated, "local", "z", audit.Details{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := checkTrailHead(headPath, other, key.Public(), log, "WAY", 0); err == nil {
		t.Fatal("a head file of another database's checkpoint: started, want a refusal")
	}
}

// trailFixture opens a SQLite store in dir, closed at the test's end, and makes an audit key.
func trailFixture(t *testing.T, dir string) (*sqlite.DB, *ecdsa.PrivateKey) {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(dir, "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return db, key
}
