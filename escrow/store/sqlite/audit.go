package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The audit trail. Each entry is chained to the one before it: its Hash is [ChainHash] of the
// previous entry's hash and its own fields, computed by [Tx.AppendAudit] inside the write
// transaction. Writes are serialised (one writer per process, BEGIN IMMEDIATE across
// processes), so seq and prev are always those of the committed tail; an entry appended in a
// savepoint that is rolled back disappears with the rest of that savepoint. The store only keeps
// the chain; signing checkpoints and verifying the chain belong to escrow/audit.

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

// AppendAudit appends e to the trail, after the last entry, and returns it with Seq, Prev and
// Hash set (At truncated to microseconds, UTC; the zero time means now). Kind and Actor are
// required. It must run in an [DB.Update] function: the entry is committed with the rest of
// that function's writes, or not at all.
func (tx *Tx) AppendAudit(e store.AuditEntry) (store.AuditEntry, error) {
	const op = "append audit"
	if e.Kind == "" || e.Actor == "" {
		return store.AuditEntry{}, invalid(op, "kind and actor are required")
	}
	if err := tx.check(true); err != nil {
		return store.AuditEntry{}, fmt.Errorf("store: %s: %w", op, err)
	}
	if tx.head != nil && tx.head.valid {
		e.Seq, e.Prev = tx.head.seq+1, tx.head.hash
	} else {
		var prev []byte
		err := tx.queryRow(op, []any{&e.Seq, &prev}, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`)
		switch {
		case err == nil:
			e.Seq, e.Prev = e.Seq+1, prev
		case errors.Is(err, store.ErrNotFound):
			e.Seq, e.Prev = 1, make([]byte, store.AuditHashSize)
		default:
			return store.AuditEntry{}, err
		}
	}
	e.At = time.UnixMicro(orNow(e.At).UnixMicro()).UTC()
	e.Hash = store.ChainHash(e.Prev, e)
	if _, err := tx.exec(op, `INSERT INTO audit (`+auditColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.Seq, e.At.UnixMicro(), e.Kind, e.Actor, e.Subject, e.Details, e.Prev, e.Hash); err != nil {
		if tx.head != nil {
			tx.head.valid = false
		}
		return store.AuditEntry{}, err
	}
	if tx.head != nil {
		*tx.head = auditHead{seq: e.Seq, hash: e.Hash, valid: true}
	}
	return e, nil
}

// auditHead is the last audit entry the writer's transaction knows of. The writer keeps it
// across transactions: it is the only goroutine of this process that appends, so the cache
// stays right until a rollback, which clears it (a failed function's savepoint restores it),
// or a write by another connection, which the writer sees in PRAGMA data_version.
type auditHead struct {
	seq   int64
	hash  []byte
	valid bool
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
	err := tx.query(op, func(rows *sql.Rows) error {
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
	err := tx.query("list audit", func(rows *sql.Rows) error {
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
	if c.Seq < 1 || len(c.Hash) != store.AuditHashSize || len(c.KeyID) == 0 || len(c.Signature) == 0 {
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
	err := tx.query("last audit checkpoint", func(rows *sql.Rows) error {
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
	err := tx.query("list audit checkpoints", func(rows *sql.Rows) error {
		c, err := scanCheckpoint(rows.Scan)
		if err == nil {
			out = append(out, *c)
		}
		return err
	}, `SELECT `+checkpointColumns+` FROM audit_checkpoints WHERE seq >= ? ORDER BY seq LIMIT ?`, from, limit)
	return out, err
}

// Path is the database file's absolute path (for tools that read it, and for tests).
func (db *DB) Path() string { return db.path }
