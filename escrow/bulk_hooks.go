package escrow

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// This file holds the entry points the bulk pipeline (escrow/bulk) needs around the issuance
// pipeline (escrow/issue, [Service.Pipeline]): sealing keys for a recovery set, opening
// envelopes, and the engine's forms of the pipeline's batch issuance and import.

// FlushNotices says that a bulk job has ended: the notices of the keys it escrowed may be sent
// now, one per mailbox, rather than after a quiet period. It returns at once.
func (s *Service) FlushNotices() {
	if s.NotifyFlush != nil {
		s.NotifyFlush()
	}
}

// SealedRecord is an escrow record sealed for a serial, ready to be committed. Its Fingerprint
// is the key's [PublicKeyFingerprint], for the audit entry (computed when sealing, outside the
// store's writer).
type SealedRecord = issue.Record

// ShareHash is the RSA-OAEP hash the escrow shares (and anything else the appliance wraps to a
// key of its kind of token) are encrypted with. It cannot fail.
func (s *Service) ShareHash() crypto.Hash { return s.shareHash() }

// SealForIssue seals pkcs8 for the recovery set rs, binding this CA as issuer and serial, the
// serial the certificate will be issued with. It calls no HSM.
//
// # Errors
//
// [ErrInvalidRequest] for a public key that cannot be encoded; a failure to seal (escrow/record's
// sentinels, such as [record.ErrRandom]) is the appliance's, wrapped.
func (s *Service) SealForIssue(rs *RecoverySet, serial *big.Int, pub crypto.PublicKey, pkcs8 []byte) (*SealedRecord, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrInvalidRequest, err)
	}
	return s.sealRecord(rs, s.issuerName(), serial.Bytes(), spki, pkcs8)
}

// SealForImport seals pkcs8, the private key of cert (a certificate of another CA), binding
// cert's issuer and serial. It calls no HSM. Its only errors are a failure to seal
// (escrow/record's sentinels, wrapped), the appliance's.
func (s *Service) SealForImport(rs *RecoverySet, cert *x509.Certificate, pkcs8 []byte) (*SealedRecord, error) {
	// The record binds the certificate's own SPKI encoding, and its fingerprint is the hash of
	// those bytes: crypto/x509 parses only the DER that MarshalPKIXPublicKey writes (RSA with
	// NULL parameters, named curves, uncompressed points), so that is the key's
	// PublicKeyFingerprint without encoding the key again (TestImportFingerprintIsCanonical).
	return s.sealRecord(rs, issuerOf(cert), cert.SerialNumber.Bytes(), cert.RawSubjectPublicKeyInfo, pkcs8)
}

// CheckKeyPair parses a PKCS#8 private key and checks that it is the pair of pub. Its only
// error is [ErrInvalidRequest], for a malformed key, a key of an unsupported type, or a
// mismatch.
func CheckKeyPair(pkcs8 []byte, pub crypto.PublicKey) error { return checkKeyPair(pkcs8, pub) }

// OpenEnvelope opens a client's CMS envelope to the transport certificate (in the token) and
// returns the PKCS#8 key inside, which the caller must clear.
//
// # Errors
//
// [ErrNoRecoverySet] without a transport key; [ErrInvalidRequest] wrapping the cms sentinel
// ([cms.ErrNoRecipient], [cms.ErrMalformed], [cms.ErrUnsupported], [cms.ErrDecrypt]) when the
// envelope is at fault; otherwise the token's error, wrapped.
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
	Reserve func(tx store.Tx, serial string) error
	// Prepare, when set, runs after signing and before the last transaction, outside any
	// transaction (for slow work such as building a PKCS#12); an error undoes the issuance.
	Prepare func(cert *x509.Certificate) error
	// Finish runs inside the last transaction, with the signed certificate; an error there
	// undoes the issuance.
	Finish func(tx store.Tx, cert *x509.Certificate) error
}

// ErrReserved: the Reserve hook refused the reservation (for a bulk item: it is already done).
var ErrReserved = issue.ErrReserved

// ErrRecoverySetChanged: a record was sealed for a recovery set that an admin has replaced
// since; nothing of its issuance or import was stored. Seal the key for the current set
// ([Service.CurrentRecoverySet]) and try again.
var ErrRecoverySetChanged = issue.ErrRecoverySetChanged

// IssueReserved runs the three-step issuance protocol (see the package documentation) for an
// archiving template with a record sealed beforehand, as a batch of one of the pipeline.
// The final transaction is not cancelled by ctx once the certificate is signed.
//
// # Errors
//
// [ErrRecoverySetChanged] (nothing stored), [ErrReserved] wrapping the hook's error,
// [ErrInvalidRequest] (an incomplete issuance, wrapping [issue.ErrInvalid]),
// [ErrKeyArchivedElsewhere], [store.ErrConflict] (wrapped: a serial or record ID already
// stored), the CA's [ca.ErrLint], or, for faults of the appliance, [store.ErrUnavailable], the
// CA signer's (token's) error or the audit trail's ([audit.ErrAppend]), wrapped; the Prepare and
// Finish hooks' errors, wrapped.
func (s *Service) IssueReserved(ctx context.Context, r ReservedIssue) (*Issued, error) {
	res := s.IssueReservedBatch(ctx, []ReservedIssue{r}, 1)[0]
	return res.Issued, res.Err
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
// item fails alone; an item sealed for a replaced recovery set fails alone with
// [ErrRecoverySetChanged]. The results are in the order of rs.
//
// # Errors
//
// Each result's are those of [Service.IssueReserved].
func (s *Service) IssueReservedBatch(ctx context.Context, rs []ReservedIssue, signers int) []BatchResult {
	return s.IssueReservedBatchWait(ctx, rs, signers, nil)
}

// StorageWait is called when a step of an issuance fails for a fault of the storage (the error
// wraps [store.ErrUnavailable]). It pauses (a back-off) and reports whether to try the same step
// again; false gives up (the caller is stopping).
type StorageWait = issue.StorageWait

// IssueReservedBatchWait is [Service.IssueReservedBatch] that rides out faults of the storage:
// a reservation or a finishing transaction that fails for the storage's fault is tried again,
// after wait, as long as wait says so, and nothing is undone meanwhile (a signed certificate is
// kept and committed once the storage is back). A storage fault never makes an item fail on its
// own: when wait gives up (or is nil), every item of the failed step gets that fault as its
// error; certificates signed but not committed are left pending, for [Service.Sweep] or the
// bulk job's next pass to mark failed. Other errors behave as in IssueReservedBatch.
//
// # Errors
//
// Each result's are those of [Service.IssueReserved]; [store.ErrUnavailable] (wrapped) only
// once wait has given up.
func (s *Service) IssueReservedBatchWait(ctx context.Context, rs []ReservedIssue, signers int, wait StorageWait) []BatchResult {
	reqs := make([]issue.Request, len(rs))
	actor := actorFrom(ctx)
	for i, r := range rs {
		reqs[i] = issue.Request{Template: r.Template, Pub: r.Pub, Mailbox: r.Mailbox, Serial: r.Serial, Record: r.Record,
			Actor: actor, Reserve: r.Reserve, Prepare: r.Prepare, Finish: r.Finish}
	}
	out := make([]BatchResult, len(rs))
	var serials []string
	for i, res := range s.Pipeline().Issue(ctx, reqs, signers, wait) {
		switch err := res.Err; {
		case errors.Is(err, issue.ErrInvalid):
			out[i].Err = fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		case err != nil:
			out[i].Err = fmt.Errorf("escrow: %w", err)
		default:
			out[i].Issued = &Issued{Certificate: res.Certificate, Serial: res.Serial, RecordID: res.RecordID}
			serials = append(serials, res.Serial)
		}
	}
	if s.Certified != nil && len(serials) > 0 {
		s.Certified(serials)
	}
	return out
}

// CommitImport stores a certificate of another CA with its sealed record (active at once: the
// certificate exists already) in one transaction of the issuance pipeline, with extra (the job
// bookkeeping) in the same transaction.
//
// # Errors
//
// [ErrInvalidRequest] for a serial already in the archive, [ErrKeyArchivedElsewhere],
// [ErrRecoverySetChanged] (also an [ErrNoRecoverySet]; nothing stored), extra's error, or, for
// faults of the appliance, [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]),
// wrapped.
func (s *Service) CommitImport(ctx context.Context, cert *x509.Certificate, mailbox string, rec *SealedRecord, extra func(tx store.Tx) error) error {
	stale, err := s.Pipeline().Import(ctx, "local", "", []issue.ImportItem{{Cert: cert, Mailbox: mailbox, Record: rec}},
		func(tx store.Tx, stored []int) error {
			if len(stored) == 0 || extra == nil {
				return nil
			}
			return extra(tx)
		})
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: a certificate with serial %s is already in the archive", ErrInvalidRequest, store.FormatSerial(cert.SerialNumber))
	}
	if err != nil {
		return fmt.Errorf("escrow: %w", err)
	}
	if stale[0] {
		return fmt.Errorf("escrow: store imported record: %w", errRecoverySetChanged)
	}
	return nil
}

// ImportItem is one imported certificate for [Service.CommitImports].
type ImportItem = issue.ImportItem

// CommitImports is [Service.CommitImport] for many items in one transaction, with a few
// multi-row statements and one audit entry that lists every item (per recovery-set epoch), not
// one entry each: a bulk import is one act, and its items' rows, not their audit entries, are
// what a migration of many thousands of keys spends its time writing. subject names the batch
// in the audit trail (the job), and extra runs in the same transaction (the job bookkeeping).
// If any item fails, none is stored and the error is returned, so the caller can retry them one
// by one; an item sealed for a replaced recovery set fails the batch with
// [ErrRecoverySetChanged]. (The bulk pipeline calls [issue.Pipeline.Import] itself, which stores
// the other items of such a batch.)
//
// # Errors
//
// Those of [Service.CommitImport], for the whole batch, except that a serial already in the
// archive is a [store.ErrConflict] (wrapped), not an [ErrInvalidRequest].
func (s *Service) CommitImports(ctx context.Context, subject string, items []ImportItem, extra func(tx store.Tx) error) error {
	_, err := s.Pipeline().Import(ctx, actorFrom(ctx), subject, items, func(tx store.Tx, stored []int) error {
		if len(stored) != len(items) {
			return errRecoverySetChanged
		}
		if extra != nil {
			return extra(tx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("escrow: %w", err)
	}
	return nil
}

// Audited runs fn in one store transaction and appends an audit entry of kind, with the actor
// of ctx ([WithActor]), in the same transaction: the change and its entry commit together or
// not at all, and if the entry cannot be written the change is refused. It is how the bulk job
// manager records what it does outside issuance (a job queued, a keygen job's passwords
// released).
//
// # Errors
//
// fn's error as it is, or the audit trail's (wrapping [audit.ErrAppend]); [store.ErrUnavailable]
// (wrapped) for a fault of the storage.
func (s *Service) Audited(ctx context.Context, kind audit.Kind, subject string, d audit.Details, fn func(tx store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error {
		if fn != nil {
			if err := fn(tx); err != nil {
				return err
			}
		}
		return s.audit(tx, kind, actorFrom(ctx), subject, d)
	})
}
