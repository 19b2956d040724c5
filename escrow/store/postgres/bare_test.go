package postgres

import (
	"errors"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestBareWriteFails: a write that runs without a savepoint of its own (the audit entry, whose
// seq the writer lock keeps free) fails all the same when the head it follows is wrong. The
// function's writes are undone, whether it returns the error or goes on; the other functions
// of its group keep theirs; and the transaction goes on.
func TestBareWriteFails(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entry := func(seq int64) store.AuditEntry {
		return store.AuditEntry{Seq: seq, At: at, Kind: "test", Actor: "t", Prev: []byte("p"), Hash: []byte{byte(seq)}}
	}
	code := func(id string) store.Code {
		return store.Code{ID: id, Email: "a@example.com", Template: "t", Hash: []byte("h"), ExpiresAt: at.Add(time.Hour)}
	}
	// spoil makes InsertAudit(1) conflict: the head is read (empty), then entry 1 is stored
	// behind the Tx's back.
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
		name    string
		goOn    bool
		wantErr error
	}{
		{"returns the error", false, store.ErrConflict},
		{"goes on", true, store.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, started := make(chan error, 1), db.Stats().Updates
			go func() {
				first <- db.Update(ctx, func(tx store.Tx) error {
					// Wait for the second caller, so that it runs in this group, in a savepoint.
					for deadline := time.Now().Add(10 * time.Second); db.queueLen() == 0 && time.Now().Before(deadline); {
						time.Sleep(time.Millisecond)
					}
					return tx.InsertCode(code("first-" + tc.name))
				})
			}()
			for db.Stats().Updates == started { // the first function runs
				time.Sleep(time.Millisecond)
			}
			err := db.Update(ctx, func(tx store.Tx) error {
				if err := tx.InsertCode(code("second-" + tc.name)); err != nil {
					return err
				}
				if err := spoil(tx); err != nil {
					return err
				}
				err := tx.InsertAudit(entry(1))
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
				if _, err := tx.GetAudit(1); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("audit entry 1 of the failed function: %v, want ErrNotFound", err)
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
// takes three round trips: BEGIN with the writer lock and the head, the entry, the COMMIT.
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
	if n := wire.trips.Load() - before; n != 3 {
		t.Errorf("an Update that appends one entry took %d round trips, want 3", n)
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
