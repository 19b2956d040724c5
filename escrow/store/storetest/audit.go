package storetest

import (
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"

	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// The rows of the audit trail, chained by escrow/audit, and its checkpoints.
var auditTests = []test{
	{"AppendChains", testAppendAuditChains},
	{"AppendRolledBack", testAppendAuditRolledBack},
	{"AppendConcurrent", testAppendAuditConcurrent},
	{"AppendTwoWriters", testAppendAuditTwoWriters},
	{"Errors", testAuditErrors},
	{"InsertAuditLinkage", testInsertAuditLinkage},
	{"Reads", testAuditReads},
	{"Checkpoints", testCheckpoints},
	{"HeadTime", testAuditHeadTime},
}

// appendN appends n entries, each in its own Update, and returns them as linked.
func appendN(t *testing.T, s store.Store, n int) []store.AuditEntry {
	t.Helper()
	var out []store.AuditEntry
	for i := range n {
		mustUpdate(t, s, func(tx store.Tx) error {
			e, err := audit.Link(tx, store.AuditEntry{At: t0, Kind: "test", Actor: "tester", Subject: fmt.Sprint(i), Details: `{}`})
			out = append(out, e)
			return err
		})
	}
	return out
}

func testAppendAuditChains(t *testing.T, h *Harness) {
	s := h.Open(t)
	got := appendN(t, s, 3)
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
	if err := s.View(ctx, func(tx store.Tx) error {
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

func testAppendAuditRolledBack(t *testing.T, h *Harness) {
	s := h.Open(t)
	appendN(t, s, 1)
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if _, err := audit.Link(tx, store.AuditEntry{Kind: "test", Actor: "a"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v", err)
	}
	got := appendN(t, s, 1)
	if got[0].Seq != 2 {
		t.Errorf("after a rolled-back append the next seq is %d, want 2", got[0].Seq)
	}
}

// testAppendAuditConcurrent: group-committed appends still form one gapless chain.
func testAppendAuditConcurrent(t *testing.T, h *Harness) {
	s := h.Open(t)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Update(ctx, func(tx store.Tx) error {
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
	checkChain(t, s, 50-8)
}

// checkChain fails t unless the trail is want entries forming one gapless chain.
func checkChain(t *testing.T, s store.Store, want int) {
	t.Helper()
	var list []store.AuditEntry
	if err := s.View(ctx, func(tx store.Tx) error {
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

// testAppendAuditTwoWriters: a second handle appending between two appends of the first does
// not break the chain (a backend that caches the head must notice the other writer).
func testAppendAuditTwoWriters(t *testing.T, h *Harness) {
	s := h.Open(t)
	other := h.second(t, s)
	appendN(t, s, 2)
	appendN(t, other, 1)
	appendN(t, s, 1)
	appendN(t, other, 1)
	checkChain(t, s, 5)
}

func testAuditErrors(t *testing.T, h *Harness) {
	s := h.Open(t)
	entries := appendN(t, s, 2)
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
			if err := s.Update(ctx, tt.fn); !errors.Is(err, tt.wantErr) {
				t.Errorf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
	if err := s.View(ctx, func(tx store.Tx) error { _, err := audit.Link(tx, store.AuditEntry{Kind: "k", Actor: "a"}); return err }); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("append in a View: %v, want ErrReadOnly", err)
	}
}

func testCheckpoints(t *testing.T, h *Harness) {
	s := h.Open(t)
	entries := appendN(t, s, 3)
	if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.LastCheckpoint(); return err }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LastCheckpoint of none: %v", err)
	}
	for _, e := range entries[1:] {
		mustUpdate(t, s, func(tx store.Tx) error {
			return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, At: t0, KeyID: []byte("k"), Signature: []byte("s")})
		})
	}
	err := s.Update(ctx, func(tx store.Tx) error {
		return tx.InsertCheckpoint(store.AuditCheckpoint{Seq: 3, Hash: entries[2].Hash, KeyID: []byte("k"), Signature: []byte("s")})
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("second checkpoint of seq 3: %v, want ErrConflict", err)
	}
	mustView(t, s, func(tx store.Tx) error {
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

// testInsertAuditLinkage: InsertAudit takes only the entry that follows the head, by seq and
// by hash; anything else is a conflict and leaves the trail as it was.
func testInsertAuditLinkage(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustView(t, s, func(tx store.Tx) error {
		seq, hash, err := tx.AuditHead()
		if err != nil || seq != 0 || hash != nil {
			t.Errorf("AuditHead of an empty trail = %d, %x, %v; want 0, nil, nil", seq, hash, err)
		}
		if _, err := tx.LastAudit(); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("LastAudit of an empty trail = %v, want ErrNotFound", err)
		}
		return nil
	})
	entries := appendN(t, s, 2)
	next := func(seq int64, prev []byte) store.AuditEntry {
		e := store.AuditEntry{Seq: seq, At: t0, Kind: "test", Actor: "tester", Details: `{}`, Prev: prev}
		e.Hash = audit.ChainHash(prev, e)
		return e
	}
	tests := []struct {
		name    string
		e       store.AuditEntry
		wantErr error
	}{
		{"seq of the head", next(2, entries[0].Hash), store.ErrConflict},
		{"seq after next", next(4, entries[1].Hash), store.ErrConflict},
		{"prev not the head's hash", next(3, entries[0].Hash), store.ErrConflict},
		{"no prev", next(3, nil), store.ErrConflict},
		{"no hash", store.AuditEntry{Seq: 3, At: t0, Kind: "test", Actor: "tester", Prev: entries[1].Hash}, store.ErrInvalid},
		{"no kind", store.AuditEntry{Seq: 3, At: t0, Actor: "tester", Prev: entries[1].Hash, Hash: []byte{1}}, store.ErrInvalid},
		{"no actor", store.AuditEntry{Seq: 3, At: t0, Kind: "test", Prev: entries[1].Hash, Hash: []byte{1}}, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertAudit(tt.e) })
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("InsertAudit = %v, want %v", err, tt.wantErr)
			}
		})
	}
	// A refused entry left the head where it was: the right next entry goes in.
	e := next(3, entries[1].Hash)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertAudit(e); err != nil {
			return err
		}
		seq, hash, err := tx.AuditHead()
		if err != nil || seq != 3 || !bytes.Equal(hash, e.Hash) {
			t.Errorf("AuditHead after an insert = %d, %x, %v; want 3 and its hash", seq, hash, err)
		}
		return nil
	})
	checkChain(t, s, 3)
	// A second entry in one function follows the first.
	mustUpdate(t, s, func(tx store.Tx) error {
		for range 2 {
			if _, err := audit.Link(tx, store.AuditEntry{At: t0, Kind: "test", Actor: "tester"}); err != nil {
				return err
			}
		}
		return nil
	})
	checkChain(t, s, 5)
}

// testAuditReads: the rows come back as stored, by seq, by kind and in ranges.
func testAuditReads(t *testing.T, h *Harness) {
	s := h.Open(t)
	kinds := []string{"issue", "revoke", "issue", "login", "issue", "revoke"}
	var entries []store.AuditEntry
	for i, k := range kinds {
		mustUpdate(t, s, func(tx store.Tx) error {
			e, err := audit.Link(tx, store.AuditEntry{At: t0.Add(time.Duration(i) * time.Second), Kind: k, Actor: "tester",
				Subject: fmt.Sprint(i), Details: fmt.Sprintf(`{"i":%d}`, i)})
			entries = append(entries, e)
			return err
		})
	}
	mustView(t, s, func(tx store.Tx) error {
		last, err := tx.LastAudit()
		if err != nil || !sameEntry(*last, entries[5]) {
			t.Errorf("LastAudit = %+v, %v", last, err)
		}
		for _, e := range entries {
			got, err := tx.GetAudit(e.Seq)
			if err != nil || !sameEntry(*got, e) {
				t.Errorf("GetAudit(%d) = %+v, %v; want %+v", e.Seq, got, err, e)
			}
		}
		if k, err := tx.LastAuditOfKind("issue"); err != nil || k.Seq != 5 {
			t.Errorf("LastAuditOfKind(issue) = %+v, %v; want seq 5", k, err)
		}
		if _, err := tx.LastAuditOfKind("nothing"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("LastAuditOfKind(nothing) = %v, want ErrNotFound", err)
		}
		l, err := tx.ListAudit(3, 2)
		if err != nil || len(l) != 2 || l[0].Seq != 3 || l[1].Seq != 4 {
			t.Errorf("ListAudit(3, 2) = %+v, %v", l, err)
		}
		if l, err := tx.ListAudit(7, 10); err != nil || len(l) != 0 {
			t.Errorf("ListAudit past the end = %+v, %v", l, err)
		}
		var seqs []int64
		k, err := tx.AuditOfKindsFrom([]string{"revoke", "login"}, 3, 10)
		for _, e := range k {
			seqs = append(seqs, e.Seq)
		}
		if err != nil || fmt.Sprint(seqs) != "[4 6]" {
			t.Errorf("AuditOfKindsFrom(revoke, login; 3) = %v, %v; want [4 6]", seqs, err)
		}
		seqs = nil
		k, err = tx.AuditOfKindsFrom([]string{"issue"}, 1, 2)
		for _, e := range k {
			seqs = append(seqs, e.Seq)
		}
		if err != nil || fmt.Sprint(seqs) != "[1 3]" {
			t.Errorf("AuditOfKindsFrom(issue; 1, limit 2) = %v, %v; want [1 3]", seqs, err)
		}
		if _, err := tx.AuditOfKindsFrom(nil, 1, 10); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("AuditOfKindsFrom(no kinds) = %v, want ErrInvalid", err)
		}
		return nil
	})
	checkChain(t, s, len(kinds))
}

func sameEntry(a, b store.AuditEntry) bool {
	return a.Seq == b.Seq && a.At.Equal(b.At) && a.Kind == b.Kind && a.Actor == b.Actor && a.Subject == b.Subject &&
		a.Details == b.Details && bytes.Equal(a.Prev, b.Prev) && bytes.Equal(a.Hash, b.Hash)
}

// testAuditHeadTime: AuditHeadTime is the last entry's time, on the writer (its cache, within a
// function and across them), in a View and through a second handle (another node), and a
// rolled-back entry's time goes with it. audit.Link makes no entry earlier than it: entries
// linked with a clock stepped back, or by a node whose clock is behind, take the head's time.
func testAuditHeadTime(t *testing.T, h *Harness) {
	s := h.Open(t)
	headTime := func(s store.Store) time.Time {
		t.Helper()
		var at time.Time
		mustView(t, s, func(tx store.Tx) (err error) { at, err = tx.AuditHeadTime(); return err })
		return at
	}
	if at := headTime(s); !at.IsZero() {
		t.Errorf("AuditHeadTime of an empty trail = %v, want the zero time", at)
	}
	link := func(s store.Store, at time.Time) store.AuditEntry {
		t.Helper()
		var e store.AuditEntry
		mustUpdate(t, s, func(tx store.Tx) (err error) {
			e, err = audit.Link(tx, store.AuditEntry{At: at, Kind: "test", Actor: "tester", Details: `{}`})
			if err != nil {
				return err
			}
			if got, err := tx.AuditHeadTime(); err != nil || !got.Equal(e.At) {
				t.Errorf("AuditHeadTime after Link in the same function = %v, %v; want %v", got, err, e.At)
			}
			return nil
		})
		return e
	}
	ahead := t0.Add(5 * time.Minute)
	if e := link(s, ahead); !e.At.Equal(ahead) {
		t.Errorf("first entry at %v, want %v", e.At, ahead)
	}
	if at := headTime(s); !at.Equal(ahead) {
		t.Errorf("AuditHeadTime = %v, want %v", at, ahead)
	}
	// The clock stepped back: the entry takes the head's time, and the trail holds it.
	if e := link(s, t0); !e.At.Equal(ahead) {
		t.Errorf("entry linked at an earlier time: %v, want the head's %v", e.At, ahead)
	}
	later := ahead.Add(time.Second)
	if e := link(s, later); !e.At.Equal(later) {
		t.Errorf("entry linked at a later time: %v, want %v", e.At, later)
	}
	checkChain(t, s, 3)
	// A rolled-back entry's time is not the head's.
	err := s.Update(ctx, func(tx store.Tx) error {
		if _, err := audit.Link(tx, store.AuditEntry{At: later.Add(time.Hour), Kind: "test", Actor: "tester"}); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	if err == nil {
		t.Fatal("the function's error was not returned")
	}
	if e := link(s, t0); !e.At.Equal(later) {
		t.Errorf("entry after a rolled-back one: %v, want the committed head's %v", e.At, later)
	}
	// Another node, whose clock is behind, follows the head its predecessor wrote.
	if h.OpenSecond == nil {
		return
	}
	b := h.second(t, s)
	if at := headTime(b); !at.Equal(later) {
		t.Errorf("AuditHeadTime through a second handle = %v, want %v", at, later)
	}
	if e := link(b, t0); !e.At.Equal(later) {
		t.Errorf("entry linked by a second handle with an earlier clock: %v, want %v", e.At, later)
	}
	if e := link(s, t0); !e.At.Equal(later) {
		t.Errorf("entry linked by the first handle after the second wrote: %v, want %v", e.At, later)
	}
	checkChain(t, s, 6)
}
