package sqltx

import (
	"github.com/keyarc/keyarc/escrow/store"

	"bytes"
	"errors"
	"fmt"
	"time"
)

// The rows of the audit trail. escrow/audit computes each entry's hash from the one before
// it; the store keeps the rows and refuses one that does not follow the committed tail.
// Writes are serialised (one writer per process; across processes SQLite's BEGIN IMMEDIATE, or
// PostgreSQL's writer lock across nodes), so the head read by [Tx.AuditHead] is the tail this
// transaction appends to; an entry inserted in a savepoint that is rolled back disappears with
// the rest of that savepoint.

const auditColumns = `seq, at, kind, actor, subject, details, prev, hash`

func scanAudit(scan func(...any) error) (*store.AuditEntry, error) {
	var e store.AuditEntry
	var at int64
	if err := scan(&e.Seq, &at, &e.Kind, &e.Actor, &e.Subject, &e.Details, &e.Prev, &e.Hash); err != nil {
		return nil, err
	}
	e.At = time.UnixMicro(at).UTC()
	return &e, nil
}

// AuditHead returns the seq and hash of the last entry, or 0 and nil when the trail is
// empty. On the writer it is served from the writer's cache (see [AuditHead]).
func (tx *Tx) AuditHead() (int64, []byte, error) {
	h, err := tx.auditHead()
	return h.seq, h.hash, err
}

// AuditHeadTime returns the time of the last entry, or the zero time when the trail is empty;
// served as AuditHead is.
func (tx *Tx) AuditHeadTime() (time.Time, error) {
	h, err := tx.auditHead()
	return h.at, err
}

func (tx *Tx) auditHead() (AuditHead, error) {
	const op = "audit head"
	if err := tx.check(false); err != nil {
		return AuditHead{}, fmt.Errorf("store: %s: %w", op, err)
	}
	if tx.head != nil && tx.head.valid {
		return *tx.head, nil
	}
	var seq, at int64
	var hash []byte
	err := tx.queryRow(op, []any{&seq, &hash, &at}, `SELECT seq, hash, at FROM audit ORDER BY seq DESC LIMIT 1`)
	h := KnownHead(seq, hash, at)
	switch {
	case errors.Is(err, store.ErrNotFound):
		h = KnownHead(0, nil, 0)
	case err != nil:
		return AuditHead{}, err
	}
	if tx.head != nil {
		*tx.head = h
	}
	return h, nil
}

// InsertAudit stores e as the entry after the head: e.Seq must be the head's seq + 1 and
// e.Prev its hash (for the first entry, any), else [store.ErrConflict]. Kind, Actor and Hash
// are required. It must run in an Update function.
func (tx *Tx) InsertAudit(e store.AuditEntry) error {
	const op = "insert audit"
	if e.Kind == "" || e.Actor == "" || len(e.Hash) == 0 {
		return invalid(op, "kind, actor and hash are required")
	}
	if err := tx.check(true); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	seq, hash, err := tx.AuditHead()
	if err != nil {
		return err
	}
	if e.Seq != seq+1 || (seq > 0 && !bytes.Equal(e.Prev, hash)) {
		return fmt.Errorf("store: %s %d: the trail's head is entry %d: %w", op, e.Seq, seq, store.ErrConflict)
	}
	if e.Prev == nil {
		// The column takes no NULL: refused here, before the write that nothing else can
		// refuse goes out (see execLater).
		return invalid(op, "the first entry's prev is required (any, empty too)")
	}
	// Its seq follows the head, which the writer's lock keeps: it cannot conflict (see
	// execBare), and nothing reads its count: it may go with the next round trip (see
	// execLater). If it fails all the same, the transaction's writes go with it.
	// A backend that holds it back sends the entries of one function in few statements.
	if err := tx.execLaterRow(op, `INSERT INTO audit (`+auditColumns+`)`, 8,
		e.Seq, e.At.UnixMicro(), e.Kind, e.Actor, e.Subject, e.Details, e.Prev, e.Hash); err != nil {
		if tx.head != nil {
			tx.head.valid = false
		}
		return err
	}
	if tx.head != nil {
		*tx.head = KnownHead(e.Seq, e.Hash, e.At.UnixMicro())
	}
	return nil
}

// AuditHead is the last audit entry the writer's transaction knows of, a cache its backend
// keeps (the zero value knows nothing). A failed function's savepoint restores it (the
// backend saves a copy before the function); how long it holds is the backend's: SQLite's
// writer keeps it across transactions until a rollback or a write by another process, and
// PostgreSQL's for the rest of one transaction, which holds the writer lock across nodes.
type AuditHead struct {
	seq   int64
	hash  []byte
	at    time.Time // zero for an empty trail
	valid bool
}

// KnownHead is the head of a trail whose last entry is seq with hash, made at (unix
// microseconds) (seq 0, a nil hash and any at: an empty trail), read by a backend in its
// writer's transaction.
func KnownHead(seq int64, hash []byte, at int64) AuditHead {
	h := AuditHead{seq: seq, hash: hash, valid: true}
	if seq > 0 {
		h.at = time.UnixMicro(at).UTC()
	}
	return h
}

// LastAudit returns the last entry of the trail, or [ErrNotFound] when it is empty.
func (tx *Tx) LastAudit() (*store.AuditEntry, error) {
	return tx.getAudit("last audit entry", `SELECT `+auditColumns+` FROM audit ORDER BY seq DESC LIMIT 1`)
}

// GetAudit returns entry seq, or [ErrNotFound].
func (tx *Tx) GetAudit(seq int64) (*store.AuditEntry, error) {
	return tx.getAudit("get audit entry", `SELECT `+auditColumns+` FROM audit WHERE seq = ?`, seq)
}

// LastAuditOfKind returns the last entry of a kind, or [ErrNotFound].
func (tx *Tx) LastAuditOfKind(kind string) (*store.AuditEntry, error) {
	return tx.getAudit("last audit entry of kind", `SELECT `+auditColumns+` FROM audit WHERE kind = ? ORDER BY seq DESC LIMIT 1`, kind)
}

func (tx *Tx) getAudit(op, query string, args ...any) (*store.AuditEntry, error) {
	var e *store.AuditEntry
	err := tx.query(op, func(rows Rows) error {
		var err error
		e, err = scanAudit(rows.Scan)
		return err
	}, query, args...)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	return e, nil
}

// ListAudit returns at most limit entries with seq >= from, in seq order. It returns the rows
// as stored, whatever their content: verifying them is the caller's job.
func (tx *Tx) ListAudit(from int64, limit int) ([]store.AuditEntry, error) {
	if limit <= 0 {
		return nil, invalid("list audit", "limit %d must be positive", limit)
	}
	var out []store.AuditEntry
	err := tx.query("list audit", func(rows Rows) error {
		e, err := scanAudit(rows.Scan)
		if err == nil {
			out = append(out, *e)
		}
		return err
	}, `SELECT `+auditColumns+` FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?`, from, limit)
	return out, err
}

// InsertCheckpoint stores a signed checkpoint. The entry it names must exist with the same
// hash ([ErrConflict] otherwise); a second checkpoint of the same seq gives [ErrConflict] too.
func (tx *Tx) InsertCheckpoint(c store.AuditCheckpoint) error {
	const op = "insert audit checkpoint"
	if c.Seq < 1 || len(c.Hash) == 0 || len(c.KeyID) == 0 || len(c.Signature) == 0 {
		return invalid(op, "seq, hash, key ID and signature are required")
	}
	e, err := tx.GetAudit(c.Seq)
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	if !bytes.Equal(e.Hash, c.Hash) {
		return fmt.Errorf("store: %s: entry %d has another hash: %w", op, c.Seq, store.ErrConflict)
	}
	_, err = tx.exec(op, `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)`,
		c.Seq, c.Hash, orNow(c.At).UnixMicro(), c.KeyID, c.Signature)
	return err
}

const checkpointColumns = `seq, hash, at, key_id, signature`

func scanCheckpoint(scan func(...any) error) (*store.AuditCheckpoint, error) {
	var c store.AuditCheckpoint
	var at int64
	if err := scan(&c.Seq, &c.Hash, &at, &c.KeyID, &c.Signature); err != nil {
		return nil, err
	}
	c.At = time.UnixMicro(at).UTC()
	return &c, nil
}

// LastCheckpoint returns the checkpoint with the highest seq, or [ErrNotFound].
func (tx *Tx) LastCheckpoint() (*store.AuditCheckpoint, error) {
	var c *store.AuditCheckpoint
	err := tx.query("last audit checkpoint", func(rows Rows) error {
		var err error
		c, err = scanCheckpoint(rows.Scan)
		return err
	}, `SELECT `+checkpointColumns+` FROM audit_checkpoints ORDER BY seq DESC LIMIT 1`)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("store: last audit checkpoint: %w", store.ErrNotFound)
	}
	return c, nil
}

// Checkpoints returns at most limit checkpoints with seq >= from, in seq order.
func (tx *Tx) Checkpoints(from int64, limit int) ([]store.AuditCheckpoint, error) {
	if limit <= 0 {
		return nil, invalid("list audit checkpoints", "limit %d must be positive", limit)
	}
	var out []store.AuditCheckpoint
	err := tx.query("list audit checkpoints", func(rows Rows) error {
		c, err := scanCheckpoint(rows.Scan)
		if err == nil {
			out = append(out, *c)
		}
		return err
	}, `SELECT `+checkpointColumns+` FROM audit_checkpoints WHERE seq >= ? ORDER BY seq LIMIT ?`, from, limit)
	return out, err
}
