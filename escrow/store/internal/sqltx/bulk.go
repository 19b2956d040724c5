package sqltx

import (
	"github.com/keyarc/keyarc/escrow/store"

	"database/sql"
	"fmt"
	"time"
)

const jobColumns = `id, kind, template, submitted_by, state, input, secret_key, total, done, failed,
	created_at, started_at, finished_at`

func scanJob(scan func(...any) error) (*store.Job, error) {
	var (
		j                 store.Job
		cr, st, fin       sql.NullInt64
		total, done, fail int64
	)
	if err := scan(&j.ID, &j.Kind, &j.Template, &j.SubmittedBy, &j.State, &j.Input, &j.SecretKey,
		&total, &done, &fail, &cr, &st, &fin); err != nil {
		return nil, err
	}
	j.Total, j.Done, j.Failed = int(total), int(done), int(fail)
	j.CreatedAt, j.StartedAt, j.FinishedAt = tget(cr), tget(st), tget(fin)
	return &j, nil
}

// InsertJob stores a new job. ID, Kind, Template, SubmittedBy and Input are required; a
// duplicate ID gives [ErrConflict].
func (tx *Tx) InsertJob(j store.Job) error {
	const op = "insert job"
	if j.State == "" {
		j.State = store.JobQueued
	}
	switch {
	case j.ID == "" || j.Template == "" || j.SubmittedBy == "" || j.Input == "":
		return invalid(op, "id, template, submitted_by and input are required")
	case !oneOf(j.Kind, "enroll", "keygen", "import"):
		return invalid(op, "kind %q", j.Kind)
	case !oneOf(j.State, store.JobQueued, store.JobRunning, store.JobDone, store.JobCancelled):
		return invalid(op, "state %q", j.State)
	case j.Total < 0:
		return invalid(op, "negative total")
	}
	_, err := tx.exec(op, `INSERT INTO jobs (`+jobColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.Kind, j.Template, j.SubmittedBy, j.State, j.Input, nilIfEmpty(j.SecretKey), j.Total, j.Done, j.Failed,
		orNow(j.CreatedAt).UnixMicro(), tval(j.StartedAt), tval(j.FinishedAt))
	return err
}

// GetJob returns the job with the given ID, or [ErrNotFound].
func (tx *Tx) GetJob(id string) (*store.Job, error) {
	var j *store.Job
	err := tx.query("get job", func(r Rows) error {
		var err error
		j, err = scanJob(r.Scan)
		return err
	}, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if j == nil {
		return nil, fmt.Errorf("store: get job: %w", store.ErrNotFound)
	}
	return j, nil
}

// ListJobs returns the jobs in the given state ("" for all), oldest first.
func (tx *Tx) ListJobs(state string) ([]store.Job, error) {
	var out []store.Job
	err := tx.query("list jobs", func(r Rows) error {
		j, err := scanJob(r.Scan)
		if err == nil {
			out = append(out, *j)
		}
		return err
	}, `SELECT `+jobColumns+` FROM jobs WHERE ?1 = '' OR state = ?1 ORDER BY created_at, id`, state)
	return out, err
}

// StartJob moves a queued job to running (a running one stays running) and sets its start time
// if it has none.
func (tx *Tx) StartJob(id string, at time.Time) error {
	const op = "start job"
	n, err := tx.exec(op, `UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?)
		WHERE id = ? AND state IN ('queued', 'running')`, at.UnixMicro(), id)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("store: %s %s: not queued or running: %w", op, id, store.ErrConflict)
	}
	return nil
}

// FinishJob sets a job's final state and counters.
func (tx *Tx) FinishJob(id, state string, done, failed int, at time.Time) error {
	const op = "finish job"
	if !oneOf(state, store.JobDone, store.JobCancelled) {
		return invalid(op, "state %q", state)
	}
	n, err := tx.exec(op, `UPDATE jobs SET state = ?, done = ?, failed = ?, finished_at = ?
		WHERE id = ? AND state IN ('queued', 'running')`, state, done, failed, at.UnixMicro(), id)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("store: %s %s: not queued or running: %w", op, id, store.ErrConflict)
	}
	return nil
}

// ClearJobSecret forgets a job's wrapped secret key (once its passwords are released): the
// sealed passwords can no longer be opened. It reports whether there was a key to clear.
func (tx *Tx) ClearJobSecret(id string) (bool, error) {
	n, err := tx.exec("clear job secret", `UPDATE jobs SET secret_key = NULL WHERE id = ? AND secret_key IS NOT NULL`, id)
	if err != nil {
		return false, err
	}
	_, err = tx.exec("clear job secret", `UPDATE job_items SET password = NULL WHERE job_id = ?`, id)
	return n == 1, err
}

// JobCounts counts a job's items by state.
func (tx *Tx) JobCounts(id string) (done, failed, reserved int, err error) {
	err = tx.query("job counts", func(r Rows) error {
		var state string
		var n int
		if err := r.Scan(&state, &n); err != nil {
			return err
		}
		switch state {
		case store.ItemDone:
			done = n
		case store.ItemFailed:
			failed = n
		case store.ItemReserved:
			reserved = n
		}
		return nil
	}, `SELECT state, COUNT(*) FROM job_items WHERE job_id = ? GROUP BY state`, id)
	return done, failed, reserved, err
}

// ReserveJobItem records that item seq of a job is being issued with serial and record: it is
// the bulk half of an issuance's first transaction. An item already present (done, failed or
// reserved) gives [ErrConflict], which is what makes issuance idempotent by seq.
func (tx *Tx) ReserveJobItem(jobID string, seq int, serial, recordID string) error {
	const op = "reserve job item"
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return err
	}
	_, err = tx.exec(op, `INSERT INTO job_items (job_id, seq, state, serial, record_id) VALUES (?, ?, 'reserved', ?, ?)`,
		jobID, seq, s, sval(recordID))
	return err
}

// FinishJobItem marks a reserved item done with its results ([ErrConflict] if it is not
// reserved). Its certificate is the one stored under its serial, not a copy.
func (tx *Tx) FinishJobItem(jobID string, seq int, pkcs12, password []byte) error {
	const op = "finish job item"
	n, err := tx.exec(op, `UPDATE job_items SET state = 'done', pkcs12 = ?, password = ?
		WHERE job_id = ? AND seq = ? AND state = 'reserved'`, nilIfEmpty(pkcs12), nilIfEmpty(password), jobID, seq)
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("store: %s %s/%d: not reserved: %w", op, jobID, seq, store.ErrConflict)
	}
	return nil
}

// InsertJobItemDone records an item finished in one transaction (an import): [ErrConflict] if
// the item is already present.
func (tx *Tx) InsertJobItemDone(jobID string, seq int, serial, recordID string) error {
	return tx.InsertJobItemsDone(jobID, []store.DoneItem{{Seq: seq, Serial: serial, RecordID: recordID}})
}

// InsertJobItemsDone is [Tx.InsertJobItemDone] for many items of a job, with few statements.
func (tx *Tx) InsertJobItemsDone(jobID string, items []store.DoneItem) error {
	args := make([]any, 0, 5*len(items))
	for _, it := range items {
		s, err := store.NormalizeSerial(it.Serial)
		if err != nil {
			return err
		}
		args = append(args, jobID, it.Seq, "done", s, sval(it.RecordID))
	}
	return tx.insertRows("insert job item", `INSERT INTO job_items (job_id, seq, state, serial, record_id)`, 5, args)
}

// FailJobItem records that an item failed with a reason. A reserved item becomes failed; an
// item already done or failed is left as it is and gives [ErrConflict].
func (tx *Tx) FailJobItem(jobID string, seq int, reason string) error {
	const op = "fail job item"
	n, err := tx.exec(op, `INSERT INTO job_items (job_id, seq, state, error) VALUES (?, ?, 'failed', ?)
		ON CONFLICT (job_id, seq) DO UPDATE SET state = 'failed', error = excluded.error
		WHERE job_items.state = 'reserved'`, jobID, seq, reason)
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("store: %s %s/%d: already finished: %w", op, jobID, seq, store.ErrConflict)
	}
	return nil
}

// ReleaseReservedItems forgets the reservations of a job whose certificates were never issued
// (a crash between reservation and issuance; [Tx.SweepPending] has marked them failed), so
// that those items are issued again. Reservations whose certificate is still pending, issued
// (or since revoked) are kept: such an item is never issued twice. It returns the number
// released.
func (tx *Tx) ReleaseReservedItems(jobID string) (int, error) {
	n, err := tx.exec("release reserved items", `DELETE FROM job_items WHERE job_id = ? AND state = 'reserved'
		AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.serial = job_items.serial AND c.state IN ('pending', 'issued', 'revoked'))`, jobID)
	return int(n), err
}

// JobItemSeqs calls fn with the seq and state of every item of a job, in seq order.
func (tx *Tx) JobItemSeqs(jobID string, fn func(seq int, state string) error) error {
	return tx.query("job item seqs", func(r Rows) error {
		var seq int
		var state string
		if err := r.Scan(&seq, &state); err != nil {
			return err
		}
		return fn(seq, state)
	}, `SELECT seq, state FROM job_items WHERE job_id = ? ORDER BY seq`, jobID)
}

// JobItems calls fn with every item of a job whose seq is at least from, in seq order, at most
// limit of them (0: no limit).
func (tx *Tx) JobItems(jobID string, from, limit int, fn func(store.JobItem) error) error {
	q, args := jobItemsQuery, []any{jobID, from}
	if limit > 0 {
		q, args = jobItemsQuery+` LIMIT ?`, append(args, limit)
	}
	return tx.query("job items", func(r Rows) error {
		var (
			it                        store.JobItem
			serial, recordID, errText sql.NullString
		)
		if err := r.Scan(&it.JobID, &it.Seq, &it.State, &serial, &recordID, &errText, &it.Result, &it.PKCS12, &it.Password); err != nil {
			return err
		}
		it.Serial, it.RecordID, it.Error = sget(serial), sget(recordID), sget(errText)
		return fn(it)
	}, q, args...)
}

const jobItemsQuery = `SELECT i.job_id, i.seq, i.state, i.serial, i.record_id, i.error, c.der, i.pkcs12, i.password
	FROM job_items i LEFT JOIN certificates c ON i.state = 'done' AND c.serial = i.serial
	WHERE i.job_id = ? AND i.seq >= ? ORDER BY i.seq`

// AbandonReservedItems undoes the issuances of a job's reserved items whose certificate is
// still pending (their issuer gave up: a fault of the token or the storage, or a stop): each
// such certificate is marked failed and its record abandoned, so that [Tx.ReleaseReservedItems]
// then releases the item to be issued again. Call it only while no issuance of the job is in
// flight (between two passes of the job). It returns the number of certificates marked failed.
func (tx *Tx) AbandonReservedItems(jobID string) (int, error) {
	const op = "abandon reserved items"
	if _, err := tx.exec(op, `UPDATE records SET state = 'abandoned' WHERE state = 'pending' AND id IN (
		SELECT c.record_id FROM job_items i JOIN certificates c ON c.serial = i.serial
		WHERE i.job_id = ? AND i.state = 'reserved' AND c.state = 'pending')`, jobID); err != nil {
		return 0, err
	}
	n, err := tx.exec(op, `UPDATE certificates SET state = 'failed' WHERE state = 'pending' AND serial IN (
		SELECT serial FROM job_items WHERE job_id = ? AND state = 'reserved' AND serial IS NOT NULL)`, jobID)
	return int(n), err
}

// CompleteIssuedItems marks done the reserved items of a job whose certificate is issued with
// an active record: their issuance finished but the item's own update was lost (the two are
// written in one transaction, so only a storage that loses part of a commit leaves this). Such
// an item must never be issued again. It returns the number of items completed.
func (tx *Tx) CompleteIssuedItems(jobID string) (int, error) {
	n, err := tx.exec("complete issued items", `UPDATE job_items SET state = 'done' WHERE job_id = ? AND state = 'reserved'
		AND EXISTS (SELECT 1 FROM certificates c JOIN records r ON r.id = c.record_id
			WHERE c.serial = job_items.serial AND c.state IN ('issued', 'revoked') AND r.state = 'active')`, jobID)
	return int(n), err
}
