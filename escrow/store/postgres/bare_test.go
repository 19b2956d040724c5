package postgres

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestBareWriteFails: a write that runs without a savepoint of its own (the claim of a code,
// which only a fault can refuse) fails all the same when the schema refuses it (here a check
// added behind the store's back). The function's writes are undone, whether it returns the
// error or goes on; the other functions of its group keep theirs; and the transaction goes on.
func TestBareWriteFails(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	code := func(id string) store.Code {
		return store.Code{ID: id, Email: "a@example.com", Template: "t", Hash: []byte("h"), ExpiresAt: at.Add(time.Hour)}
	}
	// spoil makes every claim fail: a check that no claimed code passes, undone with the
	// function's savepoint.
	spoil := func(tx store.Tx) error {
		c, q := tx.(rawTx).Raw()
		_, err := q.ExecContext(c, `ALTER TABLE codes ADD CONSTRAINT spoil CHECK (used_at IS NULL) NOT VALID`)
		return err
	}
	for _, tc := range []struct {
		name    string
		goOn    bool
		wantErr error
	}{
		{"returns the error", false, store.ErrInvalid},
		{"goes on", true, store.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := startGroup(ctx, db, code("first-"+tc.name))
			err := db.Update(ctx, func(tx store.Tx) error {
				if err := tx.InsertCode(code("second-" + tc.name)); err != nil {
					return err
				}
				if err := spoil(tx); err != nil {
					return err
				}
				err := tx.ClaimCode("second-"+tc.name, at)
				if !tc.goOn || err == nil {
					return err
				}
				return tx.InsertCode(code("third-" + tc.name))
			})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Update: %v, want %v", err, tc.wantErr)
			}
			if err := <-first; err != nil {
				t.Fatalf("first function of the group: %v", err)
			}
			err = db.View(ctx, func(tx store.Tx) error {
				if _, err := tx.GetCode("first-" + tc.name); err != nil {
					return err
				}
				for _, id := range []string{"second-" + tc.name, "third-" + tc.name} {
					if _, err := tx.GetCode(id); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("code %s of the failed function: %v, want ErrNotFound", id, err)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	// The writer goes on, and the check went with the failed function.
	if err := db.Update(ctx, func(tx store.Tx) error { return tx.ClaimCode("first-goes on", at) }); err != nil {
		t.Fatalf("ClaimCode after: %v", err)
	}
}

// TestHeldBackWriteFails: the audit entry, held back until the writer's next round trip, fails
// all the same when the head it follows is wrong (entry 1 stored behind the store's back). Its
// failure is the transaction's: every function of the group fails with ErrUnavailable, whether
// the entry went out with the COMMIT or with a later write of its function; nothing of the
// group is stored; and the writer goes on.
func TestHeldBackWriteFails(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entry := func(seq int64) store.AuditEntry {
		return store.AuditEntry{Seq: seq, At: at, Kind: "test", Actor: "t", Prev: []byte("p"), Hash: []byte{byte(seq)}}
	}
	code := func(id string) store.Code {
		return store.Code{ID: id, Email: "a@example.com", Template: "t", Hash: []byte("h"), ExpiresAt: at.Add(time.Hour)}
	}
	// spoil makes InsertAudit(1) conflict on the server: the head is read (empty), then entry
	// 1 is stored behind the Tx's back.
	spoil := func(tx store.Tx) error {
		if _, _, err := tx.AuditHead(); err != nil {
			return err
		}
		c, q := tx.(rawTx).Raw()
		_, err := q.ExecContext(c, `INSERT INTO audit (seq, at, kind, actor, subject, details, prev, hash)
			VALUES (1, 0, 'x', 'x', '', '', '\x00', '\x01')`)
		return err
	}
	for _, tc := range []struct {
		name string
		goOn bool // a write after the entry: it goes out with it
	}{
		{"with the commit", false},
		{"with the next write", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first := startGroup(ctx, db, code("first-"+tc.name))
			var insertErr error
			err := db.Update(ctx, func(tx store.Tx) error {
				if err := tx.InsertCode(code("second-" + tc.name)); err != nil {
					return err
				}
				if err := spoil(tx); err != nil {
					return err
				}
				if err := tx.InsertAudit(entry(1)); err != nil {
					return err // held back: no error yet
				}
				if tc.goOn {
					insertErr = tx.InsertCode(code("third-" + tc.name))
				}
				return nil
			})
			if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrConflict) {
				t.Fatalf("Update: %v, want ErrUnavailable (and not ErrConflict)", err)
			}
			if tc.goOn && !errors.Is(insertErr, store.ErrUnavailable) {
				t.Errorf("the write after the held-back one: %v, want ErrUnavailable", insertErr)
			}
			if err := <-first; !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("first function of the group: %v, want ErrUnavailable", err)
			}
			err = db.View(ctx, func(tx store.Tx) error {
				for _, id := range []string{"first-", "second-", "third-"} {
					if _, err := tx.GetCode(id + tc.name); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("code %s of the failed group: %v, want ErrNotFound", id+tc.name, err)
					}
				}
				if _, err := tx.GetAudit(1); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("audit entry 1 of the failed group: %v, want ErrNotFound", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	// The writer goes on: the next entry is the first.
	if err := db.Update(ctx, func(tx store.Tx) error { return tx.InsertAudit(entry(1)) }); err != nil {
		t.Fatalf("InsertAudit after: %v", err)
	}
}

// TestAuditAppendTrips: an Update that appends an audit entry to a trail another node wrote
// takes two round trips: BEGIN with the writer lock and the head, then the entry, held back
// (see pgQuerier.ExecLater), with the COMMIT.
func TestAuditAppendTrips(t *testing.T) {
	srv := pgtest.Start(t)
	a, url := openTest(t, srv)
	b := openURL(t, url)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	appendOne := func(db *DB) {
		t.Helper()
		err := db.Update(ctx, func(tx store.Tx) error {
			seq, prev, err := tx.AuditHead()
			if err != nil {
				return err
			}
			return tx.InsertAudit(store.AuditEntry{Seq: seq + 1, At: at, Kind: "test", Actor: "t", Prev: append([]byte{}, prev...),
				Hash: []byte{byte(seq + 1), 0xff}})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	appendOne(a)
	appendOne(b) // a's head is stale now
	appendOne(a) // opens a's connection if it had none
	before := wire.trips.Load()
	appendOne(b)
	if n := wire.trips.Load() - before; n != 2 {
		t.Errorf("an Update that appends one entry took %d round trips, want 2", n)
	}
	err := a.View(ctx, func(tx store.Tx) error {
		seq, hash, err := tx.AuditHead()
		if err == nil && (seq != 4 || hash[0] != 4) {
			t.Errorf("head %d %x, want entry 4", seq, hash)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEnrollmentTrips: the Update of an EST enrollment (escrow/issue's IssueSigned: the code's
// claim and the certificate in one statement, then the audit entry, held back) takes three
// round trips alone: BEGIN with the writer lock and the head, the certificate, the entry with
// the COMMIT; and five statements besides the BEGIN's three.
func TestEnrollmentTrips(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	enroll := func(i int) {
		t.Helper()
		id := fmt.Sprintf("code-%d", i)
		if err := db.Update(ctx, func(tx store.Tx) error {
			return tx.InsertCode(store.Code{ID: id, Email: "a@example.com", Template: "t", Hash: []byte("h"), ExpiresAt: at.Add(time.Hour)})
		}); err != nil {
			t.Fatal(err)
		}
		s0, t0 := Wire()
		err := db.Update(ctx, func(tx store.Tx) error {
			err := tx.InsertCertificateClaiming(store.Certificate{Serial: fmt.Sprintf("%x", 0x1000+i), Template: "t", Email: "a@example.com",
				State: store.StateIssued, DER: []byte{0x30, 0x00}, NotBefore: at, NotAfter: at.Add(time.Hour), CodeID: id}, at)
			if err != nil {
				return err
			}
			seq, prev, err := tx.AuditHead()
			if err != nil {
				return err
			}
			return tx.InsertAudit(store.AuditEntry{Seq: seq + 1, At: at, Kind: "enroll", Actor: "t", Prev: append([]byte{}, prev...),
				Hash: []byte{byte(seq + 1)}})
		})
		if err != nil {
			t.Fatal(err)
		}
		s1, t1 := Wire()
		if s1-s0 != 3+3 || t1-t0 != 3 {
			t.Errorf("enrollment %d: %d statements in %d round trips, want 6 in 3", i, s1-s0, t1-t0)
		}
	}
	for i := range 3 {
		enroll(i)
	}
}

// TestHeldBackRowsMerged: the audit entries one function appends, held back, go out with the
// COMMIT as multi-row INSERTs (32 and 8 rows for 40 entries): two round trips and six
// statements in all for the Update, and every entry stored in its place.
func TestHeldBackRowsMerged(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	appendN := func(n int) {
		t.Helper()
		err := db.Update(ctx, func(tx store.Tx) error {
			for range n {
				seq, prev, err := tx.AuditHead()
				if err != nil {
					return err
				}
				if err := tx.InsertAudit(store.AuditEntry{Seq: seq + 1, At: at, Kind: "test", Actor: "t",
					Prev: append([]byte{}, prev...), Hash: []byte{byte(seq + 1), 0xaa}}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	appendN(1) // opens the writer's connection
	s0, t0 := Wire()
	appendN(40)
	s1, t1 := Wire()
	if s1-s0 != 6 || t1-t0 != 2 {
		t.Errorf("40 entries appended with %d statements in %d round trips, want 6 in 2", s1-s0, t1-t0)
	}
	err := db.View(ctx, func(tx store.Tx) error {
		es, err := tx.ListAudit(1, 100)
		if err != nil {
			return err
		}
		if len(es) != 41 {
			t.Fatalf("%d entries, want 41", len(es))
		}
		for i, e := range es {
			if e.Seq != int64(i+1) || e.Hash[0] != byte(i+1) || (i > 0 && e.Prev[0] != byte(i)) {
				t.Errorf("entry %d: seq %d, hash %x, prev %x", i+1, e.Seq, e.Hash, e.Prev)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// startGroup starts an Update that stores c once a second caller is queued behind
// it, so that the second runs in the same group, in a savepoint; it returns when the first
// function runs, with the channel its Update's error comes on.
func startGroup(ctx context.Context, db *DB, c store.Code) <-chan error {
	first, started := make(chan error, 1), db.Stats().Updates
	go func() {
		first <- db.Update(ctx, func(tx store.Tx) error {
			for deadline := time.Now().Add(10 * time.Second); db.queueLen() == 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			return tx.InsertCode(c)
		})
	}()
	for db.Stats().Updates == started {
		time.Sleep(time.Millisecond)
	}
	return first
}
