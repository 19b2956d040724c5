package postgres

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// writeTx is the Tx of a function on the writer: sqltx's, with the writes of a bulk job's
// items done without a savepoint of their own. Each of a job's enroll or keygen items is
// reserved and finished in the batch's transactions, and a savepoint per write (SAVEPOINT,
// the statement, RELEASE: a subtransaction on the server) cost more of the server's time
// than the row itself. These two writes cannot abort the transaction for the item's own
// fault, so they need none:
//
//   - the reservation inserts its row only if the job exists and the item has none
//     (INSERT ... SELECT ... WHERE EXISTS ... ON CONFLICT DO NOTHING): a row already there
//     is no error on the server, and no row inserted tells the caller which it was
//     ([store.ErrConflict], or [store.ErrNotFound] for an unknown job) with one read;
//   - the finish is an UPDATE whose values no constraint refuses (see [sqltx.BareExecer]).
//
// Only a fault of the server or the connection can fail them on the server, and that ends
// the function's writes anyway (see [pgQuerier.ExecBare]).
//
// It also remembers the hashes of the certificates the function stores (see
// [writeTx.CertificateHashes]).
type writeTx struct {
	*sqltx.Tx
	q    pgQuerier
	done bool // the function returned: every call fails with store.ErrTxDone
	// signed holds the hex SHA-256 of the DER of the certificates this function stored
	// issued or revoked, by serial (see [writeTx.CertificateHashes]).
	signed map[string]string
}

// end marks the Tx done once its function has returned.
func (tx *writeTx) end() {
	tx.done = true
	tx.Tx.End()
}

// The certificates' hashes. An issuance's audit entry records the SHA-256 of the certificate
// it names, read back from the store ([sqltx.Tx.CertificateHashes]) right after the
// certificate was stored, in the same function: a round trip per certificate, for bytes the
// function has just sent. The writer's Tx remembers the hashes of the certificates it stores
// issued or revoked, and answers from them when it knows every serial asked. The DER of such a
// certificate no statement changes (only a pending certificate gets its DER), and the memory
// lives as long as the function: what another function or node writes is not in it.

// SetCertificateIssued is [sqltx.Tx.SetCertificateIssued], remembering the certificate's hash.
func (tx *writeTx) SetCertificateIssued(serial string, der []byte, notBefore, notAfter time.Time) error {
	if err := tx.Tx.SetCertificateIssued(serial, der, notBefore, notAfter); err != nil {
		return err
	}
	tx.remember(serial, der)
	return nil
}

// InsertCertificate is [sqltx.Tx.InsertCertificate], remembering the hash of a certificate
// stored issued or revoked.
func (tx *writeTx) InsertCertificate(c store.Certificate) error {
	return tx.InsertCertificates([]store.Certificate{c})
}

// InsertCertificates is [sqltx.Tx.InsertCertificates], remembering the hashes of the
// certificates stored issued or revoked.
func (tx *writeTx) InsertCertificates(cs []store.Certificate) error {
	if err := tx.Tx.InsertCertificates(cs); err != nil {
		return err
	}
	for _, c := range cs {
		if c.State == store.StateIssued || c.State == store.StateRevoked {
			tx.remember(c.Serial, c.DER)
		}
	}
	return nil
}

// InsertCertificateClaiming is [sqltx.Tx.InsertCertificateClaiming], remembering the hash of
// a certificate stored issued or revoked.
func (tx *writeTx) InsertCertificateClaiming(c store.Certificate, now time.Time) error {
	if err := tx.Tx.InsertCertificateClaiming(c, now); err != nil {
		return err
	}
	if c.State == store.StateIssued || c.State == store.StateRevoked {
		tx.remember(c.Serial, c.DER)
	}
	return nil
}

func (tx *writeTx) remember(serial string, der []byte) {
	s, err := store.NormalizeSerial(serial)
	if err != nil || len(der) == 0 {
		return
	}
	if tx.signed == nil {
		tx.signed = make(map[string]string)
	}
	sum := sha256.Sum256(der)
	tx.signed[s] = hex.EncodeToString(sum[:])
}

// CertificateHashes is [sqltx.Tx.CertificateHashes], answered without a query when this
// function stored every certificate asked.
func (tx *writeTx) CertificateHashes(serials []string) ([]string, error) {
	if tx.done || len(tx.signed) == 0 {
		return tx.Tx.CertificateHashes(serials)
	}
	out := make([]string, len(serials))
	for i, serial := range serials {
		s, err := store.NormalizeSerial(serial)
		h, ok := tx.signed[s]
		if err != nil || !ok {
			return tx.Tx.CertificateHashes(serials)
		}
		out[i] = h
	}
	return out, nil
}

// issueManyQuery stores the signed certificates of many pending ones (?1 their serials, ?2 to
// ?5 their DERs, validities and key identities) and activates their records (?6), all or none:
// the counts of the certificates pending (?7 of them) and of the records pending or active (?8)
// are checked first, in the same statement, and nothing is written unless both are whole. The
// certificates' rows of ocsp_due are stored with them (dueUpsert). Its count is the
// certificates stored. No constraint can refuse it (see execBare): only a pending certificate
// gets its DER, as SetCertificateIssued does it.
var issueManyQuery = `WITH u AS (SELECT * FROM unnest(CAST(?1 AS text[]), CAST(?2 AS bytea[]), CAST(?3 AS bigint[]),
		CAST(?4 AS bigint[]), CAST(?5 AS text[])) AS u(serial, der, not_before, not_after, key_id)),
	ok AS (SELECT (SELECT count(*) FROM certificates WHERE serial = ANY(CAST(?1 AS text[])) AND state = 'pending') = ?7
		AND (SELECT count(*) FROM records WHERE id = ANY(CAST(?6 AS text[])) AND state IN ('pending', 'active')) = ?8 AS whole),
	r AS (UPDATE records SET state = 'active' FROM ok
		WHERE ok.whole AND records.id = ANY(CAST(?6 AS text[])) AND records.state = 'pending'),
	c AS (UPDATE certificates SET state = 'issued', der = u.der, not_before = u.not_before, not_after = u.not_after,
			key_id = u.key_id
		FROM u, ok
		WHERE ok.whole AND certificates.serial = ANY(CAST(?1 AS text[])) AND certificates.serial = u.serial
			AND certificates.state = 'pending'
		RETURNING certificates.serial, certificates.state, certificates.template, certificates.revocation_reason,
			certificates.not_after)` +
	sqltx.DueUpsert

// SetCertificatesIssued stores the signed certificates of pending ones and activates their
// escrow records, as [sqltx.Tx.SetCertificateIssued] and [sqltx.Tx.ActivateRecord] do for
// each (ders[i], notBefores[i] and notAfters[i] are serials[i]'s, recordIDs[i] its record),
// all in one statement and one round trip, without a savepoint: all or none. A certificate
// that is not pending (or is listed twice), or a record that is neither pending nor active
// (or unknown, or listed twice), gives [store.ErrConflict], and then nothing is stored.
// escrow/issue finishes a batch of issuances so when the store offers it.
func (tx *writeTx) SetCertificatesIssued(serials []string, ders [][]byte, notBefores, notAfters []time.Time, recordIDs []string) error {
	const op = "set certificates issued"
	if tx.done {
		return fmt.Errorf("store: %s: %w", op, store.ErrTxDone)
	}
	n := len(serials)
	if len(ders) != n || len(notBefores) != n || len(notAfters) != n || len(recordIDs) != n {
		return fmt.Errorf("store: %s: %d serials, %d DERs, %d and %d validity dates, %d records: %w", op, n, len(ders),
			len(notBefores), len(notAfters), len(recordIDs), store.ErrInvalid)
	}
	if n == 0 {
		return nil
	}
	norm := make([]string, n)
	nbs, nas := make([]int64, n), make([]int64, n)
	keyIDs := make([]*string, n)
	for i, serial := range serials {
		s, err := store.NormalizeSerial(serial)
		if err != nil {
			return err
		}
		if len(ders[i]) == 0 || notBefores[i].IsZero() || notAfters[i].IsZero() || recordIDs[i] == "" {
			return fmt.Errorf("store: %s %s: der, notBefore, notAfter and the record are required: %w", op, s, store.ErrInvalid)
		}
		if err := checkArgs([]any{recordIDs[i]}); err != nil {
			return fmt.Errorf("store: %s: %w", op, err)
		}
		norm[i], nbs[i], nas[i] = s, notBefores[i].UnixMicro(), notAfters[i].UnixMicro()
		if id, err := store.KeyID(ders[i]); err == nil && id != "" {
			keyIDs[i] = &id
		}
	}
	res, err := tx.q.ExecBare(context.Background(), issueManyQuery, norm, ders, nbs, nas, keyIDs, recordIDs, int64(n), int64(n))
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, mapErr(err))
	}
	if got, _ := res.RowsAffected(); got != int64(n) {
		return fmt.Errorf("store: %s: not every certificate is pending, or not every record pending or active: %w", op, store.ErrConflict)
	}
	for i, s := range norm {
		tx.remember(s, ders[i])
	}
	return nil
}

// reserveItemQuery inserts a reserved item if its job exists and it has no row yet. (The
// casts give the values their types: in a SELECT list, PostgreSQL would take them for text.)
const reserveItemQuery = `INSERT INTO job_items (job_id, seq, state, serial, record_id)
	SELECT CAST(?1 AS text), CAST(?2 AS bigint), 'reserved', CAST(?3 AS text), CAST(?4 AS text)
	WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)
	ON CONFLICT (job_id, seq) DO NOTHING`

// ReserveJobItem is [sqltx.Tx.ReserveJobItem] without a savepoint (see [writeTx]): an item
// already present (done, failed or reserved) gives [store.ErrConflict], an unknown job
// [store.ErrNotFound].
func (tx *writeTx) ReserveJobItem(jobID string, seq int, serial, recordID string) error {
	const op = "reserve job item"
	if tx.done {
		return fmt.Errorf("store: %s: %w", op, store.ErrTxDone)
	}
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return err
	}
	var rec any
	if recordID != "" {
		rec = recordID
	}
	res, err := tx.q.ExecBare(context.Background(), reserveItemQuery, jobID, int64(seq), s, rec)
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, mapErr(err))
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return nil
	}
	var job bool
	if err := tx.scanOne(op, &job, `SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?)`, jobID); err != nil {
		return err
	}
	if !job {
		return fmt.Errorf("store: %s %s/%d: no such job: %w", op, jobID, seq, store.ErrNotFound)
	}
	return fmt.Errorf("store: %s %s/%d: the item is already present: %w", op, jobID, seq, store.ErrConflict)
}

// reserveItemsQuery reserves many items of one job in one statement, whatever their number:
// the values go as three arrays.
const reserveItemsQuery = `INSERT INTO job_items (job_id, seq, state, serial, record_id)
	SELECT CAST(?1 AS text), u.seq, 'reserved', u.serial, NULLIF(u.record_id, '')
	FROM unnest(CAST(?2 AS bigint[]), CAST(?3 AS text[]), CAST(?4 AS text[])) AS u(seq, serial, record_id)`

// ReserveJobItems reserves items of job jobID (their Seq, Serial and RecordID) as
// [sqltx.Tx.ReserveJobItem] does each, all in one statement and one round trip: all or none.
// An item already present gives [store.ErrConflict] (an item listed twice too), an unknown job
// [store.ErrNotFound], and then none is reserved. escrow/bulk reserves a batch's items so
// when the store offers it.
func (tx *writeTx) ReserveJobItems(jobID string, items []store.DoneItem) error {
	const op = "reserve job items"
	if tx.done {
		return fmt.Errorf("store: %s: %w", op, store.ErrTxDone)
	}
	if len(items) == 0 {
		return nil
	}
	seqs := make([]int64, len(items))
	serials := make([]string, len(items))
	records := make([]string, len(items))
	for i, it := range items {
		s, err := store.NormalizeSerial(it.Serial)
		if err != nil {
			return err
		}
		if err := checkArgs([]any{it.RecordID}); err != nil {
			return fmt.Errorf("store: %s: %w", op, err)
		}
		seqs[i], serials[i], records[i] = int64(it.Seq), s, it.RecordID
	}
	// A savepoint of its own, one for the whole batch: a conflict undoes every row.
	if _, err := tx.q.ExecContext(context.Background(), reserveItemsQuery, jobID, seqs, serials, records); err != nil {
		return fmt.Errorf("store: %s: %w", op, mapErr(err))
	}
	return nil
}

// finishItemsQuery marks many reserved items of one job done with their results, all or
// none: the count of those reserved is checked in the same statement. Both scans seek the
// primary key with the list of seqs (seq = ANY), whatever the job's size.
const finishItemsQuery = `UPDATE job_items SET state = 'done', pkcs12 = u.pkcs12, password = u.password
	FROM unnest(CAST(?2 AS bigint[]), CAST(?3 AS bytea[]), CAST(?4 AS bytea[])) AS u(seq, pkcs12, password)
	WHERE job_items.job_id = ?1 AND job_items.seq = ANY(CAST(?2 AS bigint[])) AND job_items.seq = u.seq
		AND job_items.state = 'reserved'
		AND (SELECT count(*) FROM job_items i WHERE i.job_id = ?1 AND i.seq = ANY(CAST(?2 AS bigint[])) AND i.state = 'reserved') = ?5`

// FinishJobItems marks items of job jobID done with their results, as
// [sqltx.Tx.FinishJobItem] does each (pkcs12s[i] and passwords[i] are item seqs[i]'s, nil or
// empty for none), all in one statement and one round trip, without a savepoint: all or none.
// An item that is not reserved (or listed twice) gives [store.ErrConflict], and then none is
// finished. escrow/bulk finishes a batch's items so when the store offers it.
func (tx *writeTx) FinishJobItems(jobID string, seqs []int, pkcs12s, passwords [][]byte) error {
	const op = "finish job items"
	if tx.done {
		return fmt.Errorf("store: %s: %w", op, store.ErrTxDone)
	}
	if len(pkcs12s) != len(seqs) || len(passwords) != len(seqs) {
		return fmt.Errorf("store: %s: %d items, %d PKCS#12 and %d passwords: %w", op, len(seqs), len(pkcs12s), len(passwords), store.ErrInvalid)
	}
	if len(seqs) == 0 {
		return nil
	}
	seen := make(map[int]bool, len(seqs))
	s64 := make([]int64, len(seqs))
	p12s := make([][]byte, len(seqs))
	pws := make([][]byte, len(seqs))
	for i, seq := range seqs {
		if seen[seq] {
			return fmt.Errorf("store: %s %s/%d: listed twice: %w", op, jobID, seq, store.ErrConflict)
		}
		seen[seq] = true
		s64[i] = int64(seq)
		if len(pkcs12s[i]) > 0 {
			p12s[i] = pkcs12s[i]
		}
		if len(passwords[i]) > 0 {
			pws[i] = passwords[i]
		}
	}
	res, err := tx.q.ExecBare(context.Background(), finishItemsQuery, jobID, s64, p12s, pws, int64(len(seqs)))
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, mapErr(err))
	}
	if n, _ := res.RowsAffected(); n != int64(len(seqs)) {
		return fmt.Errorf("store: %s %s: not every item is reserved: %w", op, jobID, store.ErrConflict)
	}
	return nil
}

// FinishJobItem is [sqltx.Tx.FinishJobItem] without a savepoint (see [writeTx]): an item
// that is not reserved gives [store.ErrConflict].
func (tx *writeTx) FinishJobItem(jobID string, seq int, pkcs12, password []byte) error {
	const op = "finish job item"
	if tx.done {
		return fmt.Errorf("store: %s: %w", op, store.ErrTxDone)
	}
	res, err := tx.q.ExecBare(context.Background(), `UPDATE job_items SET state = 'done', pkcs12 = ?, password = ?
		WHERE job_id = ? AND seq = ? AND state = 'reserved'`, bytesOrNil(pkcs12), bytesOrNil(password), jobID, int64(seq))
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, mapErr(err))
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("store: %s %s/%d: not reserved: %w", op, jobID, seq, store.ErrConflict)
	}
	return nil
}

// scanOne reads the one value of a one-row query into dest.
func (tx *writeTx) scanOne(op string, dest any, query string, args ...any) error {
	rows, err := tx.q.QueryContext(context.Background(), query, args...)
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return fmt.Errorf("store: %s: %w", op, errors.Join(rows.Err(), store.ErrNotFound))
	}
	if err := rows.Scan(dest); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	return rows.Close()
}

func bytesOrNil(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}
