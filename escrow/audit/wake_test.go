package audit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// countingStore counts the Views made through it.
type countingStore struct {
	store.Store
	views atomic.Int64
}

func (s *countingStore) View(ctx context.Context, fn func(store.Tx) error) error {
	s.views.Add(1)
	return s.Store.View(ctx, fn)
}

// TestCheckpointerWakeReadsOnlyWhenDue: entries appended by this process wake the checkpointer,
// which reads the database only once they could make a checkpoint due (Every entries after the
// last checkpoint seen), and then makes it.
func TestCheckpointerWakeReadsOnlyWhenDue(t *testing.T) {
	raw, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	db := &countingStore{Store: raw}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const every = 30
	cp := &Checkpointer{DB: db, Signer: key, Every: every, Interval: time.Hour}
	appendEntries(t, raw, cp, 1)
	if first, err := cp.Checkpoint(ctx); err != nil || first.Seq != 1 {
		t.Fatalf("first checkpoint: %+v, %v", first, err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { cp.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()

	before := db.views.Load()
	// Every-1 entries, one at a time, each wake taken by Run before the next entry.
	for range every - 1 {
		appendEntries(t, raw, cp, 1)
		for len(cp.wake) > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if cp.notDue() != true {
		t.Fatal("Every-1 entries after the checkpoint seen count as due")
	}
	// The Every-th entry makes one due: Run reads the database and checkpoints it. Run works
	// one wake at a time, so the reads of the earlier wakes, had there been any, are done too.
	appendEntries(t, raw, cp, 1)
	deadline := time.Now().Add(20 * time.Second)
	for last := lastCheckpoint(t, raw); last == nil || last.Seq != every+1; last = lastCheckpoint(t, raw) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of entry %d after Every entries: last %+v", every+1, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The due wake reads the state twice and Checkpoint once; a periodic check (every 5 s at
	// most) may add its own. One read per wake would be 30.
	if n := db.views.Load() - before; n > 8 {
		t.Fatalf("%d database reads for %d wakes, want only those of the due one", n, every)
	}
	// Checkpoint records the checkpoint as seen just after storing it: wait for that step.
	for !cp.notDue() {
		if time.Now().After(deadline) {
			t.Fatal("the new checkpoint was not seen")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCheckpointerNotDue: with no checkpoint seen, or the last one seen older than Interval, or
// Every entries hinted after it, a wake reads the database.
func TestCheckpointerNotDue(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cp := &Checkpointer{Every: 10, Interval: time.Minute, Now: func() time.Time { return now }}
	if cp.notDue() {
		t.Fatal("not due with no checkpoint seen")
	}
	cp.see(&store.AuditCheckpoint{Seq: 5, At: now})
	cp.hint.Store(14)
	if !cp.notDue() {
		t.Fatal("due with 9 entries after the checkpoint seen, Every 10")
	}
	cp.hint.Store(15)
	if cp.notDue() {
		t.Fatal("not due with 10 entries after the checkpoint seen, Every 10")
	}
	cp.hint.Store(6)
	now = now.Add(time.Minute)
	if cp.notDue() {
		t.Fatal("not due with the checkpoint seen as old as Interval")
	}
	// An older checkpoint (a stale read) never replaces a newer one seen.
	cp.see(&store.AuditCheckpoint{Seq: 2, At: now})
	cp.see(&store.AuditCheckpoint{Seq: 5, At: now})
	if !cp.notDue() {
		t.Fatal("due right after a checkpoint of seq 5 seen with hint 6")
	}
	cp.see(&store.AuditCheckpoint{Seq: 3, At: now.Add(-time.Hour)})
	if !cp.notDue() {
		t.Fatal("an older checkpoint replaced the newer one seen")
	}
}

// TestCheckpointerClockStepBack: a last checkpoint dated in the clock's future (made before
// the clock was stepped back an hour, or by a leader whose clock was ahead) makes the next one
// due at once, as one older than Interval does. Before, its age was negative: no checkpoint by
// time until the clock had caught up and Interval passed.
func TestCheckpointerClockStepBack(t *testing.T) {
	raw, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var now atomic.Int64
	now.Store(time.Now().Add(time.Hour).UnixNano())
	cp := &Checkpointer{DB: raw, Signer: key, Every: 1000, Interval: time.Minute,
		Now: func() time.Time { return time.Unix(0, now.Load()) }}
	appendEntries(t, raw, cp, 1)
	if first, err := cp.Checkpoint(ctx); err != nil || first.Seq != 1 {
		t.Fatalf("first checkpoint: %+v, %v", first, err)
	}
	now.Store(time.Now().UnixNano()) // stepped back an hour
	appendEntries(t, raw, cp, 1)
	if cp.notDue() {
		t.Error("not due with the last checkpoint seen dated an hour in the clock's future")
	}
	if err := cp.checkpointIfDue(ctx); err != nil {
		t.Fatal(err)
	}
	if last := lastCheckpoint(t, raw); last == nil || last.Seq != 2 {
		t.Errorf("last checkpoint %+v after the clock stepped back, want one of entry 2", last)
	}
}
