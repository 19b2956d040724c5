// Package escrow is keyarc's engine: it issues certificates from templates, archives (seals) the
// private key of every encryption certificate before that certificate exists, and opens
// archived keys for a quorum-approved recovery.
//
// # Imports
//
// escrow uses its own sub-packages (ca, cms, issue, notice, record, shamir, store) and policy. It never
// imports hsm: keys in tokens reach it as crypto.Signer and crypto.Decrypter, so the whole
// engine runs in tests with standard-library software keys.
//
// # The issuance protocol
//
// Every certificate whose key is archived, and every imported key, is committed through one
// pipeline, escrow/issue ([Service.Pipeline]): reserve (the code claimed, the pending row and
// the sealed record committed, after a check that the record's recovery-set epoch is still the
// current one), then sign, then finish (certificate stored, record activated, audit entry), for
// a batch of one (an enrollment) or many (a bulk job). A failure after the reservation undoes it;
// an enrollment whose finish the storage refused is undone too (its enrollee was told to retry),
// and an undo the storage refuses is retried in the background until the storage answers, so a
// fault of the appliance never costs an enrollment code; after a crash, [Service.Sweep] marks
// the rows left pending failed. No certificate of an
// archiving template exists without its escrow record, and no record is committed for a
// recovery set an admin has replaced: an enrollment whose key was sealed for the old set is
// sealed again for the new one and retried once.
//
// An enrollment that archives nothing has no record to commit first: the CA signs, then one
// transaction claims the code and stores the certificate ([issue.Pipeline.IssueDirect]).
//
// # Errors
//
// The engine's sentinels are declared below and next to the entry points that return them;
// each entry point's documentation names them.
//
// # Concurrency
//
// A Service is safe for concurrent use; the store group-commits concurrent enrollments. It
// starts one background goroutine only while undos refused by the storage wait (escrow/issue's
// Undoer); it ends when they are done or the store is closed.
package escrow

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Errors the HTTP layer maps to statuses (cmd/keyarc/internal/api's status). Every exported
// entry point names, under "# Errors", the sentinels it returns: those of this package, and
// those of policy, store, ca, cms, check, audit and escrow/issue it passes on (wrapped). A
// fault of the appliance (storage: [store.ErrUnavailable]; token; archive: [ErrIntegrity] or
// an unnamed error) is never wrapped in one of the client's sentinels without its own.
var (
	// ErrUnauthorized: the caller's credential (mailbox and enrollment code, or client
	// certificate) was not accepted, or there was none; the wrapping error says which.
	ErrUnauthorized = errors.New("escrow: not authenticated")
	// errCodeNotAccepted is the one answer to a wrong mailbox or enrollment code, whichever
	// part was wrong.
	errCodeNotAccepted = fmt.Errorf("%w: mailbox and enrollment code not accepted", ErrUnauthorized)
	// ErrCodeUsed: the enrollment code has already been used.
	ErrCodeUsed = errors.New("escrow: enrollment code already used; ask for a new one")
	// ErrCodeExpired: the enrollment code is past its expiry.
	ErrCodeExpired = errors.New("escrow: enrollment code expired; ask for a new one")
	// ErrForbidden: the caller is authenticated but may not do this.
	ErrForbidden = errors.New("escrow: not allowed")
	// ErrInvalidRequest: the request is malformed or incomplete; the wrapping error says how.
	ErrInvalidRequest = errors.New("escrow: invalid request")
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("escrow: not found")
)

// Metrics receives counts of what the engine does. A nil Metrics is allowed.
type Metrics interface {
	Enrolled(template string, archived bool)
	Refused(template, reason string)
}

// Service issues certificates and archives keys. Fill the exported fields, then use it.
type Service struct {
	Store     store.Store
	Issuer    *ca.Issuer
	Templates map[string]*policy.Template
	Logger    *slog.Logger
	Metrics   Metrics
	// Transport opens the envelopes of archived keys; nil refuses archival.
	Transport *Transport
	// ShareOAEPHash is the RSA-OAEP hash shares are encrypted with: one the KRA tokens can
	// decrypt (SHA-1 on SoftHSM 2.6). Zero means SHA-1.
	ShareOAEPHash crypto.Hash
	// RecoveryKeys makes the per-request recovery keys in the token; nil refuses recovery.
	RecoveryKeys RecoveryKeys
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Audit, when set, learns of each audit entry appended (before its COMMIT) or refused.
	Audit AuditObserver
	// Trail, when set, appends the audit entries and refuses one that would follow a trail
	// that lost the last entry this process knows committed (see [audit.Witness]). For it to
	// know which entries committed, Store must be Trail.Track of the store.
	Trail *audit.Witness
	// Revoked, when set, is called after a revocation commits (a revoke request, or a
	// recovery's fetch that revokes) with the canonical serials revoked, or whose reason moved
	// to keyCompromise: the CRL and OCSP signers' trigger. It must return at once (signal a
	// goroutine); it is never called with the store's writer held.
	Revoked func(serials []string)
	// Certified, when set, is called after certificates are committed (an enrollment's, or a
	// bulk job batch's), with their canonical serials: the OCSP signer's news of issuance
	// (presign.Signer.Issued), which signs their first responses when issuance pauses. It
	// must return at once.
	Certified func(serials []string)
	// NotifyFlush, when set, is called when a bulk job has ended ([Service.FlushNotices]): the
	// notices of its keys may be sent now, merged per mailbox (escrow/notice/feed's
	// Feed.Flush). It must return at once. The notices themselves are read from the audit
	// trail, where every key escrowed and every recovery is recorded (escrow/notice/feed).
	NotifyFlush func()
	// Node, when set, names this node among nodes sharing the database: every audit entry
	// the Service writes records it (audit.Details.Node).
	Node string
	// Leads, when set, reports whether this node runs the singletons now (an
	// [Leader.Leads]); nil means always (one node).
	Leads func() bool
	// SweepAge, when set (several nodes share the database), keeps [Service.Sweep] from
	// touching issuances younger than it: another node may be finishing them. Zero sweeps
	// everything before the time given (one node, at start-up).
	SweepAge time.Duration

	sets     recoverySets
	decideMu sync.Mutex // serialises decisions on pending requests

	undoOnce sync.Once
	undoer   *issue.Undoer // shared by every Pipeline of this Service

	creds verifiedCredentials // credential rows this process has checked (check.go)

	orphans orphanKeys // per-request keys of no request, as first seen (keysweep.go)
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

func (s *Service) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Enrollee is who is enrolling, as authenticated by the HTTP layer.
type Enrollee struct {
	// Mailbox is the authenticated mailbox: it comes from the code or the client certificate,
	// never from the request.
	Mailbox string
	// Code is the enrollment code used, nil when the enrollee authenticated with a certificate.
	Code *store.Code
	// codeRead is when [Service.AuthenticateEnrollee] read Code (monotonic clock); zero for
	// an Enrollee made otherwise.
	codeRead time.Time
	// keyClear is the key ID ([issue.KeyID]) of the request's public key when the View that
	// read Code found no certificate revoked for keyCompromise holding it; empty otherwise.
	keyClear string
	// Renewing is the serial of the certificate presented for re-enrollment, if any.
	Renewing string
}

// EnrollRequest is one enrollment.
type EnrollRequest struct {
	Template string
	CSR      *x509.CertificateRequest
	// PublicKey is used when there is no CSR (server-side key generation, import).
	PublicKey crypto.PublicKey
}

// Issued is the result of a successful enrollment.
type Issued struct {
	Certificate *x509.Certificate
	Serial      string
	RecordID    string
}

// Template returns the named template.
//
// # Errors
//
// Only a [policy.UnknownTemplateError] (an [policy.ErrUnknownTemplate]) that lists the valid
// names.
func (s *Service) Template(name string) (*policy.Template, error) {
	t, ok := s.Templates[name]
	if !ok {
		return nil, policy.UnknownTemplate(name, s.Templates)
	}
	return t, nil
}

// Enroll issues a certificate for a template that does not archive keys.
//
// # Errors
//
// [ErrUnauthorized] (no code nor certificate, or a code the store does not hold),
// [ErrForbidden] (a code of another template), [ErrInvalidRequest] (no CSR, a template that
// archives or needs an admin's approval), [ErrCodeUsed], [ErrCodeExpired],
// [policy.ErrUnknownTemplate], policy's refusals of the CSR ([policy.ErrRejected] and its
// cause; [policy.ErrInvalidMailbox]), the CA's [ca.ErrLint], or, for faults of the appliance,
// a storage error wrapping [store.ErrUnavailable], the CA signer's (token's) error or the audit
// trail's ([audit.ErrAppend]), wrapped.
func (s *Service) Enroll(ctx context.Context, who Enrollee, req EnrollRequest) (*Issued, error) {
	ctx = WithActor(ctx, "enrollee:"+who.Mailbox)
	t, err := s.checkRequest(who, req)
	if err != nil {
		return nil, s.refuse(ctx, who, req.Template, err)
	}
	if t.Archive {
		return nil, fmt.Errorf("%w: template %q archives the private key: send the key encrypted to the transport certificate to /api/v1/enroll (field encrypted_key), or use serverkeygen", ErrInvalidRequest, t.Name)
	}
	return s.issue(ctx, issuance{template: t, pub: req.CSR.PublicKey, mailbox: who.Mailbox, codeID: who.codeID(), code: who.freshCode(),
		keyClear: who.freshKeyClear()})
}

// codeFresh is how long after [Service.AuthenticateEnrollee] read a code its record stands for
// the store's in the check before signing. Beyond it (a client slow to send its request) the
// code is read again, so that a code spent meanwhile by another request is refused before
// anything is signed rather than by the claim after.
const codeFresh = 100 * time.Millisecond

// freshCode returns the code's record if AuthenticateEnrollee read it less than codeFresh
// ago, else nil.
func (e Enrollee) freshCode() *store.Code {
	if e.Code == nil || e.codeRead.IsZero() || time.Since(e.codeRead) >= codeFresh {
		return nil
	}
	return e.Code
}

// freshKeyClear returns keyClear on the same terms as freshCode.
func (e Enrollee) freshKeyClear() string {
	if e.freshCode() == nil {
		return ""
	}
	return e.keyClear
}

func (e Enrollee) codeID() string {
	if e.Code == nil {
		return ""
	}
	return e.Code.ID
}

// checkRequest applies the template and authentication rules shared by every enrollment.
func (s *Service) checkRequest(who Enrollee, req EnrollRequest) (*policy.Template, error) {
	t, err := s.Template(req.Template)
	if err != nil {
		return nil, err
	}
	if t.ManualApproval {
		return nil, fmt.Errorf("%w: template %q needs an admin's approval; submit it as a pending request", ErrInvalidRequest, t.Name)
	}
	if who.Code != nil && who.Code.Template != t.Name {
		return nil, fmt.Errorf("%w: this enrollment code is for template %q, not %q", ErrForbidden, who.Code.Template, t.Name)
	}
	if who.Code == nil && who.Renewing == "" {
		return nil, errCodeNotAccepted
	}
	if req.CSR == nil {
		return nil, fmt.Errorf("%w: a certificate request (PKCS#10) is required", ErrInvalidRequest)
	}
	if err := t.CheckCSR(req.CSR, who.Mailbox); err != nil {
		return nil, err
	}
	return t, nil
}

// seal produces the escrow record for serial; it is called with the reserved serial so that
// the record's header binds it.
type sealFunc func(serial []byte) (*SealedRecord, error)

// issuance is one certificate to issue through the three-step protocol.
type issuance struct {
	template *policy.Template
	pub      crypto.PublicKey
	// mailbox is the certificate's rfc822Name and subject CN; empty for KRA certificates.
	mailbox string
	// subject overrides the subject (KRA and credential certificates).
	subject *pkix.Name
	codeID  string
	// code is codeID's record as Authenticate read it for this request, or nil; keyClear is
	// pub's key ID when the same read found it in no certificate revoked for keyCompromise.
	code     *store.Code
	keyClear string
	role     string
	kra      string
	// seal, when set, makes the escrow record for the reserved serial.
	seal sealFunc
}

// issue issues one certificate through the issuance pipeline (escrow/issue): reserve, sign,
// finish when it archives a key, else in one durable step ([issue.Pipeline.IssueDirect]).
func (s *Service) issue(ctx context.Context, is issuance) (*Issued, error) {
	t := is.template
	serial, err := ca.NewSerial()
	if err != nil {
		return nil, err
	}
	if is.seal != nil {
		return s.issueArchived(ctx, is, serial)
	}
	res, err := s.Pipeline().IssueDirect(ctx, issue.DirectRequest{Template: t, Pub: is.pub, Serial: serial, Mailbox: is.mailbox,
		Subject: is.subject, CodeID: is.codeID, Code: is.code, KeyClear: is.keyClear, Role: is.role, KRA: is.kra, Actor: actorFrom(ctx), Fingerprint: PublicKeyFingerprint(is.pub)})
	switch {
	case errors.Is(err, store.ErrCodeUsed):
		return nil, ErrCodeUsed
	case errors.Is(err, store.ErrCodeExpired):
		return nil, ErrCodeExpired
	case errors.Is(err, store.ErrNotFound):
		// The code to claim does not exist: not a code the appliance accepts.
		return nil, errCodeNotAccepted
	case err != nil:
		return nil, fmt.Errorf("escrow: %w", err)
	}
	if s.Metrics != nil {
		s.Metrics.Enrolled(t.Name, false)
	}
	if s.Certified != nil {
		s.Certified([]string{res.Serial})
	}
	s.log().Info("certificate issued", "serial", res.Serial, "template", t.Name, "archived", false)
	return &Issued{Certificate: res.Certificate, Serial: res.Serial}, nil
}

// issueArchived issues a certificate whose key is archived, as a batch of one of the issuance
// pipeline: the code is claimed and the record committed (after the recovery-set epoch check)
// before the CA signs.
func (s *Service) issueArchived(ctx context.Context, is issuance, serial *big.Int) (*Issued, error) {
	t := is.template
	rec, err := is.seal(serial.Bytes())
	if err != nil {
		return nil, err
	}
	// The enrollee is told "retry later" on a storage fault: nobody else takes this issuance
	// again, so a signed certificate that could not be finished (never returned) is undone,
	// in the background if the storage still refuses, and the code is free for the retry.
	p := s.Pipeline()
	p.UndoOnFault = true
	res := p.Issue(ctx, []issue.Request{{Template: t, Pub: is.pub, Mailbox: is.mailbox, Serial: serial,
		Record: rec, CodeID: is.codeID, Actor: actorFrom(ctx)}}, 1, nil)[0]
	switch err := res.Err; {
	case err == nil:
	case errors.Is(err, store.ErrCodeUsed):
		return nil, ErrCodeUsed
	case errors.Is(err, store.ErrCodeExpired):
		return nil, ErrCodeExpired
	case errors.Is(err, store.ErrNotFound) && is.codeID != "" && s.codeMissing(ctx, is.codeID):
		// The reservation could not claim the code: not a code the appliance accepts.
		return nil, errCodeNotAccepted
	case errors.Is(err, ErrKeyArchivedElsewhere):
		return nil, fmt.Errorf("escrow: the private key of this request is already archived for another mailbox; enroll with a new key: %w", ErrKeyArchivedElsewhere)
	case errors.Is(err, issue.ErrRecoverySetChanged):
		return nil, errRecoverySetChanged
	default:
		return nil, fmt.Errorf("escrow: issue certificate: %w", err)
	}
	if s.Certified != nil {
		s.Certified([]string{res.Serial})
	}
	s.log().Info("certificate issued", "serial", res.Serial, "template", t.Name, "archived", true)
	return &Issued{Certificate: res.Certificate, Serial: res.Serial, RecordID: res.RecordID}, nil
}

// codeMissing reports whether the store holds no code id (a reservation's ErrNotFound may also
// be a missing recovery set's).
func (s *Service) codeMissing(ctx context.Context, id string) bool {
	err := s.Store.View(ctx, func(tx store.Tx) error {
		_, err := tx.GetCode(id)
		return err
	})
	return errors.Is(err, store.ErrNotFound)
}

// Pipeline is the issuance pipeline (escrow/issue) over the Service's store, CA and audit trail:
// the one path by which an escrow record is committed. Its undos that the storage refuses go
// to the Service's one [issue.Undoer], which retries them in the background until the storage
// answers (see [Service.PendingUndos]). Its methods document their own errors.
func (s *Service) Pipeline() *issue.Pipeline {
	p := &issue.Pipeline{Store: s.Store, Issuer: s.Issuer, Audit: s.audit, Now: s.Now, Logger: s.Logger, Undoer: s.undos()}
	if m := s.Metrics; m != nil {
		p.Issued = func(template string) { m.Enrolled(template, true) }
	}
	return p
}

// PendingUndos is the number of failed issuances whose undo the storage refused and that wait,
// in the background, for it to answer (their enrollment codes are still used meanwhile).
func (s *Service) PendingUndos() int { return s.undos().Len() }

// undoPending reports whether the undo of the issuance of serial waits for the storage.
func (s *Service) undoPending(serial string) bool { return s.undos().Holds(serial) }

// undos is the Service's one [issue.Undoer].
func (s *Service) undos() *issue.Undoer {
	s.undoOnce.Do(func() { s.undoer = &issue.Undoer{Store: s.Store, Logger: s.Logger} })
	return s.undoer
}

// Sweep finishes issuances that a crash left pending: rows older than before (and than
// SweepAge, when set) are marked failed, their records abandoned and their codes freed. Run it
// at start-up, and with several nodes from [Service.RunSweeps].
//
// # Errors
//
// Only the store's ([store.ErrUnavailable]) or the audit trail's (wrapping [audit.ErrAppend]):
// faults of the appliance.
func (s *Service) Sweep(ctx context.Context, before time.Time) (int, error) {
	if limit := s.now().Add(-s.SweepAge); s.SweepAge > 0 && limit.Before(before) {
		before = limit
	}
	var n store.Swept
	err := s.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if n, err = tx.SweepPending(before); err != nil || n == (store.Swept{}) {
			return err
		}
		return s.audit(tx, audit.KindSweep, "system", "", audit.Details{Count: n.Certificates})
	})
	return n.Certificates, err
}

// refuse records a refused enrollment and returns err. A template name that names no template
// is not recorded: it is whatever the client sent there, possibly its enrollment code.
func (s *Service) refuse(ctx context.Context, who Enrollee, template string, err error) error {
	if _, ok := s.Templates[template]; !ok {
		template = ""
	}
	s.auditAlone(ctx, audit.KindEnrollRefused, actorFrom(ctx), who.Mailbox, audit.Details{Template: template, Reason: err.Error()})
	return err
}
