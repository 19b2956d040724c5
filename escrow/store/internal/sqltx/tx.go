package sqltx

import (
	"strconv"

	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Querier is what a Tx runs its statements on: a backend's writer connection (through the
// backend's statement cache or savepoint machinery) or a read-only *sql.Tx. The statements are
// written with ? placeholders (?N for a numbered one); a backend whose driver wants others
// rebinds them in its Querier.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Rows is what a query returns: a *sql.Rows, or the rows of a backend's own driver (see
// [RowsQuerier]).
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// RowsQuerier is a Querier that runs queries on its driver's own rows rather than through
// database/sql's (PostgreSQL's Views: see the backend). The Tx uses QueryRows when its
// Querier has it.
type RowsQuerier interface {
	QueryRows(ctx context.Context, query string, args ...any) (Rows, error)
}

// BareExecer is a Querier that can run a write without the savepoint it otherwise gives each
// one (PostgreSQL's writer: see [Tx.execBare]). A Querier without the method runs such writes
// as any other.
type BareExecer interface {
	ExecBare(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// LaterExecer is a Querier that can hold a write back and send it with its next round trip
// (PostgreSQL's writer: see [Tx.execLater]). A Querier without the method runs such writes at
// once, as [Tx.execBare] does.
type LaterExecer interface {
	ExecLater(ctx context.Context, query string, args ...any) error
}

// LaterRowExecer is a LaterExecer that can also hold back the INSERT of one row, given as its
// head ("INSERT INTO t (columns)") and its width values, and send the rows held back one after
// the other with the same head as multi-row INSERTs (see [MultiRowInsert]).
type LaterRowExecer interface {
	ExecLaterRow(ctx context.Context, head string, width int, args ...any) error
}

// Dialect is what differs between the backends' SQL. The statements of this package are
// otherwise valid on both SQLite (3.35 or later) and PostgreSQL.
type Dialect struct {
	// MapErr maps the error of a failed write to the store's sentinels: a unique violation
	// to ErrConflict, a foreign key violation to ErrNotFound, a check or not-null violation
	// to ErrInvalid. Any other error is returned unchanged.
	MapErr func(error) error
	// Position is the column that numbers the certificates in insertion order (SQLite's
	// rowid, PostgreSQL's identity column pos).
	Position string
	// IndexHints tells the revocation reads to name their index (INDEXED BY, NOT INDEXED),
	// which SQLite's planner needs to choose it; PostgreSQL has no such hints and its planner
	// chooses well by itself.
	IndexHints bool
	// KeepsDue tells that the statements themselves keep the OCSP due index (ocsp_due, see
	// [store.OCSPResponses]) and the codes' serials, with data-modifying WITH clauses
	// (PostgreSQL): the write of a certificate or a response and what it changes in ocsp_due
	// are one statement, one round trip and no trigger. Without it (SQLite) the schema's
	// triggers keep ocsp_due for revocations and the certificates indexed already,
	// UpsertOCSPResponses for the responses it stores (with statements of its own), and the
	// certificates stored since wait for [Tx.IndexNewCertificates], both there and in
	// the index of the certificates by key (certificate_keys): OCSPDue and CertificatesByKey
	// read those from the certificates above ocsp_mark.
	KeepsDue bool
	// Clock is an expression of the database server's clock in unix microseconds, which
	// leases are measured on when several machines share the database (see
	// [store.Leases.LeaseNow]); "" when the database is one machine's file and the caller's
	// clock serves.
	Clock string
}

// dueMin is the signed value of a certificate due at once (the smallest bigint).
const dueMin = `-9223372036854775807 - 1`

// dueInsert ends a statement whose WITH clause c returns the serial, state, template and
// not_after of new certificates: those issued or revoked, but not imported from another CA
// (store.TemplateImport), get their rows of ocsp_due, due at once (a new certificate has no
// response: ocsp_responses references certificates).
const dueInsert = `
	INSERT INTO ocsp_due (serial, signed, not_after)
	SELECT c.serial, ` + dueMin + `, c.not_after FROM c WHERE c.state IN ('issued', 'revoked') AND c.template <> 'import'
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after`

// DueUpsert is dueUpsert, for the statements of a backend's own that keep ocsp_due.
const DueUpsert = dueUpsert

// dueUpsert ends a statement whose WITH clause c returns the serial, state, template,
// revocation_reason and not_after of certificates stored or changed: it stores the rows of
// ocsp_due of those issued or revoked (imported ones excepted, as in dueInsert), due at once
// unless the stored response has their new status (the rule of store.OCSPResponses). Its
// count of rows is the number of those certificates. (No statement moves a certificate out of
// issued or revoked, and pending and failed ones have no row to delete.)
const dueUpsert = `
	INSERT INTO ocsp_due (serial, signed, not_after)
	SELECT c.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = c.serial
		AND o.revoked = (c.state = 'revoked') AND o.reason = c.revocation_reason), ` + dueMin + `), c.not_after
	FROM c WHERE c.state IN ('issued', 'revoked') AND c.template <> 'import'
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after`

// Tx is a transaction handed to the function given to a backend's Update or View. It is
// valid only while that function runs and must not be used from other goroutines.
type Tx struct {
	ctx      context.Context
	q        Querier
	d        *Dialect
	writable bool
	done     bool
	head     *AuditHead // the writer's audit head cache (nil in a View)
}

// NewWrite returns the Tx of one function of a backend's writer: its statements run on q,
// and head is the writer's audit head cache (see [AuditHead]).
func NewWrite(ctx context.Context, q Querier, d *Dialect, head *AuditHead) *Tx {
	return &Tx{ctx: ctx, q: q, d: d, writable: true, head: head}
}

// NewRead returns the Tx of a View: its statements run on q, and its writes fail with
// [store.ErrReadOnly].
func NewRead(ctx context.Context, q Querier, d *Dialect) *Tx {
	return &Tx{ctx: ctx, q: q, d: d}
}

// End marks tx done, once its function has returned: every later call fails with
// [store.ErrTxDone].
func (tx *Tx) End() { tx.done = true }

// Raw returns the context and Querier tx runs its statements on, for the backends' tests of
// statements that no method runs.
func (tx *Tx) Raw() (context.Context, Querier) { return tx.ctx, tx.q }

var _ store.Tx = (*Tx)(nil)

func (tx *Tx) check(write bool) error {
	if tx.done {
		return store.ErrTxDone
	}
	if write && !tx.writable {
		return store.ErrReadOnly
	}
	return nil
}

func (tx *Tx) exec(op, query string, args ...any) (int64, error) {
	if err := tx.check(true); err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, err)
	}
	res, err := tx.q.ExecContext(tx.ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, tx.d.MapErr(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, err)
	}
	return n, nil
}

// execBare runs a write that no constraint of the schema can refuse (its values are checked
// here first, and it sets no unique, referencing or checked column to a value that could
// fail): the only ways it can fail are faults of the database or the connection, which end
// the function's writes anyway. PostgreSQL's writer runs it without the savepoint of its own
// that every other write takes there (two statements fewer, and no subtransaction); should
// it fail all the same, the function's writes are undone and Update reports the failure.
func (tx *Tx) execBare(op, query string, args ...any) (int64, error) {
	b, ok := tx.q.(BareExecer)
	if !ok {
		return tx.exec(op, query, args...)
	}
	if err := tx.check(true); err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, err)
	}
	res, err := b.ExecBare(tx.ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, tx.d.MapErr(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, err)
	}
	return n, nil
}

// execLater runs a write that no constraint of the schema can refuse (as [Tx.execBare]) and
// whose count of rows nobody needs: a backend may hold it back and send it with the next
// statement of the transaction, or with its COMMIT, in the same round trip. The statements
// still run in the order they were made, so a later read sees it. Should it fail all the
// same, the failure is the transaction's: every function of the transaction fails with it
// (see the backend's Update).
func (tx *Tx) execLater(op, query string, args ...any) error {
	l, ok := tx.q.(LaterExecer)
	if !ok {
		_, err := tx.execBare(op, query, args...)
		return err
	}
	if err := tx.check(true); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	if err := l.ExecLater(tx.ctx, query, args...); err != nil {
		return fmt.Errorf("store: %s: %w", op, tx.d.MapErr(err))
	}
	return nil
}

// execLaterRow is execLater for the INSERT of one row (head and its width values): a backend
// that holds it back may send it in one statement with the rows held back after it with the
// same head.
func (tx *Tx) execLaterRow(op, head string, width int, args ...any) error {
	l, ok := tx.q.(LaterRowExecer)
	if !ok {
		return tx.execLater(op, multiRowInsert(head, width, 1), args...)
	}
	if err := tx.check(true); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	if err := l.ExecLaterRow(tx.ctx, head, width, args...); err != nil {
		return fmt.Errorf("store: %s: %w", op, tx.d.MapErr(err))
	}
	return nil
}

// RowsPerInsert is the most rows one INSERT statement carries (see insertRows).
const RowsPerInsert = rowsPerInsert

// MultiRowInsert returns head followed by rows tuples of width ? placeholders, built once per
// shape.
func MultiRowInsert(head string, width, rows int) string { return multiRowInsert(head, width, rows) }

// rowsPerInsert is the most rows one INSERT statement carries. A statement of many rows costs
// the writer much less per row than one statement per row (binding, stepping and resetting
// through database/sql on SQLite; a round trip to the server and its savepoint on PostgreSQL),
// and 32 rows (at most 512 parameters) gain nearly all of it.
const rowsPerInsert = 32

// insertRows inserts rows into a table with few statements: head is "INSERT INTO t (columns)",
// and args holds width values per row. Full statements carry rowsPerInsert rows; the rest go in
// statements of 16, 8, 4, 2 and 1 rows, so that the writer prepares at most six per table.
func (tx *Tx) insertRows(op, head string, width int, args []any) error {
	return tx.insertRowsIn(op, "", head, "", width, args)
}

// insertRowsIn is insertRows with each INSERT statement between pre and post.
func (tx *Tx) insertRowsIn(op, pre, head, post string, width int, args []any) error {
	for n := len(args) / width; n > 0; {
		k := rowsPerInsert
		for k > n {
			k /= 2
		}
		q := multiRowInsert(head, width, k)
		if pre != "" || post != "" {
			q = wrapped(pre, q, post)
		}
		if _, err := tx.exec(op, q, args[:k*width]...); err != nil {
			return err
		}
		args, n = args[k*width:], n-k
	}
	return nil
}

var wrappedQueries sync.Map // [3]string → string

// wrapped returns pre + q + post, built once.
func wrapped(pre, q, post string) string {
	key := [3]string{pre, q, post}
	if w, ok := wrappedQueries.Load(key); ok {
		return w.(string)
	}
	w := pre + q + post
	wrappedQueries.Store(key, w)
	return w
}

type insertShape struct {
	head        string
	width, rows int
}

var insertQueries sync.Map // insertShape → string

// multiRowInsert returns head followed by rows tuples of width placeholders.
func multiRowInsert(head string, width, rows int) string {
	shape := insertShape{head, width, rows}
	if q, ok := insertQueries.Load(shape); ok {
		return q.(string)
	}
	tuple := "(?" + strings.Repeat(", ?", width-1) + ")"
	q := head + " VALUES " + tuple + strings.Repeat(", "+tuple, rows-1)
	insertQueries.Store(shape, q)
	return q
}

// queryRows runs a query on the Querier's own rows when it has them (see [RowsQuerier]).
func (tx *Tx) queryRows(query string, args ...any) (Rows, error) {
	if rq, ok := tx.q.(RowsQuerier); ok {
		return rq.QueryRows(tx.ctx, query, args...)
	}
	rows, err := tx.q.QueryContext(tx.ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return rows, nil
}

// queryRow runs a query expected to return at most one row and scans it;
// no row gives ErrNotFound.
func (tx *Tx) queryRow(op string, dest []any, query string, args ...any) error {
	if err := tx.check(false); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	rows, err := tx.queryRows(query, args...)
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return fmt.Errorf("store: %s: %w", op, err)
		}
		return fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	if err := rows.Scan(dest...); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	return rows.Close()
}

// query runs a query and calls scan for each row.
func (tx *Tx) query(op string, scan func(Rows) error, query string, args ...any) error {
	if err := tx.check(false); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	rows, err := tx.queryRows(query, args...)
	if err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("store: %s: %w", op, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	return nil
}

// Time encoding: unix microseconds, NULL for the zero time.

func tval(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func tget(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMicro(n.Int64).UTC()
}

func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

func sval(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func sget(s sql.NullString) string { return s.String }

func invalid(op, format string, args ...any) error {
	return fmt.Errorf("store: %s: %s: %w", op, fmt.Sprintf(format, args...), store.ErrInvalid)
}

func oneOf(s string, allowed ...string) bool {
	for _, a := range allowed {
		if s == a {
			return true
		}
	}
	return false
}

// optSerial normalises a serial that may be empty.
func optSerial(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	return store.NormalizeSerial(s)
}

// ---------------------------------------------------------------------------
// Enrollment codes

// InsertCode stores a new enrollment code. ID, Email, Template, Hash and
// ExpiresAt are required; UsedAt and Serial are ignored. A duplicate ID gives
// [ErrConflict].
func (tx *Tx) InsertCode(c store.Code) error {
	const op = "insert code"
	switch {
	case c.ID == "":
		return invalid(op, "empty id")
	case c.Email == "" || c.Template == "":
		return invalid(op, "email and template are required")
	case len(c.Hash) == 0:
		return invalid(op, "empty hash")
	case c.ExpiresAt.IsZero():
		return invalid(op, "no expiry")
	}
	_, err := tx.exec(op, `INSERT INTO codes (id, email, template, hash, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?)`,
		c.ID, c.Email, c.Template, c.Hash, orNow(c.CreatedAt).UnixMicro(), c.ExpiresAt.UnixMicro())
	return err
}

// GetCode returns the code with the given ID, or [ErrNotFound].
func (tx *Tx) GetCode(id string) (*store.Code, error) {
	c, _, err := tx.getCode("get code", id, "")
	return c, err
}

// GetCodeCheckingKey is GetCode with CompromisedKeys([]string{keyID}) in the same statement:
// the oldest certificate revoked for keyCompromise that holds keyID, through a partial index
// (as CompromisedKeys), or "".
func (tx *Tx) GetCodeCheckingKey(id, keyID string) (*store.Code, string, error) {
	const op = "get code checking key"
	if !store.ValidKeyID(keyID) {
		return nil, "", invalid(op, "key id %q is not 64 lower-case hex digits", keyID)
	}
	return tx.getCode(op, id, keyID)
}

// codeColumns are the columns of a code as getCode scans them.
const codeColumns = `k.id, k.email, k.template, k.hash, k.created_at, k.expires_at, k.used_at, k.serial`

// codeCheckingKey is GetCodeCheckingKey's statement: ?1 the key, ?2 the code.
var codeCheckingKey = `SELECT ` + codeColumns + `, (SELECT c.serial FROM certificates c
		WHERE c.key_id = ? AND c.key_id IS NOT NULL AND c.state = 'revoked' AND c.revocation_reason = ` +
	strconv.Itoa(store.ReasonKeyCompromise) + ` ORDER BY c.created_at, c.serial LIMIT 1)
	FROM codes k WHERE k.id = ?`

// getCode reads code id and, when keyID is set, the serial that compromises that key.
func (tx *Tx) getCode(op, id, keyID string) (*store.Code, string, error) {
	var (
		c        store.Code
		created  sql.NullInt64
		expires  sql.NullInt64
		used     sql.NullInt64
		serialNS sql.NullString
		badNS    sql.NullString
	)
	dest := []any{&c.ID, &c.Email, &c.Template, &c.Hash, &created, &expires, &used, &serialNS}
	var err error
	if keyID == "" {
		err = tx.queryRow(op, dest, `SELECT `+codeColumns+` FROM codes k WHERE k.id = ?`, id)
	} else {
		err = tx.queryRow(op, append(dest, &badNS), codeCheckingKey, keyID, id)
	}
	if err != nil {
		return nil, "", err
	}
	c.CreatedAt, c.ExpiresAt = tget(created), tget(expires)
	if used.Valid {
		u := tget(used)
		c.UsedAt = &u
	}
	c.Serial = sget(serialNS)
	return &c, sget(badNS), nil
}

// ClaimCode marks the code used at now, once: a code already used gives
// [ErrCodeUsed], one that expired at or before now [ErrCodeExpired], an unknown
// one [ErrNotFound]. Concurrent claims of one code: exactly one succeeds.
func (tx *Tx) ClaimCode(id string, now time.Time) error {
	const op = "claim code"
	if now.IsZero() {
		return invalid(op, "zero time")
	}
	n, err := tx.execBare(op, `UPDATE codes SET used_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?`,
		now.UnixMicro(), id, now.UnixMicro())
	if err != nil || n == 1 {
		return err
	}
	return tx.claimError(op, id)
}

// claimError reads why code id could not be claimed: [ErrNotFound], [ErrCodeUsed] or
// [ErrCodeExpired].
func (tx *Tx) claimError(op, id string) error {
	var used sql.NullInt64
	var expires int64
	if err := tx.queryRow(op, []any{&used, &expires}, `SELECT used_at, expires_at FROM codes WHERE id = ?`, id); err != nil {
		return err
	}
	if used.Valid {
		return fmt.Errorf("store: %s: %w", op, store.ErrCodeUsed)
	}
	return fmt.Errorf("store: %s: %w", op, store.ErrCodeExpired)
}

// ReleaseCode makes a claimed code usable again (used_at and serial cleared),
// for instance after the enrollment it was claimed for failed. An unknown code
// gives [ErrNotFound].
func (tx *Tx) ReleaseCode(id string) error {
	const op = "release code"
	n, err := tx.exec(op, `UPDATE codes SET used_at = NULL, serial = NULL WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Certificates

const certColumns = `serial, template, email, subject, state, der, not_before, not_after, created_at,
	code_id, record_id, role, kra, revoked_at, revocation_reason, key_id`

func scanCertificate(scan func(...any) error) (*store.Certificate, error) {
	var (
		c                          store.Certificate
		nb, na, created, revokedAt sql.NullInt64
		codeID, recordID, keyID    sql.NullString
	)
	if err := scan(&c.Serial, &c.Template, &c.Email, &c.Subject, &c.State, &c.DER, &nb, &na, &created,
		&codeID, &recordID, &c.Role, &c.KRA, &revokedAt, &c.RevocationReason, &keyID); err != nil {
		return nil, err
	}
	c.NotBefore, c.NotAfter, c.CreatedAt, c.RevokedAt = tget(nb), tget(na), tget(created), tget(revokedAt)
	c.CodeID, c.RecordID, c.KeyID = sget(codeID), sget(recordID), sget(keyID)
	return &c, nil
}

// InsertCertificate stores a certificate, normally in state pending before it
// is signed (any state is accepted, for migrations). Serial, Template and
// Email are required. If CodeID is set the code must exist ([ErrNotFound]
// otherwise) and its Serial is set to this certificate's. A duplicate serial
// gives [ErrConflict].
func (tx *Tx) InsertCertificate(c store.Certificate) error {
	return tx.InsertCertificates([]store.Certificate{c})
}

// InsertCertificates is [Tx.InsertCertificate] for many certificates, with few statements. On
// an error, some may have been inserted: the caller's savepoint undoes them.
func (tx *Tx) InsertCertificates(cs []store.Certificate) error {
	const op = "insert certificate"
	args := make([]any, 0, len(cs)*certWidth)
	var coded []store.Certificate
	for _, c := range cs {
		var err error
		if c, args, err = certArgs(op, c, args); err != nil {
			return err
		}
		if c.CodeID != "" {
			coded = append(coded, c)
		}
	}
	if tx.d.KeepsDue {
		// One statement a chunk: the rows, their rows of ocsp_due and their codes' serials.
		return tx.insertRowsIn(op, `WITH c AS (`, `INSERT INTO certificates (`+certColumns+`)`,
			` RETURNING serial, state, template, revocation_reason, not_after, code_id),
			codes_set AS (UPDATE codes SET serial = c.serial FROM c WHERE codes.id = c.code_id)`+dueInsert, certWidth, args)
	}
	if err := tx.insertRows(op, `INSERT INTO certificates (`+certColumns+`)`, certWidth, args); err != nil {
		return err
	}
	for _, c := range coded {
		if _, err := tx.execBare(op, `UPDATE codes SET serial = ? WHERE id = ?`, c.Serial, c.CodeID); err != nil {
			return err
		}
	}
	return nil
}

const certWidth = 16 // the number of certColumns

// certArgs checks c and appends its values, in the order of certColumns, to args; it returns c
// with its serial normalised and its state defaulted.
func certArgs(op string, c store.Certificate, args []any) (store.Certificate, []any, error) {
	serial, err := store.NormalizeSerial(c.Serial)
	if err != nil {
		return c, args, err
	}
	c.Serial = serial
	if c.State == "" {
		c.State = store.StatePending
	}
	switch {
	case c.Template == "":
		return c, args, invalid(op, "template is required")
	case !oneOf(c.State, store.StatePending, store.StateIssued, store.StateFailed, store.StateRevoked):
		return c, args, invalid(op, "state %q", c.State)
	case c.State != store.StatePending && c.State != store.StateFailed && len(c.DER) == 0:
		return c, args, invalid(op, "state %s needs the DER", c.State)
	case c.State == store.StateRevoked && c.RevokedAt.IsZero():
		return c, args, invalid(op, "state revoked needs the revocation date")
	case c.State == store.StateRevoked && !store.ValidStoredReason(c.RevocationReason):
		return c, args, invalid(op, "revocation reason %d", c.RevocationReason)
	case c.State != store.StateRevoked && c.RevocationReason != 0:
		return c, args, invalid(op, "a revocation reason for a certificate in state %s", c.State)
	}
	return c, append(args, serial, c.Template, c.Email, c.Subject, c.State, nilIfEmpty(c.DER), tval(c.NotBefore),
		tval(c.NotAfter), orNow(c.CreatedAt).UnixMicro(), sval(c.CodeID), sval(c.RecordID), c.Role, c.KRA, tval(c.RevokedAt),
		c.RevocationReason, sval(keyID(c.DER))), nil
}

// claimingInsert is the statement of [Tx.InsertCertificateClaiming] where the statements keep
// ocsp_due ([Dialect.KeepsDue]): the claim (?17 is the time) sets the code's serial too, and
// is made only if no certificate has the serial; the certificate and its row of ocsp_due are
// stored only if the claim was made. Its count is the certificates stored (0 or 1). No
// constraint can refuse it: the code exists when it is claimed, the serial is free (the writer
// lock keeps it so until the commit), and the values are checked before (see execBare). The
// casts give the values their types, which in a SELECT list PostgreSQL would take for text.
const claimingInsert = `WITH k AS (UPDATE codes SET used_at = CAST(?17 AS bigint), serial = CAST(?1 AS text)
		WHERE id = CAST(?10 AS text) AND used_at IS NULL AND expires_at > CAST(?17 AS bigint)
			AND NOT EXISTS (SELECT 1 FROM certificates WHERE serial = CAST(?1 AS text))
		RETURNING id),
	d AS (INSERT INTO ocsp_due (serial, signed, not_after)
		SELECT CAST(?1 AS text), ` + dueMin + `, CAST(?8 AS bigint) FROM k
		WHERE CAST(?5 AS text) IN ('issued', 'revoked') AND CAST(?2 AS text) <> 'import'
		ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after)
	INSERT INTO certificates (` + certColumns + `)
	SELECT CAST(?1 AS text), CAST(?2 AS text), CAST(?3 AS text), CAST(?4 AS text), CAST(?5 AS text), CAST(?6 AS bytea),
		CAST(?7 AS bigint), CAST(?8 AS bigint), CAST(?9 AS bigint), k.id, CAST(?11 AS text), CAST(?12 AS text),
		CAST(?13 AS text), CAST(?14 AS bigint), CAST(?15 AS bigint), CAST(?16 AS text)
	FROM k`

// InsertCertificateClaiming claims code c.CodeID at now ([Tx.ClaimCode]) and stores c
// ([Tx.InsertCertificate]). Where the statements keep ocsp_due (PostgreSQL) both are one
// statement and one round trip, without a savepoint of its own; the claim and the certificate
// are then stored both or neither. Elsewhere they are the two calls, and on an error the claim
// may have been made (the function's error undoes it).
func (tx *Tx) InsertCertificateClaiming(c store.Certificate, now time.Time) error {
	const op = "insert certificate claiming code"
	switch {
	case c.CodeID == "":
		return invalid(op, "no code")
	case now.IsZero():
		return invalid(op, "zero time")
	}
	if !tx.d.KeepsDue {
		if err := tx.ClaimCode(c.CodeID, now); err != nil {
			return err
		}
		return tx.InsertCertificate(c)
	}
	c, args, err := certArgs(op, c, make([]any, 0, certWidth+1))
	if err != nil {
		return err
	}
	n, err := tx.execBare(op, claimingInsert, append(args, now.UnixMicro())...)
	if err != nil || n == 1 {
		return err
	}
	// Neither stored: the code, or else the serial, is why.
	var used sql.NullInt64
	var expires int64
	switch err := tx.queryRow(op, []any{&used, &expires}, `SELECT used_at, expires_at FROM codes WHERE id = ?`, c.CodeID); {
	case err != nil:
		return err
	case used.Valid:
		return fmt.Errorf("store: %s: %w", op, store.ErrCodeUsed)
	case expires <= now.UnixMicro():
		return fmt.Errorf("store: %s: %w", op, store.ErrCodeExpired)
	}
	return fmt.Errorf("store: %s: serial %s exists: %w", op, c.Serial, store.ErrConflict)
}

// keyID is the key identity of a stored DER, "" when there is none or it is not shaped like a
// certificate (stored all the same: see store.Certificate.KeyID).
func keyID(der []byte) string {
	if len(der) == 0 {
		return ""
	}
	id, _ := store.KeyID(der)
	return id
}

func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// certTransition moves a certificate from state from to state to, setting
// the extra assignments; [ErrNotFound] if the serial is unknown,
// [ErrConflict] if it is in another state or another CA issued it ([store.TemplateImport]:
// stored issued by its import, its state is never this CA's to change).
//
// With due (the new state is issued or revoked), a backend whose statements keep the OCSP due
// index ([Dialect.KeepsDue]) stores the certificate's row there in the same statement.
func (tx *Tx) certTransition(op, serial, from string, due bool, set string, args ...any) (string, error) {
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return "", err
	}
	// Every caller's values pass the table's checks: a failure is a fault (see execBare).
	q := `UPDATE certificates SET ` + set + ` WHERE serial = ? AND state = ? AND template <> 'import'`
	if due && tx.d.KeepsDue {
		q = wrapped(`WITH c AS (`, q, ` RETURNING serial, state, template, revocation_reason, not_after)`+dueUpsert)
	}
	n, err := tx.execBare(op, q, append(args, s, from)...)
	if err != nil {
		return "", err
	}
	if n == 1 {
		return s, nil
	}
	var state, template string
	if err := tx.queryRow(op, []any{&state, &template}, `SELECT state, template FROM certificates WHERE serial = ?`, s); err != nil {
		return "", err
	}
	if template == store.TemplateImport {
		return "", fmt.Errorf("store: %s: certificate %s was issued by another CA (imported): %w", op, s, store.ErrConflict)
	}
	return "", fmt.Errorf("store: %s: certificate %s is %s, not %s: %w", op, s, state, from, store.ErrConflict)
}

// SetCertificateIssued records the signed certificate of a pending one
// ([ErrConflict] if it is not pending, [ErrNotFound] if unknown).
func (tx *Tx) SetCertificateIssued(serial string, der []byte, notBefore, notAfter time.Time) error {
	const op = "set certificate issued"
	if len(der) == 0 || notBefore.IsZero() || notAfter.IsZero() {
		return invalid(op, "der, notBefore and notAfter are required")
	}
	_, err := tx.certTransition(op, serial, store.StatePending, true, `state = 'issued', der = ?, not_before = ?, not_after = ?, key_id = ?`,
		der, notBefore.UnixMicro(), notAfter.UnixMicro(), sval(keyID(der)))
	return err
}

// FailCertificate marks a pending certificate failed ([ErrConflict] if it is
// not pending, [ErrNotFound] if unknown). Like [Tx.SweepPending], it also
// releases the enrollment code claimed for it and abandons its escrow record
// if that record is still pending.
func (tx *Tx) FailCertificate(serial string) error {
	const op = "fail certificate"
	s, err := tx.certTransition(op, serial, store.StatePending, false, `state = 'failed'`)
	if err != nil {
		return err
	}
	if _, err := tx.exec(op, `UPDATE codes SET used_at = NULL, serial = NULL
		WHERE serial = ?1 AND id = (SELECT code_id FROM certificates WHERE serial = ?1)`, s); err != nil {
		return err
	}
	_, err = tx.exec(op, `UPDATE records SET state = 'abandoned'
		WHERE state = 'pending' AND id = (SELECT record_id FROM certificates WHERE serial = ?)`, s)
	return err
}

// FailSignedCertificate is [Tx.FailCertificate] for a pending certificate that was signed but
// never delivered (its issuance could not be finished): the signed certificate is kept on the
// failed row, as a CA keeps every certificate it signs. [ErrConflict] if it is not pending,
// [ErrNotFound] if unknown.
func (tx *Tx) FailSignedCertificate(serial string, der []byte, notBefore, notAfter time.Time) error {
	const op = "fail signed certificate"
	if len(der) == 0 || notBefore.IsZero() || notAfter.IsZero() {
		return invalid(op, "der, notBefore and notAfter are required")
	}
	if _, err := tx.certTransition(op, serial, store.StatePending, false, `der = ?, not_before = ?, not_after = ?, key_id = ?`,
		der, notBefore.UnixMicro(), notAfter.UnixMicro(), sval(keyID(der))); err != nil {
		return err
	}
	return tx.FailCertificate(serial)
}

// GetCertificate returns the certificate with the given serial (any
// accepted spelling, see [NormalizeSerial]), or [ErrNotFound].
func (tx *Tx) GetCertificate(serial string) (*store.Certificate, error) {
	const op = "get certificate"
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	var c *store.Certificate
	err = tx.query(op, func(rows Rows) (err error) {
		c, err = scanCertificate(rows.Scan)
		return err
	}, `SELECT `+certColumns+` FROM certificates WHERE serial = ?`, s)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("store: %s %s: %w", op, s, store.ErrNotFound)
	}
	return c, nil
}

// statusesPerQuery is the most serials one statement of [Tx.CertificateStatuses] asks for; the
// rest go in statements of half as many, and so on, so that a backend prepares at most eight.
const statusesPerQuery = 128

// CertificateStatuses returns the status of each issued or revoked certificate of serials, in
// their order; unknown, pending and failed ones, those of another CA ([store.TemplateImport]),
// and bad spellings, are left out, and a serial listed twice is returned once.
func (tx *Tx) CertificateStatuses(serials []string) ([]store.CertStatus, error) {
	const op = "certificate statuses"
	if err := tx.check(false); err != nil {
		return nil, fmt.Errorf("store: %s: %w", op, err)
	}
	var (
		order []string
		args  []any
	)
	found := make(map[string]*store.CertStatus, len(serials))
	for _, sn := range serials {
		s, err := store.NormalizeSerial(sn)
		if err != nil {
			continue
		}
		if _, dup := found[s]; dup {
			continue
		}
		found[s] = nil
		order, args = append(order, s), append(args, s)
	}
	for n := len(args); n > 0; {
		k := statusesPerQuery
		for k > n {
			k /= 2
		}
		q := statusQuery(k)
		err := tx.query(op, func(rows Rows) error {
			var (
				st              store.CertStatus
				state, template string
				revokedAt, na   sql.NullInt64
				reason          int64
			)
			if err := rows.Scan(&st.Serial, &state, &template, &revokedAt, &reason, &na); err != nil {
				return err
			}
			if state != store.StateIssued && state != store.StateRevoked || template == store.TemplateImport {
				return nil
			}
			st.Revoked, st.RevokedAt, st.Reason, st.NotAfter = state == store.StateRevoked, tget(revokedAt), int(reason), tget(na)
			found[st.Serial] = &st
			return nil
		}, q, args[:k]...)
		if err != nil {
			return nil, err
		}
		args, n = args[k:], n-k
	}
	out := make([]store.CertStatus, 0, len(order))
	for _, s := range order {
		if st := found[s]; st != nil {
			out = append(out, *st)
		}
	}
	return out, nil
}

var statusQueries sync.Map // int → string

// statusQuery is the statement of CertificateStatuses for n serials.
func statusQuery(n int) string {
	if q, ok := statusQueries.Load(n); ok {
		return q.(string)
	}
	// The serials alone in the WHERE clause: every planner seeks the primary key with them.
	q := `SELECT serial, state, template, revoked_at, revocation_reason, not_after FROM certificates
		WHERE serial IN (?` + strings.Repeat(", ?", n-1) + `)`
	statusQueries.Store(n, q)
	return q
}

// ListCertificates returns the certificates matching f, oldest first.
func (tx *Tx) ListCertificates(f store.Filter) ([]store.Certificate, error) {
	const op = "list certificates"
	var (
		where []string
		args  []any
	)
	if f.Email != "" {
		where, args = append(where, "email = ?"), append(args, f.Email)
	}
	if f.Template != "" {
		where, args = append(where, "template = ?"), append(args, f.Template)
	}
	if f.KRA != "" {
		// "kra != ''" lets the planner use the partial index certificates_kra.
		where, args = append(where, "kra = ? AND kra != ''"), append(args, f.KRA)
	}
	if f.State != "" {
		if !oneOf(f.State, store.StatePending, store.StateIssued, store.StateFailed, store.StateRevoked) {
			return nil, invalid(op, "state %q", f.State)
		}
		where, args = append(where, "state = ?"), append(args, f.State)
	}
	if f.Limit < 0 {
		return nil, invalid(op, "negative limit")
	}
	q := `SELECT ` + certColumns + ` FROM certificates`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created_at, serial`
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	var out []store.Certificate
	err := tx.query(op, func(rows Rows) error {
		c, err := scanCertificate(rows.Scan)
		if err == nil {
			out = append(out, *c)
		}
		return err
	}, q, args...)
	return out, err
}

// ---------------------------------------------------------------------------
// Escrow records

const recordColumns = `id, serial, email, epoch, blob, state, created_at, fingerprint`

func scanRecord(scan func(...any) error) (*store.Record, error) {
	var (
		r       store.Record
		serial  sql.NullString
		epoch   int64
		created sql.NullInt64
		fp      sql.NullString
	)
	if err := scan(&r.ID, &serial, &r.Email, &epoch, &r.Blob, &r.State, &created, &fp); err != nil {
		return nil, err
	}
	r.Serial, r.Epoch, r.CreatedAt, r.Fingerprint = sget(serial), uint32(epoch), tget(created), sget(fp)
	return &r, nil
}

// InsertRecord stores a sealed escrow record, normally pending until its
// certificate is issued. ID, Email, Epoch and Blob are required; the recovery
// set of Epoch must exist ([ErrNotFound] otherwise). A duplicate ID or serial
// gives [ErrConflict].
//
// One key belongs to one mailbox: a record whose key (by fingerprint) is already
// in a pending or active record of another mailbox, or in another record of the
// same call for another mailbox, gives [ErrKeyArchivedElsewhere] and nothing of
// the call is inserted. The same mailbox may archive one key in several records
// (one per certificate: each record binds its certificate's serial).
func (tx *Tx) InsertRecord(r store.Record) error {
	return tx.InsertRecords([]store.Record{r})
}

// InsertRecords is [Tx.InsertRecord] for many records, with few statements.
func (tx *Tx) InsertRecords(rs []store.Record) error {
	const op = "insert record"
	args := make([]any, 0, len(rs)*recordWidth)
	fps := make([]string, 0, len(rs))
	for _, r := range rs {
		serial, err := optSerial(r.Serial)
		if err != nil {
			return err
		}
		if r.State == "" {
			r.State = store.StatePending
		}
		switch {
		case r.ID == "" || r.Email == "":
			return invalid(op, "id and email are required")
		case r.Epoch == 0:
			return invalid(op, "epoch 0")
		case len(r.Blob) == 0:
			return invalid(op, "empty blob")
		case !oneOf(r.State, store.StatePending, store.StateActive, store.StateAbandoned):
			return invalid(op, "state %q", r.State)
		}
		fp := recordFingerprint(r.Blob)
		switch {
		case fp == "":
			fp = r.Fingerprint
		case r.Fingerprint != "" && r.Fingerprint != fp:
			return invalid(op, "record %s: fingerprint does not match the sealed header", r.ID)
		}
		fps = append(fps, fp)
		args = append(args, r.ID, sval(serial), r.Email, int64(r.Epoch), r.Blob, r.State, orNow(r.CreatedAt).UnixMicro(), sval(fp))
	}
	if err := tx.checkKeyOwners(op, rs, fps); err != nil {
		return err
	}
	return tx.insertRows(op, `INSERT INTO records (`+recordColumns+`)`, recordWidth, args)
}

const recordWidth = 8 // the number of recordColumns

// ActivateRecord marks a pending record active, once its certificate is
// issued. Activating an active record is a no-op; an abandoned one gives
// [ErrConflict], an unknown one [ErrNotFound].
func (tx *Tx) ActivateRecord(id string) error {
	const op = "activate record"
	n, err := tx.execBare(op, `UPDATE records SET state = 'active' WHERE id = ? AND state = 'pending'`, id)
	if err != nil || n == 1 {
		return err
	}
	var state string
	if err := tx.queryRow(op, []any{&state}, `SELECT state FROM records WHERE id = ?`, id); err != nil {
		return err
	}
	if state == store.StateActive {
		return nil
	}
	return fmt.Errorf("store: %s: record is %s: %w", op, state, store.ErrConflict)
}

// GetRecord returns the record with the given ID, or [ErrNotFound].
func (tx *Tx) GetRecord(id string) (*store.Record, error) {
	return tx.getRecord("get record", `id = ?`, id)
}

// GetRecordBySerial returns the record of the certificate with the given
// serial, or [ErrNotFound].
func (tx *Tx) GetRecordBySerial(serial string) (*store.Record, error) {
	s, err := store.NormalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	return tx.getRecord("get record by serial", `serial = ?`, s)
}

func (tx *Tx) getRecord(op, where string, arg any) (*store.Record, error) {
	var r *store.Record
	err := tx.query(op, func(rows Rows) (err error) {
		r, err = scanRecord(rows.Scan)
		return err
	}, `SELECT `+recordColumns+` FROM records WHERE `+where, arg)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	return r, nil
}

// ListRecords returns every record of a mailbox, oldest first.
func (tx *Tx) ListRecords(email string) ([]store.Record, error) {
	var out []store.Record
	err := tx.query("list records", func(rows Rows) error {
		r, err := scanRecord(rows.Scan)
		if err == nil {
			out = append(out, *r)
		}
		return err
	}, `SELECT `+recordColumns+` FROM records WHERE email = ? ORDER BY created_at, id`, email)
	return out, err
}

// ---------------------------------------------------------------------------
// Pending requests

const pendingColumns = `id, template, email, requester, name, csr, public_key, state, created_at, decided_by, decided_at, serial`

func scanPending(scan func(...any) error) (*store.Pending, error) {
	var (
		p                store.Pending
		created, decided sql.NullInt64
		serial           sql.NullString
	)
	if err := scan(&p.ID, &p.Template, &p.Email, &p.Requester, &p.Name, &p.CSR, &p.PublicKey, &p.State, &created, &p.DecidedBy,
		&decided, &serial); err != nil {
		return nil, err
	}
	p.CreatedAt, p.DecidedAt, p.Serial = tget(created), tget(decided), sget(serial)
	return &p, nil
}

// InsertPending stores a request waiting for approval. ID, Template,
// Requester and CSR are required. A duplicate ID gives [ErrConflict].
func (tx *Tx) InsertPending(p store.Pending) error {
	const op = "insert pending"
	serial, err := optSerial(p.Serial)
	if err != nil {
		return err
	}
	if p.State == "" {
		p.State = store.StatePending
	}
	switch {
	case p.ID == "" || p.Template == "" || p.Requester == "":
		return invalid(op, "id, template and requester are required")
	case len(p.CSR) == 0:
		return invalid(op, "empty csr")
	case !oneOf(p.State, store.StatePending, store.StateIssued, store.StateDenied):
		return invalid(op, "state %q", p.State)
	}
	_, err = tx.exec(op, `INSERT INTO pending (`+pendingColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		p.ID, p.Template, p.Email, p.Requester, p.Name, p.CSR, p.PublicKey, p.State, orNow(p.CreatedAt).UnixMicro(), p.DecidedBy,
		tval(p.DecidedAt), sval(serial))
	return err
}

// GetPending returns the pending request with the given ID, or [ErrNotFound].
func (tx *Tx) GetPending(id string) (*store.Pending, error) {
	const op = "get pending"
	var p *store.Pending
	err := tx.query(op, func(rows Rows) (err error) {
		p, err = scanPending(rows.Scan)
		return err
	}, `SELECT `+pendingColumns+` FROM pending WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("store: %s: %w", op, store.ErrNotFound)
	}
	return p, nil
}

// ListPending returns the requests in the given state ("" for all), oldest
// first.
func (tx *Tx) ListPending(state string) ([]store.Pending, error) {
	const op = "list pending"
	q, args := `SELECT `+pendingColumns+` FROM pending`, []any{}
	if state != "" {
		if !oneOf(state, store.StatePending, store.StateIssued, store.StateDenied) {
			return nil, invalid(op, "state %q", state)
		}
		q, args = q+` WHERE state = ?`, append(args, state)
	}
	var out []store.Pending
	err := tx.query(op, func(rows Rows) error {
		p, err := scanPending(rows.Scan)
		if err == nil {
			out = append(out, *p)
		}
		return err
	}, q+` ORDER BY created_at, id`, args...)
	return out, err
}

// DecidePending records the decision on a pending request: state issued
// (serial required) or denied (serial must be empty), by whom. A request
// already decided gives [ErrConflict], an unknown one [ErrNotFound]. The
// decision time is now; use [Tx.DecidePendingAt] to pass the clock.
func (tx *Tx) DecidePending(id, state, by, serial string) error {
	return tx.DecidePendingAt(id, state, by, serial, time.Now())
}

// DecidePendingAt is [Tx.DecidePending] with the decision time given.
func (tx *Tx) DecidePendingAt(id, state, by, serial string, at time.Time) error {
	const op = "decide pending"
	s, err := optSerial(serial)
	if err != nil {
		return err
	}
	switch {
	case by == "":
		return invalid(op, "no decider")
	case state == store.StateIssued && s == "":
		return invalid(op, "issued needs a serial")
	case state == store.StateDenied && s != "":
		return invalid(op, "denied with a serial")
	case state != store.StateIssued && state != store.StateDenied:
		return invalid(op, "state %q", state)
	}
	n, err := tx.exec(op, `UPDATE pending SET state = ?, decided_by = ?, decided_at = ?, serial = ?
		WHERE id = ? AND state = 'pending'`, state, by, tval(orNow(at)), sval(s), id)
	if err != nil || n == 1 {
		return err
	}
	var cur string
	if err := tx.queryRow(op, []any{&cur}, `SELECT state FROM pending WHERE id = ?`, id); err != nil {
		return err
	}
	return fmt.Errorf("store: %s: request already %s: %w", op, cur, store.ErrConflict)
}

// ---------------------------------------------------------------------------
// Recovery sets

// InsertRecoverySet stores a new recovery set and returns its epoch: one
// more than the latest (the first is 1). Quorum must be in 1..len(KRASerials),
// at most 255 KRAs, serials distinct.
func (tx *Tx) InsertRecoverySet(rs store.RecoverySet) (uint32, error) {
	const op = "insert recovery set"
	if err := tx.check(true); err != nil {
		return 0, fmt.Errorf("store: %s: %w", op, err)
	}
	n := len(rs.KRASerials)
	switch {
	case n == 0 || n > 255:
		return 0, invalid(op, "%d KRAs, want 1..255", n)
	case rs.Quorum < 1 || rs.Quorum > n:
		return 0, invalid(op, "quorum %d of %d", rs.Quorum, n)
	case rs.CreatedBy == "":
		return 0, invalid(op, "no creator")
	}
	serials := make([]string, n)
	seen := make(map[string]bool, n)
	for i, s := range rs.KRASerials {
		c, err := store.NormalizeSerial(s)
		if err != nil {
			return 0, err
		}
		if seen[c] {
			return 0, invalid(op, "KRA %s listed twice", c)
		}
		seen[c], serials[i] = true, c
	}
	var last int64
	if err := tx.queryRow(op, []any{&last}, `SELECT coalesce(max(epoch), 0) FROM recovery_sets`); err != nil {
		return 0, err
	}
	if last >= 1<<32-1 {
		return 0, invalid(op, "epochs exhausted")
	}
	epoch := last + 1
	if _, err := tx.exec(op, `INSERT INTO recovery_sets (epoch, quorum, created_at, created_by) VALUES (?, ?, ?, ?)`,
		epoch, rs.Quorum, orNow(rs.CreatedAt).UnixMicro(), rs.CreatedBy); err != nil {
		return 0, err
	}
	for i, s := range serials {
		if _, err := tx.exec(op, `INSERT INTO recovery_set_kras (epoch, position, serial) VALUES (?, ?, ?)`,
			epoch, i, s); err != nil {
			return 0, err
		}
	}
	return uint32(epoch), nil
}

// CurrentRecoverySet returns the latest recovery set, or [ErrNotFound] if
// there is none yet.
func (tx *Tx) CurrentRecoverySet() (*store.RecoverySet, error) {
	return tx.getRecoverySet("current recovery set",
		`SELECT epoch, quorum, created_at, created_by FROM recovery_sets ORDER BY epoch DESC LIMIT 1`)
}

// CurrentEpoch returns the epoch of the current recovery set, 0 if there is none.
func (tx *Tx) CurrentEpoch() (uint32, error) {
	var epoch int64
	err := tx.queryRow("current epoch", []any{&epoch}, `SELECT coalesce(max(epoch), 0) FROM recovery_sets`)
	return uint32(epoch), err
}

// GetRecoverySet returns the recovery set of an epoch, or [ErrNotFound].
func (tx *Tx) GetRecoverySet(epoch uint32) (*store.RecoverySet, error) {
	return tx.getRecoverySet("get recovery set",
		`SELECT epoch, quorum, created_at, created_by FROM recovery_sets WHERE epoch = ?`, int64(epoch))
}

func (tx *Tx) getRecoverySet(op, query string, args ...any) (*store.RecoverySet, error) {
	var (
		rs      store.RecoverySet
		epoch   int64
		created sql.NullInt64
	)
	if err := tx.queryRow(op, []any{&epoch, &rs.Quorum, &created, &rs.CreatedBy}, query, args...); err != nil {
		return nil, err
	}
	rs.Epoch, rs.CreatedAt = uint32(epoch), tget(created)
	err := tx.query(op, func(rows Rows) error {
		var s string
		err := rows.Scan(&s)
		rs.KRASerials = append(rs.KRASerials, s)
		return err
	}, `SELECT serial FROM recovery_set_kras WHERE epoch = ? ORDER BY position`, epoch)
	if err != nil {
		return nil, err
	}
	return &rs, nil
}

// ---------------------------------------------------------------------------
// Sweeping

// SweepPending cleans up after enrollments that never finished (a crash, a
// lost client): certificates pending since before olderThan become failed and
// the enrollment codes claimed for them are released (when the code's serial
// is that certificate's); records pending since before olderThan become
// abandoned.
func (tx *Tx) SweepPending(olderThan time.Time) (store.Swept, error) {
	const op = "sweep pending"
	var sw store.Swept
	if olderThan.IsZero() {
		return sw, invalid(op, "zero time")
	}
	t := olderThan.UnixMicro()
	// From the pending certificates (the partial index certificates_pending) to their codes,
	// never the other way round: the codes are many, the pending certificates few.
	n, err := tx.exec(op, `UPDATE codes SET used_at = NULL, serial = NULL
		WHERE id IN (SELECT c.code_id FROM certificates c WHERE c.state = 'pending' AND c.created_at < ?1)
		AND EXISTS (SELECT 1 FROM certificates c WHERE c.serial = codes.serial AND c.code_id = codes.id
			AND c.state = 'pending' AND c.created_at < ?1)`, t)
	if err != nil {
		return sw, err
	}
	sw.Codes = int(n)
	if n, err = tx.exec(op, `UPDATE certificates SET state = 'failed' WHERE state = 'pending' AND created_at < ?`, t); err != nil {
		return sw, err
	}
	sw.Certificates = int(n)
	if n, err = tx.exec(op, `UPDATE records SET state = 'abandoned' WHERE state = 'pending' AND created_at < ?`, t); err != nil {
		return sw, err
	}
	sw.Records = int(n)
	return sw, nil
}
