package issue

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// TemplateImport names certificates archived from another CA: they are stored, not issued.
const TemplateImport = store.TemplateImport

// ImportItem is one certificate of another CA with its sealed private key.
type ImportItem struct {
	Cert    *x509.Certificate
	Mailbox string
	Record  *Record
}

// Import stores certificates of another CA with their records (active at once: the
// certificates exist already) in one transaction, with extra in the same transaction (the
// caller's bookkeeping), after the epoch check of the package documentation.
//
// With an empty subject, the audit trail gets an entry for each item. Otherwise subject names
// the batch (the job) and the trail gets one entry per recovery-set epoch that lists every
// item: a bulk import is one act, and its items' rows, not their audit entries, are what a
// migration of many thousands of keys spends its time writing.
//
// Items sealed for a replaced recovery set are left out; stale[i] reports item i. extra
// receives the indices of the items stored. If the transaction fails (one item spoils it, or
// the storage), nothing is stored and the error is returned, so the caller can retry the items
// one by one.
//
// # Errors
//
// [store.ErrConflict] (a serial already in the archive), [store.ErrKeyArchivedElsewhere],
// [store.ErrUnavailable], or the error of extra or of the audit trail.
func (p *Pipeline) Import(ctx context.Context, actor, subject string, items []ImportItem, extra func(tx store.Tx, stored []int) error) (stale []bool, err error) {
	now := p.now()
	certs := make([]store.Certificate, len(items))
	recs := make([]store.Record, len(items))
	for i, it := range items {
		certs[i], recs[i] = importedRows(it.Cert, it.Mailbox, it.Record, now)
	}
	err = p.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.CurrentEpoch()
		if err != nil {
			return err
		}
		stale = make([]bool, len(items))
		var (
			stored   []int
			liveCert []store.Certificate
			liveRec  []store.Record
		)
		for i, it := range items {
			if stale[i] = it.Record.Epoch != cur; !stale[i] {
				stored = append(stored, i)
				liveCert, liveRec = append(liveCert, certs[i]), append(liveRec, recs[i])
			}
		}
		if len(stored) > 0 {
			if err := tx.InsertCertificates(liveCert); err != nil {
				return err
			}
			if err := tx.InsertRecords(liveRec); err != nil {
				return err
			}
			if err := p.auditImports(tx, actorOr(actor), subject, items, recs, stored); err != nil {
				return err
			}
		}
		if extra != nil {
			return extra(tx, stored)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("issue: store imported records: %w", err)
	}
	return stale, nil
}

// auditImports writes the audit entries of the stored imports: one of its own for each item
// when subject is empty, else one per run of items of one epoch.
func (p *Pipeline) auditImports(tx store.Tx, actor, subject string, items []ImportItem, recs []store.Record, stored []int) error {
	if subject == "" {
		for _, i := range stored {
			it := items[i]
			if err := p.Audit(tx, audit.KindArchive, actor, it.Mailbox, audit.Details{Template: TemplateImport, Serial: recs[i].Serial,
				Mailbox: it.Mailbox, Record: it.Record.ID, Epoch: it.Record.Epoch, NotAfter: it.Cert.NotAfter.UTC().Format(time.RFC3339),
				Fingerprint: []string{it.Record.Fingerprint}}); err != nil {
				return err
			}
		}
		return nil
	}
	for start := 0; start < len(stored); {
		epoch := items[stored[start]].Record.Epoch
		end := start
		d := audit.Details{Template: TemplateImport, Epoch: epoch}
		for ; end < len(stored) && items[stored[end]].Record.Epoch == epoch; end++ {
			i := stored[end]
			d.Serials = append(d.Serials, recs[i].Serial)
			d.Mailboxes = append(d.Mailboxes, items[i].Mailbox)
			d.Records = append(d.Records, items[i].Record.ID)
			d.Fingerprint = append(d.Fingerprint, items[i].Record.Fingerprint)
		}
		d.Count = end - start
		if err := p.Audit(tx, audit.KindArchive, actor, subject, d); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// importedRows are the rows of an imported certificate and its record, active at once (the
// certificate exists already).
func importedRows(cert *x509.Certificate, mailbox string, rec *Record, now time.Time) (store.Certificate, store.Record) {
	serialHex := store.FormatSerial(cert.SerialNumber)
	return store.Certificate{Serial: serialHex, Template: TemplateImport, Email: mailbox, Subject: cert.Subject.String(),
			State: store.StateIssued, DER: cert.Raw, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
			CreatedAt: now, RecordID: rec.ID},
		store.Record{ID: rec.ID, Serial: serialHex, Email: mailbox, Epoch: rec.Epoch,
			Blob: rec.Blob, State: store.StateActive, CreatedAt: now}
}
