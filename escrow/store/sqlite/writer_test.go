package sqlite

import (
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestWriterStatements: a transaction of the writer runs no statement of its own beyond BEGIN
// IMMEDIATE and COMMIT (the check for another process's writes reads the connection's data
// version without one), and the audit head it knows survives its own commits: appending an
// entry in the next transaction reads nothing first.
func TestWriterStatements(t *testing.T) {
	db, _ := openTest(t)
	appendEntry := func(tx store.Tx) error {
		seq, prev, err := tx.AuditHead()
		if err != nil {
			return err
		}
		if prev == nil {
			prev = make([]byte, 32)
		}
		h := sha256.Sum256(fmt.Append(prev, seq+1))
		return tx.InsertAudit(store.AuditEntry{Seq: seq + 1, At: t0, Kind: "test", Actor: "test", Subject: "s",
			Details: "{}", Prev: prev, Hash: h[:]})
	}
	mustUpdate(t, db, appendEntry) // the head is read once
	count := func(fn func(store.Tx) error) int64 {
		t.Helper()
		before := statements.Load()
		mustUpdate(t, db, fn)
		return statements.Load() - before
	}
	if n := count(func(store.Tx) error { return nil }); n != 2 {
		t.Errorf("an empty transaction ran %d statements, want 2 (BEGIN IMMEDIATE, COMMIT)", n)
	}
	if n := count(appendEntry); n != 3 {
		t.Errorf("appending an audit entry ran %d statements, want 3 (BEGIN IMMEDIATE, INSERT, COMMIT)", n)
	}
}
