package sqlite

import (
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"

	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func appendN(t *testing.T, db *DB, n int) []store.AuditEntry {
	t.Helper()
	var out []store.AuditEntry
	for i := range n {
		mustUpdate(t, db, func(tx store.Tx) error {
			e, err := audit.Link(tx, store.AuditEntry{At: t0, Kind: "test", Actor: "tester", Subject: fmt.Sprint(i), Details: `{}`})
			out = append(out, e)
			return err
		})
	}
	return out
}

func TestAppendAuditChains(t *testing.T) {
	db, _ := openTest(t)
	got := appendN(t, db, 3)
	prev := make([]byte, audit.HashSize)
	for i, e := range got {
		if e.Seq != int64(i+1) {
			t.Errorf("entry %d: seq %d", i, e.Seq)
		}
		if !bytes.Equal(e.Prev, prev) {
			t.Errorf("entry %d: prev is not the previous hash", e.Seq)
		}
		if !bytes.Equal(e.Hash, audit.ChainHash(prev, e)) {
			t.Errorf("entry %d: hash is not ChainHash", e.Seq)
		}
		prev = e.Hash
	}
	var list []store.AuditEntry
	if err := db.View(ctx, func(tx store.Tx) error {
		var err error
		list, err = tx.ListAudit(2, 10)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Seq != 2 || !bytes.Equal(list[1].Hash, got[2].Hash) || !list[0].At.Equal(t0) {
		t.Errorf("ListAudit(2, 10) = %+v", list)
	}
}

func TestAppendAuditRolledBack(t *testing.T) {
	db, _ := openTest(t)
	appendN(t, db, 1)
	boom := errors.New("boom")
	err := db.Update(ctx, func(tx store.Tx) error {
		if _, err := audit.Link(tx, store.AuditEntry{Kind: "test", Actor: "a"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v", err)
	}
	got := appendN(t, db, 1)
	if got[0].Seq != 2 {
		t.Errorf("after a rolled-back append the next seq is %d, want 2", got[0].Seq)
	}
}

// TestAppendAuditConcurrent: group-committed appends still form one gapless chain.
func TestAppendAuditConcurrent(t *testing.T) {
	db, _ := openTest(t)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := db.Update(ctx, func(tx store.Tx) error {
				_, err := audit.Link(tx, store.AuditEntry{Kind: "test", Actor: "a", Subject: fmt.Sprint(i)})
				if i%7 == 0 && err == nil {
					return errors.New("rolled back")
				}
				return err
			})
			if err != nil && i%7 != 0 {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	checkChain(t, db, 50-8)
}

// checkChain fails t unless the trail is want entries forming one gapless chain.
func checkChain(t *testing.T, db *DB, want int) {
	t.Helper()
	var list []store.AuditEntry
	if err := db.View(ctx, func(tx store.Tx) error {
		var err error
		list, err = tx.ListAudit(1, 1000)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(list) != want {
		t.Fatalf("%d entries, want %d", len(list), want)
	}
	prev := make([]byte, audit.HashSize)
	for i, e := range list {
		if e.Seq != int64(i+1) || !bytes.Equal(e.Prev, prev) || !bytes.Equal(e.Hash, audit.ChainHash(prev, e)) {
			t.Fatalf("entry %d breaks the chain", e.Seq)
		}
		prev = e.Hash
	}
}

// TestAppendAuditTwoWriters: a second process (here a second handle) appending between two
// appends of the first does not break the chain: the first handle's cached head is dropped.
func TestAppendAuditTwoWriters(t *testing.T) {
	db, path := openTest(t)
	other, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	appendN(t, db, 2)
	appendN(t, other, 1)
	appendN(t, db, 1)
	appendN(t, other, 1)
	checkChain(t, db, 5)
}

func TestAuditErrors(t *testing.T) {
	db, _ := openTest(t)
	entries := appendN(t, db, 2)
	sig := []byte{1}
	tests := []struct {
		name    string
		fn      func(tx store.Tx) error
		wantErr error
	}{
		{"no kind", func(tx store.Tx) error { _, err := audit.Link(tx, store.AuditEntry{Actor: "a"}); return err }, store.ErrInvalid},
		{"no actor", func(tx store.Tx) error { _, err := audit.Link(tx, store.AuditEntry{Kind: "k"}); return err }, store.ErrInvalid},
		{"checkpoint of a missing entry", func(tx store.Tx) error {
			return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: 9, Hash: entries[0].Hash, KeyID: sig, Signature: sig})
		}, store.ErrNotFound},
		{"checkpoint with another hash", func(tx store.Tx) error {
			return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: 2, Hash: entries[0].Hash, KeyID: sig, Signature: sig})
		}, store.ErrConflict},
		{"checkpoint without signature", func(tx store.Tx) error {
			return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: 2, Hash: entries[1].Hash, KeyID: sig})
		}, store.ErrInvalid},
		{"list with no limit", func(tx store.Tx) error { _, err := tx.ListAudit(1, 0); return err }, store.ErrInvalid},
		{"missing entry", func(tx store.Tx) error { _, err := tx.GetAudit(7); return err }, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := db.Update(ctx, tt.fn); !errors.Is(err, tt.wantErr) {
				t.Errorf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
	if err := db.View(ctx, func(tx store.Tx) error { _, err := audit.Link(tx, store.AuditEntry{Kind: "k", Actor: "a"}); return err }); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("append in a View: %v, want ErrReadOnly", err)
	}
}

func TestCheckpoints(t *testing.T) {
	db, _ := openTest(t)
	entries := appendN(t, db, 3)
	if err := db.View(ctx, func(tx store.Tx) error { _, err := tx.LastCheckpoint(); return err }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LastCheckpoint of none: %v", err)
	}
	for _, e := range entries[1:] {
		mustUpdate(t, db, func(tx store.Tx) error {
			return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, At: t0, KeyID: []byte("k"), Signature: []byte("s")})
		})
	}
	err := db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: 3, Hash: entries[2].Hash, KeyID: []byte("k"), Signature: []byte("s")})
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("second checkpoint of seq 3: %v, want ErrConflict", err)
	}
	db.View(ctx, func(tx store.Tx) error {
		last, err := tx.LastCheckpoint()
		if err != nil || last.Seq != 3 || !last.At.Equal(t0) {
			t.Errorf("LastCheckpoint = %+v, %v", last, err)
		}
		all, err := tx.Checkpoints(1, 10)
		if err != nil || len(all) != 2 || all[0].Seq != 2 {
			t.Errorf("Checkpoints = %+v, %v", all, err)
		}
		k, err := tx.LastAuditOfKind("test")
		if err != nil || k.Seq != 3 {
			t.Errorf("LastAuditOfKind = %+v, %v", k, err)
		}
		return nil
	})
}
