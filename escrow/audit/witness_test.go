package audit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// witnessed is a running appliance's view of a real SQLite trail: the store it appends through
// (tracked by the witness), a checkpointer that checks the witness, and a second handle on the
// same file for another process's writes.
type witnessed struct {
	path, headPath string
	key            *ecdsa.PrivateKey
	raw            store.Store // the database as opened
	db             store.Store // raw, tracked by w
	w              *Witness
	cp             *Checkpointer
	n              int
}

func newWitnessed(t *testing.T, n int) *witnessed {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := &witnessed{path: filepath.Join(dir, "keyarc.db"), headPath: filepath.Join(dir, "audit-head.json"), key: key}
	db, err := sqlite.Open(s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s.raw = db
	s.w = &Witness{}
	if err := s.w.Start(ctx, db); err != nil {
		t.Fatal(err)
	}
	s.db = s.w.Track(db)
	s.cp = &Checkpointer{DB: db, Signer: key, HeadPath: s.headPath, Witness: s.w}
	for range n {
		if err := s.append(); err != nil {
			t.Fatalf("append %d: %v", s.n, err)
		}
	}
	return s
}

// append writes one entry through the witness, in its own Update.
func (s *witnessed) append() error {
	i := s.n
	s.n++
	return s.db.Update(ctx, func(tx store.Tx) error {
		_, err := s.w.Append(tx, time.Time{}, KindCodeCreated, "local", fmt.Sprint("w", i), Details{})
		return err
	})
}

// sqlExec runs statements on the file from another connection while the store stays open:
// sqlite3 in a shell while the appliance runs.
func (s *witnessed) sqlExec(t *testing.T, stmts ...string) {
	t.Helper()
	raw, err := sql.Open("sqlite", "file:"+s.path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, q := range stmts {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// other appends n entries as another process does: its own handle, no witness.
func (s *witnessed) other(t *testing.T, n int) {
	t.Helper()
	db, err := sqlite.Open(s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := range n {
		err := db.Update(ctx, func(tx store.Tx) error {
			_, err := Append(tx, time.Time{}, KindCodeCreated, "other", fmt.Sprint("o", s.n, i), Details{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

const deleteNewest = `DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)`

// TestWitnessRefusesLostTail: entries the appliance appended and committed, deleted from the
// database behind its back (with or without another writer's entries in their place), make
// the next append and the next checkpoint fail, and the head file then records the lost
// entry, signed, so that Verify reports the loss.
func TestWitnessRefusesLostTail(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(t *testing.T, s *witnessed)
		// checked: the loss hides under another writer's entries, which an append lets
		// through; the witness's Check (the checkpointer's periodic look) finds it.
		checked bool
		wantErr error
	}{
		{"newest entry deleted", func(t *testing.T, s *witnessed) { s.sqlExec(t, deleteNewest) }, false, ErrTruncated},
		{"three newest entries deleted", func(t *testing.T, s *witnessed) { s.sqlExec(t, deleteNewest, deleteNewest, deleteNewest) }, false, ErrTruncated},
		{"newest entry replaced by another writer's", func(t *testing.T, s *witnessed) {
			s.sqlExec(t, deleteNewest)
			s.other(t, 1)
		}, true, ErrChanged},
		{"newest entry deleted, another writer appended after", func(t *testing.T, s *witnessed) {
			s.sqlExec(t, deleteNewest)
			s.other(t, 3)
		}, true, ErrChanged},
		{"another writer's entries, then the appliance's deleted", func(t *testing.T, s *witnessed) {
			s.other(t, 2)
			if err := s.append(); err != nil {
				t.Fatal(err)
			}
			s.sqlExec(t, deleteNewest)
		}, false, ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newWitnessed(t, 5)
			if _, err := s.cp.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.append(); err != nil { // not covered by a checkpoint
				t.Fatal(err)
			}
			tt.tamper(t, s)
			if lost, _ := s.w.Head(); lost < 6 {
				t.Fatalf("the witness remembers entry %d, want the appliance's last (6 or later)", lost)
			}

			if tt.checked {
				if err := s.w.Check(ctx, s.raw); !errors.Is(err, tt.wantErr) {
					t.Fatalf("Check after the tampering: %v, want %v", err, tt.wantErr)
				}
			}
			err := s.append()
			if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrAppend) {
				t.Fatalf("append after the tampering: %v, want %v (and ErrAppend)", err, tt.wantErr)
			}
			var p *Problem
			if !errors.As(s.w.Err(), &p) || !errors.Is(p, tt.wantErr) {
				t.Errorf("witness Err = %v, want a Problem wrapping %v", s.w.Err(), tt.wantErr)
			}
			select {
			case <-s.w.Lost():
			default:
				t.Error("Lost is not closed")
			}
			if err := s.append(); !errors.Is(err, tt.wantErr) {
				t.Errorf("a second append: %v, want it refused too (%v)", err, tt.wantErr)
			}
			if err := s.w.Check(ctx, s.raw); !errors.Is(err, tt.wantErr) {
				t.Errorf("Check: %v, want %v", err, tt.wantErr)
			}
			if cp, err := s.cp.Checkpoint(ctx); !errors.Is(err, tt.wantErr) || cp != nil {
				t.Fatalf("Checkpoint over the shortened trail: %+v, %v; want it refused with %v", cp, err, tt.wantErr)
			}
			if last := lastCheckpoint(t, s.raw); last.Seq != 5 {
				t.Errorf("last stored checkpoint is of entry %d, want 5 (none since)", last.Seq)
			}
			head, err := ReadHead(s.headPath)
			if err != nil {
				t.Fatal(err)
			}
			if lost, _ := s.w.Head(); head.Seq != lost {
				t.Errorf("head file records entry %d, want the lost entry %d", head.Seq, lost)
			}
			_, err = Verify(ctx, s.raw, &s.key.PublicKey, head)
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCheckpointMismatch) {
				t.Errorf("Verify against the head file: %v, want the trail truncated or not matching the head", err)
			}
		})
	}
}

// TestWitnessNoFalseAlarm: what an intact trail legitimately goes through is not a loss:
// an append rolled back with its function, another process's entries, concurrent appends in
// group commits, and checkpoints.
func TestWitnessNoFalseAlarm(t *testing.T) {
	s := newWitnessed(t, 3)
	errRefused := errors.New("the operation is refused after its entry")
	for range 3 {
		err := s.db.Update(ctx, func(tx store.Tx) error {
			if _, err := s.w.Append(tx, time.Time{}, KindCodeCreated, "local", "rolled back", Details{}); err != nil {
				return err
			}
			return errRefused
		})
		if !errors.Is(err, errRefused) {
			t.Fatalf("Update: %v", err)
		}
		if err := s.append(); err != nil {
			t.Fatalf("append after a rolled back one: %v", err)
		}
	}
	s.other(t, 2)
	if err := s.append(); err != nil {
		t.Fatalf("append after another process's entries: %v", err)
	}
	if _, err := s.cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				err := s.db.Update(ctx, func(tx store.Tx) error {
					_, err := s.w.Append(tx, time.Time{}, KindCodeCreated, "local", fmt.Sprint(g, "/", i), Details{})
					if err == nil && i%5 == 4 {
						return errRefused // a function of the group rolled back alone
					}
					return err
				})
				if err != nil && !errors.Is(err, errRefused) {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() { s.other(t, 5) })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent append: %v", err)
	}
	if err := s.w.Check(ctx, s.raw); err != nil {
		t.Errorf("Check: %v", err)
	}
	cp, err := s.cp.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := s.w.Head(); cp.Seq != seq {
		t.Errorf("checkpoint of entry %d, witness remembers %d", cp.Seq, seq)
	}
	if _, err := s.cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if s.w.Err() != nil {
		t.Errorf("witness Err = %v", s.w.Err())
	}
	head, err := ReadHead(s.headPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(ctx, s.raw, &s.key.PublicKey, head); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

// TestWitnessSeenWithoutAppend: a tail deleted while nothing is appended is seen by the
// checkpointer's periodic look at the trail, on a node that leads and on one that does not,
// and the head file then records the lost entry.
func TestWitnessSeenWithoutAppend(t *testing.T) {
	for _, leads := range []bool{true, false} {
		t.Run(fmt.Sprint("leads=", leads), func(t *testing.T) {
			s := newWitnessed(t, 4)
			if _, err := s.cp.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.append(); err != nil { // not covered by a checkpoint
				t.Fatal(err)
			}
			// No checkpoint falls due during the test; the trail is read every 5 s.
			s.cp.Interval = time.Hour
			s.cp.Leads = func() bool { return leads }
			lost, _ := s.w.Head()
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { s.cp.Run(rctx); close(done) }()
			defer func() { cancel(); <-done }()

			s.sqlExec(t, deleteNewest)
			deadline := time.Now().Add(10 * time.Second)
			for {
				h, err := ReadHead(s.headPath)
				if err == nil && h.Seq == lost {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no head file of the lost entry %d: %+v, %v; witness: %v", lost, h, err, s.w.Err())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := s.w.Err(); !errors.Is(err, ErrTruncated) {
				t.Errorf("witness Err = %v, want ErrTruncated", err)
			}
			if err := s.append(); !errors.Is(err, ErrTruncated) {
				t.Errorf("append: %v, want ErrTruncated", err)
			}
			if last := lastCheckpoint(t, s.raw); last == nil || last.Seq != lost-1 {
				t.Errorf("last checkpoint %+v, want the one of entry %d made before the deletion", last, lost-1)
			}
		})
	}
}

// BenchmarkAppend: entries appended by concurrent callers (group commits) on a real SQLite
// file, without and with a witness: the witness's check on the append path costs no query.
func BenchmarkAppend(b *testing.B) {
	for _, witnessed := range []bool{false, true} {
		b.Run(fmt.Sprint("witness=", witnessed), func(b *testing.B) {
			db, err := sqlite.Open(filepath.Join(b.TempDir(), "keyarc.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			var w *Witness
			var s store.Store = db
			if witnessed {
				w = &Witness{}
				if err := w.Start(ctx, db); err != nil {
					b.Fatal(err)
				}
				s = w.Track(db)
			}
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					err := s.Update(ctx, func(tx store.Tx) error {
						_, err := w.Append(tx, time.Time{}, KindCodeCreated, "local", "bench", Details{})
						return err
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// lateRollback is a store whose transactions are all rolled back after their functions
// succeeded, and whose callers are told only once released: a group commit that failed, its
// callers told after the writer has gone on.
type lateRollback struct {
	store.Store
	rolledBack, release chan struct{}
}

var errCommit = errors.New("commit failed")

func (s *lateRollback) Update(ctx context.Context, fn func(store.Tx) error) error {
	err := s.Store.Update(ctx, func(tx store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errCommit
	})
	close(s.rolledBack)
	<-s.release
	return err
}

// TestWitnessLateRollback: the caller of a rolled-back transaction may learn of it while the
// writer already runs a later function that appended at the same seq; forgetting the
// rolled-back entry must not forget the later one, which would then be taken for another
// writer's committed entry and, once rolled back in turn, raise a false alarm.
func TestWitnessLateRollback(t *testing.T) {
	s := newWitnessed(t, 3)
	late := &lateRollback{Store: s.raw, rolledBack: make(chan struct{}), release: make(chan struct{})}
	tracked := s.w.Track(late)
	aDone := make(chan error, 1)
	go func() {
		aDone <- tracked.Update(ctx, func(tx store.Tx) error {
			_, err := s.w.Append(tx, time.Time{}, KindCodeCreated, "local", "rolled back late", Details{})
			return err
		})
	}()
	<-late.rolledBack
	errRefused := errors.New("refused")
	var aErr error
	err := s.db.Update(ctx, func(tx store.Tx) error {
		if _, err := s.w.Append(tx, time.Time{}, KindCodeCreated, "local", "same seq", Details{}); err != nil {
			return err
		}
		close(late.release)
		aErr = <-aDone // the rolled-back caller is told now
		if _, err := s.w.Append(tx, time.Time{}, KindCodeCreated, "local", "after", Details{}); err != nil {
			return err
		}
		return errRefused
	})
	if !errors.Is(aErr, errCommit) {
		t.Fatalf("first Update: %v, want %v", aErr, errCommit)
	}
	if !errors.Is(err, errRefused) {
		t.Fatalf("second Update: %v, want %v", err, errRefused)
	}
	if err := s.append(); err != nil {
		t.Fatalf("append after both were rolled back: %v", err)
	}
	if err := s.w.Check(ctx, s.raw); err != nil {
		t.Errorf("Check: %v", err)
	}
}

// commitDuringView is a store whose Views run during() once their snapshot is taken (after
// their first LastAudit): an Update that commits while a View reads an older snapshot.
type commitDuringView struct {
	store.Store
	during func()
}

func (s *commitDuringView) View(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.View(ctx, func(tx store.Tx) error { return fn(&lastAuditHook{Tx: tx, after: s.during}) })
}

type lastAuditHook struct {
	store.Tx
	after func()
}

func (t *lastAuditHook) LastAudit() (*store.AuditEntry, error) {
	e, err := t.Tx.LastAudit()
	if f := t.after; f != nil {
		t.after = nil
		f()
	}
	return e, err
}

// TestWitnessViewOlderThanCommit: an entry that commits while the checkpointer's View reads
// an older snapshot is not in that snapshot, and that is no loss: the View is checked against
// the entry remembered before it began.
func TestWitnessViewOlderThanCommit(t *testing.T) {
	s := newWitnessed(t, 3)
	appendNow := func() {
		if err := s.append(); err != nil {
			t.Errorf("append during the View: %v", err)
		}
	}
	hooked := &commitDuringView{Store: s.raw, during: appendNow}
	if err := s.w.Check(ctx, hooked); err != nil {
		t.Errorf("Check: %v", err)
	}
	hooked.during = appendNow
	s.cp.DB = hooked
	if _, err := s.cp.Checkpoint(ctx); err != nil {
		t.Errorf("Checkpoint: %v", err)
	}
	if err := s.append(); err != nil {
		t.Errorf("append: %v", err)
	}
	if seq, _ := s.w.Head(); seq != 6 {
		t.Errorf("witness remembers entry %d, want 6", seq)
	}
}
