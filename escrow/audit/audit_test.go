package audit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

var ctx = context.Background()

// fixture is a trail of n entries in a real SQLite file, checkpointed at the end with a
// software ECDSA key, and a head file next to it.
type fixture struct {
	dir, dbPath, headPath string
	key                   *ecdsa.PrivateKey
	db                    store.Store
	cp                    *Checkpointer
	n                     int // entries appended so far, so that every entry differs
}

func newFixture(t *testing.T, n int) *fixture {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dir: dir, dbPath: filepath.Join(dir, "keyarc.db"), headPath: filepath.Join(dir, "audit-head.json"), key: key}
	f.open(t)
	f.append(t, n)
	if _, err := f.cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) open(t *testing.T) {
	t.Helper()
	db, err := sqlite.Open(f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f.db = db
	f.cp = &Checkpointer{DB: db, Signer: f.key, HeadPath: f.headPath}
}

func (f *fixture) append(t *testing.T, n int) {
	t.Helper()
	at := time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)
	for range n {
		i := f.n
		f.n++
		err := f.db.Update(ctx, func(tx store.Tx) error {
			_, err := Append(tx, at.Add(time.Duration(i)*time.Second), KindEnroll, "admin:alice",
				fmt.Sprintf("user%d@example.org", i), Details{Template: "smime", Serial: fmt.Sprintf("%x", i+100)})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// tamper closes the store, runs SQL on the file directly, and reopens it.
func (f *fixture) tamper(t *testing.T, stmts ...string) {
	t.Helper()
	f.db.Close()
	raw, err := sql.Open("sqlite", "file:"+f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := raw.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	raw.Close()
	f.open(t)
}

func (f *fixture) verify(t *testing.T) (*Report, error) {
	t.Helper()
	head, err := ReadHead(f.headPath)
	if err != nil {
		t.Fatal(err)
	}
	return Verify(ctx, f.db, &f.key.PublicKey, head)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyIntact(t *testing.T) {
	f := newFixture(t, 5)
	rep, err := f.verify(t)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Entries != 5 || rep.Last != 5 || rep.Checkpoints != 1 || rep.Signed != 5 || rep.Head != 5 {
		t.Errorf("report %+v", rep)
	}
	// More entries after the head are fine: they are covered by the chain, not yet signed.
	f.append(t, 2)
	if rep, err = f.verify(t); err != nil || rep.Last != 7 || rep.Signed != 5 {
		t.Errorf("after two more entries: %+v, %v", rep, err)
	}
	// An empty trail verifies.
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "empty.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if rep, err := Verify(ctx, db, &f.key.PublicKey, nil); err != nil || rep.Entries != 0 {
		t.Errorf("empty trail: %+v, %v", rep, err)
	}
}

// forged computes a valid-looking entry, as a forger who knows the algorithm would.
func forged(prev []byte, seq int64) (string, []byte) {
	e := store.AuditEntry{Seq: seq, At: time.Date(2025, 6, 1, 9, 30, 0, 0, time.UTC), Kind: "recovery-fetched", Actor: "officer:mallory", Subject: "x", Details: "{}"}
	return fmt.Sprintf("INSERT INTO audit (seq, at, kind, actor, subject, details, prev, hash) VALUES (%d, %d, '%s', '%s', '%s', '%s', x'%x', x'%x')",
		seq, e.At.UnixMicro(), e.Kind, e.Actor, e.Subject, e.Details, prev, ChainHash(prev, e)), ChainHash(prev, e)
}

func TestVerifyTampering(t *testing.T) {
	const n = 6
	tests := []struct {
		name    string
		tamper  func(t *testing.T, f *fixture)
		wantErr error
		wantSeq int64
	}{
		{"changed byte in details", func(t *testing.T, f *fixture) {
			f.tamper(t, `UPDATE audit SET details = replace(details, 'smime', 'smimf') WHERE seq = 3`)
		}, ErrChanged, 3},
		{"changed actor", func(t *testing.T, f *fixture) {
			f.tamper(t, `UPDATE audit SET actor = 'admin:bob' WHERE seq = 2`)
		}, ErrChanged, 2},
		{"changed time", func(t *testing.T, f *fixture) {
			f.tamper(t, `UPDATE audit SET at = at + 1 WHERE seq = 4`)
		}, ErrChanged, 4},
		{"changed hash", func(t *testing.T, f *fixture) {
			f.tamper(t, `UPDATE audit SET hash = zeroblob(32) WHERE seq = 6`)
		}, ErrChanged, 6},
		{"deleted entry", func(t *testing.T, f *fixture) {
			f.tamper(t, `DELETE FROM audit WHERE seq = 3`)
		}, ErrMissing, 3},
		{"deleted entry, later ones renumbered", func(t *testing.T, f *fixture) {
			f.tamper(t, `DELETE FROM audit_checkpoints`, `DELETE FROM audit WHERE seq = 3`,
				`UPDATE audit SET seq = seq + 1000 WHERE seq > 3`, `UPDATE audit SET seq = seq - 1001 WHERE seq > 1000`)
		}, ErrMissing, 3},
		{"two entries' contents swapped", func(t *testing.T, f *fixture) {
			f.tamper(t,
				`CREATE TEMP TABLE s AS SELECT * FROM audit WHERE seq IN (3, 4)`,
				`UPDATE audit SET at = (SELECT at FROM s WHERE s.seq = 7 - audit.seq), kind = (SELECT kind FROM s WHERE s.seq = 7 - audit.seq),
					actor = (SELECT actor FROM s WHERE s.seq = 7 - audit.seq), subject = (SELECT subject FROM s WHERE s.seq = 7 - audit.seq),
					details = (SELECT details FROM s WHERE s.seq = 7 - audit.seq) WHERE seq IN (3, 4)`)
		}, ErrReordered, 3},
		{"two whole rows swapped", func(t *testing.T, f *fixture) {
			f.tamper(t, `UPDATE audit SET seq = seq + 1000 WHERE seq IN (3, 4)`, `UPDATE audit SET seq = 3 WHERE seq = 1004`, `UPDATE audit SET seq = 4 WHERE seq = 1003`)
		}, ErrReordered, 3},
		{"forged entry inserted, later ones renumbered", func(t *testing.T, f *fixture) {
			e2 := f.entry(t, 2)
			ins, _ := forged(e2.Hash, 3)
			f.tamper(t, `DELETE FROM audit_checkpoints`, `UPDATE audit SET seq = seq + 1000 WHERE seq >= 3`, `UPDATE audit SET seq = seq - 999 WHERE seq > 1000`, ins)
		}, ErrInserted, 3},
		{"forged entry replacing one", func(t *testing.T, f *fixture) {
			e2 := f.entry(t, 2)
			ins, _ := forged(e2.Hash, 3)
			f.tamper(t, `DELETE FROM audit WHERE seq = 3`, ins)
		}, ErrInserted, 3},
		{"history rewritten with every hash recomputed", func(t *testing.T, f *fixture) {
			// A forger replaces entry 3 and recomputes the whole chain after it: only the
			// signed checkpoint shows it.
			entries := f.all(t)
			f.db.Close()
			raw, _ := sql.Open("sqlite", "file:"+f.dbPath)
			defer raw.Close()
			prev := entries[1].Hash
			for _, e := range entries[2:] {
				if e.Seq == 3 {
					e.Actor = "admin:mallory"
				}
				h := ChainHash(prev, e)
				if _, err := raw.Exec(`UPDATE audit SET actor = ?, prev = ?, hash = ? WHERE seq = ?`, e.Actor, prev, h, e.Seq); err != nil {
					t.Fatal(err)
				}
				prev = h
			}
			f.open(t)
		}, ErrCheckpointMismatch, n},
		{"tail truncated", func(t *testing.T, f *fixture) {
			f.tamper(t, `DELETE FROM audit_checkpoints`, `DELETE FROM audit WHERE seq > 4`)
		}, ErrTruncated, 5},
		{"forged checkpoint signature", func(t *testing.T, f *fixture) {
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			e := f.entry(t, 6)
			at := time.Now()
			sig, _ := ecdsa.SignASN1(rand.Reader, other, CheckpointDigest(6, e.Hash, at))
			id, _ := KeyID(&f.key.PublicKey) // claims to be the audit key
			f.tamper(t, fmt.Sprintf(`UPDATE audit_checkpoints SET signature = x'%x', at = %d, key_id = x'%x' WHERE seq = 6`, sig, at.UnixMicro(), id))
		}, ErrBadSignature, 6},
		{"head file signed by another key", func(t *testing.T, f *fixture) {
			h, _ := ReadHead(f.headPath)
			h.Signature[len(h.Signature)-1] ^= 1
			if err := WriteHead(f.headPath, h); err != nil {
				t.Fatal(err)
			}
		}, ErrBadSignature, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, n)
			tt.tamper(t, f)
			_, err := f.verify(t)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify: %v, want %v", err, tt.wantErr)
			}
			var p *Problem
			if !errors.As(err, &p) || p.Seq != tt.wantSeq {
				t.Errorf("Verify: %v, want the problem at entry %d", err, tt.wantSeq)
			}
			t.Log(err)
		})
	}
}

func (f *fixture) entry(t *testing.T, seq int64) *store.AuditEntry {
	t.Helper()
	var e *store.AuditEntry
	if err := f.db.View(ctx, func(tx store.Tx) error {
		var err error
		e, err = tx.GetAudit(seq)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (f *fixture) all(t *testing.T) []store.AuditEntry {
	t.Helper()
	var out []store.AuditEntry
	if err := f.db.View(ctx, func(tx store.Tx) error {
		var err error
		out, err = tx.ListAudit(1, 1000)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestVerifyOlderBackup restores a copy of the database file taken before the last
// checkpoint: the head file shows it, whether or not the restored copy received entries since.
func TestVerifyOlderBackup(t *testing.T) {
	f := newFixture(t, 3)
	f.db.Close()
	backup := filepath.Join(f.dir, "backup.db")
	copyFile(t, f.dbPath, backup)
	f.open(t)
	f.append(t, 3)
	if _, err := f.cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.verify(t); err != nil {
		t.Fatalf("before the restore: %v", err)
	}

	head, _ := ReadHead(f.headPath)
	if err := Reaches(ctx, f.db, head); err != nil {
		t.Fatalf("Reaches before the restore: %v", err)
	}
	f.db.Close()
	copyFile(t, backup, f.dbPath)
	os.Remove(f.dbPath + "-wal")
	os.Remove(f.dbPath + "-shm")
	f.open(t)
	if err := Reaches(ctx, f.db, head); !errors.Is(err, ErrTruncated) {
		t.Errorf("Reaches after the restore: %v, want ErrTruncated", err)
	}
	_, err := f.verify(t)
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("older backup: %v, want ErrTruncated", err)
	}
	t.Log(err)

	// The restored database carries on and overtakes the head's seq: its entry 6 is not the
	// signed one.
	f.append(t, 4)
	if _, err := f.verify(t); !errors.Is(err, ErrCheckpointMismatch) {
		t.Fatalf("older backup that diverged: %v, want ErrCheckpointMismatch", err)
	}
}

func TestHeadFile(t *testing.T) {
	f := newFixture(t, 2)
	h, err := ReadHead(f.headPath)
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq != 2 || len(h.Hash) != sha256.Size {
		t.Errorf("head %+v", h)
	}
	if err := CheckCheckpoint(h.Checkpoint(), &f.key.PublicKey); err != nil {
		t.Error(err)
	}
	st, err := os.Stat(f.headPath)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("head file mode: %v %v", st, err)
	}
	matches, _ := filepath.Glob(filepath.Join(f.dir, ".audit-head-*"))
	if len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
	tests := []struct {
		name    string
		content string
		wantErr error
	}{
		{"missing", "", ErrNoHead},
		{"not JSON", "{", ErrBadSignature},
		{"no hash", `{"seq": 3}`, ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "head.json")
			if tt.content != "" {
				os.WriteFile(p, []byte(tt.content), 0o600)
			}
			if _, err := ReadHead(p); !errors.Is(err, tt.wantErr) {
				t.Errorf("ReadHead: %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestCheckpointerRun(t *testing.T) {
	dir := t.TempDir()
	db, err := sqlite.Open(filepath.Join(dir, "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cp := &Checkpointer{DB: db, Signer: key, HeadPath: filepath.Join(dir, "head.json"), Every: 3, Interval: time.Hour}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { cp.Run(rctx); close(done) }()
	for i := range 7 {
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
	// Checkpoints follow: never 3 or more entries after the last one.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var last *store.AuditCheckpoint
		db.View(ctx, func(tx store.Tx) error { last, _ = tx.LastCheckpoint(); return nil })
		if last != nil && 7-last.Seq < 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("last checkpoint after 7 entries with Every 3: %+v", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	// Shutdown: the final checkpoint covers the tail.
	last, err := cp.Checkpoint(ctx)
	if err != nil || last.Seq != 7 {
		t.Fatalf("final checkpoint: %+v, %v", last, err)
	}
	head, err := ReadHead(cp.HeadPath)
	if err != nil || head.Seq != 7 {
		t.Fatalf("head: %+v, %v", head, err)
	}
	rep, err := Verify(ctx, db, &key.PublicKey, head)
	// How many checkpoints the run made depends on timing (it may have caught all seven
	// entries at once); the loop above checked it never fell Every entries behind.
	if err != nil || rep.Signed != 7 || rep.Checkpoints < 1 {
		t.Errorf("Verify: %+v, %v", rep, err)
	}
	// Nothing new: no new checkpoint.
	again, err := cp.Checkpoint(ctx)
	if err != nil || again.Seq != 7 || !again.At.Equal(last.At) {
		t.Errorf("second final checkpoint: %+v, %v", again, err)
	}
}

// TestDetailsCarryNoSecrets: Details has no field that could hold a secret by its name.
func TestDetailsCarryNoSecrets(t *testing.T) {
	if r := Clip(strings.Repeat("x", 5000)); len(r) > maxReason+3 {
		t.Errorf("Clip left %d bytes", len(r))
	}
	for _, bad := range []string{"pin", "password", "code", "share", "key", "secret"} {
		var m map[string]any
		full, _ := json.Marshal(Details{Template: "t"})
		json.Unmarshal(full, &m)
		for k := range m {
			if strings.Contains(k, bad) {
				t.Errorf("Details field %q", k)
			}
		}
	}
}
