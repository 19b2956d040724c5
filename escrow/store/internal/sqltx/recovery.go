package sqltx

import (
	"github.com/keyarc/keyarc/escrow/store"

	"database/sql"
	"fmt"
	"time"
)

const recoveryColumns = `id, kind, requester, requester_serial, requester_mailbox, reason, key_label, key_spki, oaep_hash, state, created_at, expires_at, closed_at`

// InsertRecovery stores a new recovery request with its records. A duplicate ID gives
// [ErrConflict]; an unknown record ID gives [store.ErrNotFound].
func (tx *Tx) InsertRecovery(r store.Recovery) error {
	const op = "insert recovery"
	if r.State == "" {
		r.State = store.RecoveryOpen
	}
	if r.Kind == "" {
		r.Kind = store.KindRecover
	}
	switch {
	case r.ID == "" || r.Requester == "" || r.RequesterSerial == "" || r.KeyLabel == "":
		return invalid(op, "id, requester, requester serial and key label are required")
	case len(r.KeySPKI) == 0 || r.OAEPHash == "":
		return invalid(op, "recovery key and its OAEP hash are required")
	case len(r.Records) == 0:
		return invalid(op, "no records")
	case r.ExpiresAt.IsZero():
		return invalid(op, "no expiry")
	}
	if _, err := tx.exec(op, `INSERT INTO recoveries (`+recoveryColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.Kind, r.Requester, r.RequesterSerial, r.RequesterMailbox, r.Reason, r.KeyLabel, r.KeySPKI, r.OAEPHash, r.State,
		orNow(r.CreatedAt).UnixMicro(), r.ExpiresAt.UnixMicro(), tval(r.ClosedAt)); err != nil {
		return err
	}
	for i, id := range r.Records {
		if _, err := tx.exec(op, `INSERT INTO recovery_records (recovery_id, position, record_id) VALUES (?, ?, ?)`, r.ID, i, id); err != nil {
			return err
		}
	}
	return nil
}

func scanRecovery(scan func(...any) error) (*store.Recovery, error) {
	var (
		r                        store.Recovery
		created, expires, closed sql.NullInt64
	)
	if err := scan(&r.ID, &r.Kind, &r.Requester, &r.RequesterSerial, &r.RequesterMailbox, &r.Reason, &r.KeyLabel, &r.KeySPKI,
		&r.OAEPHash, &r.State, &created, &expires, &closed); err != nil {
		return nil, err
	}
	r.CreatedAt, r.ExpiresAt, r.ClosedAt = tget(created), tget(expires), tget(closed)
	return &r, nil
}

// GetRecovery returns a recovery request with its record IDs, or [ErrNotFound].
func (tx *Tx) GetRecovery(id string) (*store.Recovery, error) {
	const op = "get recovery"
	var r *store.Recovery
	err := tx.query(op, func(rows Rows) (err error) {
		r, err = scanRecovery(rows.Scan)
		return err
	}, `SELECT `+recoveryColumns+` FROM recoveries WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	err = tx.query(op, func(rows Rows) error {
		var rid string
		if err := rows.Scan(&rid); err != nil {
			return err
		}
		r.Records = append(r.Records, rid)
		return nil
	}, `SELECT record_id FROM recovery_records WHERE recovery_id = ? ORDER BY position`, id)
	return r, err
}

// ListRecoveries returns the recovery requests in state ("" for all), newest first, without
// their record lists.
func (tx *Tx) ListRecoveries(state string) ([]store.Recovery, error) {
	const op = "list recoveries"
	q, args := `SELECT `+recoveryColumns+` FROM recoveries`, []any{}
	if state != "" {
		q, args = q+` WHERE state = ?`, append(args, state)
	}
	var out []store.Recovery
	err := tx.query(op, func(rows Rows) error {
		r, err := scanRecovery(rows.Scan)
		if err == nil {
			out = append(out, *r)
		}
		return err
	}, q+` ORDER BY created_at DESC, id`, args...)
	return out, err
}

// CloseRecovery moves an open request to state (consumed, cancelled or expired). A request that
// is not open gives [ErrConflict]: a consumed request can never be consumed again.
func (tx *Tx) CloseRecovery(id, state string, at time.Time) error {
	const op = "close recovery"
	if !oneOf(state, store.RecoveryConsumed, store.RecoveryCancelled, store.RecoveryExpired) {
		return invalid(op, "state %q", state)
	}
	n, err := tx.exec(op, `UPDATE recoveries SET state = ?, closed_at = ? WHERE id = ? AND state = 'open'`, state, orNow(at).UnixMicro(), id)
	if err != nil || n == 1 {
		return err
	}
	if _, err := tx.GetRecovery(id); err != nil {
		return err
	}
	return fmt.Errorf("store: %s: request %s is not open: %w", op, id, store.ErrConflict)
}

// ExpireRecoveries moves open requests whose expiry is at or before now to expired and returns
// them (their recovery keys are to be destroyed).
func (tx *Tx) ExpireRecoveries(now time.Time) ([]store.Recovery, error) {
	const op = "expire recoveries"
	var out []store.Recovery
	err := tx.query(op, func(rows Rows) error {
		r, err := scanRecovery(rows.Scan)
		if err == nil {
			out = append(out, *r)
		}
		return err
	}, `SELECT `+recoveryColumns+` FROM recoveries WHERE state = 'open' AND expires_at <= ?`, now.UnixMicro())
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		if err := tx.CloseRecovery(r.ID, store.RecoveryExpired, now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// InsertApproval stores a KRA's approval durably. A second approval by the same KRA for the same
// request gives [ErrConflict].
func (tx *Tx) InsertApproval(a store.Approval) error {
	const op = "insert approval"
	switch {
	case a.RecoveryID == "" || a.KRA == "" || a.SignerSerial == "":
		return invalid(op, "recovery id, kra and signer serial are required")
	case len(a.Shares) == 0 || len(a.Signature) == 0:
		return invalid(op, "shares and signature are required")
	}
	_, err := tx.exec(op, `INSERT INTO approvals (recovery_id, kra, signer_serial, shares, signature, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		a.RecoveryID, a.KRA, a.SignerSerial, a.Shares, a.Signature, orNow(a.CreatedAt).UnixMicro())
	return err
}

// ListApprovals returns a request's approvals, oldest first.
func (tx *Tx) ListApprovals(recoveryID string) ([]store.Approval, error) {
	const op = "list approvals"
	var out []store.Approval
	err := tx.query(op, func(rows Rows) error {
		var a store.Approval
		var created sql.NullInt64
		if err := rows.Scan(&a.RecoveryID, &a.KRA, &a.SignerSerial, &a.Shares, &a.Signature, &created); err != nil {
			return err
		}
		a.CreatedAt = tget(created)
		out = append(out, a)
		return nil
	}, `SELECT recovery_id, kra, signer_serial, shares, signature, created_at FROM approvals WHERE recovery_id = ? ORDER BY created_at, kra`, recoveryID)
	return out, err
}

// RecordsBeforeEpoch returns the active records sealed under an epoch older than epoch, oldest
// first, at most limit of them; with only other than 0, those of epoch only alone.
func (tx *Tx) RecordsBeforeEpoch(epoch, only uint32, limit int) ([]store.Record, error) {
	const op = "records before epoch"
	var out []store.Record
	err := tx.query(op, func(rows Rows) error {
		r, err := scanRecord(rows.Scan)
		if err == nil {
			out = append(out, *r)
		}
		return err
	}, `SELECT `+recordColumns+` FROM records WHERE state = 'active' AND epoch < ? AND (? = 0 OR epoch = ?) ORDER BY created_at, id LIMIT ?`,
		int64(epoch), int64(only), int64(only), max(limit, 0))
	return out, err
}

// ResealRecord replaces a record's sealed blob and epoch, provided it is still sealed under
// from (else [ErrConflict]).
func (tx *Tx) ResealRecord(id string, from, to uint32, blob []byte) error {
	const op = "reseal record"
	if len(blob) == 0 || to <= from {
		return invalid(op, "a new blob and a newer epoch are required")
	}
	n, err := tx.exec(op, `UPDATE records SET blob = ?, epoch = ? WHERE id = ? AND epoch = ? AND state = 'active'`, blob, to, id, from)
	if err != nil || n == 1 {
		return err
	}
	return fmt.Errorf("store: %s: record %s is not active under epoch %d: %w", op, id, from, store.ErrConflict)
}

// AddApprovalFailure records a refused approval by kra at at, for the KRAs' rate limit, and
// forgets kra's failures older than forgetBefore. The limit thus survives a restart.
func (tx *Tx) AddApprovalFailure(kra string, at, forgetBefore time.Time) error {
	const op = "add approval failure"
	if kra == "" {
		return invalid(op, "kra is required")
	}
	if _, err := tx.exec(op, `DELETE FROM approval_failures WHERE kra = ? AND at < ?`, kra, forgetBefore.UnixMicro()); err != nil {
		return err
	}
	_, err := tx.exec(op, `INSERT INTO approval_failures (kra, at) VALUES (?, ?)`, kra, orNow(at).UnixMicro())
	return err
}

// ApprovalFailures counts the refused approvals by kra at or after since.
func (tx *Tx) ApprovalFailures(kra string, since time.Time) (int, error) {
	var n int
	err := tx.queryRow("count approval failures", []any{&n}, `SELECT count(*) FROM approval_failures WHERE kra = ? AND at >= ?`, kra, since.UnixMicro())
	return n, err
}
