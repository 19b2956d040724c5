// Package check is keyarc's consistency check of the archive, in the spirit of a CA's
// certificate checker: every stored certificate is parsed and its signature verified against
// the CA; it must be the certificate the audit trail recorded at issuance (the SHA-256 of its
// DER); the row's columns that carry authority must say what the certificate and the issuance
// entry say (mailbox, subject, template, and for credentials the role and the KRA name); and its
// links must hold: the row's serial is the certificate's, its escrow record names the same
// serial and mailbox and was sealed for the certificate's public key and epoch.
//
// Nothing here trusts a row more than another: a byte flipped in a stored certificate, or a
// certificate row pointed at another user's escrow record while the appliance was stopped, is
// found and named. The audit trail's own integrity is [audit.Verify]'s job; this package reads
// the issuance entries it holds.
//
// # Where it runs
//
// At start-up over the most recent rows ([Checker.Recent]), in full on demand (`keyarc check`,
// and as part of `keyarc audit verify`), periodically while serving, and wherever a row is about
// to be trusted: each record of a recovery before the request is opened, approved or fetched
// ([Checker.Record]), and a credential's row before its role counts ([Checker.Certificate]).
//
// # Imports and concurrency
//
// check imports escrow/store, escrow/audit and escrow/record, never escrow (escrow imports it)
// nor hsm. A [Checker] holds no state between calls and is safe for concurrent use.
package check

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
)

// What a check finds. Each is wrapped in a [*Problem] naming the certificate, and every one
// wraps [ErrInconsistent].
var (
	// ErrInconsistent: a certificate fails the consistency check.
	ErrInconsistent = errors.New("check: certificate fails the consistency check")
	// ErrUnparsable: the stored DER is not a certificate.
	ErrUnparsable = fmt.Errorf("%w: stored certificate does not parse", ErrInconsistent)
	// ErrSignature: the certificate's signature does not verify against the CA.
	ErrSignature = fmt.Errorf("%w: signature does not verify against the CA", ErrInconsistent)
	// ErrAuditHash: the certificate is not the one its issuance entry recorded.
	ErrAuditHash = fmt.Errorf("%w: certificate differs from its audited issuance", ErrInconsistent)
	// ErrRowMismatch: a column of the row (serial, mailbox, subject, role, KRA name) or the
	// public key is not what the certificate says.
	ErrRowMismatch = fmt.Errorf("%w: certificate row does not match its certificate", ErrInconsistent)
	// ErrAuditRow: a column of the row (template, mailbox, role, KRA name) is not what the
	// issuance entry recorded.
	ErrAuditRow = fmt.Errorf("%w: certificate row differs from its audited issuance", ErrInconsistent)
	// ErrRecordLink: the certificate's escrow record link is broken.
	ErrRecordLink = fmt.Errorf("%w: escrow record link is inconsistent", ErrInconsistent)
)

// Problem is one certificate that fails the check.
type Problem struct {
	Serial string
	Err    error // one of the Err* sentinels of this package
	Detail string
}

func (p *Problem) Error() string {
	return fmt.Sprintf("certificate %s: %s", p.Serial, p.Detail)
}

// Unwrap returns the sentinel.
func (p *Problem) Unwrap() error { return p.Err }

// Report is the result of a check.
type Report struct {
	// Certificates is how many stored certificates were checked.
	Certificates int `json:"certificates"`
	// Unhashed counts certificates whose issuance entry predates recorded certificate hashes
	// (accepted), or that have no issuance entry in the trail (imported before the trail, or
	// the trail's older part is elsewhere).
	Unhashed int       `json:"unhashed"`
	Problems []Problem `json:"-"`
}

// Err returns nil when no problem was found, else an error listing them, which wraps the first
// problem (and so [ErrInconsistent]).
func (r *Report) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	var b strings.Builder
	for i := range r.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.Problems[i].Error())
	}
	return &problemsError{msg: fmt.Sprintf("check: %d of %d certificates fail the consistency check: %s", len(r.Problems), r.Certificates, b.String()), first: &r.Problems[0]}
}

// problemsError lists every problem of a report and wraps the first.
type problemsError struct {
	msg   string
	first *Problem
}

func (e *problemsError) Error() string { return e.msg }
func (e *problemsError) Unwrap() error { return e.first }

// Checker checks certificates against the CA, the audit trail and the escrow records.
type Checker struct {
	DB store.Store
	// CA is the issuing CA's certificate.
	CA *x509.Certificate
	// Foreign names templates whose certificates another CA signed (imports): their signature
	// is not checked against CA; their audited hash and links are.
	Foreign []string
}

// pageSize is how many rows a check reads at a time.
const pageSize = 500

// All checks every stored certificate. The returned error is the database's; what the check
// finds is in the report ([Report.Err]).
func (c *Checker) All(ctx context.Context) (*Report, error) {
	return c.run(ctx, 0)
}

// Recent checks the n most recently stored certificates.
func (c *Checker) Recent(ctx context.Context, n int) (*Report, error) {
	if n <= 0 {
		return &Report{}, nil
	}
	var last int64
	if err := c.DB.View(ctx, func(tx store.Tx) error {
		var err error
		last, err = tx.LastCertificatePosition()
		return err
	}); err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	return c.run(ctx, max(0, last-int64(n)))
}

// Certificate checks one certificate, by serial. It returns nil, a [*Problem] (wrapping
// [ErrInconsistent]), or the database's error.
func (c *Checker) Certificate(ctx context.Context, serial string) error {
	var p *Problem
	err := c.DB.View(ctx, func(tx store.Tx) error {
		row, err := tx.GetCertificate(serial)
		if err != nil {
			return err
		}
		p, err = c.single(tx, row)
		return err
	})
	if err != nil {
		return fmt.Errorf("check: certificate %s: %w", serial, err)
	}
	if p != nil {
		return p
	}
	return nil
}

// Record checks the escrow record id and the certificate it belongs to, as a recovery must
// before it trusts the record's owner: the record names a certificate, that certificate's row
// names the record back, and the certificate passes [Checker.Certificate]'s check (which
// compares the record's mailbox, serial, epoch and public key too). It returns nil, a
// [*Problem] (wrapping [ErrInconsistent]), or the database's error.
func (c *Checker) Record(ctx context.Context, id string) error {
	var p *Problem
	err := c.DB.View(ctx, func(tx store.Tx) error {
		rec, err := tx.GetRecord(id)
		if err != nil {
			return err
		}
		if rec.Serial == "" {
			p = &Problem{Serial: "(none)", Err: ErrRecordLink, Detail: fmt.Sprintf("escrow record %s names no certificate", id)}
			return nil
		}
		row, err := tx.GetCertificate(rec.Serial)
		if errors.Is(err, store.ErrNotFound) {
			p = &Problem{Serial: rec.Serial, Err: ErrRecordLink, Detail: fmt.Sprintf("escrow record %s names certificate %s, which does not exist", id, rec.Serial)}
			return nil
		}
		if err != nil {
			return err
		}
		if row.RecordID != rec.ID {
			p = &Problem{Serial: row.Serial, Err: ErrRecordLink, Detail: fmt.Sprintf("escrow record %s names this certificate, whose row names record %q", id, row.RecordID)}
			return nil
		}
		if rec.State == store.StateActive && (row.State == store.StateFailed || row.State == store.StatePending) {
			p = &Problem{Serial: row.Serial, Err: ErrRecordLink, Detail: fmt.Sprintf("escrow record %s is active but its certificate is %s (never delivered)", id, row.State)}
			return nil
		}
		p, err = c.single(tx, row)
		return err
	})
	if err != nil {
		return fmt.Errorf("check: record %s: %w", id, err)
	}
	if p != nil {
		return p
	}
	return nil
}

// entryTimes returns the times between which a row's issuance entry is searched: its
// created_at, and the certificate's notBefore (the issuer's clock at signing, which the CA
// signed: moving the row's created_at does not hide the entry). Foreign certificates carry
// another CA's notBefore, so only created_at counts for them.
func (c *Checker) entryTimes(row *store.Certificate) (from, to time.Time) {
	from, to = row.CreatedAt, row.CreatedAt
	cert, err := x509.ParseCertificate(row.DER)
	if err != nil || c.foreign(row, cert) {
		return from, to
	}
	if cert.NotBefore.Before(from) {
		from = cert.NotBefore
	}
	if cert.NotBefore.After(to) {
		to = cert.NotBefore
	}
	return from, to
}

// single checks one row with its issuance entry. The entry is searched from the row's time and
// from the certificate's notBefore (which the CA signed), so a row whose created_at was moved
// does not hide its entry.
func (c *Checker) single(tx store.Tx, row *store.Certificate) (*Problem, error) {
	earliest, latest := c.entryTimes(row)
	issued, err := issuanceEntries(tx, map[string]bool{row.Serial: true}, earliest, latest)
	if err != nil {
		return nil, err
	}
	return c.one(tx, row, issued[row.Serial])
}

// run checks the certificates stored after rowid after, a page at a time, each page in its own
// snapshot: a check of a large archive neither holds one long read transaction (which would
// keep SQLite from checkpointing its log) nor the whole table in memory.
func (c *Checker) run(ctx context.Context, after int64) (*Report, error) {
	rep := &Report{}
	for from := after; ; {
		var n int
		err := c.DB.View(ctx, func(tx store.Tx) error {
			page, last, err := tx.SignedCertificates(from, pageSize)
			if err != nil {
				return err
			}
			n, from = len(page), last
			return c.page(ctx, tx, page, rep)
		})
		if err != nil {
			return rep, fmt.Errorf("check: %w", err)
		}
		if n < pageSize {
			return rep, nil
		}
	}
}

// page checks one page of certificate rows.
func (c *Checker) page(ctx context.Context, tx store.Tx, rows []store.Certificate, rep *Report) error {
	want := make(map[string]bool, len(rows))
	var earliest, latest time.Time
	for i := range rows {
		r := &rows[i]
		if r.State == store.StateFailed {
			continue // signed but never delivered: kept on record, not in use
		}
		want[r.Serial] = true
		from, to := c.entryTimes(r)
		if earliest.IsZero() || from.Before(earliest) {
			earliest = from
		}
		if to.After(latest) {
			latest = to
		}
	}
	if len(want) == 0 {
		return nil
	}
	issued, err := issuanceEntries(tx, want, earliest, latest)
	if err != nil {
		return err
	}
	for i := range rows {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !want[rows[i].Serial] {
			continue
		}
		rep.Certificates++
		ie := issued[rows[i].Serial]
		if ie == nil || ie.hash == "" {
			rep.Unhashed++
		}
		p, err := c.one(tx, &rows[i], ie)
		if err != nil {
			return err
		}
		if p != nil {
			rep.Problems = append(rep.Problems, *p)
		}
	}
	return nil
}

// issuance is what the audit trail recorded when a certificate was issued. A field an entry
// does not hold is "": older entries lack some, and the check accepts that.
type issuance struct {
	seq         int64
	hash        string // SHA-256 of the DER, hex; "" in older entries
	record      string // escrow record ID, "" when none was named
	fingerprint string // SHA-256 of the SPKI, hex; "" when not recorded
	template    string // the template's name
	mailbox     string
	role        string // the credential's role (enroll entries of one certificate)
	kra         string // the KRA's name (enroll entries of one certificate)
}

var issuanceKinds = []string{string(audit.KindEnroll), string(audit.KindArchive)}

// An issuance entry is written after its certificate's row (reserved, then signed, then
// finished), by the same clock: the search for the entries of rows created from a time on
// starts entrySlack before it (room for a clock step) and ends entryWindow after the latest
// row's time, or as soon as every entry is found. An entry outside the window (an issuance
// paused that long) is not found: its certificate is still checked against the CA and its
// record, and counted as unhashed.
const (
	entrySlack  = time.Minute
	entryWindow = time.Hour
)

// issuanceEntries finds the issuance entries of the serials in want, certificates created
// between earliest and latest, reading the trail forward from where it reaches earliest; the
// first entry of a serial wins.
func issuanceEntries(tx store.Tx, want map[string]bool, earliest, latest time.Time) (map[string]*issuance, error) {
	out := make(map[string]*issuance, len(want))
	from, err := audit.SeqAt(tx, earliest.Add(-entrySlack))
	if err != nil {
		return nil, err
	}
	stop := latest.Add(entryWindow)
	for len(out) < len(want) {
		page, err := tx.AuditOfKindsFrom(issuanceKinds, from, pageSize)
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			from = e.Seq + 1
			if e.At.After(stop) {
				return out, nil
			}
			var d audit.Details
			if json.Unmarshal([]byte(e.Details), &d) != nil {
				continue // the trail's verification reports a damaged entry
			}
			serials, records := d.Serials, d.Records
			if d.Serial != "" {
				serials, records = []string{d.Serial}, []string{d.Record}
			}
			for i, s := range serials {
				if !want[s] || out[s] != nil {
					continue
				}
				is := &issuance{seq: e.Seq}
				if len(d.CertHash) == len(serials) {
					is.hash = d.CertHash[i]
				}
				if len(records) == len(serials) {
					is.record = records[i]
				}
				if len(d.Fingerprint) == len(serials) {
					is.fingerprint = d.Fingerprint[i]
				}
				is.template = d.Template
				switch {
				case d.Serial != "":
					is.mailbox, is.role, is.kra = d.Mailbox, d.Role, d.KRA
				case len(d.Mailboxes) == len(serials):
					is.mailbox = d.Mailboxes[i]
				}
				out[s] = is
			}
		}
		if len(page) < pageSize {
			break
		}
	}
	return out, nil
}

// one checks one certificate row. It returns the first problem found, or nil.
func (c *Checker) one(tx store.Tx, row *store.Certificate, is *issuance) (*Problem, error) {
	bad := func(err error, format string, args ...any) (*Problem, error) {
		return &Problem{Serial: row.Serial, Err: err, Detail: fmt.Sprintf(format, args...)}, nil
	}
	cert, err := x509.ParseCertificate(row.DER)
	if err != nil {
		return bad(ErrUnparsable, "the stored certificate does not parse: %v", err)
	}
	if !c.foreign(row, cert) {
		if err := cert.CheckSignatureFrom(c.CA); err != nil {
			return bad(ErrSignature, "its signature does not verify against the CA %q: %v", c.CA.Subject.String(), err)
		}
	}
	if s := store.FormatSerial(cert.SerialNumber); s != row.Serial {
		return bad(ErrRowMismatch, "the row of serial %s holds the certificate of serial %s", row.Serial, s)
	}
	sum := sha256.Sum256(row.DER)
	if is != nil && is.hash != "" && is.hash != hex.EncodeToString(sum[:]) {
		return bad(ErrAuditHash, "the stored certificate is not the one audit entry %d recorded at issuance (SHA-256 %s, stored %x)", is.seq, is.hash, sum)
	}
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if is != nil && is.fingerprint != "" && is.fingerprint != hex.EncodeToString(spki[:]) {
		return bad(ErrRowMismatch, "its public key is not the one audit entry %d recorded at issuance", is.seq)
	}
	if is != nil && is.record != "" && is.record != row.RecordID {
		return bad(ErrRecordLink, "its row names escrow record %q but audit entry %d recorded record %s", row.RecordID, is.seq, is.record)
	}
	if detail := c.columns(row, cert); detail != "" {
		return bad(ErrRowMismatch, "%s", detail)
	}
	if detail := auditedColumns(row, is); detail != "" {
		return bad(ErrAuditRow, "%s", detail)
	}
	if row.RecordID == "" {
		return nil, nil
	}
	rec, err := tx.GetRecord(row.RecordID)
	if errors.Is(err, store.ErrNotFound) {
		return bad(ErrRecordLink, "its row names escrow record %s, which does not exist", row.RecordID)
	}
	if err != nil {
		return nil, err
	}
	if rec.Serial != row.Serial {
		return bad(ErrRecordLink, "its row names escrow record %s, which belongs to certificate %s", rec.ID, rec.Serial)
	}
	if rec.Email != row.Email {
		return bad(ErrRecordLink, "its escrow record %s is stored as the key of mailbox %q, the certificate is %q's", rec.ID, rec.Email, row.Email)
	}
	sealed, err := record.Parse(rec.Blob)
	if err != nil {
		return bad(ErrRecordLink, "its escrow record %s does not parse: %v", rec.ID, err)
	}
	h := sealed.Header
	switch {
	case hex.EncodeToString(h.ID[:]) != rec.ID:
		return bad(ErrRecordLink, "its escrow record %s holds the sealed record %x", rec.ID, h.ID)
	case store.FormatSerial(new(big.Int).SetBytes(h.Serial)) != row.Serial:
		return bad(ErrRecordLink, "its escrow record %s was sealed for serial %x", rec.ID, h.Serial)
	case !bytes.Equal(h.SPKIHash[:], spki[:]):
		return bad(ErrRecordLink, "its escrow record %s was sealed for another public key", rec.ID)
	case h.Epoch != rec.Epoch:
		return bad(ErrRecordLink, "its escrow record %s is stored under recovery-set epoch %d but was sealed for epoch %d", rec.ID, rec.Epoch, h.Epoch)
	}
	return nil, nil
}

// columns compares the columns of a row that carry authority with the certificate, whose bytes
// the CA signed: the mailbox (the rfc822Name of the subject alternative name, which the
// appliance always writes for a mailbox and never without one), the subject, and for
// credentials the role (the subject's OU) and the KRA name (its CN). It returns what differs,
// or "". A foreign certificate (an import) was not made by this appliance: only its mailbox is
// compared, and only when it names one.
func (c *Checker) columns(row *store.Certificate, cert *x509.Certificate) string {
	emails := cert.EmailAddresses
	if c.foreign(row, cert) {
		if len(emails) > 0 && !slices.ContainsFunc(emails, func(e string) bool { return strings.EqualFold(e, row.Email) }) {
			return fmt.Sprintf("its row names mailbox %q, the certificate %s", row.Email, strings.Join(emails, ", "))
		}
		return ""
	}
	switch {
	case len(emails) > 1:
		return fmt.Sprintf("the certificate names %d mailboxes; this CA writes at most one", len(emails))
	case len(emails) == 1 && emails[0] != row.Email:
		return fmt.Sprintf("its row names mailbox %q, the certificate %q", row.Email, emails[0])
	case len(emails) == 0 && row.Email != "":
		return fmt.Sprintf("its row names mailbox %q, the certificate none", row.Email)
	}
	if s := cert.Subject.String(); s != row.Subject {
		return fmt.Sprintf("its row names subject %q, the certificate %q", row.Subject, s)
	}
	ou := cert.Subject.OrganizationalUnit
	cn := cert.Subject.CommonName
	switch row.Role {
	case "":
		if len(ou) > 0 {
			return fmt.Sprintf("its row holds no role, the certificate is issued for role %q", ou[0])
		}
	case roleKRA:
		if row.KRA == "" || cn != "KRA "+row.KRA+" (authentication)" {
			return fmt.Sprintf("its row makes it the authentication credential of KRA %q, the certificate is %q's", row.KRA, cn)
		}
	default:
		if len(ou) != 1 || ou[0] != row.Role {
			return fmt.Sprintf("its row grants role %q, the certificate is issued for %q", row.Role, strings.Join(ou, ", "))
		}
	}
	if row.KRA != "" && row.Role == "" && cn != "KRA "+row.KRA+" (key recovery)" {
		return fmt.Sprintf("its row makes it the unwrap certificate of KRA %q, the certificate is %q's", row.KRA, cn)
	}
	return ""
}

// foreign reports whether a row is a certificate another CA signed: its template is one of
// [Checker.Foreign] and its issuer is not this CA. A certificate of this CA whose row was
// relabelled with a foreign template is checked as this CA's (signature, columns).
func (c *Checker) foreign(row *store.Certificate, cert *x509.Certificate) bool {
	return slices.Contains(c.Foreign, row.Template) && !bytes.Equal(cert.RawIssuer, c.CA.RawSubject)
}

// roleKRA is the role of a KRA's authentication credential (policy.RoleKRA).
const roleKRA = "kra"

// auditedColumns compares the columns of a row with what its issuance entry recorded; a field
// the entry lacks (an older entry, a batch entry) is not compared. It returns what differs, or
// "".
func auditedColumns(row *store.Certificate, is *issuance) string {
	if is == nil {
		return ""
	}
	for _, f := range []struct{ name, recorded, stored string }{
		{"template", is.template, row.Template},
		{"mailbox", is.mailbox, row.Email},
		{"role", is.role, row.Role},
		{"KRA", is.kra, row.KRA},
	} {
		if f.recorded != "" && f.recorded != f.stored {
			return fmt.Sprintf("its row holds %s %q but audit entry %d recorded %q at issuance", f.name, f.stored, is.seq, f.recorded)
		}
	}
	return ""
}
