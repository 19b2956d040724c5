package audit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

func appendEntries(t *testing.T, db store.Store, cp *Checkpointer, n int) {
	t.Helper()
	for i := range n {
		err := db.Update(ctx, func(tx store.Tx) error {
			e, err := Append(tx, time.Time{}, KindCodeCreated, "local", fmt.Sprint(i), Details{})
			if err == nil {
				cp.Appended(e.Seq)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func lastCheckpoint(t *testing.T, db store.Store) *store.AuditCheckpoint {
	t.Helper()
	var last *store.AuditCheckpoint
	if err := db.View(ctx, func(tx store.Tx) error { last, _ = tx.LastCheckpoint(); return nil }); err != nil {
		t.Fatal(err)
	}
	return last
}

// TestCheckpointerFollower: a node that does not lead makes no periodic checkpoint, however
// many entries follow; once it leads, it does.
func TestCheckpointerFollower(t *testing.T) {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var leading atomic.Bool
	cp := &Checkpointer{DB: db, Signer: key, Every: 3, Interval: time.Hour, Leads: leading.Load}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { cp.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()
	appendEntries(t, db, cp, 7)
	time.Sleep(300 * time.Millisecond)
	if last := lastCheckpoint(t, db); last != nil {
		t.Fatalf("a follower made checkpoint %d", last.Seq)
	}
	leading.Store(true)
	appendEntries(t, db, cp, 1)
	deadline := time.Now().Add(10 * time.Second)
	for last := lastCheckpoint(t, db); last == nil || last.Seq < 6; last = lastCheckpoint(t, db) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint once leading: %+v", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// beforeUpdate runs before once before its first Update: another node's write that lands
// between this node's read and its write.
type beforeUpdate struct {
	store.Store
	once   sync.Once
	before func()
}

func (s *beforeUpdate) Update(ctx context.Context, fn func(store.Tx) error) error {
	s.once.Do(s.before)
	return s.Store.Update(ctx, fn)
}

// TestCheckpointRace: two nodes checkpoint the same tail at once (both at shutdown, say):
// the one that stores second takes the other's checkpoint of the same entry, without error.
func TestCheckpointRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyarc.db")
	open := func() store.Store {
		db, err := sqlite.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a := &Checkpointer{DB: open(), Signer: key}
	appendEntries(t, a.DB, a, 4)
	var first *store.AuditCheckpoint
	b := &Checkpointer{Signer: key}
	b.DB = &beforeUpdate{Store: open(), before: func() {
		var err error
		if first, err = a.Checkpoint(ctx); err != nil {
			t.Errorf("node A's checkpoint: %v", err)
		}
	}}
	got, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatalf("node B's checkpoint of the same entry: %v", err)
	}
	if first == nil || got.Seq != 4 || !got.At.Equal(first.At) {
		t.Errorf("node B returned %+v, want node A's checkpoint %+v", got, first)
	}
}
