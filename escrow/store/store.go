package store

import (
	"context"
	"time"
)

// Store is a keyarc archive. Every backend (escrow/store/sqlite today) implements it, passes
// the conformance suite in escrow/store/storetest, and keeps the contract below.
//
// Update runs fn in a read-write transaction and returns once fn's writes are durable, or
// with an error and none of them stored. A backend may group-commit: run the functions of
// several concurrent callers in one transaction, each in its own savepoint, so that one
// commit makes them all durable. A function that returns an error (or panics: [ErrPanic])
// has only its own writes undone; the others of its group are not affected. If the commit
// fails, every caller of the group gets that error. fn may run more than once only if the
// backend says so; today's do not retry.
//
// An error returned by a Tx method does not end the transaction: fn may handle it and go on,
// and its other writes stand. The exception is a write that nothing but a fault can refuse
// (a claim, a state change, the audit entry after the head): a backend may run it without a
// savepoint of its own, and should it fail all the same (a lost connection, or an audit row
// stored behind the store's back), fn's writes are undone and Update fails, with
// [ErrUnavailable] if fn went on and returned no error. A backend may also hold such a write
// back and send it with the transaction's next statement or its commit (PostgreSQL holds the
// audit entry back): should it fail, every function of the transaction fails with
// [ErrUnavailable] and nothing of the transaction is stored. A method that writes several rows (InsertCertificates,
// InsertRecords, InsertRecovery, ...) may have stored some of them when it fails, so fn
// should return such an error: returning it undoes all of fn's writes.
//
// View runs fn in a read-only transaction on one consistent snapshot of committed data,
// concurrently with Update and other Views: it never sees part of an Update, nor what commits
// after its first read. Writes in a View fail with [ErrReadOnly]. A nil fn gives [ErrInvalid].
//
// A [Tx] belongs to the function it was passed to: it must not be kept after the function
// returns ([ErrTxDone]) nor shared with other goroutines. Functions passed to Update must be
// quick, do no I/O other than through the Tx, and never call Update or View.
//
// Faults of the storage itself (I/O errors, a full disk, a lost connection) wrap
// [ErrUnavailable]; a closed store gives [ErrClosed]. Close is safe to call more than once.
type Store interface {
	Update(ctx context.Context, fn func(Tx) error) error
	View(ctx context.Context, fn func(Tx) error) error
	// Stats returns the writer's counters since the store was opened.
	Stats() Stats
	Close() error
}

// Tx is a transaction over every table of the archive. The engine's packages take the
// smallest of the interfaces it is made of that serves them.
type Tx interface {
	Codes
	Certificates
	Revocations
	CRLs
	OCSPResponses
	Records
	Pendings
	RecoverySets
	Recoveries
	Jobs
	Leases
	AuditLog
	Cursors
	Consistency
	DrillStates
	LoginFailures
	DirectorySkips
}

// Codes are one-time enrollment codes.
type Codes interface {
	// InsertCode stores a new code: [ErrConflict] if its ID exists, [ErrInvalid] if a field
	// is missing.
	InsertCode(c Code) error
	// GetCode returns code id, or [ErrNotFound].
	GetCode(id string) (*Code, error)
	// GetCodeCheckingKey is GetCode that also answers, in the same statement, what
	// CompromisedKeys([]string{keyID}) would: the serial of the oldest certificate revoked for
	// keyCompromise that holds keyID, or "" if none does. It is the read that authenticates
	// an enrollee and clears the key of the request, in one round trip. [ErrInvalid] unless
	// keyID is 64 lower-case hex digits; [ErrNotFound] for an unknown code.
	GetCodeCheckingKey(id, keyID string) (*Code, string, error)
	// ClaimCode marks code id used at now: [ErrNotFound], [ErrCodeUsed] if it was used
	// already, [ErrCodeExpired] if it expires at or before now. Of concurrent claims of one
	// code, exactly one succeeds.
	ClaimCode(id string, now time.Time) error
	// ReleaseCode makes a claimed code usable again (a failed enrollment), clearing its
	// serial, or [ErrNotFound].
	ReleaseCode(id string) error
}

// Certificates are the certificates the CA issued or reserved a serial for. Serials are
// normalised ([NormalizeSerial]) by every method that takes one.
type Certificates interface {
	// InsertCertificate reserves c.Serial, normally in state pending with no DER yet (any
	// state is accepted, for migrations; issued and revoked ones need their DER, revoked ones
	// their RevokedAt, and only revoked ones may have a RevocationReason, any of RFC 5280's:
	// [ValidStoredReason]). The store sets KeyID from the DER. If c.CodeID
	// is set, that code's Serial becomes c.Serial. [ErrConflict] if the serial exists,
	// [ErrNotFound] if the code does not, [ErrInvalid] for a bad field.
	InsertCertificate(c Certificate) error
	// InsertCertificates is InsertCertificate for many. On an error some may have been
	// stored: the function's error undoes them (see [Store]).
	InsertCertificates(cs []Certificate) error
	// CertificateStatuses returns the status of each certificate of serials that is issued or
	// revoked (Revoked, RevokedAt, Reason, NotAfter), in the order of serials, with few
	// statements: the OCSP pre-signer's read of the certificates it is told of. Serials that
	// are unknown, pending or failed, or not serials at all, are left out, and one listed twice
	// is returned once.
	CertificateStatuses(serials []string) ([]CertStatus, error)
	// InsertCertificateClaiming claims code c.CodeID at now as ClaimCode does, then stores c
	// as InsertCertificate does: an enrollment's certificate and the code it spends, in one
	// statement where the backend can (PostgreSQL). The code's errors come first
	// ([ErrNotFound], [ErrCodeUsed], [ErrCodeExpired]), then the certificate's ([ErrConflict]
	// if the serial exists, [ErrInvalid]); c.CodeID is required. On an error the claim may
	// have been made: the function's error undoes it (see [Store]).
	InsertCertificateClaiming(c Certificate, now time.Time) error
	// SetCertificateIssued moves a pending certificate to issued with its DER and validity:
	// [ErrNotFound], [ErrConflict] if it is not pending, [ErrInvalid] without DER or validity.
	SetCertificateIssued(serial string, der []byte, notBefore, notAfter time.Time) error
	// FailCertificate marks a pending certificate failed (never signed): [ErrNotFound], or
	// [ErrConflict] if it is not pending. Like [Pendings.SweepPending], it also releases the
	// enrollment code claimed for it and abandons its escrow record if that is still pending.
	FailCertificate(serial string) error
	// FailSignedCertificate marks failed a pending certificate that was signed but must not
	// be used, keeping its DER, with the effects of FailCertificate: [ErrNotFound],
	// [ErrConflict] if it is not pending, [ErrInvalid] without DER or validity.
	FailSignedCertificate(serial string, der []byte, notBefore, notAfter time.Time) error
	// GetCertificate returns certificate serial, or [ErrNotFound].
	GetCertificate(serial string) (*Certificate, error)
	// ListCertificates returns the certificates matching f, oldest first.
	ListCertificates(f Filter) ([]Certificate, error)
}

// Revocations are the revocation states of certificates and the reads that revoking by key
// and building a CRL need. A revoked certificate stays revoked: there is no way back (no
// certificateHold), and its revocation date never changes. Revoking does not touch the
// certificate's escrow record: an archived key stays recoverable, so that old mail can
// still be decrypted.
type Revocations interface {
	// RevokeCertificate moves an issued certificate to revoked with reason (a CRLReason of
	// the S/MIME BR set, see [ValidReason]) and revocation date at: [ErrNotFound] for an
	// unknown serial; [ErrConflict] if it is not issued (already revoked, pending or
	// failed), with nothing changed; [ErrInvalid] for another reason or a zero time. A
	// certificate already revoked whose reason is to become keyCompromise takes
	// [Revocations.SetKeyCompromise] instead.
	RevokeCertificate(serial string, reason int, at time.Time) error
	// SetKeyCompromise changes the reason of a revoked certificate to keyCompromise, the one
	// change the BR allow once a certificate is revoked (a key found compromised after a
	// revocation for another reason). The revocation date stays the first one: the S/MIME
	// BR (v1.0, §7.2.2) say nothing that allows moving it (unlike the TLS BR, which ask for
	// it to be backdated to the compromise), and RFC 5280 §5.3.2 puts a compromise time in
	// the invalidityDate entry extension, not in revocationDate. [ErrNotFound] for an
	// unknown serial; [ErrConflict] if it is not revoked or its reason is keyCompromise
	// already.
	SetKeyCompromise(serial string) error
	// CertificatesByKey returns every certificate, in any state and of any mailbox, whose
	// stored DER has the key identity keyID ([Certificate.KeyID]), oldest first (creation
	// time, then serial): what BR §6.1.2 asks to revoke when a key is compromised. Pending
	// certificates (no DER yet) are not among them. [ErrInvalid] unless keyID is 64
	// lower-case hex digits; an unknown key gives none and no error.
	CertificatesByKey(keyID string) ([]Certificate, error)
	// CompromisedKeys returns, for each of keyIDs ([Certificate.KeyID]) that a certificate
	// revoked for keyCompromise holds, the serial of the oldest such certificate: a key S/MIME
	// BR §6.1.1.3 forbids certifying again, in any mailbox. Keys with no such certificate are
	// not in the map; a key listed twice is answered once. [ErrInvalid] unless every key ID is
	// 64 lower-case hex digits.
	CompromisedKeys(keyIDs []string) (map[string]string, error)
	// RevokedCertificates calls fn with every revoked certificate that has not expired at
	// now (NotAfter after now, or no NotAfter stored), in the byte order of their canonical
	// serials, streaming: a backend holds a few rows at a time, never the whole list, so
	// that a CRL of millions of entries is built in constant memory. Its entries have
	// Revoked set, RevokedAt, Reason and NotAfter. An error from fn stops the walk and is
	// returned as it is. fn must not call the Tx. In a View the list is one consistent
	// snapshot; keep fn quick, as a long View holds that snapshot (and, for SQLite, holds
	// back the WAL checkpoint) until it returns.
	RevokedCertificates(now time.Time, fn func(CertStatus) error) error
	// LatestRevocation returns the newest revocation date of any certificate, the zero time
	// when none is revoked.
	LatestRevocation() (time.Time, error)
}

// CRLs are the signed certificate revocation lists, newest served. The CRL number is the
// store's monotonic sequence: sign the CRL numbered one more than [CRLs.LatestCRL]'s outside
// any transaction, then store it with InsertCRL; if another signer stored that number first,
// InsertCRL gives [ErrConflict] and the caller builds the next one again.
type CRLs interface {
	// InsertCRL stores a signed CRL: [ErrConflict] unless c.Number is above every number
	// stored before (also after older CRLs were deleted), [ErrInvalid] for a Number below
	// 1, an empty DER, a zero ThisUpdate or a NextUpdate not after it. It keeps the newest
	// [CRLsKept] CRLs and may delete older ones in the same transaction.
	InsertCRL(c CRL) error
	// LatestCRL returns the CRL with the highest number, or [ErrNotFound] before the first.
	LatestCRL() (*CRL, error)
}

// OCSPResponses are pre-signed OCSP responses, one per certificate, served as they are.
// Serials are normalised ([NormalizeSerial]). A response is stored only for a certificate
// that was issued (issued or revoked): a serial never issued has none, ever, and its
// lookups say so ([ErrNotFound], with [ErrNotIssued] for a reserved serial).
//
// # The due index
//
// A backend keeps, for each issued or revoked certificate, when its response next falls due,
// so that [OCSPResponses.OCSPDue] reads what is due without looking at every certificate (a
// pre-signer asks every 30 seconds, and most passes find nothing due). OCSPDue's answer
// follows every write at once:
//
//   - a certificate that becomes issued or revoked (SetCertificateIssued, InsertCertificate
//     of an issued or revoked one, RevokeCertificate, SetKeyCompromise) is due at once,
//     unless the response stored has its new status;
//   - storing a response of the certificate's current status makes it due when that
//     response's ThisUpdate falls before signedBefore; one of another status (signed while
//     a revocation committed) leaves it due at once; a response that does not replace the
//     stored one (see UpsertOCSPResponses) changes nothing;
//   - pending and failed certificates are never due; an expired one (NotAfter at or before
//     now) never again. Time only moves forward here: once a response with ThisUpdate T is
//     stored, the backend may drop the certificates expired at T from its index for good,
//     so OCSPDue must not be asked about a now before the responses it stored.
//
// The index itself may lag: a backend may leave a certificate out of it for a while after
// storing it, so that the transaction that issues it writes nothing for OCSP. OCSPDue then
// reads that certificate from the certificates themselves, at a cost that grows with the
// number left out, until [OCSPResponses.IndexNewCertificates] indexes it. A pre-signer calls
// that before each pass.
//
// The SQL backends keep a table of their own (ocsp_due: serial, the ThisUpdate of a response
// of the current status or the smallest integer, NotAfter), with an index on (signed,
// not_after). PostgreSQL's statements that store certificates and responses keep it, in the
// same statement. On SQLite, whose rows also hold the certificate's status and revocation time
// (read when a response is stored and by OCSPDue, without the certificate's row), triggers keep it for revocations and for the certificates indexed
// already, and UpsertOCSPResponses for the responses it stores; the certificates
// stored since the last IndexNewCertificates (a range of rowids above a mark) wait for the
// next. See OCSPDue for how a page is read.
type OCSPResponses interface {
	// UpsertOCSPResponses stores the responses, each replacing the stored response of its
	// serial unless that one has a later ThisUpdate (a slower signer never overwrites a
	// newer response; the newer one is kept, without error). The certificate's current
	// status comes first: a response that has it replaces one that has not whatever their
	// ThisUpdates, and one that has not never replaces one that has (a signer's clock ahead
	// of the others', or stepped back since, must not keep a revocation out). Refusals: [ErrNotFound] for
	// an unknown serial; [ErrNotIssued] (with [ErrConflict]) for a pending or failed one;
	// [ErrInvalid] for an empty DER, a zero ThisUpdate, a NextUpdate not after it, a
	// Reason outside RFC 5280's or a Reason with Revoked false. A response whose status
	// (Revoked, Reason) is not the certificate's current one is stored all the same, and
	// [OCSPResponses.OCSPDue] lists it at once: a revocation that commits while a response
	// is being signed is never lost. On a refusal some responses may have been stored: the
	// function's error undoes them (see [Store]).
	UpsertOCSPResponses(rs []OCSPResponse) error
	// GetOCSPResponse returns the stored response of serial: [ErrNotFound] for a serial
	// never reserved; [ErrNotIssued] and [ErrNotFound] for a pending or failed one;
	// [ErrNoResponse] for an issued or revoked certificate that has no response yet; a
	// bad serial gives [ErrInvalid].
	GetOCSPResponse(serial string) (*OCSPResponse, error)
	// OCSPDue returns, in the byte order of their canonical serials and after serial after
	// ("" to start), at most limit (1 or more, else [ErrInvalid]) certificates that need a
	// response signed: issued or revoked, not expired at now (NotAfter after now, or none
	// stored), and whose response is missing, has a ThisUpdate before signedBefore, or was
	// signed with another status than the certificate's (Revoked or Reason differ: a
	// revocation, or a reason changed to keyCompromise, since it was signed). Each comes
	// with its current status, to sign. A responder pages with the last serial returned
	// until fewer than limit come back; what it signs and stores meanwhile stops being due,
	// and what is revoked meanwhile is listed again by the next pass (see the due index
	// above). BR §4.9.10 asks for a refresh no later than 4 days after thisUpdate:
	// signedBefore is now minus the responder's refresh age. A call's cost follows the
	// number due, not the number of certificates: a pass that finds nothing due costs next to
	// nothing.
	OCSPDue(now, signedBefore time.Time, after string, limit int) ([]CertStatus, error)
	// IndexNewCertificates puts into the due index, and into the index of the certificates by
	// key ([Revocations.CertificatesByKey]), the certificates stored since it last ran and
	// left out of them (see the due index above), at most limit (1 or more, else
	// [ErrInvalid]) of them in the order they were stored, and reports whether more may be
	// left. Both lookups answer for those certificates all the same, at a cost that grows with
	// their number. A backend that indexes as it stores has nothing to do. Read-only
	// transactions get [ErrReadOnly].
	IndexNewCertificates(limit int) (more bool, err error)
}

// Records are sealed escrow records (made by escrow/record; the store never sees a key).
type Records interface {
	// InsertRecord stores a pending record: [ErrConflict] if its ID or its serial exists,
	// [ErrNotFound] if the recovery set of its epoch does not, [ErrInvalid] for a bad field,
	// [ErrKeyArchivedElsewhere] if its key is live (pending or active) for another mailbox.
	InsertRecord(r Record) error
	// InsertRecords is InsertRecord for many. The key-owner rule holds among them too, and
	// its refusal stores none of them; on another error some may have been stored, which the
	// function's error undoes (see [Store]).
	InsertRecords(rs []Record) error
	// ActivateRecord moves a pending record to active (an active one stays active):
	// [ErrNotFound], or [ErrConflict] if it was abandoned.
	ActivateRecord(id string) error
	// GetRecord returns record id, or [ErrNotFound].
	GetRecord(id string) (*Record, error)
	// GetRecordBySerial returns the record of certificate serial, or [ErrNotFound].
	GetRecordBySerial(serial string) (*Record, error)
	// ListRecords returns the records of a mailbox, oldest first.
	ListRecords(email string) ([]Record, error)
	// KeyArchivedElsewhere returns [ErrKeyArchivedElsewhere] when a live record of the key
	// with this fingerprint (hex SHA-256 of its SubjectPublicKeyInfo) belongs to another
	// mailbox than email, and nil otherwise.
	KeyArchivedElsewhere(fingerprint, email string) error
	// RecordsBeforeEpoch returns the active records sealed under an epoch older than epoch,
	// oldest first, at most limit of them; with only other than 0, those of epoch only alone.
	RecordsBeforeEpoch(epoch, only uint32, limit int) ([]Record, error)
	// ResealRecord replaces the blob of record id sealed to epoch from by one sealed to
	// epoch to: [ErrConflict] if it is not an active record sealed to from (an unknown ID
	// included), [ErrInvalid] without a blob or unless to is newer than from.
	ResealRecord(id string, from, to uint32, blob []byte) error
}

// Pendings are enrollment requests waiting for an administrator's decision.
type Pendings interface {
	// InsertPending stores a pending request: [ErrConflict] if its ID exists, [ErrInvalid].
	InsertPending(p Pending) error
	// GetPending returns request id, or [ErrNotFound].
	GetPending(id string) (*Pending, error)
	// ListPending returns the requests in state (all when ""), oldest first.
	ListPending(state string) ([]Pending, error)
	// DecidePending is DecidePendingAt now.
	DecidePending(id, state, by, serial string) error
	// DecidePendingAt moves a pending request to issued or denied: [ErrNotFound],
	// [ErrConflict] if it was decided already, [ErrInvalid] for another state.
	DecidePendingAt(id, state, by, serial string, at time.Time) error
	// SweepPending cleans up after enrollments that never finished: certificates pending
	// since before olderThan become failed and the codes claimed for them are released;
	// records pending since before olderThan become abandoned.
	SweepPending(olderThan time.Time) (Swept, error)
}

// RecoverySets are the successive sets of Key Recovery Agents records are sealed to.
type RecoverySets interface {
	// InsertRecoverySet stores the next set and returns its epoch, one more than the newest
	// (the first is 1), also under concurrent writers. [ErrInvalid] unless it has 1 to 255
	// distinct KRA serials, a quorum in 1..len(KRASerials) and a creator.
	InsertRecoverySet(rs RecoverySet) (uint32, error)
	// CurrentRecoverySet returns the newest set, or [ErrNotFound] before the first.
	CurrentRecoverySet() (*RecoverySet, error)
	// CurrentEpoch returns the newest set's epoch, or 0 before the first.
	CurrentEpoch() (uint32, error)
	// GetRecoverySet returns set epoch, or [ErrNotFound].
	GetRecoverySet(epoch uint32) (*RecoverySet, error)
}

// Recoveries are recovery (and reseal) requests and their KRA approvals.
type Recoveries interface {
	// InsertRecovery stores an open request: [ErrConflict] if its ID exists, [ErrNotFound]
	// if one of its records does not, [ErrInvalid] for a missing field.
	InsertRecovery(r Recovery) error
	// GetRecovery returns request id, or [ErrNotFound].
	GetRecovery(id string) (*Recovery, error)
	// ListRecoveries returns the requests in state (all when ""), newest first, without
	// their record lists.
	ListRecoveries(state string) ([]Recovery, error)
	// CloseRecovery moves an open request to state (consumed, cancelled or expired):
	// [ErrNotFound], [ErrConflict] if it is not open, [ErrInvalid] for another state.
	CloseRecovery(id, state string, at time.Time) error
	// ExpireRecoveries moves open requests whose expiry is at or before now to expired and
	// returns them (their recovery keys are to be destroyed).
	ExpireRecoveries(now time.Time) ([]Recovery, error)
	// InsertApproval stores a KRA's approval: [ErrConflict] if that KRA approved already,
	// [ErrNotFound] if the request does not exist, [ErrInvalid] for a missing field.
	InsertApproval(a Approval) error
	// ListApprovals returns the approvals of a request, in the order they came.
	ListApprovals(recoveryID string) ([]Approval, error)
	// AddApprovalFailure counts a refused approval by kra at, forgetting those before
	// forgetBefore.
	AddApprovalFailure(kra string, at, forgetBefore time.Time) error
	// ApprovalFailures returns the refused approvals of kra since since.
	ApprovalFailures(kra string, since time.Time) (int, error)
}

// Jobs are bulk jobs and their items. An item is identified by its job and seq; that it can
// be stored once only ([ErrConflict]) is what makes the issuance of an item idempotent.
type Jobs interface {
	// InsertJob stores a queued job: [ErrConflict] if its ID exists, [ErrInvalid] for a bad
	// field (kind enroll, keygen or import).
	InsertJob(j Job) error
	// GetJob returns job id, or [ErrNotFound].
	GetJob(id string) (*Job, error)
	// ListJobs returns the jobs in state (all when ""), oldest first.
	ListJobs(state string) ([]Job, error)
	// StartJob moves a queued job to running (a running one stays so, with its first start
	// time), or [ErrConflict] if it is neither.
	StartJob(id string, at time.Time) error
	// FinishJob moves a queued or running job to state (done or cancelled) with its counts:
	// [ErrConflict] if it is neither, [ErrInvalid] for another state.
	FinishJob(id, state string, done, failed int, at time.Time) error
	// ClearJobSecret forgets a job's secret key and its items' sealed passwords, and reports
	// whether there was a key to forget.
	ClearJobSecret(id string) (bool, error)
	// JobCounts counts a job's items by state.
	JobCounts(id string) (done, failed, reserved int, err error)
	// ReserveJobItem stores item seq as reserved for serial and record: [ErrConflict] if the
	// item exists in any state.
	ReserveJobItem(jobID string, seq int, serial, recordID string) error
	// FinishJobItem marks a reserved item done with its results, or [ErrConflict].
	FinishJobItem(jobID string, seq int, pkcs12, password []byte) error
	// InsertJobItemDone stores an item done at once (an import): [ErrConflict] if it exists.
	InsertJobItemDone(jobID string, seq int, serial, recordID string) error
	// InsertJobItemsDone is InsertJobItemDone for many items of a job.
	InsertJobItemsDone(jobID string, items []DoneItem) error
	// FailJobItem stores a new item as failed or fails a reserved one: [ErrConflict] if it
	// is done or failed already.
	FailJobItem(jobID string, seq int, reason string) error
	// ReleaseReservedItems deletes the reserved items whose certificate is missing or
	// failed, so that they are issued again, and returns how many. Items whose certificate
	// is pending, issued or revoked stay: no item is ever issued twice.
	ReleaseReservedItems(jobID string) (int, error)
	// JobItemSeqs calls fn with the seq and state of every item of a job, in seq order.
	JobItemSeqs(jobID string, fn func(seq int, state string) error) error
	// JobItems calls fn with the items of a job from seq from on, in seq order, at most
	// limit (0: all); a done item's Result is its certificate's DER.
	JobItems(jobID string, from, limit int, fn func(JobItem) error) error
	// AbandonReservedItems marks failed the pending certificates of a job's reserved items,
	// and abandons their pending records, and returns how many certificates it failed.
	AbandonReservedItems(jobID string) (int, error)
	// CompleteIssuedItems marks done the reserved items whose certificate is issued (or
	// revoked) with an active record, and returns how many.
	CompleteIssuedItems(jobID string) (int, error)
}

// AuditLog keeps the rows of the audit trail and its signed checkpoints. The chain itself
// (hashes, signatures, verification) is escrow/audit's.
type AuditLog interface {
	// AuditHead returns the seq and hash of the last entry, or 0 and nil when the trail is
	// empty. Backends make it cheap on the writer: every append reads it. In an Update it is
	// the tail the next entry will follow when it commits: a backend serialises the
	// transactions that append (SQLite: one writer, BEGIN IMMEDIATE across processes;
	// PostgreSQL: one advisory lock across nodes), so an entry made from it never conflicts
	// with another writer's, and callers need no retry.
	AuditHead() (seq int64, hash []byte, err error)
	// AuditHeadTime returns the time of the last entry, the zero time when the trail is
	// empty; as cheap as AuditHead on the writer. An entry is never made earlier than it (see
	// escrow/audit), so the trail's times never go back, whatever the clocks did.
	AuditHeadTime() (time.Time, error)
	// InsertAudit stores e as the next entry: e.Seq must follow the head, and e.Prev must
	// be the head's hash (any for the first entry), or [ErrConflict]. Kind, Actor and Hash
	// are required ([ErrInvalid]). The entry commits with its transaction or not at all.
	InsertAudit(e AuditEntry) error
	// LastAudit returns the last entry, or [ErrNotFound] when the trail is empty.
	LastAudit() (*AuditEntry, error)
	// GetAudit returns entry seq, or [ErrNotFound].
	GetAudit(seq int64) (*AuditEntry, error)
	// LastAuditOfKind returns the last entry of kind, or [ErrNotFound].
	LastAuditOfKind(kind string) (*AuditEntry, error)
	// ListAudit returns up to limit entries from seq from on, in order ([ErrInvalid] unless
	// limit is positive).
	ListAudit(from int64, limit int) ([]AuditEntry, error)
	// AuditOfKindsFrom returns up to limit entries of the given kinds from seq from on.
	AuditOfKindsFrom(kinds []string, from int64, limit int) ([]AuditEntry, error)
	// InsertCheckpoint stores a signed checkpoint of entry c.Seq: [ErrNotFound] if there is
	// no such entry, [ErrConflict] if its hash is not c.Hash or a checkpoint exists at its
	// seq, [ErrInvalid] for a missing field.
	InsertCheckpoint(c AuditCheckpoint) error
	// LastCheckpoint returns the newest checkpoint, or [ErrNotFound].
	LastCheckpoint() (*AuditCheckpoint, error)
	// Checkpoints returns up to limit checkpoints from seq from on, in order.
	Checkpoints(from int64, limit int) ([]AuditCheckpoint, error)
}

// Cursors are named positions in the audit trail, kept by those that follow it and apply
// what it records elsewhere (the directory publisher, escrow/directory): the seq of the last
// entry applied. A cursor only moves forward.
type Cursors interface {
	// Cursor returns the position of cursor name, 0 when it was never advanced. [ErrInvalid]
	// for an empty name.
	Cursor(name string) (int64, error)
	// AdvanceCursor moves cursor name forward to pos; a pos at or behind it changes nothing.
	// [ErrInvalid] for an empty name or a negative pos.
	AdvanceCursor(name string, pos int64) error
}

// LoginFailures count failed logins (a refused enrollment code or credential) per key (a
// source address, a mailbox) in fixed windows, so that every node of one database counts the
// same failures: a source refused on one node is refused on all. A window is named by the
// instant it starts; the caller chooses the windows' length and keeps it.
type LoginFailures interface {
	// AddLoginFailure counts one failure of key in the window that starts at window.
	// [ErrInvalid] for an empty key or a zero window.
	AddLoginFailure(key string, window time.Time) error
	// LoginFailuresAtLeast returns the keys with at least min failures in the window that
	// starts at window, with their counts.
	LoginFailuresAtLeast(window time.Time, min int) (map[string]int, error)
	// DeleteLoginFailuresBefore deletes the counts of the windows that start before t and
	// returns how many it deleted.
	DeleteLoginFailuresBefore(t time.Time) (int, error)
}

// Consistency serves the consistency checker (escrow/check): it reads what was signed,
// in the order it was stored.
type Consistency interface {
	// CertificateHashes returns, for each serial, the hex SHA-256 of its stored DER ("" when
	// it has none).
	CertificateHashes(serials []string) ([]string, error)
	// SignedCertificates returns up to limit certificates holding a DER stored after
	// position after, and the position of the last one returned.
	SignedCertificates(after int64, limit int) ([]Certificate, int64, error)
	// LastCertificatePosition returns the position of the last certificate stored.
	LastCertificatePosition() (int64, error)
}
