package escrow

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// This file holds the entry points the bulk pipeline (escrow/bulk) needs: the steps of an
// archiving issuance exposed one by one, so that the pipeline can run them in separate stages
// and add its own job bookkeeping to the issuance's transactions.

// SealedRecord is an escrow record sealed for a serial, ready to be committed.
type SealedRecord struct {
	ID    string
	Blob  []byte
	Epoch uint32
	// Fingerprint is the key's [PublicKeyFingerprint], for the audit entry (computed when
	// sealing, outside the store's writer).
	Fingerprint string
}

// ShareHash is the RSA-OAEP hash the escrow shares (and anything else the appliance wraps to a
// key of its kind of token) are encrypted with.
func (s *Service) ShareHash() crypto.Hash { return s.shareHash() }

// SealForIssue seals pkcs8 for the recovery set rs, binding this CA as issuer and serial, the
// serial the certificate will be issued with. It calls no HSM.
func (s *Service) SealForIssue(rs *RecoverySet, serial *big.Int, pub crypto.PublicKey, pkcs8 []byte) (*SealedRecord, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrInvalidRequest, err)
	}
	return s.sealRecord(rs, s.issuerName(), serial.Bytes(), spki, pkcs8)
}

// SealForImport seals pkcs8, the private key of cert (a certificate of another CA), binding
// cert's issuer and serial. It calls no HSM.
func (s *Service) SealForImport(rs *RecoverySet, cert *x509.Certificate, pkcs8 []byte) (*SealedRecord, error) {
	// The record binds the certificate's own SPKI encoding, and its fingerprint is the hash of
	// those bytes: crypto/x509 parses only the DER that MarshalPKIXPublicKey writes (RSA with
	// NULL parameters, named curves, uncompressed points), so that is the key's
	// PublicKeyFingerprint without encoding the key again (TestImportFingerprintIsCanonical).
	return s.sealRecord(rs, issuerOf(cert), cert.SerialNumber.Bytes(), cert.RawSubjectPublicKeyInfo, pkcs8)
}

// CheckKeyPair parses a PKCS#8 private key and checks that it is the pair of pub; a mismatch or
// a malformed key is an [ErrInvalidRequest].
func CheckKeyPair(pkcs8 []byte, pub crypto.PublicKey) error { return checkKeyPair(pkcs8, pub) }

// OpenEnvelope opens a client's CMS envelope to the transport certificate (in the token) and
// returns the PKCS#8 key inside, which the caller must clear.
func (s *Service) OpenEnvelope(envelope []byte) ([]byte, error) {
	if s.Transport == nil {
		return nil, fmt.Errorf("%w: no transport key configured", ErrNoRecoverySet)
	}
	pkcs8, err := cms.Decrypt(envelope, s.Transport.Cert, s.Transport.Key)
	if err != nil {
		return nil, envelopeError(err)
	}
	return pkcs8, nil
}

// ReservedIssue is one archiving issuance whose serial and sealed record are already made.
type ReservedIssue struct {
	Template *policy.Template
	Pub      crypto.PublicKey
	Mailbox  string
	Serial   *big.Int
	Record   *SealedRecord
	// Reserve runs inside the first transaction (the reservation); its error aborts the
	// issuance before anything is signed.
	Reserve func(tx *store.Tx, serial string) error
	// Prepare, when set, runs after signing and before the last transaction, outside any
	// transaction (for slow work such as building a PKCS#12); an error undoes the issuance.
	Prepare func(cert *x509.Certificate) error
	// Finish runs inside the last transaction, with the signed certificate; an error there
	// undoes the issuance.
	Finish func(tx *store.Tx, cert *x509.Certificate) error
}

// ErrReserved: the Reserve hook refused the reservation (for a bulk item: it is already done).
var ErrReserved = errors.New("escrow: reservation refused")

// IssueReserved runs the three-step issuance protocol (see the package documentation) for an
// archiving template with a record sealed beforehand: reservation and record in one
// transaction, signing, then the certificate, the record's activation and Finish in a second
// one. A failure after the reservation marks the certificate failed and its record abandoned;
// a crash leaves them to [Service.Sweep]. The final transaction is not cancelled by ctx once the
// certificate is signed.
func (s *Service) IssueReserved(ctx context.Context, r ReservedIssue) (*Issued, error) {
	res, err := s.reservation(r, s.now())
	if err != nil {
		return nil, err
	}
	if err := s.Store.Update(ctx, func(tx *store.Tx) error { return reserveAll(tx, []*reservation{res}) }); err != nil {
		return nil, reserveError(err)
	}
	cert, err := s.signReserved(res)
	if err == nil {
		err = s.Store.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error { return s.finishReserved(ctx, tx, res, cert) })
	}
	if err != nil {
		s.undo(res.serialHex)
		return nil, fmt.Errorf("escrow: issue certificate: %w", err)
	}
	return s.issued(res, cert), nil
}

// BatchResult is the outcome of one issuance of [Service.IssueReservedBatch].
type BatchResult struct {
	Issued *Issued
	Err    error
}

// IssueReservedBatch is [Service.IssueReserved] for many issuances at once, with the same
// protocol and guarantees: one transaction reserves them all (with their records), they are
// signed on up to signers goroutines, and one transaction finishes those signed. Two commits
// serve the whole batch instead of two per issuance. If the batch's reservation fails (one
// item's Reserve hook refuses, a conflict), every item is issued on its own instead, so a bad
// item fails alone. The results are in the order of rs.
func (s *Service) IssueReservedBatch(ctx context.Context, rs []ReservedIssue, signers int) []BatchResult {
	return s.IssueReservedBatchWait(ctx, rs, signers, nil)
}

// StorageWait is called when a step of an issuance fails for a fault of the storage (the error
// wraps [store.ErrUnavailable]). It pauses (a back-off) and reports whether to try the same step
// again; false gives up (the caller is stopping).
type StorageWait func(err error) bool

// IssueReservedBatchWait is [Service.IssueReservedBatch] that rides out faults of the storage:
// a reservation or a finishing transaction that fails for the storage's fault is tried again,
// after wait, as long as wait says so, and nothing is undone meanwhile (a signed certificate is
// kept and committed once the storage is back). A storage fault never makes an item fail on its
// own: when wait gives up (or is nil), every item of the failed step gets that fault as its
// error; certificates signed but not committed are left pending, for [Service.Sweep] or the
// bulk job's next pass to mark failed. Other errors behave as in IssueReservedBatch.
func (s *Service) IssueReservedBatchWait(ctx context.Context, rs []ReservedIssue, signers int, wait StorageWait) []BatchResult {
	out := make([]BatchResult, len(rs))
	now := s.now()
	var (
		res []*reservation
		at  []int // res[k] is rs[at[k]]
	)
	for i, r := range rs {
		rv, err := s.reservation(r, now)
		if err != nil {
			out[i].Err = err
			continue
		}
		res, at = append(res, rv), append(at, i)
	}
	if len(res) == 0 {
		return out
	}
	err := retryStorage(wait, func() error {
		return s.Store.Update(ctx, func(tx *store.Tx) error { return reserveAll(tx, res) })
	})
	switch {
	case err == nil:
	case errors.Is(err, store.ErrUnavailable), ctx.Err() != nil:
		// Nothing was reserved: the items are neither issued nor failed.
		for k := range res {
			out[at[k]].Err = fmt.Errorf("escrow: reserve serial: %w", err)
		}
		return out
	default:
		forEach(len(res), signers, func(k int) {
			out[at[k]].Issued, out[at[k]].Err = s.IssueReserved(ctx, rs[at[k]])
		})
		return out
	}
	certs := make([]*x509.Certificate, len(res))
	errs := make([]error, len(res))
	forEach(len(res), signers, func(k int) { certs[k], errs[k] = s.signReserved(res[k]) })
	finish := func(tx *store.Tx, k int) error { return s.finishReserved(ctx, tx, res[k], certs[k]) }
	err = retryStorage(wait, func() error {
		return s.Store.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error {
			for k := range res {
				if errs[k] == nil {
					if err := finish(tx, k); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	if err != nil {
		// The storage gave up, or one item spoiled the last transaction: finish them one by one
		// (each one ends at once under a storage fault that wait gave up on).
		for k := range res {
			if errs[k] == nil {
				errs[k] = s.Store.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error { return finish(tx, k) })
			}
		}
	}
	for k, rv := range res {
		if errs[k] != nil {
			if !errors.Is(errs[k], store.ErrUnavailable) {
				s.undo(rv.serialHex)
			}
			out[at[k]].Err = fmt.Errorf("escrow: issue certificate: %w", errs[k])
			continue
		}
		out[at[k]].Issued = s.issued(rv, certs[k])
	}
	return out
}

// retryStorage runs step until it succeeds, fails for another reason than a fault of the
// storage, or wait (nil: never) gives up.
func retryStorage(wait StorageWait, step func() error) error {
	for {
		err := step()
		if err == nil || !errors.Is(err, store.ErrUnavailable) || wait == nil || !wait(err) {
			return err
		}
	}
}

// forEach runs f(0..n-1) on up to workers goroutines.
func forEach(n, workers int, f func(k int)) {
	if workers < 1 {
		workers = 1
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, workers) {
		wg.Go(func() {
			for k := int(next.Add(1)) - 1; k < n; k = int(next.Add(1)) - 1 {
				f(k)
			}
		})
	}
	wg.Wait()
}

// reservation is a checked ReservedIssue with the rows of its reservation and its request to
// the CA.
type reservation struct {
	r         ReservedIssue
	serialHex string
	cert      store.Certificate
	rec       store.Record
	req       ca.Request
}

func (s *Service) reservation(r ReservedIssue, now time.Time) (*reservation, error) {
	t := r.Template
	if t == nil || r.Record == nil || r.Serial == nil {
		return nil, fmt.Errorf("%w: incomplete reserved issuance", ErrInvalidRequest)
	}
	if !t.Archive {
		return nil, fmt.Errorf("%w: template %q does not archive keys", ErrInvalidRequest, t.Name)
	}
	serialHex := store.FormatSerial(r.Serial)
	res := &reservation{r: r, serialHex: serialHex,
		cert: store.Certificate{Serial: serialHex, Template: t.Name, Email: r.Mailbox, Subject: "CN=" + r.Mailbox,
			State: store.StatePending, CreatedAt: now, RecordID: r.Record.ID},
		rec: store.Record{ID: r.Record.ID, Serial: serialHex, Email: r.Mailbox, Epoch: r.Record.Epoch,
			Blob: r.Record.Blob, State: store.StatePending, CreatedAt: now},
		req: ca.Request{
			Serial:             r.Serial,
			PublicKey:          r.Pub,
			KeyUsage:           t.KeyUsageFor(r.Pub),
			ExtKeyUsage:        extKeyUsages(t),
			UnknownExtKeyUsage: unknownExtKeyUsages(t),
			NotBefore:          now,
			Validity:           time.Duration(t.ValidityDays) * 24 * time.Hour,
			EmailAddresses:     []string{r.Mailbox},
		},
	}
	res.req.Subject.CommonName = r.Mailbox
	return res, nil
}

// reserveAll is the first transaction: the Reserve hooks, then the pending certificates and
// their records.
func reserveAll(tx *store.Tx, res []*reservation) error {
	certs := make([]store.Certificate, len(res))
	recs := make([]store.Record, len(res))
	for k, rv := range res {
		if rv.r.Reserve != nil {
			if err := rv.r.Reserve(tx, rv.serialHex); err != nil {
				return fmt.Errorf("%w: %w", ErrReserved, err)
			}
		}
		certs[k], recs[k] = rv.cert, rv.rec
	}
	if err := tx.InsertCertificates(certs); err != nil {
		return err
	}
	return tx.InsertRecords(recs)
}

func reserveError(err error) error {
	if errors.Is(err, ErrReserved) {
		return err
	}
	return fmt.Errorf("escrow: reserve serial: %w", err)
}

// signReserved is the second step: the CA signs, then Prepare runs.
func (s *Service) signReserved(res *reservation) (*x509.Certificate, error) {
	cert, err := s.Issuer.Issue(res.req)
	if err == nil && res.r.Prepare != nil {
		err = res.r.Prepare(cert)
	}
	return cert, err
}

// finishReserved is the last transaction's work for one issuance: the certificate, the
// record's activation, the audit entry and Finish.
func (s *Service) finishReserved(ctx context.Context, tx *store.Tx, res *reservation, cert *x509.Certificate) error {
	r := res.r
	if err := tx.SetCertificateIssued(res.serialHex, cert.Raw, cert.NotBefore, cert.NotAfter); err != nil {
		return err
	}
	if err := tx.ActivateRecord(r.Record.ID); err != nil {
		return err
	}
	if err := s.audit(tx, audit.KindArchive, actorFrom(ctx), r.Mailbox, audit.Details{Template: r.Template.Name, Serial: res.serialHex,
		Mailbox: r.Mailbox, Record: r.Record.ID, Epoch: r.Record.Epoch, NotAfter: cert.NotAfter.UTC().Format(time.RFC3339),
		Fingerprint: []string{r.Record.Fingerprint}}); err != nil {
		return err
	}
	if r.Finish != nil {
		return r.Finish(tx, cert)
	}
	return nil
}

func (s *Service) issued(res *reservation, cert *x509.Certificate) *Issued {
	if s.Metrics != nil {
		s.Metrics.Enrolled(res.r.Template.Name, true)
	}
	return &Issued{Certificate: cert, Serial: res.serialHex, RecordID: res.r.Record.ID}
}

// CommitImport stores a certificate of another CA with its sealed record (active at once: the
// certificate exists already) in one transaction, with extra (the job bookkeeping) in the same
// transaction. A serial already in the archive is an [ErrInvalidRequest].
func (s *Service) CommitImport(ctx context.Context, cert *x509.Certificate, mailbox string, rec *SealedRecord, extra func(tx *store.Tx) error) error {
	serialHex := store.FormatSerial(cert.SerialNumber)
	now := s.now()
	err := s.Store.Update(ctx, func(tx *store.Tx) error {
		return s.insertImport(tx, cert, mailbox, rec, now, extra)
	})
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: a certificate with serial %s is already in the archive", ErrInvalidRequest, serialHex)
	}
	if err != nil {
		return fmt.Errorf("escrow: store imported record: %w", err)
	}
	return nil
}

// ImportItem is one imported certificate for [Service.CommitImports].
type ImportItem struct {
	Cert    *x509.Certificate
	Mailbox string
	Record  *SealedRecord
}

// CommitImports is [Service.CommitImport] for many items in one transaction, with a few
// multi-row statements and one audit entry that lists every item (per recovery-set epoch), not
// one entry each: a bulk import is one act, and its items' rows, not their audit entries, are
// what a migration of many thousands of keys spends its time writing. subject names the batch
// in the audit trail (the job), and extra runs in the same transaction (the job bookkeeping).
// If any item fails, none is stored and the error is returned, so the caller can retry them one
// by one.
func (s *Service) CommitImports(ctx context.Context, subject string, items []ImportItem, extra func(tx *store.Tx) error) error {
	now := s.now()
	certs := make([]store.Certificate, len(items))
	recs := make([]store.Record, len(items))
	for i, it := range items {
		certs[i], recs[i] = importedRows(it.Cert, it.Mailbox, it.Record, now)
	}
	err := s.Store.Update(ctx, func(tx *store.Tx) error {
		if err := tx.InsertCertificates(certs); err != nil {
			return err
		}
		if err := tx.InsertRecords(recs); err != nil {
			return err
		}
		for start := 0; start < len(items); {
			epoch := items[start].Record.Epoch
			end := start
			d := audit.Details{Template: TemplateImport, Epoch: epoch}
			for ; end < len(items) && items[end].Record.Epoch == epoch; end++ {
				d.Serials = append(d.Serials, recs[end].Serial)
				d.Mailboxes = append(d.Mailboxes, items[end].Mailbox)
				d.Records = append(d.Records, items[end].Record.ID)
				d.Fingerprint = append(d.Fingerprint, items[end].Record.Fingerprint)
			}
			d.Count = end - start
			if err := s.audit(tx, audit.KindArchive, actorFrom(ctx), subject, d); err != nil {
				return err
			}
			start = end
		}
		if extra != nil {
			return extra(tx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("escrow: store imported records: %w", err)
	}
	return nil
}

// importedRows are the rows of an imported certificate and its record, active at once (the
// certificate exists already).
func importedRows(cert *x509.Certificate, mailbox string, rec *SealedRecord, now time.Time) (store.Certificate, store.Record) {
	serialHex := store.FormatSerial(cert.SerialNumber)
	return store.Certificate{Serial: serialHex, Template: TemplateImport, Email: mailbox, Subject: cert.Subject.String(),
			State: store.StateIssued, DER: cert.Raw, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
			CreatedAt: now, RecordID: rec.ID},
		store.Record{ID: rec.ID, Serial: serialHex, Email: mailbox, Epoch: rec.Epoch,
			Blob: rec.Blob, State: store.StateActive, CreatedAt: now}
}

func (s *Service) insertImport(tx *store.Tx, cert *x509.Certificate, mailbox string, rec *SealedRecord, now time.Time, extra func(tx *store.Tx) error) error {
	row, recRow := importedRows(cert, mailbox, rec, now)
	if err := tx.InsertCertificate(row); err != nil {
		return err
	}
	if err := tx.InsertRecord(recRow); err != nil {
		return err
	}
	if err := s.audit(tx, audit.KindArchive, "local", mailbox, audit.Details{Template: TemplateImport, Serial: row.Serial,
		Mailbox: mailbox, Record: rec.ID, Epoch: rec.Epoch, NotAfter: cert.NotAfter.UTC().Format(time.RFC3339),
		Fingerprint: []string{rec.Fingerprint}}); err != nil {
		return err
	}
	if extra != nil {
		return extra(tx)
	}
	return nil
}
