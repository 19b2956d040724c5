package sqltx

import (
	"github.com/keyarc/keyarc/escrow/store"

	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ---------------------------------------------------------------------------
// Revocations

// RevokeCertificate moves an issued certificate to revoked with reason (the S/MIME BR set,
// store.ValidReason) at the given time: [store.ErrConflict] if it is not issued or another CA
// issued it ([store.TemplateImport]), [store.ErrNotFound] if unknown, [store.ErrInvalid] for
// another reason or a zero time.
func (tx *Tx) RevokeCertificate(serial string, reason int, at time.Time) error {
	const op = "revoke certificate"
	switch {
	case at.IsZero():
		return invalid(op, "zero time")
	case !store.ValidReason(reason):
		return invalid(op, "reason %d is not one of the S/MIME BR reasons", reason)
	}
	_, err := tx.certTransition(op, serial, store.StateIssued, true, `state = 'revoked', revoked_at = ?, revocation_reason = ?`,
		at.UnixMicro(), reason)
	return err
}

// SetKeyCompromise changes the reason of a revoked certificate to keyCompromise, keeping its
// revocation date: [store.ErrConflict] if it is not revoked or is revoked for keyCompromise
// already, [store.ErrNotFound] if unknown.
func (tx *Tx) SetKeyCompromise(serial string) error {
	const op = "set key compromise"
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return err
	}
	q := `UPDATE certificates SET revocation_reason = ?1 WHERE serial = ?2 AND state = 'revoked' AND revocation_reason != ?1`
	if tx.d.KeepsDue {
		q = wrapped(`WITH c AS (`, q, ` RETURNING serial, state, template, revocation_reason, not_after)`+dueUpsert)
	}
	n, err := tx.execBare(op, q, store.ReasonKeyCompromise, s)
	if err != nil || n == 1 {
		return err
	}
	var state string
	var reason int
	if err := tx.queryRow(op, []any{&state, &reason}, `SELECT state, revocation_reason FROM certificates WHERE serial = ?`, s); err != nil {
		return err
	}
	if state != store.StateRevoked {
		return fmt.Errorf("store: %s: certificate %s is %s, not revoked: %w", op, s, state, store.ErrConflict)
	}
	return fmt.Errorf("store: %s: certificate %s is revoked for keyCompromise already: %w", op, s, store.ErrConflict)
}

// byKey and byKeyLagging are CertificatesByKey's statement: through the partial index
// certificates_key (PostgreSQL), or through certificate_keys and the certificates above the
// mark, which IndexNewCertificates has not put there yet (SQLite).
const (
	byKey        = `SELECT ` + certColumns + ` FROM certificates WHERE key_id = ?1 AND key_id IS NOT NULL ORDER BY created_at, serial`
	byKeyLagging = `SELECT ` + certColumns + ` FROM certificates WHERE serial IN (
		SELECT serial FROM certificate_keys WHERE key_id = ?1
		UNION SELECT serial FROM certificates NOT INDEXED WHERE rowid > (SELECT pos FROM ocsp_mark) AND key_id = ?1)
	ORDER BY created_at, serial`
)

// CertificatesByKey returns the certificates whose DER holds the key of identity keyID,
// oldest first, through the index of certificates by key (byKey).
func (tx *Tx) CertificatesByKey(keyID string) ([]store.Certificate, error) {
	const op = "certificates by key"
	if !store.ValidKeyID(keyID) {
		return nil, invalid(op, "key id %q is not 64 lower-case hex digits", keyID)
	}
	var out []store.Certificate
	err := tx.query(op, func(rows Rows) error {
		c, err := scanCertificate(rows.Scan)
		if err == nil {
			out = append(out, *c)
		}
		return err
	}, tx.pickLagging(byKeyLagging, byKey), keyID)
	return out, err
}

// CompromisedKeys returns, for each of keyIDs held by a certificate revoked for
// keyCompromise, the serial of the oldest one, through a partial index (certificates_key on
// PostgreSQL, certificates_compromised on SQLite),
// statusesPerQuery keys to a statement (then halves, as CertificateStatuses).
func (tx *Tx) CompromisedKeys(keyIDs []string) (map[string]string, error) {
	const op = "compromised keys"
	if err := tx.check(false); err != nil {
		return nil, fmt.Errorf("store: %s: %w", op, err)
	}
	var args []any
	seen := make(map[string]bool, len(keyIDs))
	for _, id := range keyIDs {
		if !store.ValidKeyID(id) {
			return nil, invalid(op, "key id %q is not 64 lower-case hex digits", id)
		}
		if !seen[id] {
			seen[id] = true
			args = append(args, id)
		}
	}
	out := map[string]string{}
	for n := len(args); n > 0; {
		k := statusesPerQuery
		for k > n {
			k /= 2
		}
		err := tx.query(op, func(rows Rows) error {
			var id, serial string
			if err := rows.Scan(&id, &serial); err != nil {
				return err
			}
			if _, ok := out[id]; !ok {
				out[id] = serial
			}
			return nil
		}, compromisedQuery(k), args[:k]...)
		if err != nil {
			return nil, err
		}
		args, n = args[k:], n-k
	}
	return out, nil
}

var compromisedQueries sync.Map // int → string

// compromisedQuery is the statement of CompromisedKeys for n key identities: the oldest
// certificate of each first.
func compromisedQuery(n int) string {
	if q, ok := compromisedQueries.Load(n); ok {
		return q.(string)
	}
	q := `SELECT key_id, serial FROM certificates
		WHERE key_id IN (?` + strings.Repeat(", ?", n-1) + `) AND key_id IS NOT NULL
		AND state = 'revoked' AND revocation_reason = ` + strconv.Itoa(store.ReasonKeyCompromise) + `
		ORDER BY key_id, created_at, serial`
	compromisedQueries.Store(n, q)
	return q
}

// errStop carries fn's error out of tx.query unwrapped.
type errStop struct{ err error }

func (e errStop) Error() string { return e.err.Error() }

// revokedQuery reads the CRL's entries from the covering partial index certificates_revoked,
// in its order; revokedHinted names the index for SQLite's planner.
const (
	revokedQuery  = `SELECT serial, not_after, revoked_at, revocation_reason FROM certificates` + revokedWhere
	revokedHinted = `SELECT serial, not_after, revoked_at, revocation_reason FROM certificates INDEXED BY certificates_revoked` +
		revokedWhere
	revokedWhere = `
	WHERE state = 'revoked' AND (not_after IS NULL OR not_after > ?) ORDER BY serial`
)

// RevokedCertificates streams the revoked certificates not expired at now, in serial order,
// from the covering partial index certificates_revoked: one row at a time, never the list.
func (tx *Tx) RevokedCertificates(now time.Time, fn func(store.CertStatus) error) error {
	const op = "revoked certificates"
	if now.IsZero() {
		return invalid(op, "zero time")
	}
	if fn == nil {
		return invalid(op, "nil function")
	}
	var (
		st       = store.CertStatus{Revoked: true}
		na, rev  sql.NullInt64
		stopWith error
	)
	err := tx.query(op, func(rows Rows) error {
		if err := rows.Scan(&st.Serial, &na, &rev, &st.Reason); err != nil {
			return err
		}
		st.NotAfter, st.RevokedAt = tget(na), tget(rev)
		if err := fn(st); err != nil {
			stopWith = err
			return errStop{err}
		}
		return nil
	}, tx.pick(revokedHinted, revokedQuery), now.UnixMicro())
	if stopWith != nil {
		var stop errStop
		if errors.As(err, &stop) {
			return stopWith
		}
	}
	return err
}

// ---------------------------------------------------------------------------
// CRLs

// InsertCRL stores a signed CRL whose number is above every one stored before, and deletes
// the CRLs older than the newest store.CRLsKept.
func (tx *Tx) InsertCRL(c store.CRL) error {
	const op = "insert crl"
	switch {
	case c.Number < 1:
		return invalid(op, "number %d", c.Number)
	case len(c.DER) == 0:
		return invalid(op, "empty der")
	case c.ThisUpdate.IsZero() || !c.NextUpdate.After(c.ThisUpdate):
		return invalid(op, "nextUpdate %v not after thisUpdate %v", c.NextUpdate, c.ThisUpdate)
	}
	if err := tx.check(true); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	var last int64
	if err := tx.queryRow(op, []any{&last}, `SELECT coalesce(max(number), 0) FROM crls`); err != nil {
		return err
	}
	if c.Number <= last {
		return fmt.Errorf("store: %s: CRL number %d is not above the last one, %d: %w", op, c.Number, last, store.ErrConflict)
	}
	if _, err := tx.exec(op, `INSERT INTO crls (number, this_update, next_update, der, created_at) VALUES (?, ?, ?, ?, ?)`,
		c.Number, c.ThisUpdate.UnixMicro(), c.NextUpdate.UnixMicro(), c.DER, orNow(c.CreatedAt).UnixMicro()); err != nil {
		return err
	}
	_, err := tx.exec(op, `DELETE FROM crls WHERE number <= ?`, c.Number-store.CRLsKept)
	return err
}

// LatestRevocation returns the newest revocation date, the zero time when none is revoked.
func (tx *Tx) LatestRevocation() (time.Time, error) {
	var at sql.NullInt64
	if err := tx.queryRow("latest revocation", []any{&at},
		`SELECT MAX(revoked_at) FROM certificates WHERE state = 'revoked'`); err != nil {
		return time.Time{}, err
	}
	return tget(at), nil
}

// LatestCRL returns the CRL with the highest number, or [store.ErrNotFound].
func (tx *Tx) LatestCRL() (*store.CRL, error) {
	var (
		c                     store.CRL
		this, next, createdAt sql.NullInt64
	)
	if err := tx.queryRow("latest crl", []any{&c.Number, &this, &next, &c.DER, &createdAt},
		`SELECT number, this_update, next_update, der, created_at FROM crls ORDER BY number DESC LIMIT 1`); err != nil {
		return nil, err
	}
	c.ThisUpdate, c.NextUpdate, c.CreatedAt = tget(this), tget(next), tget(createdAt)
	return &c, nil
}

// ---------------------------------------------------------------------------
// OCSP responses

// ocspCurrent(r) is true when response r has the current status of certificate c: issued and
// good, or revoked with the reason stored.
func ocspCurrent(r string) string {
	return `(c.state = 'issued' AND NOT ` + r + `.revoked OR c.state = 'revoked' AND ` + r + `.revoked AND c.revocation_reason = ` + r + `.reason)`
}

// ocspReplaces is the condition on which a response (excluded) replaces the stored one: it
// has the certificate's current status and the stored one has not, or both have it or
// neither does and it is not older. The status comes before the clock: a response signed
// with a clock ahead (another node's, or this one's before it was stepped back) must neither
// keep a revocation's response out nor be brought back over it by a slow signer. One lookup
// of the certificate per response replaced.
var ocspReplaces = `(SELECT CASE WHEN ` + ocspCurrent("excluded") + ` <> ` + ocspCurrent("ocsp_responses") + ` THEN ` +
	ocspCurrent("excluded") + ` ELSE excluded.this_update >= ocsp_responses.this_update END
	FROM certificates c WHERE c.serial = excluded.serial)`

// ocspCurrentReplaces is ocspReplaces for a response known to have its certificate's current
// status (the writer looked the certificate up, under its lock): the stored one has that
// status too exactly when it reports the same (revoked, reason), so no lookup is needed.
const ocspCurrentReplaces = `(ocsp_responses.revoked <> excluded.revoked OR ocsp_responses.reason <> excluded.reason
	OR excluded.this_update >= ocsp_responses.this_update)`

// ocspUpsert ends the INSERT of responses into ocsp_responses: each replaces the stored one
// of its serial when replaces holds.
func ocspUpsert(k int, replaces string) string {
	return wrapped(``, multiRowInsert(`INSERT INTO ocsp_responses (serial, der, this_update, next_update, revoked, reason, updated_at)`, ocspWidth, k),
		` ON CONFLICT (serial) DO UPDATE SET der = excluded.der, this_update = excluded.this_update,
		next_update = excluded.next_update, revoked = excluded.revoked, reason = excluded.reason, updated_at = excluded.updated_at
		WHERE `+replaces)
}

// ocspWidth is the number of values of a response in ocspUpsert.
const ocspWidth = 7

// dueSigned(k) moves the rows of ocsp_due of k responses of the current status just upserted,
// all with the thisUpdate of the first argument (the k serials follow), to that thisUpdate,
// unless a row holds a later one: the stored response was then a newer one of the current
// status, which kept the new one out. Otherwise the row held the smallest integer (no stored
// response of the current status) or the older thisUpdate of the response replaced. A
// response of another status leaves the row as it was: it replaces only a stored one of
// another status too, whose row is due at once.
func dueSigned(k int) string {
	return wrapped(`UPDATE ocsp_due SET signed = max(signed, ?) WHERE serial IN (?`, strings.Repeat(`, ?`, k-1), `)`)
}

// UpsertOCSPResponses stores pre-signed responses of issued or revoked certificates, each
// replacing its serial's unless the stored one has a later thisUpdate or has the
// certificate's current status when the new one has not (ocspReplaces). The rows of ocsp_due
// of the responses stored move in the same statement on PostgreSQL ([Dialect.KeepsDue]); on
// SQLite, whose writer holds the database's lock from the certificates' lookup on, the
// responses of the current status are told apart from the others here, are stored with
// ocspCurrentReplaces and move their rows with dueSigned, without looking their certificates
// up twice more. The rows of the certificates expired at the earliest thisUpdate stored are
// deleted from ocsp_due, through ocsp_due_expiry, so that they stop weighing on OCSPDue: time
// only moves forward for the due index.
func (tx *Tx) UpsertOCSPResponses(rs []store.OCSPResponse) error {
	const op = "upsert ocsp responses"
	if err := tx.check(true); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	serials := make([]any, 0, len(rs))
	args := make([]any, 0, len(rs)*ocspWidth)
	now := time.Now().UnixMicro()
	for _, r := range rs {
		s, err := store.NormalizeSerial(r.Serial)
		if err != nil {
			return err
		}
		switch {
		case len(r.DER) == 0:
			return invalid(op, "%s: empty der", s)
		case r.ThisUpdate.IsZero() || !r.NextUpdate.After(r.ThisUpdate):
			return invalid(op, "%s: nextUpdate %v not after thisUpdate %v", s, r.NextUpdate, r.ThisUpdate)
		case !store.ValidStoredReason(r.Reason):
			return invalid(op, "%s: reason %d", s, r.Reason)
		case !r.Revoked && r.Reason != 0:
			return invalid(op, "%s: a reason in a good response", s)
		}
		serials = append(serials, s)
		args = append(args, s, r.DER, r.ThisUpdate.UnixMicro(), r.NextUpdate.UnixMicro(), r.Revoked, r.Reason, now)
	}
	status, err := tx.issuedStatus(op, serials)
	if err != nil {
		return err
	}
	if len(rs) > 0 {
		earliest := rs[0].ThisUpdate
		for _, r := range rs[1:] {
			if r.ThisUpdate.Before(earliest) {
				earliest = r.ThisUpdate
			}
		}
		if _, err := tx.execBare(op, `DELETE FROM ocsp_due WHERE not_after IS NOT NULL AND not_after <= ?`, earliest.UnixMicro()); err != nil {
			return err
		}
	}
	if tx.d.KeepsDue {
		// The responses stored (not those a newer one kept out) move their rows of ocsp_due,
		// in the same statement.
		return tx.upsertResponses(op, args, func(k int) string {
			return wrapped(`WITH o AS (`, ocspUpsert(k, ocspReplaces), ` RETURNING serial, this_update, revoked, reason)
			UPDATE ocsp_due d SET signed = CASE WHEN c.state = 'revoked' AND o.revoked AND c.revocation_reason = o.reason
				OR c.state = 'issued' AND NOT o.revoked THEN o.this_update ELSE `+dueMin+` END
			FROM o JOIN certificates c ON c.serial = o.serial WHERE d.serial = o.serial`)
		})
	}
	current := make([]any, 0, len(args))
	var other []any
	// The due rows of the current ones move one statement per thisUpdate (a pass signs its
	// responses with one) and 64 serials; max makes a serial given twice end at the later.
	bySigned := make(map[int64][]any)
	for i, r := range rs {
		row := args[i*ocspWidth : (i+1)*ocspWidth]
		if !status[serials[i].(string)].has(r.Revoked, r.Reason) {
			other = append(other, row...)
			continue
		}
		current = append(current, row...)
		t := r.ThisUpdate.UnixMicro()
		bySigned[t] = append(bySigned[t], serials[i])
	}
	if err := tx.upsertResponses(op, current, func(k int) string { return ocspUpsert(k, ocspCurrentReplaces) }); err != nil {
		return err
	}
	for t, serials := range bySigned {
		for len(serials) > 0 {
			k := 2 * rowsPerInsert
			for k > len(serials) {
				k /= 2
			}
			if _, err := tx.execBare(op, dueSigned(k), append([]any{t}, serials[:k]...)...); err != nil {
				return err
			}
			serials = serials[k:]
		}
	}
	return tx.upsertResponses(op, other, func(k int) string { return ocspUpsert(k, ocspReplaces) })
}

// upsertResponses runs the statements query(k) that store the responses of args, k of them
// at a time (rowsPerInsert or fewer, as insertRows does).
func (tx *Tx) upsertResponses(op string, args []any, query func(k int) string) error {
	for len(args) > 0 {
		k := rowsPerInsert
		for k > len(args)/ocspWidth {
			k /= 2
		}
		// issuedStatus found every serial (its certificate is there, under the writer's lock)
		// and the values pass the table's checks: see execBare.
		if _, err := tx.execBare(op, query(k), args[:k*ocspWidth]...); err != nil {
			return err
		}
		args = args[k*ocspWidth:]
	}
	return nil
}

// certStatus is the status of an issued or revoked certificate: its state and its
// revocation reason.
type certStatus struct {
	state  string
	reason int
}

// has tells whether a response reporting revoked and reason has status st.
func (st certStatus) has(revoked bool, reason int) bool {
	if st.state == store.StateRevoked {
		return revoked && reason == st.reason
	}
	return !revoked
}

// issuedStatus returns the status of the certificates of serials, refusing serials that are
// unknown (ErrNotFound) or were never issued (ErrNotIssued and ErrConflict). On SQLite a row of
// ocsp_due tells it first: only certificates issued or revoked, and not imported, have one,
// and it holds their status (migration 22); the others (not indexed yet, expired, or to be
// refused) are looked up in certificates.
func (tx *Tx) issuedStatus(op string, serials []any) (map[string]certStatus, error) {
	status := make(map[string]certStatus, len(serials))
	if !tx.d.KeepsDue {
		err := tx.queryIn(op, `SELECT serial, revoked, reason FROM ocsp_due WHERE serial IN `, serials, func(rows Rows) error {
			var (
				s       string
				revoked bool
				st      certStatus
			)
			err := rows.Scan(&s, &revoked, &st.reason)
			st.state = store.StateIssued
			if revoked {
				st.state = store.StateRevoked
			}
			status[s] = st
			return err
		})
		if err != nil {
			return nil, err
		}
		var rest []any
		for _, v := range serials {
			if _, ok := status[v.(string)]; !ok {
				rest = append(rest, v)
			}
		}
		serials = rest
	}
	foreign := make(map[string]bool)
	err := tx.queryIn(op, `SELECT serial, state, template, revocation_reason FROM certificates WHERE serial IN `, serials, func(rows Rows) error {
		var (
			s, template string
			st          certStatus
		)
		err := rows.Scan(&s, &st.state, &template, &st.reason)
		status[s], foreign[s] = st, template == store.TemplateImport
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, v := range serials {
		s := v.(string)
		switch st := status[s].state; {
		case st == "":
			return nil, fmt.Errorf("store: %s: certificate %s: %w", op, s, store.ErrNotFound)
		case st == store.StatePending || st == store.StateFailed:
			return nil, fmt.Errorf("store: %s: certificate %s is %s: %w: %w", op, s, st, store.ErrNotIssued, store.ErrConflict)
		case foreign[s]:
			return nil, fmt.Errorf("store: %s: certificate %s was issued by another CA (imported): %w: %w", op, s, store.ErrNotIssued, store.ErrConflict)
		}
	}
	return status, nil
}

// queryIn runs head followed by an IN list of args, rowsPerInsert of them to a statement,
// and scans every row.
func (tx *Tx) queryIn(op, head string, args []any, scan func(Rows) error) error {
	for len(args) > 0 {
		part := args[:min(len(args), rowsPerInsert)]
		args = args[len(part):]
		if err := tx.query(op, scan, head+`(?`+strings.Repeat(", ?", len(part)-1)+`)`, part...); err != nil {
			return err
		}
	}
	return nil
}

// GetOCSPResponse returns the stored response of serial, telling apart a serial never
// reserved (ErrNotFound), one reserved but never issued (ErrNotIssued and ErrNotFound) and an
// issued one without a response yet (ErrNoResponse).
func (tx *Tx) GetOCSPResponse(serial string) (*store.OCSPResponse, error) {
	const op = "get ocsp response"
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	var (
		r               store.OCSPResponse
		state, template string
		der             []byte
		this, next, upd sql.NullInt64
		revoked         sql.NullBool // SQLite's integer 0 or 1, PostgreSQL's boolean
		reason          sql.NullInt64
	)
	if err := tx.queryRow(op, []any{&state, &template, &der, &this, &next, &revoked, &reason, &upd},
		`SELECT c.state, c.template, o.der, o.this_update, o.next_update, o.revoked, o.reason, o.updated_at
		FROM certificates c LEFT JOIN ocsp_responses o ON o.serial = c.serial WHERE c.serial = ?`, s); err != nil {
		return nil, err
	}
	switch {
	case state == store.StatePending || state == store.StateFailed:
		return nil, fmt.Errorf("store: %s: certificate %s is %s: %w: %w", op, s, state, store.ErrNotIssued, store.ErrNotFound)
	case template == store.TemplateImport:
		// Another CA's certificate, archived here with its key: this CA never issued it.
		return nil, fmt.Errorf("store: %s: certificate %s was issued by another CA (imported): %w: %w", op, s, store.ErrNotIssued, store.ErrNotFound)
	case der == nil:
		return nil, fmt.Errorf("store: %s: certificate %s: %w", op, s, store.ErrNoResponse)
	}
	r.Serial, r.DER, r.Revoked, r.Reason = s, der, revoked.Bool, int(reason.Int64)
	r.ThisUpdate, r.NextUpdate, r.UpdatedAt = tget(this), tget(next), tget(upd)
	return &r, nil
}

// dueProbe bounds the look into ocsp_due_signed that chooses how OCSPDue reads a page: it
// counts at most max(dueProbe, 2 limit) due certificates.
const dueProbe = 1024

// Reading a page of due certificates from ocsp_due alone, which holds their status and
// revocation time (migrations 22 and 23), on SQLite in one of two ways:
//
//   - dueBySigned reads the range signed < signedBefore of ocsp_due_signed and sorts what it
//     finds by serial: it costs the number of certificates due, whatever their serials, so
//     it serves the passes with few due, and the pass that finds none reads nothing else.
//   - dueBySerial walks ocsp_due in serial order from after and stops at limit due: it costs
//     the rows it passes over, so it serves the passes with many due (a new store, a bulk
//     issuance, the refresh of certificates signed together), where paging with the first
//     way would read every due certificate for each page.
const (
	dueBySigned = `SELECT o.serial, o.revoked, o.not_after, o.revoked_at, o.reason FROM (
		SELECT serial FROM ocsp_due INDEXED BY ocsp_due_signed` + dueWhere + `
		) d JOIN ocsp_due o ON o.serial = d.serial ORDER BY d.serial`
	dueBySerial = `SELECT serial, revoked, not_after, revoked_at, reason FROM ocsp_due NOT INDEXED` + dueWhere
	dueWhere    = ` WHERE signed < ?3 AND (not_after IS NULL OR not_after > ?2) AND serial > ?1 ORDER BY serial LIMIT ?4`
	dueCount    = `SELECT count(*) FROM (SELECT 1 FROM ocsp_due INDEXED BY ocsp_due_signed
		WHERE signed < ?1 AND (not_after IS NULL OR not_after > ?2) LIMIT ?3)`
)

// On PostgreSQL, the planner chooses between the range of ocsp_due_signed sorted by serial and
// the walk of ocsp_due in serial order by itself: dueAny only looks whether anything is due.
const (
	dueAny = `SELECT EXISTS (SELECT 1 FROM ocsp_due
		WHERE signed < ?1 AND (not_after IS NULL OR not_after > ?2))`
	duePage = `SELECT c.serial, c.state = 'revoked', c.not_after, c.revoked_at, c.revocation_reason
		FROM ocsp_due d JOIN certificates c ON c.serial = d.serial
		WHERE d.signed < ?3 AND (d.not_after IS NULL OR d.not_after > ?2) AND d.serial > ?1
		ORDER BY d.serial LIMIT ?4`
)

// OCSPDue returns a page of the certificates whose response is missing, older than
// signedBefore or signed with another status, in serial order after after, from the due index
// ocsp_due. A pass that finds nothing due reads one empty range of ocsp_due_signed. On SQLite,
// when fewer than the probe are due, a page reads those (dueBySigned); when more are, it walks
// ocsp_due from after (dueBySerial), so that a whole pass walks ocsp_due at most once. SQLite's
// page also reads the certificates not indexed yet (dueUnindexed), and merges both.
func (tx *Tx) OCSPDue(now, signedBefore time.Time, after string, limit int) ([]store.CertStatus, error) {
	const op = "ocsp due"
	switch {
	case now.IsZero() || signedBefore.IsZero():
		return nil, invalid(op, "zero time")
	case limit < 1:
		return nil, invalid(op, "limit %d", limit)
	}
	if after != "" {
		s, err := store.NormalizeSerial(after)
		if err != nil {
			return nil, err
		}
		after = s
	}
	q, err := tx.duePage(op, now, signedBefore, limit)
	if err != nil {
		return nil, err
	}
	var indexed, fresh []store.CertStatus
	if q != "" {
		if indexed, err = tx.dueStatuses(op, q, after, now, signedBefore, limit); err != nil {
			return nil, err
		}
	}
	if tx.d.KeepsDue {
		return indexed, nil
	}
	if fresh, err = tx.dueStatuses(op, dueUnindexed, after, now, signedBefore, limit); err != nil {
		return nil, err
	}
	return mergeStatuses(indexed, fresh, limit), nil
}

// dueStatuses runs q, a page of OCSPDue, with its four arguments: each row is serial, revoked,
// not_after, revoked_at and reason.
func (tx *Tx) dueStatuses(op, q, after string, now, signedBefore time.Time, limit int) ([]store.CertStatus, error) {
	var out []store.CertStatus
	err := tx.query(op, func(rows Rows) error {
		var (
			st      store.CertStatus
			na, rev sql.NullInt64
		)
		if err := rows.Scan(&st.Serial, &st.Revoked, &na, &rev, &st.Reason); err != nil {
			return err
		}
		st.NotAfter, st.RevokedAt = tget(na), tget(rev)
		out = append(out, st)
		return nil
	}, q, after, now.UnixMicro(), signedBefore.UnixMicro(), limit)
	return out, err
}

// mergeStatuses merges a and b, each in serial order and without a serial of the other, into
// the first limit of both in serial order.
func mergeStatuses(a, b []store.CertStatus, limit int) []store.CertStatus {
	if len(b) == 0 {
		return a
	}
	out := make([]store.CertStatus, 0, min(limit, len(a)+len(b)))
	for len(out) < limit && (len(a) > 0 || len(b) > 0) {
		if len(b) == 0 || len(a) > 0 && a[0].Serial < b[0].Serial {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return out
}

// dueUnindexed reads, in serial order, the certificates due that ocsp_due does not hold yet:
// those stored above the mark of IndexNewCertificates (a range of rowids, short when the
// certificates are indexed every pass) without a row there, and without a response of their
// status signed at signedBefore or later. SQLite only.
const dueUnindexed = `SELECT n.serial, n.state = 'revoked', n.not_after, n.revoked_at, n.revocation_reason
	FROM certificates n NOT INDEXED
	WHERE n.rowid > (SELECT pos FROM ocsp_mark) AND n.serial > ?1
		AND n.state IN ('issued', 'revoked') AND n.template <> 'import' AND (n.not_after IS NULL OR n.not_after > ?2)
		AND NOT EXISTS (SELECT 1 FROM ocsp_due d WHERE d.serial = n.serial)
		AND NOT EXISTS (SELECT 1 FROM ocsp_responses o WHERE o.serial = n.serial AND o.this_update >= ?3
			AND o.revoked = (n.state = 'revoked') AND o.reason = n.revocation_reason)
	ORDER BY n.serial LIMIT ?4`

// IndexNewCertificates gives ocsp_due and certificate_keys the rows of the certificates stored
// above the mark (ocsp_mark, SQLite's migrations 19 and 20), at most limit positions of them,
// and moves the mark past them: in ocsp_due a row for each issued or revoked one (not
// imported), due at once unless its stored response has its status (then due at that
// response's refresh age), and in certificate_keys one for each that has a key. A row there
// already (a revocation's) stays. It reports whether certificates may be left above the mark
// (limit of them were indexed). When the certificate at the mark no longer has the serial
// recorded there, the rowids were renumbered (a dump loaded again): every certificate is
// indexed again from the first. Where the statements keep ocsp_due themselves
// ([Dialect.KeepsDue]) there is nothing to do.
func (tx *Tx) IndexNewCertificates(limit int) (bool, error) {
	const op = "index new certificates"
	if limit < 1 {
		return false, invalid(op, "limit %d", limit)
	}
	if err := tx.check(true); err != nil {
		return false, fmt.Errorf("store: %s: %w", op, err)
	}
	if tx.d.KeepsDue {
		return false, nil
	}
	var (
		pos    int64
		serial string
		at     sql.NullString
	)
	if err := tx.queryRow(op, []any{&pos, &serial, &at},
		`SELECT m.pos, m.serial, c.serial FROM ocsp_mark m LEFT JOIN certificates c ON c.rowid = m.pos`); err != nil {
		return false, err
	}
	if pos > 0 && at.String != serial {
		pos = 0 // renumbered: index them all again
	}
	// The next limit positions above the mark: how many there are and the last.
	var (
		n  int
		to sql.NullInt64
	)
	if err := tx.queryRow(op, []any{&n, &to},
		`SELECT count(*), max(rowid) FROM (SELECT rowid FROM certificates WHERE rowid > ? ORDER BY rowid LIMIT ?)`, pos, limit); err != nil {
		return false, err
	}
	if n == 0 {
		return false, nil
	}
	return n == limit, tx.indexAbove(op, pos, to.Int64)
}

// indexAbove gives ocsp_due and certificate_keys the rows of the certificates with a rowid in
// (from, to] and moves the mark to to.
func (tx *Tx) indexAbove(op string, from, to int64) error {
	if _, err := tx.execBare(op, `INSERT INTO ocsp_due (serial, signed, not_after, revoked, reason, revoked_at)
		SELECT c.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = c.serial
			AND o.revoked = (c.state = 'revoked') AND o.reason = c.revocation_reason), `+dueMin+`), c.not_after,
			c.state = 'revoked', c.revocation_reason, c.revoked_at
		FROM certificates c WHERE c.rowid > ? AND c.rowid <= ? AND c.state IN ('issued', 'revoked') AND c.template <> 'import'
		ON CONFLICT (serial) DO NOTHING`, from, to); err != nil {
		return err
	}
	if _, err := tx.execBare(op, `INSERT INTO certificate_keys (key_id, created_at, serial)
		SELECT key_id, created_at, serial FROM certificates WHERE rowid > ? AND rowid <= ? AND key_id IS NOT NULL
		ON CONFLICT DO NOTHING`, from, to); err != nil {
		return err
	}
	_, err := tx.execBare(op, `UPDATE ocsp_mark SET pos = ?1, serial = (SELECT serial FROM certificates WHERE rowid = ?1)`, to)
	return err
}

// duePage returns the query that reads OCSPDue's page, or "" when nothing is due.
func (tx *Tx) duePage(op string, now, signedBefore time.Time, limit int) (string, error) {
	if !tx.d.IndexHints {
		var due bool
		if err := tx.queryRow(op, []any{&due}, dueAny, signedBefore.UnixMicro(), now.UnixMicro()); err != nil || !due {
			return "", err
		}
		return duePage, nil
	}
	probe := max(dueProbe, 2*limit)
	var many int
	if err := tx.queryRow(op, []any{&many}, dueCount, signedBefore.UnixMicro(), now.UnixMicro(), probe); err != nil {
		return "", err
	}
	switch {
	case many == 0:
		return "", nil
	case many >= probe:
		return dueBySerial, nil
	}
	return dueBySigned, nil
}

// pickLagging returns lagging, a statement that reads the certificates not indexed yet too,
// where IndexNewCertificates indexes them (not [Dialect.KeepsDue]), and plain otherwise.
func (tx *Tx) pickLagging(lagging, plain string) string {
	if tx.d.KeepsDue {
		return plain
	}
	return lagging
}

// pick returns hinted, a statement that names its index, for a dialect with index hints, and
// plain otherwise.
func (tx *Tx) pick(hinted, plain string) string {
	if tx.d.IndexHints {
		return hinted
	}
	return plain
}

// HintedQueries returns the statements whose plans the SQLite backend's tests check, by name
// ("revoked", "due count", "due by signed", "due by serial", "due unindexed", "by key",
// "compromised" for one key, "code checking key"): most name their index for SQLite's planner.
func HintedQueries() map[string]string {
	return map[string]string{
		"revoked":           revokedHinted,
		"due count":         dueCount,
		"due by signed":     dueBySigned,
		"due by serial":     dueBySerial,
		"due unindexed":     dueUnindexed,
		"by key":            byKeyLagging,
		"compromised":       compromisedQuery(1),
		"code checking key": codeCheckingKey,
		"due signed":        dueSigned(2),
	}
}
