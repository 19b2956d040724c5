// Package issue is keyarc's one issuance pipeline: every certificate the CA signs (a single
// enrollment, EST serverkeygen, a bulk enroll or keygen item, a KRA or role credential) and
// every key imported from another CA is committed through it, archiving ones in batches of one
// or many.
//
// # The protocol
//
// An issuance goes through three durable steps, so that no certificate of an archiving
// template can exist without its escrow record:
//
//  1. reserve: one store transaction runs each request's Reserve hook (claim an enrollment
//     code, reserve a bulk item), inserts the pending certificate rows and writes the sealed
//     escrow records;
//  2. sign: the CA signs each reserved certificate (then the request's Prepare hook runs);
//  3. finish: one transaction stores the certificates, activates the records, appends their
//     audit entries and runs each Finish hook.
//
// If step 2 or 3 fails, a compensating transaction marks the row failed (which frees its code
// and abandons its record). If the storage refuses that transaction too, an [Undoer] retries
// it in the background until the storage answers, so that a fault of the appliance does not
// cost an enrollee their code. A crash leaves the rows pending for the engine's start-up sweep.
// An undo only ever changes a pending row: a certificate that was returned has its record
// committed, and nothing undoes it.
//
// A certificate that archives no key has no record to commit first: the CA signs, then one
// transaction claims the code and stores the certificate ([Pipeline.IssueDirect]).
//
// An import has one step: the certificate exists already, so its row and record are stored
// active at once, with its audit entry, in one transaction ([Pipeline.Import]).
//
// # The recovery-set epoch
//
// Every transaction that commits a record (step 1, and an import) reads the current
// recovery-set epoch and refuses each record sealed for another one with
// [ErrRecoverySetChanged]: no record is committed for a set an admin has replaced. Only the
// stale items of a batch are refused; the others are committed. The check lives here so that no
// caller can forget it. What to do with a refused item is the caller's choice: the engine
// seals a single enrollment's key again for the new set and retries once; the bulk pipeline
// leaves the item without an outcome and takes it again, sealed for the new set (see
// escrow/bulk). Neither keeps key material longer than it did before.
//
// # Imports
//
// issue uses escrow/store, escrow/ca, escrow/audit and policy. It must not import escrow (the
// engine that calls it), escrow/bulk, hsm, or any database driver: the CA signs through the
// crypto.Signer its [ca.Issuer] holds.
//
// # Concurrency
//
// A Pipeline is safe for concurrent use once its fields are set; the store group-commits the
// transactions of concurrent batches. Hooks run on the store's writer goroutine (Reserve,
// Finish) or on a signing goroutine (Prepare), and must not block on another issuance.
package issue

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Errors of the pipeline.
var (
	// ErrRecoverySetChanged: the record was sealed for a recovery set that is no longer the
	// current one when it was to be committed; nothing of the item was stored. Seal the key
	// again for the current set and retry.
	ErrRecoverySetChanged = errors.New("issue: the recovery set changed while the key was being sealed")
	// ErrReserved: a request's Reserve hook refused the reservation; the hook's error is
	// wrapped too.
	ErrReserved = errors.New("issue: reservation refused")
	// ErrInvalid: the request is incomplete or its template archives no key.
	ErrInvalid = errors.New("issue: invalid issuance")
)

// Record is an escrow record sealed for a serial, ready to be committed.
type Record struct {
	ID    string
	Blob  []byte
	Epoch uint32
	// Fingerprint is the key's public-key fingerprint (hex SHA-256 of its SPKI), for the
	// audit entry.
	Fingerprint string
}

// AuditFunc appends an audit entry in tx, the transaction of the change it records; an error
// refuses the change.
type AuditFunc func(tx store.Tx, kind audit.Kind, actor, subject string, d audit.Details) error

// StorageWait is called when a step fails for a fault of the storage (the error wraps
// [store.ErrUnavailable]). It pauses (a back-off) and reports whether to try the same step
// again; false gives up.
type StorageWait func(err error) bool

// Pipeline runs issuances. Fill the fields, then use it.
type Pipeline struct {
	Store  store.Store
	Issuer *ca.Issuer
	// Audit writes the entries of issuances and imports; it is required.
	Audit AuditFunc
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// Issued, when set, learns of each certificate issued by [Pipeline.Issue] (metrics).
	Issued func(template string)
	// Undoer, when set, takes over the undos that the storage refused (see [Undoer]); share
	// one between the pipelines of a process. Nil leaves them to the start-up sweep.
	Undoer *Undoer
	// UndoOnFault makes [Pipeline.Issue] undo an item whose last transaction the storage
	// refused, instead of leaving it pending. Set it when nobody takes the item again: a
	// single enrollment answers "retry later", and the retry needs its code back. Leave it
	// unset for a bulk job, whose next pass takes its pending items again.
	UndoOnFault bool
}

func (p *Pipeline) now() time.Time {
	if p.Now != nil {
		return p.Now().UTC()
	}
	return time.Now().UTC()
}

func (p *Pipeline) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Request is one archiving issuance whose serial and sealed record are already made.
type Request struct {
	Template *policy.Template
	Pub      crypto.PublicKey
	Mailbox  string
	Serial   *big.Int
	Record   *Record
	// CodeID is the enrollment code the reservation claims, if any.
	CodeID string
	// Actor names who acts, for the audit entry.
	Actor string
	// Reserve runs inside the reservation transaction; its error aborts the issuance before
	// anything is signed.
	Reserve func(tx store.Tx, serial string) error
	// Prepare, when set, runs after signing and before the last transaction, outside any
	// transaction (for slow work such as building a PKCS#12); an error undoes the issuance.
	Prepare func(cert *x509.Certificate) error
	// Finish runs inside the last transaction, with the signed certificate; an error there
	// undoes the issuance.
	Finish func(tx store.Tx, cert *x509.Certificate) error
}

// Result is the outcome of one request of [Pipeline.Issue].
type Result struct {
	Certificate *x509.Certificate
	Serial      string
	RecordID    string
	Err         error
}

// Issue runs the protocol of the package documentation for a batch of requests: one
// transaction reserves them all (with their records, after the epoch check), they are signed on
// up to signers goroutines, and one transaction finishes those signed. A request of a batch of
// one is the single enrollment. The results are in the order of reqs.
//
// A storage fault ([store.ErrUnavailable]) in a reservation or a finishing transaction is
// ridden out with wait (nil: not at all): when wait gives up, every item of the failed step gets
// the fault as its error. Certificates signed but not committed (never returned) stay pending
// for the sweep or the bulk job's next pass, unless [Pipeline.UndoOnFault] is set: then they
// are undone (marked failed, their codes released), at once or, while the storage still
// refuses, by the [Pipeline.Undoer] as soon as it answers. If a batch's
// reservation fails for another reason (a hook refuses one item, a conflict, a key archived
// for another mailbox), each item is issued on its own, so a bad item fails alone.
//
// # Errors
//
// Per item: [ErrRecoverySetChanged] (nothing stored), [ErrReserved] wrapping the hook's error,
// [ErrInvalid], the store's sentinels ([store.ErrCodeUsed], [store.ErrCodeExpired],
// [store.ErrKeyArchivedElsewhere], [store.ErrConflict], [store.ErrUnavailable]), or the
// CA's ([ca.ErrLint]).
func (p *Pipeline) Issue(ctx context.Context, reqs []Request, signers int, wait StorageWait) []Result {
	out := make([]Result, len(reqs))
	now := p.now()
	var (
		res []*reservation
		at  []int // res[k] is reqs[at[k]]
	)
	for i, r := range reqs {
		rv, err := newReservation(r, now)
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
		return p.Store.Update(ctx, func(tx store.Tx) error { return reserve(tx, res) })
	})
	switch {
	case err == nil:
	case errors.Is(err, store.ErrUnavailable), ctx.Err() != nil, len(res) == 1:
		// Nothing was reserved: the items are neither issued nor failed.
		for k := range res {
			out[at[k]].Err = reserveError(err)
		}
		return out
	default:
		forEach(len(res), signers, func(k int) {
			out[at[k]] = p.Issue(ctx, []Request{res[k].r}, 1, wait)[0]
		})
		return out
	}
	// Stale items (sealed for a replaced recovery set) were left out of the reservation.
	live := res[:0:0]
	liveAt := at[:0:0]
	for k, rv := range res {
		if rv.stale {
			out[at[k]].Err = fmt.Errorf("%w (record sealed for epoch %d)", ErrRecoverySetChanged, rv.r.Record.Epoch)
			continue
		}
		live, liveAt = append(live, rv), append(liveAt, at[k])
	}
	res, at = live, liveAt
	certs := make([]*x509.Certificate, len(res))
	errs := make([]error, len(res))
	forEach(len(res), signers, func(k int) { certs[k], errs[k] = p.sign(res[k]) })
	finish := func(tx store.Tx, k int) error { return p.finish(tx, res[k], certs[k], false) }
	err = retryStorage(wait, func() error {
		return p.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error {
			stored, err := issueMany(tx, res, certs, errs)
			if err != nil {
				return err
			}
			for k := range res {
				if errs[k] == nil {
					if err := p.finish(tx, res[k], certs[k], stored); err != nil {
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
				errs[k] = p.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error { return finish(tx, k) })
			}
		}
	}
	for k, rv := range res {
		if errs[k] != nil {
			if p.UndoOnFault || !errors.Is(errs[k], store.ErrUnavailable) {
				p.undo(rv.serialHex, certs[k])
			}
			out[at[k]].Err = fmt.Errorf("issue: issue certificate: %w", errs[k])
			continue
		}
		out[at[k]] = Result{Certificate: certs[k], Serial: rv.serialHex, RecordID: rv.r.Record.ID}
		if p.Issued != nil {
			p.Issued(rv.r.Template.Name)
		}
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
	if n == 1 {
		f(0)
		return
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

// reservation is a checked Request with the rows of its reservation and its request to the CA.
type reservation struct {
	r         Request
	serialHex string
	keyID     string // of r.Pub, see KeyID
	cert      store.Certificate
	rec       store.Record
	req       ca.Request
	// stale: the reservation found its record sealed for a replaced recovery set.
	stale bool
}

func newReservation(r Request, now time.Time) (*reservation, error) {
	t := r.Template
	if t == nil || r.Record == nil || r.Serial == nil {
		return nil, fmt.Errorf("%w: incomplete reserved issuance", ErrInvalid)
	}
	if !t.Archive {
		return nil, fmt.Errorf("%w: template %q does not archive keys", ErrInvalid, t.Name)
	}
	keyID, err := KeyID(r.Pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	serialHex := store.FormatSerial(r.Serial)
	subject := pkix.Name{CommonName: r.Mailbox}
	res := &reservation{r: r, serialHex: serialHex, keyID: keyID,
		cert: store.Certificate{Serial: serialHex, Template: t.Name, Email: r.Mailbox, Subject: subject.String(),
			State: store.StatePending, CreatedAt: now, RecordID: r.Record.ID, CodeID: r.CodeID},
		rec: store.Record{ID: r.Record.ID, Serial: serialHex, Email: r.Mailbox, Epoch: r.Record.Epoch,
			Blob: r.Record.Blob, State: store.StatePending, CreatedAt: now},
		req: ca.Request{
			Serial:             r.Serial,
			PublicKey:          r.Pub,
			Subject:            subject,
			KeyUsage:           t.KeyUsageFor(r.Pub),
			ExtKeyUsage:        ExtKeyUsages(t),
			UnknownExtKeyUsage: UnknownExtKeyUsages(t),
			NotBefore:          now,
			Validity:           time.Duration(t.ValidityDays) * 24 * time.Hour,
			EmailAddresses:     []string{r.Mailbox},
			Policies:           t.CertificatePolicies(),
		},
	}
	return res, nil
}

// ExtKeyUsages are a template's extended key usages that crypto/x509 names.
func ExtKeyUsages(t *policy.Template) []x509.ExtKeyUsage {
	eku, _ := t.ExtKeyUsages()
	return eku
}

// UnknownExtKeyUsages are a template's extended key usages that crypto/x509 does not name.
func UnknownExtKeyUsages(t *policy.Template) []asn1.ObjectIdentifier {
	_, oids := t.ExtKeyUsages()
	return oids
}

// reserve is the first transaction: the epoch check, the refusal of compromised keys, the
// codes and Reserve hooks, then the pending certificates and their records. An item sealed
// for another epoch than the current one is marked stale and left out.
func reserve(tx store.Tx, res []*reservation) error {
	cur, err := tx.CurrentEpoch()
	if err != nil {
		return err
	}
	keyIDs := make([]string, 0, len(res))
	for _, rv := range res {
		if rv.stale = rv.rec.Epoch != cur; !rv.stale {
			keyIDs = append(keyIDs, rv.keyID)
		}
	}
	if err := refuseCompromised(tx, keyIDs); err != nil {
		return err
	}
	certs := make([]store.Certificate, 0, len(res))
	recs := make([]store.Record, 0, len(res))
	for _, rv := range res {
		if rv.stale {
			continue
		}
		if rv.r.CodeID != "" {
			if err := tx.ClaimCode(rv.r.CodeID, rv.req.NotBefore); err != nil {
				return err
			}
		}
		if rv.r.Reserve != nil {
			if err := rv.r.Reserve(tx, rv.serialHex); err != nil {
				return fmt.Errorf("%w: %w", ErrReserved, err)
			}
		}
		certs, recs = append(certs, rv.cert), append(recs, rv.rec)
	}
	if len(certs) == 0 {
		return nil
	}
	if err := tx.InsertCertificates(certs); err != nil {
		return err
	}
	return tx.InsertRecords(recs)
}

func reserveError(err error) error {
	if errors.Is(err, ErrReserved) || errors.Is(err, policy.ErrRejected) {
		return err
	}
	return fmt.Errorf("issue: reserve serial: %w", err)
}

// sign is the second step: the CA signs, then Prepare runs.
func (p *Pipeline) sign(res *reservation) (*x509.Certificate, error) {
	cert, err := p.Issuer.Issue(res.req)
	if err == nil && res.r.Prepare != nil {
		err = res.r.Prepare(cert)
	}
	return cert, err
}

// manyIssuer is a Tx that stores many signed certificates and activates their records in one
// statement, all or none (PostgreSQL's writer): see postgres's writeTx.SetCertificatesIssued.
type manyIssuer interface {
	SetCertificatesIssued(serials []string, ders [][]byte, notBefores, notAfters []time.Time, recordIDs []string) error
}

// issueMany stores the certificates signed (errs[k] nil) and activates their records at once
// when tx offers it and there are several; it reports whether it did (else finish does each).
// An error refuses the whole batch: the caller finishes the items one by one.
func issueMany(tx store.Tx, res []*reservation, certs []*x509.Certificate, errs []error) (bool, error) {
	mi, ok := tx.(manyIssuer)
	if !ok {
		return false, nil
	}
	var (
		serials, recordIDs []string
		ders               [][]byte
		nbs, nas           []time.Time
	)
	for k, rv := range res {
		if errs[k] != nil {
			continue
		}
		c := certs[k]
		serials, recordIDs = append(serials, rv.serialHex), append(recordIDs, rv.r.Record.ID)
		ders, nbs, nas = append(ders, c.Raw), append(nbs, c.NotBefore), append(nas, c.NotAfter)
	}
	if len(serials) < 2 {
		return false, nil
	}
	return true, mi.SetCertificatesIssued(serials, ders, nbs, nas, recordIDs)
}

// finish is the last transaction's work for one issuance: the certificate and the record's
// activation (unless stored: issueMany did them), the audit entry and Finish.
func (p *Pipeline) finish(tx store.Tx, res *reservation, cert *x509.Certificate, stored bool) error {
	r := res.r
	if !stored {
		if err := tx.SetCertificateIssued(res.serialHex, cert.Raw, cert.NotBefore, cert.NotAfter); err != nil {
			return err
		}
		if err := tx.ActivateRecord(r.Record.ID); err != nil {
			return err
		}
	}
	if err := p.Audit(tx, audit.KindArchive, actorOr(r.Actor), r.Mailbox, audit.Details{Template: r.Template.Name, Serial: res.serialHex,
		Mailbox: r.Mailbox, Record: r.Record.ID, Epoch: r.Record.Epoch, NotAfter: cert.NotAfter.UTC().Format(time.RFC3339),
		Fingerprint: []string{r.Record.Fingerprint}, CertHash: certHash(cert.Raw)}); err != nil {
		return err
	}
	if r.Finish != nil {
		return r.Finish(tx, cert)
	}
	return nil
}

// certHash is the audit entry's hash of a certificate this transaction stores with der: the
// entry then need not read it back (see audit.Append).
func certHash(der []byte) []string {
	sum := sha256.Sum256(der)
	return []string{hex.EncodeToString(sum[:])}
}

func actorOr(a string) string {
	if a == "" {
		return "local"
	}
	return a
}

// undo is the compensating transaction of a failed issuance: the row is marked failed, which
// also frees its code and abandons its record; cert, when the CA signed it (never delivered),
// is kept on the failed row. It runs with its own context: the caller's may be what was
// cancelled. A row that is no longer pending is left as it is. When the storage refuses, the
// Undoer (if any) retries in the background; otherwise, or when its backlog is full, the
// start-up sweep finishes the job.
func (p *Pipeline) undo(serialHex string, cert *x509.Certificate) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.Store.Update(ctx, func(tx store.Tx) error { return failIssuance(tx, serialHex, cert) })
	switch {
	case err == nil:
	case errors.Is(err, store.ErrUnavailable) && p.Undoer != nil:
		p.Undoer.Defer(serialHex, cert, err)
	default:
		p.log().Error("undo failed issuance", "serial", serialHex, "err", err)
	}
}

// failIssuance marks the pending row of serialHex failed, keeping cert when it was signed.
func failIssuance(tx store.Tx, serialHex string, cert *x509.Certificate) error {
	if cert == nil {
		return tx.FailCertificate(serialHex)
	}
	return tx.FailSignedCertificate(serialHex, cert.Raw, cert.NotBefore, cert.NotAfter)
}

// Undo marks a reserved issuance failed (see the package documentation), for a caller whose
// own step after the pipeline's failed. Errors are logged; a storage fault hands the undo to
// the [Pipeline.Undoer], else the sweep finishes the job.
func (p *Pipeline) Undo(serialHex string) { p.undo(serialHex, nil) }
