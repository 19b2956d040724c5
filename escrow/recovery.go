package escrow

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Recovery errors.
var (
	// ErrAlreadyApproved: this KRA has already approved the request; it counts once.
	ErrAlreadyApproved = errors.New("escrow: this KRA has already approved the request")
	// ErrBadApproval: the approval's signature or shares do not match the request.
	ErrBadApproval = errors.New("escrow: approval refused")
	// ErrTooManyFailures: too many refused approvals from one KRA in a short time.
	ErrTooManyFailures = errors.New("escrow: too many refused approvals from this KRA; wait before trying again")
	// ErrRecordMismatch: a sealed record is not the one its row says (swapped or altered).
	ErrRecordMismatch = errors.New("escrow: escrow record does not match its certificate")
	// ErrRecoveryKey: the request's recovery key in the token is unusable, or cannot decrypt an
	// approved share: a fault of the appliance, never of the officer.
	ErrRecoveryKey = errors.New("escrow: recovery key unavailable")
	// ErrSharesDoNotOpen: the approvals meet the quorum, but no quorum of their shares opens
	// a record: a KRA sent a share that is not its share of the record (a damaged token, a
	// share of another record or of the record as it was sealed before a reseal).
	ErrSharesDoNotOpen = errors.New("escrow: the approved shares do not open the record")
	// ErrRequestsFull: as many recovery and reseal requests are open as the appliance keeps
	// recovery keys for in its token.
	ErrRequestsFull = errors.New("escrow: too many recovery requests are open")
)

// maxOpenRequests bounds the recovery and reseal requests open at once, each of which holds a
// key in the appliance token until it ends: no credential can fill the token, which also holds
// the CA's keys. A variable for the tests.
var maxOpenRequests = 256

// Limits of recovery.
const (
	// PFXIterations is the PBKDF2 iteration count of recovered PKCS#12 files.
	PFXIterations = 600_000
	// LegacyPFXIterations is the iteration count of a legacy PKCS#12 (3DES, SHA-1 MAC) for its
	// MAC key and its encryption keys: OpenSSL's own legacy default, which old clients read.
	LegacyPFXIterations = 2048
	// MaxShareBytes bounds one re-encrypted share of an approval (RSA-8192).
	MaxShareBytes = 1024
	maxShareBytes = MaxShareBytes
	// approvalFailures within approvalWindow lock a KRA out of approving for the rest of the window.
	approvalFailures = 5
	approvalWindow   = 15 * time.Minute
)

// RecoveryKeys makes, uses and destroys the per-request recovery keys in the appliance token:
// RSA, decrypt only, one per request, destroyed when the request ends.
type RecoveryKeys interface {
	Generate(label string) (crypto.PublicKey, error)
	Decrypter(label string) (crypto.Decrypter, error)
	Destroy(label string) error
	// Labels lists the labels of the keys beginning with prefix.
	Labels(prefix string) ([]string, error)
}

// recoveryKeyLabel is the token label of a request's recovery key.
func recoveryKeyLabel(id string) string { return "recovery-" + id }

// Recovery is a recovery request as the engine shows it.
type Recovery struct {
	store.Recovery
	// Items are the records being recovered, in order.
	Items []RecoveryItem
	// Approvals are the KRAs that approved so far.
	Approvals []string
	// Have and Need count the quorum of the least-approved record.
	Have, Need int
	// Revoke is what the fetch does with the certificate of each item, in the order of Items:
	// "keep", or the name of the revocation reason (keyCompromise, superseded). Empty for a
	// reseal, and for a listing ([Service.ListRecoveries]).
	Revoke []string
}

// RecoveryItem is one record in a recovery request.
type RecoveryItem struct {
	RecordID string
	Serial   string
	Owner    string
	Epoch    uint32
}

// RequestRecovery opens a recovery request for the archived key of one certificate (serial) or
// every archived key of a mailbox (email). Each record and its certificate pass the
// consistency check first (the rows name the key's owner), then policy decides, before any key
// is made.
//
// # Errors
//
// [ErrInvalidRequest] (neither or both of serial and email, a serial or an email that is not
// one, then also [policy.ErrInvalidMailbox] for the email, a bad reason), [ErrNotFound] (no
// archived key), policy's refusals ([policy.ErrNotAllowed], [policy.ErrOwnKey],
// [policy.ErrNotRecoverable], [policy.ErrTooManyRecords]), [ErrIntegrity] (wrapping
// [ErrRecordMismatch] and [check.ErrInconsistent]) when a record or its certificate fails the
// consistency check, [ErrRequestsFull] when as many requests are open as the appliance keeps
// recovery keys for (before any key is made), or, for faults of the appliance, the token's
// error making the recovery key, a storage error wrapping [store.ErrUnavailable] or the audit
// trail's ([audit.ErrAppend]), wrapped. A row that policy finds malformed
// ([policy.ErrBadRecord]) is the archive's fault.
func (s *Service) RequestRecovery(ctx context.Context, officer policy.Principal, serial, email, reason string, ttl time.Duration) (*Recovery, error) {
	return s.OpenRecovery(ctx, officer, RecoveryRequest{Serial: serial, Email: email, Reason: reason, TTL: ttl})
}

// RecoveryRequest is a recovery request as an officer makes it.
type RecoveryRequest struct {
	// Serial is one certificate whose archived key is wanted; Email, every archived key of a
	// mailbox. Exactly one is set.
	Serial, Email string
	// Reason is the officer's stated reason (1 to 1000 printable characters).
	Reason string
	// Revoke is what the fetch does with each certificate: "keep", "keyCompromise" (the key is
	// in other hands: every unexpired certificate of the key is revoked, BR §6.1.2) or
	// "superseded"; empty means each certificate's template's recovery_revoke
	// ([policy.Template.RecoveryRevocation]; keep by default).
	Revoke string
	// TTL is how long the request stays open.
	TTL time.Duration
}

// OpenRecovery is [Service.RequestRecovery] with the request's revocation choice: what becomes
// of each certificate when its key is fetched ([RecoveryRequest.Revoke]). The choice, per
// record, is written in the request's audit entry (kind recovery-requested, field revoke),
// where the auditor and the fetch read it; the revocation happens in the fetch's transaction.
//
// # Errors
//
// Those of [Service.RequestRecovery]; a Revoke other than keep, keyCompromise and superseded
// is an [ErrInvalidRequest] wrapping [policy.ErrBadRecoveryRevocation].
func (s *Service) OpenRecovery(ctx context.Context, officer policy.Principal, rr RecoveryRequest) (*Recovery, error) {
	serial, email, reason, ttl := rr.Serial, rr.Email, rr.Reason, rr.TTL
	if rr.Revoke != "" {
		name, _, _, err := policy.ParseRecoveryRevocation(rr.Revoke)
		if err != nil {
			return nil, fmt.Errorf("%w: revoke: %w", ErrInvalidRequest, err)
		}
		rr.Revoke = name
	}
	if (serial == "") == (email == "") {
		return nil, fmt.Errorf("%w: give either a certificate serial or a mailbox", ErrInvalidRequest)
	}
	if serial != "" {
		n, err := store.NormalizeSerial(serial)
		if err != nil {
			// Not repeated: what is no serial may be a code or password pasted in the wrong place.
			return nil, fmt.Errorf("%w: serial: not a certificate serial: give 1 to 64 hexadecimal digits", ErrInvalidRequest)
		}
		serial = n
	}
	if email != "" {
		// Records hold the mailbox as enrollment normalised it: the domain in lower case.
		n, err := policy.NormalizeMailbox(email)
		if err != nil {
			return nil, fmt.Errorf("%w: email: %w", ErrInvalidRequest, err)
		}
		email = n
	}
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	var recs []store.Record
	var revoke []string
	err := s.view(ctx, func(tx store.Tx) error {
		if serial != "" {
			r, err := tx.GetRecordBySerial(serial)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: no archived key for certificate %s", ErrNotFound, serial)
			}
			if err != nil {
				return err
			}
			recs = append(recs, *r)
			return nil
		}
		all, err := tx.ListRecords(email)
		if err != nil {
			return err
		}
		for _, r := range all {
			if r.State == store.StateActive {
				recs = append(recs, r)
			}
		}
		if len(recs) == 0 {
			return fmt.Errorf("%w: no archived key for mailbox %s", ErrNotFound, email)
		}
		return nil
	}, func(tx store.Tx) error {
		// The records' rows decide whose key this is (policy's owner check, a request by
		// mailbox): they are checked against their certificates, in the snapshot they were
		// read from, before they are trusted.
		for _, r := range recs {
			if err := s.checkRecord(ctx, tx, r.ID); err != nil {
				return err
			}
		}
		return nil
	}, func(tx store.Tx) error {
		// What becomes of each certificate: the request's choice, else its template's; another
		// CA's certificate (a bulk import) is never revoked here, whatever the choice.
		revoke = make([]string, len(recs))
		for i, r := range recs {
			c, err := tx.GetCertificate(r.Serial)
			if err != nil {
				return fmt.Errorf("escrow: certificate of record %s: %w", r.ID, err)
			}
			revoke[i] = policy.RecoveryKeep
			switch t, ok := s.Templates[c.Template]; {
			case c.Template == TemplateImport:
			case rr.Revoke != "":
				revoke[i] = rr.Revoke
			case ok:
				revoke[i] = t.RecoveryRevocation()
			}
		}
		return nil
	}, s.roomForRequest) // before any key is made; again where the request is stored
	if err != nil {
		return nil, err
	}
	refs := make([]policy.RecordRef, len(recs))
	for i, r := range recs {
		refs[i] = policy.RecordRef{ID: r.ID, Owner: r.Email, Epoch: r.Epoch, State: r.State}
	}
	if err := policy.CheckRecoveryRequest(officer, refs); err != nil {
		return nil, err
	}

	return s.openRequest(ctx, store.KindRecover, officer, reason, ttl, recs, revoke)
}

// openRequest makes the recovery key in the token and stores the request; revoke (nil for a
// reseal) is what the fetch does with each record's certificate, written in the request's
// audit entry.
func (s *Service) openRequest(ctx context.Context, kind string, by policy.Principal, reason string, ttl time.Duration, recs []store.Record, revoke []string) (*Recovery, error) {
	if s.RecoveryKeys == nil {
		return nil, errors.New("escrow: no recovery key store configured")
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	label := recoveryKeyLabel(id)
	pub, err := s.RecoveryKeys.Generate(label)
	if err != nil {
		return nil, fmt.Errorf("escrow: generate recovery key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		s.destroyKey(label)
		return nil, err
	}
	now := s.now()
	row := store.Recovery{
		ID: id, Requester: by.Name, RequesterSerial: by.Serial, RequesterMailbox: by.Mailbox,
		Kind: kind, Reason: reason, KeyLabel: label, KeySPKI: spki, OAEPHash: s.shareHash().String(),
		State: store.RecoveryOpen, CreatedAt: now, ExpiresAt: now.Add(ttl),
	}
	for _, r := range recs {
		row.Records = append(row.Records, r.ID)
	}
	serials := make([]string, 0, len(recs))
	for _, r := range recs {
		serials = append(serials, r.Serial)
	}
	if err := s.Store.Update(ctx, func(tx store.Tx) error {
		if err := s.roomForRequest(tx); err != nil {
			return err
		}
		if err := tx.InsertRecovery(row); err != nil {
			return err
		}
		return s.audit(tx, audit.KindRecoveryRequested, principalActor(string(by.Role), by.Name), id, audit.Details{Request: id,
			RequestKind: kind, Records: row.Records, Serials: serials, Reason: reason, Signer: by.Serial,
			Expires: row.ExpiresAt.Format(time.RFC3339), Revoke: revoke})
	}); err != nil {
		s.destroyKey(label)
		if errors.Is(err, ErrRequestsFull) {
			return nil, err
		}
		return nil, fmt.Errorf("escrow: store recovery request: %w", err)
	}
	s.log().Info("recovery requested", "kind", kind, "id", id, "records", len(recs), "by", by.Name, "expires", row.ExpiresAt)
	return s.GetRecovery(ctx, id)
}

// roomForRequest is [ErrRequestsFull] when maxOpenRequests recovery and reseal requests are
// open and unexpired (an expired one not yet swept holds its key only until the next sweep).
func (s *Service) roomForRequest(tx store.Tx) error {
	rows, err := tx.ListRecoveries(store.RecoveryOpen)
	if err != nil {
		return err
	}
	now, open := s.now(), 0
	for _, r := range rows {
		if now.Before(r.ExpiresAt) {
			open++
		}
	}
	if open >= maxOpenRequests {
		return fmt.Errorf("%w: %d recovery requests are open, the appliance's bound (each holds a key in the token); let requests be fetched, cancelled or expire first (`keyarc recovery list --status open`)",
			ErrRequestsFull, open)
	}
	return nil
}

// maxReason is the longest reason, in bytes, of a recovery or reseal request.
const maxReason = 1000

// checkReason checks the reason of a recovery or reseal request, which the KRAs are shown
// before they approve: 1 to 1000 printable characters, so that it cannot hide text or move the
// cursor on their terminal. The error wraps [ErrInvalidRequest].
func checkReason(reason string) error {
	if strings.TrimSpace(reason) == "" || len(reason) > maxReason || !utf8.ValidString(reason) || strings.ContainsFunc(reason, isControl) {
		return fmt.Errorf("%w: a reason of 1 to %d printable characters is required (no line breaks or control characters)", ErrInvalidRequest, maxReason)
	}
	return nil
}

// isControl reports whether r is a control character other than a tab: C0 (line breaks, ESC),
// DEL or C1 (U+009B is a CSI on many terminals).
func isControl(r rune) bool { return r != '\t' && unicode.IsControl(r) }

func (s *Service) destroyKey(label string) {
	if err := s.RecoveryKeys.Destroy(label); err != nil {
		s.log().Error("destroy recovery key", "label", label, "err", err)
	}
}

// view runs fns in order in one snapshot ([store.Store.View]); the first error ends it.
func (s *Service) view(ctx context.Context, fns ...func(store.Tx) error) error {
	return s.Store.View(ctx, func(tx store.Tx) error {
		for _, fn := range fns {
			if err := fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
}

// recoveryState is a request with everything an answer about it needs, read from one snapshot
// ([Service.loadRecovery]): one round trip to the store, and the rows a recovery checks are
// the rows it uses.
type recoveryState struct {
	req       *store.Recovery
	records   []store.Record
	approvals []store.Approval
	sets      map[uint32]*RecoverySet
	// signers are the certificate rows of the approvals' signers (and of snapshot.credential),
	// by serial; a serial with no row is in signerErr.
	signers   map[string]*store.Certificate
	signerErr map[string]error
	// enrolled is, for each KRA signer by serial, the identity of the unwrap key its credential
	// was enrolled with ([enrolledUnwrapKey]; "" when that cannot be told).
	enrolled map[string]string

	// Read only when asked for (see snapshot).
	certs     map[string]*store.Certificate // the records' certificate rows, by serial
	certErr   map[string]error              // the records' certificates with no row
	checked   map[string]error              // consistency check: by record ID, and by signer serial
	blocked   bool                          // snapshot.failuresOf is locked out: nothing else was read
	limitErr  error                         // the rate limit could not be read
	current   *RecoverySet                  // the current recovery set, not checked usable
	curErr    error                         // why there is none (an ErrNoRecoverySet)
	revoke    []string                      // snapshot.revoke: per record, keep or a reason name
	revokeErr error                         // why the request's audit entry could not tell revoke
}

// snapshot says what [Service.loadRecovery] reads beyond the request, its records, their
// recovery sets, its approvals and their signers' rows.
type snapshot struct {
	// records: each record's consistency check and its certificate's row.
	records bool
	// approvers: the consistency check of each approval's signer.
	approvers bool
	// credential: the row and the consistency check of this certificate (the approving KRA's).
	credential string
	// failuresOf: first, whether this KRA is locked out of approving at time at; if so,
	// nothing else.
	failuresOf string
	at         time.Time
	// current: the current recovery set.
	current bool
	// revoke: what the fetch does with each record's certificate, from the request's audit
	// entry ([recoveryRevocations]).
	revoke bool
}

// loadRecovery reads request id and what want asks for in one snapshot. Rows a request
// should have but lacks (a signer's or a record's certificate) and failed consistency checks
// are kept, not returned, so that each answer reports them in the order it always has; any
// other error of the store ends the read. The state is returned with the error too (what was
// read before it: a lock-out, or the rate limit's error).
func (s *Service) loadRecovery(ctx context.Context, id string, want snapshot) (*recoveryState, error) {
	st := &recoveryState{sets: map[uint32]*RecoverySet{}, signers: map[string]*store.Certificate{},
		signerErr: map[string]error{}, enrolled: map[string]string{}, certs: map[string]*store.Certificate{},
		certErr: map[string]error{}, checked: map[string]error{}}
	if !isNewID(id) {
		// Not echoed: it is the client's, of any size. Not found, as an unknown ID is.
		return st, fmt.Errorf("%w: no recovery request with that ID (a request ID is 16 lower-case hex digits, as `keyarc recovery list` shows them)", ErrNotFound)
	}
	err := s.Store.View(ctx, func(tx store.Tx) error {
		if want.failuresOf != "" {
			n, err := tx.ApprovalFailures(want.failuresOf, want.at.Add(-approvalWindow))
			if err != nil {
				st.limitErr = fmt.Errorf("escrow: approval rate limit: %w", err)
				return st.limitErr
			}
			if st.blocked = n >= approvalFailures; st.blocked {
				return nil
			}
		}
		var err error
		st.req, err = tx.GetRecovery(id)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: no recovery request %q", ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		for _, rid := range st.req.Records {
			r, err := tx.GetRecord(rid)
			if err != nil {
				return fmt.Errorf("record %s: %w", rid, err)
			}
			st.records = append(st.records, *r)
		}
		if st.approvals, err = tx.ListApprovals(id); err != nil {
			return err
		}
		for _, r := range st.records {
			if _, ok := st.sets[r.Epoch]; ok {
				continue
			}
			row, err := tx.GetRecoverySet(r.Epoch)
			if err != nil {
				return fmt.Errorf("escrow: recovery set %d: %w", r.Epoch, err)
			}
			if st.sets[r.Epoch], err = s.recoverySetIn(tx, row); err != nil {
				return err
			}
		}
		signers := make([]string, 0, len(st.approvals)+1)
		for _, a := range st.approvals {
			signers = append(signers, a.SignerSerial)
		}
		if want.credential != "" {
			signers = append(signers, want.credential)
		}
		for _, serial := range signers {
			if err := readRow(tx, serial, st.signers, st.signerErr); err != nil {
				return err
			}
		}
		if st.enrolled, err = enrolledUnwrapKeys(tx, st.signers, s.now()); err != nil {
			return err
		}
		if want.records {
			for _, r := range st.records {
				if err := readRow(tx, r.Serial, st.certs, st.certErr); err != nil {
					return err
				}
				if err := keepCheck(st.checked, r.ID, s.checkerIn(tx).Record(ctx, r.ID)); err != nil {
					return err
				}
			}
		}
		if want.approvers {
			for _, a := range st.approvals {
				if err := keepCheck(st.checked, a.SignerSerial, s.checkerIn(tx).Certificate(ctx, a.SignerSerial)); err != nil {
					return err
				}
			}
		}
		if want.credential != "" {
			if err := keepCheck(st.checked, want.credential, s.checkerIn(tx).Certificate(ctx, want.credential)); err != nil {
				return err
			}
		}
		if want.revoke && st.req.Kind == store.KindRecover {
			st.revoke, err = recoveryRevocations(tx, st.req)
			if errors.Is(err, check.ErrInconsistent) {
				// Kept for the fetch, which refuses it; a listing shows no choice.
				st.revokeErr, err = err, nil
			}
			if err != nil {
				return err
			}
		}
		if want.current {
			st.current, err = s.currentSetIn(tx)
			if errors.Is(err, ErrNoRecoverySet) {
				st.curErr, err = err, nil
			}
			return err
		}
		return nil
	})
	return st, err
}

// readRow reads certificate serial into rows, or its absence into missing; other errors are
// the store's.
func readRow(tx store.Tx, serial string, rows map[string]*store.Certificate, missing map[string]error) error {
	if _, ok := rows[serial]; ok {
		return nil
	}
	if _, ok := missing[serial]; ok {
		return nil
	}
	c, err := tx.GetCertificate(serial)
	switch {
	case err == nil:
		rows[serial] = c
	case errors.Is(err, store.ErrNotFound):
		missing[serial] = err
	default:
		return err
	}
	return nil
}

// enrolledUnwrapKeys finds, in tx at now, the unwrap key that each KRA credential among
// signers was enrolled with ([enrolledUnwrapKey]), by serial.
func enrolledUnwrapKeys(tx store.Tx, signers map[string]*store.Certificate, now time.Time) (map[string]string, error) {
	out := map[string]string{}
	var issued []store.Pending
	read := false
	for serial, c := range signers {
		if !isAuthOf(*c, c.KRA) || c.KRA == "" {
			continue
		}
		if !read {
			var err error
			if issued, err = tx.ListPending(store.StateIssued); err != nil {
				return nil, err
			}
			read = true
		}
		key, err := enrolledUnwrapKey(tx, c, issued, now)
		if err != nil {
			return nil, err
		}
		out[serial] = key
	}
	return out, nil
}

// enrolledUnwrapKey returns the identity ([store.Certificate.KeyID]) of the unwrap key that
// KRA auth certificate auth was enrolled with, given the issued enrollment requests, or ""
// when that cannot be told. A KRA's auth key and unwrap key are certified together
// ([Service.IssueKRA]); the certificate rows do not link them, so:
//
//   - a credential issued from an enrollment request (`keyarc kra enroll`: its proof is the
//     auth key's signature over the unwrap key and the name) is bound to that request's unwrap
//     key, the latest request's if its auth key was enrolled more than once;
//   - a credential of no request (issued directly, as by `keyarc init --dev`) is bound to the
//     one unwrap key of the name's valid (issued, unexpired) unwrap certificates that no
//     request binds to another auth key; to none if there are several.
//
// IssueKRA refuses a second key pair for a valid name, so the second rule finds two keys only
// in an archive where an earlier version certified them: then that name approves nothing until
// an admin revokes the certificates that are not the KRA's.
func enrolledUnwrapKey(tx store.Tx, auth *store.Certificate, issued []store.Pending, now time.Time) (string, error) {
	var key string
	var at time.Time
	claimed := map[string]bool{} // unwrap keys that requests of the name bind to other auth keys
	for _, p := range issued {
		if p.Template != TemplateKRA || p.Name != auth.KRA {
			continue
		}
		csr, err := x509.ParseCertificateRequest(p.CSR)
		if err != nil {
			return "", fmt.Errorf("escrow: enrollment request %s of KRA %q: %w", p.ID, p.Name, err)
		}
		unwrap := spkiKeyID(p.PublicKey)
		if PublicKeyFingerprint(csr.PublicKey) != auth.KeyID {
			claimed[unwrap] = true
			continue
		}
		if key == "" || p.DecidedAt.After(at) {
			key, at = unwrap, p.DecidedAt
		}
	}
	if key != "" {
		return key, nil
	}
	certs, err := tx.ListCertificates(store.Filter{KRA: auth.KRA, Template: TemplateKRA})
	if err != nil {
		return "", err
	}
	for _, c := range certs {
		if c.State != store.StateIssued || !now.Before(c.NotAfter) || c.KeyID == "" || claimed[c.KeyID] {
			continue
		}
		if key != "" && key != c.KeyID {
			return "", nil
		}
		key = c.KeyID
	}
	return key, nil
}

// keepCheck keeps the consistency checker's verdict on key (nil, or a problem wrapping
// [check.ErrInconsistent]); other errors are the store's.
func keepCheck(checked map[string]error, key string, err error) error {
	if err != nil && !errors.Is(err, check.ErrInconsistent) {
		return err
	}
	checked[key] = err
	return nil
}

// policyView turns the loaded state into policy's terms. Approvals whose signature does not
// verify never get this far: SubmitApproval refuses them; they are re-verified here anyway.
func (s *Service) policyView(st *recoveryState) (policy.Request, map[uint32]policy.RecoverySet, []policy.Approval, error) {
	req := requestOf(&Recovery{Recovery: *st.req})
	req.Records = nil
	for _, r := range st.records {
		req.Records = append(req.Records, policy.RecordRef{ID: r.ID, Owner: r.Email, Epoch: r.Epoch, State: r.State})
	}
	sets := map[uint32]policy.RecoverySet{}
	for epoch, rs := range st.sets {
		ps := policy.RecoverySet{Epoch: epoch, Quorum: rs.Quorum}
		for i, c := range rs.KRAs {
			ps.KRAs = append(ps.KRAs, policy.SetMember{Name: rs.Names[i], Key: spkiKeyID(c.RawSubjectPublicKeyInfo), NotAfter: c.NotAfter})
		}
		sets[epoch] = ps
	}
	var apps []policy.Approval
	for _, a := range st.approvals {
		pa, err := s.verifyStoredApproval(st, a)
		if err != nil {
			return req, nil, nil, err
		}
		apps = append(apps, pa)
	}
	return req, sets, apps, nil
}

// verifyStoredApproval re-checks a stored approval's signature against the signer's
// certificate and reports it in policy's terms.
func (s *Service) verifyStoredApproval(st *recoveryState, a store.Approval) (policy.Approval, error) {
	signer, ok := st.signers[a.SignerSerial]
	if !ok {
		return policy.Approval{}, fmt.Errorf("escrow: approval by %s: signer certificate: %w", a.KRA, st.signerErr[a.SignerSerial])
	}
	pa := policy.Approval{RequestID: a.RecoveryID, KRA: a.KRA, UnwrapKey: st.enrolled[a.SignerSerial], Signer: principalOf(signer)}
	cert, err := x509.ParseCertificate(signer.DER)
	if err != nil {
		return pa, nil
	}
	pa.SignerNotAfter = cert.NotAfter
	shares, err := decodeShares(a.Shares)
	if err != nil {
		return pa, nil
	}
	digest := ApprovalDigest(st.req, shares)
	pa.SignatureOK = signer.State == store.StateIssued && verifyDigest(cert.PublicKey, digest, a.Signature)
	for _, sh := range shares {
		pa.Records = append(pa.Records, sh.RecordID)
	}
	return pa, nil
}

// principalOf describes a credential row as policy sees it.
func principalOf(c *store.Certificate) policy.Principal {
	name := c.KRA
	if name == "" {
		name = commonName(c.Subject)
	}
	return policy.Principal{Role: policy.Role(c.Role), Name: name, Mailbox: c.Email, Serial: c.Serial}
}

// commonName extracts CN from a DN string made by pkix.Name.String.
func commonName(dn string) string {
	for _, part := range strings.Split(dn, ",") {
		if v, ok := strings.CutPrefix(part, "CN="); ok {
			return v
		}
	}
	return dn
}

// GetRecovery returns a request with its items, approvals and quorum state, read from one
// snapshot.
//
// # Errors
//
// [ErrNotFound] when there is no request id; a storage error wrapping [store.ErrUnavailable];
// any other error (a record, recovery set or signer certificate the request names is missing)
// is a fault of the archive.
func (s *Service) GetRecovery(ctx context.Context, id string) (*Recovery, error) {
	st, err := s.loadRecovery(ctx, id, snapshot{revoke: true})
	if err != nil {
		return nil, err
	}
	return s.recoveryOf(st)
}

// recoveryOf is the loaded request as the engine shows it.
func (s *Service) recoveryOf(st *recoveryState) (*Recovery, error) {
	out := &Recovery{Recovery: *st.req, Revoke: st.revoke}
	for _, r := range st.records {
		out.Items = append(out.Items, RecoveryItem{RecordID: r.ID, Serial: r.Serial, Owner: r.Email, Epoch: r.Epoch})
	}
	for _, a := range st.approvals {
		out.Approvals = append(out.Approvals, a.KRA)
	}
	req, sets, apps, err := s.policyView(st)
	if err != nil {
		return nil, err
	}
	out.Have, out.Need = quorumProgress(req, sets, apps, s.now())
	return out, nil
}

// quorumProgress reports the least-approved record's count and need.
func quorumProgress(req policy.Request, sets map[uint32]policy.RecoverySet, apps []policy.Approval, now time.Time) (have, need int) {
	// Evaluate on an open copy: the count is wanted even for closed requests.
	req.State = store.RecoveryOpen
	if !now.Before(req.ExpiresAt) {
		req.ExpiresAt = now.Add(time.Second)
	}
	_, err := policy.Evaluate(req, sets, apps, now)
	var qe *policy.QuorumError
	if errors.As(err, &qe) {
		return qe.Have, qe.Need
	}
	need = 0
	for _, r := range req.Records {
		if q := sets[r.Epoch].Quorum; q > need {
			need = q
		}
	}
	if err == nil {
		return need, need
	}
	return 0, need
}

// ListRecoveries lists requests in state ("" for all).
//
// # Errors
//
// [ErrInvalidRequest] for a state that is none of open, consumed, cancelled and expired, or
// the store's ([store.ErrUnavailable]).
func (s *Service) ListRecoveries(ctx context.Context, state string) ([]store.Recovery, error) {
	switch state {
	case "", store.RecoveryOpen, store.RecoveryConsumed, store.RecoveryCancelled, store.RecoveryExpired:
	default:
		return nil, fmt.Errorf("%w: state %q is none of open, consumed, cancelled and expired", ErrInvalidRequest, clip(state))
	}
	var out []store.Recovery
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		out, err = tx.ListRecoveries(state)
		return err
	})
	return out, err
}

// ShareForKRA is what a KRA needs to approve one record: its encrypted share.
type ShareForKRA struct {
	RecoveryItem
	// Share is the KRA's share of the record, RSA-OAEP encrypted to its unwrap key; nil when the
	// KRA holds no share of this record.
	Share    []byte
	OAEPHash crypto.Hash
}

// SharesFor returns, for a KRA, its encrypted share of each record of the request: the share
// of the member of the record's recovery set that has the KRA's name, when the KRA's
// credential was enrolled with that member's unwrap key ([enrolledUnwrapKey]). A credential
// that holds a member's name but not its key is given nothing.
//
// # Errors
//
// [ErrNotFound], policy's refusal of the approver ([policy.ErrNotAllowed], [policy.ErrConsumed],
// [policy.ErrRequestClosed], [policy.ErrExpired]), [ErrForbidden] for a credential that has
// the name of a member of the records' recovery sets but was not enrolled with its unwrap key
// ([errNotMember]), [ErrRecordMismatch] for a record whose
// sealed header is not its row's, [ErrIntegrity] (wrapping [check.ErrInconsistent]) when a
// record or its certificate fails the consistency check, or a storage error wrapping
// [store.ErrUnavailable]. Any other error (a record that does not parse, a row the request
// names missing) is a fault of the archive.
func (s *Service) SharesFor(ctx context.Context, kra policy.Principal, id string) (*Recovery, []ShareForKRA, error) {
	st, err := s.loadRecovery(ctx, id, snapshot{records: true, credential: kra.Serial, revoke: true})
	if err != nil {
		return nil, nil, err
	}
	rec, err := s.recoveryOf(st)
	if err != nil {
		return nil, nil, err
	}
	if err := policy.CheckApprover(kra, requestOf(rec), s.now()); err != nil {
		return nil, nil, err
	}
	var out []ShareForKRA
	given, notOurs := 0, false
	for i, r := range st.records {
		item := ShareForKRA{RecoveryItem: rec.Items[i]}
		sealed, err := record.Parse(r.Blob)
		if err != nil {
			return nil, nil, fmt.Errorf("escrow: record %s: %w", r.ID, err)
		}
		if err := s.checkBinding(st, r, sealed); err != nil {
			return nil, nil, err
		}
		if err := s.recordFault(r.ID, st.checked[r.ID]); err != nil {
			return nil, nil, err
		}
		item.OAEPHash = sealed.Header.OAEPHash
		member, ours := setMember(st, r.Epoch, kra)
		switch {
		case member == nil:
		case !ours:
			notOurs = true
		default:
			if _, ct, err := sealed.ShareFor(record.KeyID(member)); err == nil {
				item.Share = ct
				given++
			}
		}
		out = append(out, item)
	}
	if given == 0 && notOurs {
		return nil, nil, errNotMember(kra)
	}
	return rec, out, nil
}

// setMember returns the unwrap certificate of the member of epoch's recovery set (in st) that
// has kra's name, nil if there is none, and whether kra's credential was enrolled with that
// certificate's key: whether kra is that member, not only someone of the same name.
func setMember(st *recoveryState, epoch uint32, kra policy.Principal) (*x509.Certificate, bool) {
	rs := st.sets[epoch]
	if rs == nil {
		return nil, false
	}
	for i, name := range rs.Names {
		if name == kra.Name {
			c := rs.KRAs[i]
			key := st.enrolled[kra.Serial]
			return c, key != "" && key == spkiKeyID(c.RawSubjectPublicKeyInfo)
		}
	}
	return nil, false
}

// errNotMember refuses kra's credential for a member of a recovery set whose name it has but
// whose unwrap key it was not enrolled with.
func errNotMember(kra policy.Principal) error {
	return fmt.Errorf("%w: credential %s was not enrolled with the unwrap key of KRA %q in the recovery set of this request's records, so it cannot approve for that KRA; if two key pairs were certified under the name %q, an admin must revoke the certificates that are not that KRA's",
		ErrForbidden, kra.Serial, kra.Name, kra.Name)
}

// requestOf is a Recovery in policy's terms, without approvals.
func requestOf(r *Recovery) policy.Request {
	role := policy.RoleOfficer
	if r.Kind == store.KindReseal {
		role = policy.RoleAdmin
	}
	req := policy.Request{
		ID:        r.ID,
		Reseal:    r.Kind == store.KindReseal,
		Requester: policy.Principal{Role: role, Name: r.Requester, Mailbox: r.RequesterMailbox, Serial: r.RequesterSerial},
		CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt, State: r.State,
	}
	for _, it := range r.Items {
		req.Records = append(req.Records, policy.RecordRef{ID: it.RecordID, Owner: it.Owner, Epoch: it.Epoch, State: store.StateActive})
	}
	return req
}

// ApprovedShare is one record's share, re-encrypted by the KRA to the request's recovery key.
type ApprovedShare struct {
	RecordID string `json:"record_id"`
	Share    []byte `json:"share"`
}

func decodeShares(b []byte) ([]ApprovedShare, error) {
	var out []ApprovedShare
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// ApprovalDigest is what a KRA's auth key signs (SHA-256, then ECDSA or RSA PKCS#1 v1.5): the
// exact request (ID, requester, recovery key, expiry, records in order) and the SHA-256 of each
// re-encrypted share the KRA submits. A signature for one request is worthless for any other.
// It cannot fail.
func ApprovalDigest(r *store.Recovery, shares []ApprovedShare) []byte {
	h := sha256.New()
	field := func(b []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte("keyarc recovery approval v1"))
	field([]byte(r.ID))
	field([]byte(r.Requester))
	field([]byte(r.RequesterSerial))
	keyHash := sha256.Sum256(r.KeySPKI)
	field(keyHash[:])
	var exp [8]byte
	binary.BigEndian.PutUint64(exp[:], uint64(r.ExpiresAt.UnixMicro()))
	field(exp[:])
	byRecord := map[string][]byte{}
	for _, s := range shares {
		byRecord[s.RecordID] = s.Share
	}
	for _, rid := range r.Records {
		field([]byte(rid))
		if sh, ok := byRecord[rid]; ok {
			sum := sha256.Sum256(sh)
			field(sum[:])
		} else {
			field(nil)
		}
	}
	return h.Sum(nil)
}

// approvalRefused records a refused approval: it counts against the KRA's rate limit, in the
// same transaction as its audit entry. A failure is logged: the approval was refused anyway.
func (s *Service) approvalRefused(ctx context.Context, kra string, now time.Time, id string, d audit.Details) {
	err := s.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error {
		if err := tx.AddApprovalFailure(kra, now, now.Add(-approvalWindow)); err != nil {
			return err
		}
		return s.audit(tx, audit.KindApprovalRefused, principalActor("kra", kra), id, d)
	})
	if err != nil {
		s.log().Error("refused approval not recorded", "kra", kra, "err", err)
	}
}

// SubmitApproval stores a KRA's signed approval after checking it: the signer is a KRA allowed to
// approve this open request, the signature (by the certificate the KRA authenticated with) covers
// this exact request and these shares, and every share belongs to a record of the request. It
// decrypts nothing: shares are opened only after policy grants the quorum, at fetch. The
// request's records and the KRA's certificate row pass the consistency check first.
//
// # Errors
//
// [ErrTooManyFailures], [ErrNotFound], policy's refusal of the approver (as in
// [Service.SharesFor]), [ErrBadApproval], [ErrForbidden] for a share of a record whose
// recovery set has a member of the KRA's name but another unwrap key (as in
// [Service.SharesFor]), [ErrAlreadyApproved], [ErrIntegrity] (wrapping
// [check.ErrInconsistent]; not counted against the KRA), or, for faults of the appliance, a
// storage error wrapping [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]),
// wrapped (neither counted against the KRA).
func (s *Service) SubmitApproval(ctx context.Context, kra policy.Principal, id string, shares []ApprovedShare, sig []byte) (*Recovery, error) {
	now := s.now()
	st, err := s.loadRecovery(ctx, id, snapshot{failuresOf: kra.Name, at: now, records: true, credential: kra.Serial})
	if st.limitErr != nil {
		return nil, st.limitErr
	}
	if st.blocked {
		s.auditAlone(ctx, audit.KindApprovalRefused, principalActor("kra", kra.Name), id, audit.Details{Request: id, KRA: kra.Name,
			Signer: kra.Serial, Reason: ErrTooManyFailures.Error()})
		return nil, ErrTooManyFailures
	}
	var rec *Recovery
	if err == nil {
		rec, err = s.submitApproval(ctx, st, kra, id, shares, sig, now)
	}
	// A fault of the appliance (storage, a row that fails the consistency check, an audit
	// trail that refuses the approval's entry, the request cut short) is not the KRA's: it
	// does not count towards the KRA's lock-out. Nor does an approval the KRA sends again
	// after its answer was lost (the appliance restarted, the network dropped): it is
	// audited, and the KRA is told it approved already.
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, store.ErrUnavailable), errors.Is(err, ErrIntegrity),
		errors.Is(err, audit.ErrAppend), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	case errors.Is(err, ErrAlreadyApproved):
		s.auditAlone(ctx, audit.KindApprovalRefused, principalActor("kra", kra.Name), id, audit.Details{Request: id, KRA: kra.Name,
			Signer: kra.Serial, Signature: base64.StdEncoding.EncodeToString(sig), Reason: err.Error()})
	default:
		s.approvalRefused(ctx, kra.Name, now, id, audit.Details{Request: id, KRA: kra.Name,
			Signer: kra.Serial, Signature: base64.StdEncoding.EncodeToString(sig), Reason: err.Error()})
	}
	return rec, err
}

func (s *Service) submitApproval(ctx context.Context, st *recoveryState, kra policy.Principal, id string, shares []ApprovedShare, sig []byte, now time.Time) (*Recovery, error) {
	rec, err := s.recoveryOf(st)
	if err != nil {
		return nil, err
	}
	if err := policy.CheckApprover(kra, requestOf(rec), now); err != nil {
		return nil, err
	}
	if len(shares) == 0 || len(shares) > len(rec.Items) {
		return nil, fmt.Errorf("%w: an approval carries one share for each record of the request the KRA holds a share of", ErrBadApproval)
	}
	inRequest := map[string]bool{}
	for _, it := range rec.Items {
		inRequest[it.RecordID] = true
	}
	seen := map[string]bool{}
	for _, sh := range shares {
		switch {
		case !inRequest[sh.RecordID]:
			return nil, fmt.Errorf("%w: record %q is not part of request %s", ErrBadApproval, sh.RecordID, id)
		case seen[sh.RecordID]:
			return nil, fmt.Errorf("%w: two shares for record %s", ErrBadApproval, sh.RecordID)
		case len(sh.Share) == 0 || len(sh.Share) > maxShareBytes:
			return nil, fmt.Errorf("%w: share for record %s is empty or too large", ErrBadApproval, sh.RecordID)
		}
		seen[sh.RecordID] = true
	}
	for _, it := range rec.Items {
		if err := s.recordFault(it.RecordID, st.checked[it.RecordID]); err != nil {
			return nil, err
		}
	}
	if err := s.signerFault(kra.Serial, st.checked[kra.Serial]); err != nil {
		return nil, err
	}
	signer, ok := st.signers[kra.Serial]
	if !ok {
		return nil, fmt.Errorf("escrow: signer certificate: %w", st.signerErr[kra.Serial])
	}
	cert, err := x509.ParseCertificate(signer.DER)
	if err != nil {
		return nil, fmt.Errorf("escrow: signer certificate: %w", err)
	}
	if !verifyDigest(cert.PublicKey, ApprovalDigest(&rec.Recovery, shares), sig) {
		return nil, fmt.Errorf("%w: the signature is not the KRA's over this request and these shares", ErrBadApproval)
	}
	// Approvals are stored by KRA name: one of a credential that has a member's name but not
	// its key would take the member's place and never count.
	epochOf := make(map[string]uint32, len(st.records))
	for _, r := range st.records {
		epochOf[r.ID] = r.Epoch
	}
	for _, sh := range shares {
		if member, ours := setMember(st, epochOf[sh.RecordID], kra); member != nil && !ours {
			return nil, errNotMember(kra)
		}
	}
	blob, err := json.Marshal(shares)
	if err != nil {
		return nil, err
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertApproval(store.Approval{RecoveryID: id, KRA: kra.Name, SignerSerial: kra.Serial, Shares: blob, Signature: sig, CreatedAt: now}); err != nil {
			return err
		}
		// The signature and what it signs: the approval stays provable from the trail alone.
		records := make([]string, 0, len(shares))
		for _, sh := range shares {
			records = append(records, sh.RecordID)
		}
		return s.audit(tx, audit.KindApproval, principalActor("kra", kra.Name), id, audit.Details{Request: id, KRA: kra.Name,
			Signer: kra.Serial, Records: records, Signature: base64.StdEncoding.EncodeToString(sig),
			Digest: hex.EncodeToString(ApprovalDigest(&rec.Recovery, shares))})
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, ErrAlreadyApproved
	}
	if err != nil {
		return nil, fmt.Errorf("escrow: store approval: %w", err)
	}
	s.log().Info("recovery approved", "id", id, "kra", kra.Name)
	return s.GetRecovery(ctx, id)
}

// Recovered is what a recovery delivers: one PKCS#12 per record, all under one password.
type Recovered struct {
	Password string
	Files    []RecoveredFile
	// Revocations is what the fetch revoked (the request's revoke choice), in its
	// transaction.
	Revocations RevokeResult
}

// RecoveredFile is one recovered key.
type RecoveredFile struct {
	Serial string
	PFX    []byte
}

// Fetch delivers a granted recovery to the officer who requested it, once. Policy evaluates the
// quorum first; only a Grant lets the engine decrypt shares in the token. The request is
// consumed (durably) before anything is returned, and its recovery key destroyed. In the same
// transaction as the consumption, the certificates are revoked as the request said
// ([RecoveryRequest.Revoke]; keyCompromise revokes every unexpired certificate of the key),
// with an audit entry of kind revoke; the escrow records stay, recoverable again. The records,
// their certificates and the approvers' certificates pass the consistency check before any
// share is decrypted.
//
// # Errors
//
// [ErrNotFound], [ErrInvalidRequest] (a reseal request), [ErrForbidden] (not the requesting
// officer), policy's refusals ([policy.ErrQuorum], [policy.ErrConsumed],
// [policy.ErrRequestClosed], [policy.ErrExpired], [policy.ErrNotAllowed]),
// [ErrSharesDoNotOpen] (the quorum is met but no quorum of the approved shares opens a
// record: a KRA sent a wrong share; the request stays open for other KRAs), [ErrIntegrity]
// (wrapping [check.ErrInconsistent]; also when the request's audit entry, which holds its
// revocation choice, is missing or damaged), [ErrRecordMismatch], [ErrRecoveryKey] (with the
// token's error), or a storage error wrapping [store.ErrUnavailable] or the audit trail's
// ([audit.ErrAppend]). Any other error (a recovery set policy cannot use:
// [policy.ErrUnknownEpoch], [policy.ErrInvalidSet]; a record that does not open) is a fault of
// the archive.
func (s *Service) Fetch(ctx context.Context, officer policy.Principal, id string, legacy bool) (*Recovered, error) {
	st, err := s.loadRecovery(ctx, id, snapshot{records: true, approvers: true, revoke: true})
	if err != nil {
		return nil, err
	}
	if st.req.Kind != store.KindRecover {
		return nil, fmt.Errorf("%w: request %s is a reseal; complete it with `keyarc admin recovery-set reseal --complete`", ErrInvalidRequest, id)
	}
	if officer.Role != policy.RoleOfficer || officer.Serial != st.req.RequesterSerial {
		return nil, fmt.Errorf("%w: only the officer who requested recovery %s can fetch it", ErrForbidden, id)
	}
	// An integrity fault is reported as such, whatever the quorum; open refuses again what
	// failed, right before it decrypts.
	if st.revokeErr != nil {
		s.log().Error("recovery refused: its audit entry does not say what becomes of the certificates", "id", id, "err", st.revokeErr)
		return nil, fmt.Errorf("%w: %w", ErrIntegrity, st.revokeErr)
	}
	for _, r := range st.records {
		if err := s.recordFault(r.ID, st.checked[r.ID]); err != nil {
			return nil, err
		}
	}
	req, sets, apps, err := s.policyView(st)
	if err != nil {
		return nil, err
	}
	grant, err := policy.Evaluate(req, sets, apps, s.now())
	if err != nil {
		return nil, err
	}
	keys, err := s.open(grant, st)
	if err != nil {
		s.sharesRefused(ctx, officer, st, err)
		return nil, s.closedMeanwhile(ctx, id, err)
	}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	out, err := s.buildPFX(st, keys, legacy)
	if err != nil {
		return nil, err
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		now := s.now()
		if err := tx.CloseRecovery(id, store.RecoveryConsumed, now); err != nil {
			return err
		}
		out.Revocations = RevokeResult{}
		if err := s.revokeAtFetch(tx, officer, st, now, &out.Revocations); err != nil {
			return err
		}
		d := audit.Details{Request: id, Records: st.req.Records, Signer: officer.Serial, Reason: st.req.Reason, Revoke: st.revoke}
		for _, r := range st.records {
			d.Serials = append(d.Serials, r.Serial)
		}
		for _, a := range st.approvals {
			d.KRA += a.KRA + " "
		}
		d.KRA = strings.TrimSpace(d.KRA)
		return s.audit(tx, audit.KindRecoveryFetched, principalActor("officer", officer.Name), id, d)
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, fmt.Errorf("%w: recovery %s was consumed meanwhile", policy.ErrConsumed, id)
	}
	if err != nil {
		return nil, err
	}
	s.revoked(&out.Revocations)
	s.destroyKey(st.req.KeyLabel)
	s.log().Info("recovery delivered", "id", id, "records", len(out.Files), "by", officer.Name)
	return out, nil
}

// open decrypts, in the token, the granted KRAs' shares of each record, combines them and
// opens the records ([Service.openRecord]). It cannot be called without a Grant from policy
// for this request, nor with a state loaded without the records' and approvers' checks
// (snapshot.records and snapshot.approvers): the rows it opens are those checked, in the same
// snapshot.
func (s *Service) open(g policy.Grant, st *recoveryState) ([][]byte, error) {
	if !g.Valid() || g.RequestID() != st.req.ID {
		return nil, fmt.Errorf("escrow: no grant for recovery %s", st.req.ID)
	}
	dec, err := s.RecoveryKeys.Decrypter(st.req.KeyLabel)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRecoveryKey, err)
	}
	shares := make([][]ApprovedShare, len(st.approvals)) // aligned with st.approvals, as policy's indexes
	for i, a := range st.approvals {
		if shares[i], err = decodeShares(a.Shares); err != nil {
			return nil, fmt.Errorf("escrow: approval by %s: %w", a.KRA, err)
		}
	}
	hash, err := hashByName(st.req.OAEPHash)
	if err != nil {
		return nil, err
	}
	sealedRecs := make([]*record.Record, len(st.records))
	for i, r := range st.records {
		if sealedRecs[i], err = record.Parse(r.Blob); err != nil {
			return nil, fmt.Errorf("escrow: record %s: %w", r.ID, err)
		}
		if err := s.checkBinding(st, r, sealedRecs[i]); err != nil {
			return nil, err
		}
		if err := s.recordFault(r.ID, checkedIn(st, r.ID)); err != nil {
			return nil, err
		}
	}
	for _, a := range st.approvals {
		if err := s.signerFault(a.SignerSerial, checkedIn(st, a.SignerSerial)); err != nil {
			return nil, err
		}
	}
	var keys [][]byte
	for i, r := range st.records {
		pkcs8, err := s.openRecord(g, st, shares, dec, hash, r, sealedRecs[i])
		if err != nil {
			clearAll(keys)
			return nil, err
		}
		keys = append(keys, pkcs8)
	}
	return keys, nil
}

// maxOpenAttempts bounds the quorums of approved shares one record is tried with: C(n, m)
// grows fast, and each try is a Shamir combination and an AES-GCM open.
const maxOpenAttempts = 10_000

// openRecord opens record r with the shares of the KRAs the grant names for it. The shares are
// decrypted in the token as they are needed, and each quorum of them is tried in turn (the
// KRAs in sorted order, the first quorum first) until the record's authentication accepts one:
// a KRA's share that is not its share of the record (a damaged token, a share of the record as
// it was sealed before a reseal) costs a try, not the recovery. When no quorum opens the
// record, the error wraps [ErrSharesDoNotOpen] and names the KRAs; when the recovery key
// decrypts none of the shares, it is the key's fault ([ErrRecoveryKey]). A share the key
// does not decrypt is a KRA's only while the key still decrypts a probe encrypted to it:
// otherwise the token failed (gone, its sessions exhausted) and the error is
// [ErrRecoveryKey] wrapping the token's, whatever was decrypted before, so that a fault of
// the appliance never reads as a KRA's wrong share.
func (s *Service) openRecord(g policy.Grant, st *recoveryState, shares [][]ApprovedShare, dec crypto.Decrypter, hash crypto.Hash, r store.Record, sealed *record.Record) ([]byte, error) {
	kras, idx, need := g.KRAsFor(r.ID), g.ApprovalsFor(r.ID), g.Quorum(r.ID)
	if need < 1 || len(kras) < need || len(idx) != len(kras) {
		return nil, fmt.Errorf("escrow: no grant for record %s of recovery %s", r.ID, st.req.ID)
	}
	plain := make([][]byte, len(kras)) // the KRAs' shares, decrypted on first use
	bad := make([]bool, len(kras))     // a share the recovery key cannot decrypt
	defer clearAll(plain)
	var decErr, fault error
	decrypted := 0
	usable := func(j int) bool {
		if fault != nil {
			return false
		}
		if plain[j] != nil || bad[j] {
			return !bad[j]
		}
		var ct []byte
		if i := idx[j]; i >= 0 && i < len(shares) {
			for _, sh := range shares[i] {
				if sh.RecordID == r.ID {
					ct = sh.Share
					break
				}
			}
		}
		if ct == nil {
			bad[j] = true
			return false
		}
		opts := &rsa.OAEPOptions{Hash: hash, MGFHash: hash}
		pt, err := dec.Decrypt(rand.Reader, ct, opts)
		if err != nil {
			// The token's fault, unless the key still decrypts what is encrypted to it; a
			// fault that passed (a session pool that timed out) gets the share tried again.
			if perr := probeKey(dec, st.req.KeySPKI, hash); perr != nil {
				fault = fmt.Errorf("%w: recovery key of request %s: %w", ErrRecoveryKey, st.req.ID, perr)
				return false
			}
			pt, err = dec.Decrypt(rand.Reader, ct, opts)
		}
		if err != nil {
			s.log().Warn("an approved share does not decrypt with the recovery key", "id", st.req.ID, "record", r.ID, "kra", kras[j], "err", err)
			bad[j] = true
			if decErr == nil {
				decErr = fmt.Errorf("decrypt %s's share of record %s: %w", kras[j], r.ID, err)
			}
			return false
		}
		decrypted++
		plain[j] = pt
		return true
	}
	// combo is the current quorum, as indexes into kras in increasing order.
	combo := make([]int, need)
	for j := range combo {
		combo[j] = j
	}
	tried := 0
	for visited := 0; visited < maxOpenAttempts; visited++ {
		ok := true
		for _, j := range combo {
			if !usable(j) {
				ok = false
				break
			}
		}
		if fault != nil {
			return nil, fault
		}
		if ok {
			tried++
			quorum := make([][]byte, need)
			for k, j := range combo {
				quorum[k] = plain[j]
			}
			pkcs8, err := record.Open(sealed, quorum)
			if err == nil {
				if tried > 1 {
					used := make([]string, need)
					for k, j := range combo {
						used[k] = kras[j]
					}
					s.log().Warn("a record opened only without some approved shares: an approving KRA sent a share that is not its share",
						"id", st.req.ID, "record", r.ID, "approved", kras, "used", used, "tries", tried)
				}
				return pkcs8, nil
			}
			if errors.Is(err, record.ErrMalformed) || !errors.Is(err, record.ErrOpen) {
				return nil, fmt.Errorf("escrow: open record %s: %w", r.ID, err)
			}
		}
		if !nextCombination(combo, len(kras)) {
			break
		}
	}
	if decrypted == 0 && decErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrRecoveryKey, decErr)
	}
	return nil, fmt.Errorf("%w %s: no %d of the shares approved by %s open it (%d tried); one of these KRAs sent a share that is not its share of the record: another KRA of its recovery set must approve, or open a new request",
		ErrSharesDoNotOpen, r.ID, need, strings.Join(kras, ", "), tried)
}

// sharesRefused records in the trail a fetch or reseal completion that err refused because
// no quorum of the approved shares opens a record ([ErrSharesDoNotOpen]): the only sign that
// an approving KRA sent a share that is not its share. The entry names the request, the
// approving KRAs and the record (in the reason), never a share.
func (s *Service) sharesRefused(ctx context.Context, by policy.Principal, st *recoveryState, err error) {
	if !errors.Is(err, ErrSharesDoNotOpen) {
		return
	}
	kras := make([]string, 0, len(st.approvals))
	for _, a := range st.approvals {
		kras = append(kras, a.KRA)
	}
	s.auditAlone(ctx, audit.KindApprovalRefused, principalActor(string(by.Role), by.Name), st.req.ID, audit.Details{Request: st.req.ID,
		RequestKind: st.req.Kind, KRA: strings.Join(kras, " "), Signer: by.Serial, Reason: err.Error()})
}

// closedMeanwhile is err, a failure to open request id's records, unless err is its recovery
// key's ([ErrRecoveryKey]) and the request was closed since it was read (cancelled, expired,
// voided by a reseal, or consumed by another fetch), which destroyed the key: the request's
// state is then the answer ([policy.ErrConsumed] or [policy.ErrRequestClosed]), not a fault
// of the token.
func (s *Service) closedMeanwhile(ctx context.Context, id string, err error) error {
	if !errors.Is(err, ErrRecoveryKey) {
		return err
	}
	var req *store.Recovery
	if verr := s.view(ctx, func(tx store.Tx) error {
		var e error
		req, e = tx.GetRecovery(id)
		return e
	}); verr != nil {
		return err
	}
	switch req.State {
	case store.RecoveryOpen:
		return err
	case store.RecoveryConsumed:
		return fmt.Errorf("%w: request %s was used meanwhile", policy.ErrConsumed, id)
	}
	return fmt.Errorf("%w: request %s was %s meanwhile", policy.ErrRequestClosed, id, req.State)
}

// nextCombination advances c, k increasing indexes below n, to the next k-combination in
// lexicographic order, and reports whether there was one.
func nextCombination(c []int, n int) bool {
	k := len(c)
	for i := k - 1; i >= 0; i-- {
		if c[i] < n-k+i {
			c[i]++
			for j := i + 1; j < k; j++ {
				c[j] = c[j-1] + 1
			}
			return true
		}
	}
	return false
}

// checkBinding refuses a record whose sealed header is not the one its row and certificate
// say: a swapped or altered blob is caught before any share is decrypted, and a record is
// never opened for the wrong certificate.
func (s *Service) checkBinding(st *recoveryState, r store.Record, sealed *record.Record) error {
	h := sealed.Header
	id := hex.EncodeToString(h.ID[:])
	serial := store.FormatSerial(new(big.Int).SetBytes(h.Serial))
	if id != r.ID || serial != r.Serial || h.Epoch != r.Epoch {
		return fmt.Errorf("%w: row %s (serial %s, epoch %d) holds a record sealed as %s (serial %s, epoch %d)",
			ErrRecordMismatch, r.ID, r.Serial, r.Epoch, id, serial, h.Epoch)
	}
	cert, ok := st.certs[r.Serial]
	if !ok {
		return fmt.Errorf("escrow: certificate of record %s: %w", r.ID, certMissing(st, r.Serial))
	}
	c, err := x509.ParseCertificate(cert.DER)
	if err != nil {
		return fmt.Errorf("escrow: certificate of record %s: %w", r.ID, err)
	}
	if sha256.Sum256(c.RawSubjectPublicKeyInfo) != h.SPKIHash {
		return fmt.Errorf("%w: record %s was sealed for another public key than certificate %s's", ErrRecordMismatch, r.ID, r.Serial)
	}
	return nil
}

// certMissing is why the state holds no row for certificate serial.
func certMissing(st *recoveryState, serial string) error {
	if err := st.certErr[serial]; err != nil {
		return err
	}
	return fmt.Errorf("escrow: certificate %s was not read: %w", serial, store.ErrNotFound)
}

// checkedIn is the consistency check's verdict on key in st; a key that was not checked is
// refused.
func checkedIn(st *recoveryState, key string) error {
	err, ok := st.checked[key]
	if !ok {
		return fmt.Errorf("escrow: %s was not checked before use: %w", key, check.ErrInconsistent)
	}
	return err
}

func clearAll(bs [][]byte) {
	for _, b := range bs {
		clear(b)
	}
}

func hashByName(name string) (crypto.Hash, error) {
	switch name {
	case crypto.SHA1.String():
		return crypto.SHA1, nil
	case crypto.SHA256.String():
		return crypto.SHA256, nil
	}
	return 0, fmt.Errorf("escrow: unknown OAEP hash %q", name)
}

// buildPFX checks each opened key against its certificate and packs it into a PKCS#12 with the
// certificate and the CA chain.
func (s *Service) buildPFX(st *recoveryState, keys [][]byte, legacy bool) (*Recovered, error) {
	password, err := newPassword()
	if err != nil {
		return nil, err
	}
	enc := pkcs12.Modern2023.WithIterations(PFXIterations)
	if legacy {
		// LegacyDES alone derives the MAC key with 1 iteration.
		enc = pkcs12.LegacyDES.WithIterations(LegacyPFXIterations)
	}
	out := &Recovered{Password: password}
	for i, r := range st.records {
		row, ok := st.certs[r.Serial]
		if !ok {
			return nil, fmt.Errorf("escrow: certificate %s: %w", r.Serial, certMissing(st, r.Serial))
		}
		cert, err := x509.ParseCertificate(row.DER)
		if err != nil {
			return nil, fmt.Errorf("escrow: certificate %s: %w", r.Serial, err)
		}
		key, err := x509.ParsePKCS8PrivateKey(keys[i])
		if err != nil {
			return nil, fmt.Errorf("escrow: record %s does not hold a PKCS#8 key: %w", r.ID, err)
		}
		if signer, ok := key.(crypto.Signer); !ok || !publicKeysEqual(signer.Public(), cert.PublicKey) {
			return nil, fmt.Errorf("escrow: record %s does not hold the key of certificate %s", r.ID, r.Serial)
		}
		pfx, err := enc.Encode(key, cert, []*x509.Certificate{s.Issuer.Certificate()}, password)
		if err != nil {
			return nil, fmt.Errorf("escrow: build PKCS#12: %w", err)
		}
		out.Files = append(out.Files, RecoveredFile{Serial: r.Serial, PFX: pfx})
	}
	return out, nil
}

// newPassword makes a PKCS#12 password of 24 characters from a 32-symbol alphabet (120 bits),
// grouped for reading aloud.
func newPassword() (string, error) {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	var sb bytes.Buffer
	for i, c := range b {
		if i > 0 && i%4 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(alphabet[c&31])
	}
	clear(b)
	return sb.String(), nil
}

// CancelRecovery closes an open request without delivering it and destroys its key: a
// recovery, by the officer who requested it, or a reseal, by the admin who requested it. The
// owners of a recovery's records are told it was cancelled (its audit entry's notice,
// escrow/notice/feed).
//
// # Errors
//
// [ErrNotFound], [ErrForbidden] (not the requester), [policy.ErrConsumed] or
// [policy.ErrRequestClosed] for a request no longer open, or, for faults of the appliance, a
// storage error wrapping [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]).
func (s *Service) CancelRecovery(ctx context.Context, by policy.Principal, id string) error {
	st, err := s.loadRecovery(ctx, id, snapshot{})
	if err != nil {
		return err
	}
	role, what := policy.RoleOfficer, "officer who requested recovery"
	if st.req.Kind == store.KindReseal {
		role, what = policy.RoleAdmin, "admin who requested reseal"
	}
	if by.Role != role || by.Serial != st.req.RequesterSerial {
		return fmt.Errorf("%w: only the %s %s can cancel it", ErrForbidden, what, id)
	}
	switch st.req.State {
	case store.RecoveryOpen:
	case store.RecoveryConsumed:
		return fmt.Errorf("%w: request %s was already used; it cannot be cancelled", policy.ErrConsumed, id)
	default:
		return fmt.Errorf("%w: request %s is already %s", policy.ErrRequestClosed, id, st.req.State)
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CloseRecovery(id, store.RecoveryCancelled, s.now()); err != nil {
			return err
		}
		return s.audit(tx, audit.KindRecoveryCancelled, principalActor(string(by.Role), by.Name), id,
			audit.Details{Request: id, RequestKind: st.req.Kind, Signer: by.Serial})
	})
	if errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%w: request %s was closed meanwhile", policy.ErrRequestClosed, id)
	}
	if err != nil {
		return err
	}
	s.destroyKey(st.req.KeyLabel)
	return nil
}

// ExpireRecoveries closes requests past their expiry and destroys their recovery keys; the
// owners of a recovery's records are told it expired (Notify). The appliance runs it at
// start-up and periodically.
//
// # Errors
//
// Only faults of the appliance: a storage error wrapping [store.ErrUnavailable], or the audit
// trail's ([audit.ErrAppend]), wrapped. A recovery key the token fails to destroy is logged.
func (s *Service) ExpireRecoveries(ctx context.Context) (int, error) {
	var expired []store.Recovery
	err := s.Store.Update(ctx, func(tx store.Tx) error {
		// By the database's clock (the server's with PostgreSQL): every node runs this, and a
		// node whose clock is ahead would otherwise close every node's requests early.
		now, err := tx.LeaseNow(s.now())
		if err != nil {
			return err
		}
		if expired, err = tx.ExpireRecoveries(now); err != nil {
			return err
		}
		for _, r := range expired {
			if err := s.audit(tx, audit.KindRecoveryExpired, "system", r.ID, audit.Details{Request: r.ID, RequestKind: r.Kind,
				Expires: r.ExpiresAt.Format(time.RFC3339)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, r := range expired {
		s.destroyKey(r.KeyLabel)
		s.log().Info("recovery expired", "id", r.ID)
	}
	return len(expired), nil
}

// MaxResealBatch bounds the records one reseal request moves; run more requests for more. A
// KRA's approval of a full batch carries that many shares: the appliance's limit on an
// approval's body is derived from it and [MaxShareBytes].
const MaxResealBatch = policy.MaxRecoveryRecords

// RequestReseal opens a reseal request: the active records sealed under an older recovery set
// (under epoch alone, when it is not 0) are to be moved to the current one, the oldest first
// and at most [MaxResealBatch] of them. Naming the epoch lets the admin move the other epochs'
// records when an epoch that can no longer reach its quorum holds a full batch of its own. The KRAs of the old sets approve it exactly as a recovery
// (their quorum is needed), and CompleteReseal then reseals the records inside the appliance:
// no key leaves it. Replacing or expiring KRAs therefore never strands old records.
//
// # Errors
//
// [ErrInvalidRequest] for a reason that is not 1 to 1000 printable characters (an empty one is
// given a default) or an epoch that is not older than the current set's, [ErrNoRecoverySet]
// (no usable current set), [policy.ErrNothingToRecover] when every active record is sealed
// under the current set, [policy.ErrNotAllowed] for a caller that is not an admin,
// [ErrRequestsFull] (as in [Service.RequestRecovery]), or, for faults of the appliance, the
// token's error making the recovery key, a storage error wrapping [store.ErrUnavailable] or
// the audit trail's ([audit.ErrAppend]), wrapped.
func (s *Service) RequestReseal(ctx context.Context, admin policy.Principal, reason string, epoch uint32, ttl time.Duration) (*Recovery, error) {
	if strings.TrimSpace(reason) == "" {
		reason = "reseal to the current recovery set"
	}
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	var cur *RecoverySet
	var recs []store.Record
	if err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if cur, err = s.currentSetIn(tx); err != nil {
			return err
		}
		if epoch >= cur.Epoch {
			return nil
		}
		if recs, err = tx.RecordsBeforeEpoch(cur.Epoch, epoch, MaxResealBatch); err != nil || len(recs) == 0 {
			return err
		}
		return s.roomForRequest(tx) // before any key is made; again where the request is stored
	}); err != nil {
		return nil, err
	}
	if epoch >= cur.Epoch {
		return nil, fmt.Errorf("%w: epoch %d is not older than the current recovery set's (epoch %d): only older epochs are resealed", ErrInvalidRequest, epoch, cur.Epoch)
	}
	if _, err := s.usable(cur); err != nil {
		return nil, err
	}
	switch {
	case len(recs) == 0 && epoch != 0:
		return nil, fmt.Errorf("%w: no active record is sealed under epoch %d", policy.ErrNothingToRecover, epoch)
	case len(recs) == 0:
		return nil, fmt.Errorf("%w: every active record is already sealed under the current recovery set (epoch %d)", policy.ErrNothingToRecover, cur.Epoch)
	}
	refs := make([]policy.RecordRef, len(recs))
	for i, r := range recs {
		refs[i] = policy.RecordRef{ID: r.ID, Owner: r.Email, Epoch: r.Epoch, State: r.State}
	}
	if err := policy.CheckResealRequest(admin, refs); err != nil {
		return nil, err
	}
	return s.openRequest(ctx, store.KindReseal, admin, reason, ttl, recs, nil)
}

// CompleteReseal is [Service.CompleteResealReport], counting the records it resealed.
func (s *Service) CompleteReseal(ctx context.Context, admin policy.Principal, id string) (int, error) {
	res, err := s.CompleteResealReport(ctx, admin, id)
	if err != nil {
		return 0, err
	}
	return res.Resealed, nil
}

// ResealResult is what the completion of a reseal did.
type ResealResult struct {
	// Resealed counts the records moved to the current recovery set.
	Resealed int
	// Epoch is the current set's, where they went.
	Epoch uint32
	// Left are the records of the request whose quorum did not approve it, in request order:
	// they stay sealed where they were, recoverable by their own set as before.
	Left []ResealLeft
}

// ResealLeft is a record a reseal left where it was: its epoch's KRAs did not reach the
// quorum (Have of Need approvals).
type ResealLeft struct {
	RecordID   string
	Epoch      uint32
	Have, Need int
}

// CompleteResealReport reseals to the current recovery set the records of a reseal request
// that their epoch's quorum approved, and consumes the request. A record whose epoch did not
// reach its quorum (an older set that can no longer, a KRA's token lost) is left where it was
// and reported ([ResealResult.Left]), so that one such epoch does not keep every other
// epoch's records from moving; a new reseal request takes it again.
//
// In the same transaction, every other open request naming a resealed record (a recovery, or
// another reseal) is cancelled and, after it, its recovery key destroyed: its approvals hold
// shares of the record as it was sealed before, which no longer count ([Service.voidOpenRequests]).
//
// # Errors
//
// Those of [Service.Fetch], with [ErrInvalidRequest] for a recovery (not a reseal) request and
// [ErrForbidden] for another admin than the requester; a *[policy.QuorumError] only when no
// record's quorum approved; [ErrNoRecoverySet] when the current set is not usable;
// [policy.ErrConsumed] when the request or its records were resealed meanwhile.
func (s *Service) CompleteResealReport(ctx context.Context, admin policy.Principal, id string) (*ResealResult, error) {
	st, err := s.loadRecovery(ctx, id, snapshot{records: true, approvers: true, current: true})
	if err != nil {
		return nil, err
	}
	if st.req.Kind != store.KindReseal {
		return nil, fmt.Errorf("%w: request %s is a recovery, not a reseal", ErrInvalidRequest, id)
	}
	if admin.Serial != st.req.RequesterSerial {
		return nil, fmt.Errorf("%w: only the admin who requested reseal %s can complete it", ErrForbidden, id)
	}
	req, sets, apps, err := s.policyView(st)
	if err != nil {
		return nil, err
	}
	grant, short, err := policy.EvaluateReseal(req, sets, apps, s.now())
	if err != nil {
		return nil, err
	}
	cur, err := st.current, st.curErr
	if err == nil {
		cur, err = s.usable(cur)
	}
	if err != nil {
		return nil, err
	}
	// Only the records granted are opened and moved; the state open sees is narrowed to them.
	res := &ResealResult{Epoch: cur.Epoch}
	moving := *st
	moving.records = nil
	granted := map[string]bool{}
	for _, rid := range grant.Records() {
		granted[rid] = true
	}
	for _, r := range st.records {
		if granted[r.ID] {
			moving.records = append(moving.records, r)
		}
	}
	for _, q := range short {
		left := ResealLeft{RecordID: q.Record, Have: q.Have, Need: q.Need}
		for _, r := range st.records {
			if r.ID == q.Record {
				left.Epoch = r.Epoch
			}
		}
		res.Left = append(res.Left, left)
	}
	keys, err := s.open(grant, &moving)
	if err != nil {
		s.sharesRefused(ctx, admin, st, err)
		return nil, s.closedMeanwhile(ctx, id, err)
	}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	blobs := make([][]byte, len(moving.records))
	for i, r := range moving.records {
		old, err := record.Parse(r.Blob)
		if err != nil {
			return nil, err
		}
		h := old.Header
		h.Epoch, h.M, h.N, h.OAEPHash = cur.Epoch, uint8(cur.Quorum), uint8(len(cur.recipients)), s.shareHash()
		sealed, err := record.Seal(h, keys[i], cur.recipients)
		if err != nil {
			return nil, fmt.Errorf("escrow: reseal record %s: %w", r.ID, err)
		}
		if blobs[i], err = sealed.MarshalBinary(); err != nil {
			return nil, err
		}
	}
	var voided []store.Recovery
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		for i, r := range moving.records {
			if err := tx.ResealRecord(r.ID, r.Epoch, cur.Epoch, blobs[i]); err != nil {
				return err
			}
		}
		if err := tx.CloseRecovery(id, store.RecoveryConsumed, s.now()); err != nil {
			return err
		}
		if voided, err = s.voidOpenRequests(tx, admin, id, moving.records); err != nil {
			return err
		}
		d := audit.Details{Request: id, Epoch: cur.Epoch, Signer: admin.Serial, Count: len(blobs)}
		for _, r := range moving.records {
			d.Records = append(d.Records, r.ID)
			if !slices.Contains(d.FromEpochs, r.Epoch) {
				d.FromEpochs = append(d.FromEpochs, r.Epoch)
			}
		}
		if len(res.Left) > 0 {
			d.Reason = fmt.Sprintf("%d record(s) left where they were: their epoch's quorum did not approve", len(res.Left))
		}
		return s.audit(tx, audit.KindReseal, principalActor("admin", admin.Name), id, d)
	})
	if errors.Is(err, store.ErrConflict) {
		// Another completion of this request (or another reseal of its records) won the race.
		return nil, fmt.Errorf("%w: reseal %s was completed meanwhile, or its records were resealed by another request", policy.ErrConsumed, id)
	}
	if err != nil {
		return nil, fmt.Errorf("escrow: store resealed records: %w", err)
	}
	res.Resealed = len(blobs)
	s.destroyKey(st.req.KeyLabel)
	s.log().Info("records resealed", "id", id, "records", len(blobs), "left", len(res.Left), "epoch", cur.Epoch, "by", admin.Name)
	for _, l := range res.Left {
		s.log().Warn("record not resealed: its epoch's quorum did not approve", "id", id, "record", l.RecordID, "epoch", l.Epoch, "have", l.Have, "need", l.Need)
	}
	for _, v := range voided {
		s.destroyKey(v.KeyLabel)
		s.log().Info("request cancelled: its records were resealed", "id", v.ID, "kind", v.Kind, "reseal", id)
	}
	return res, nil
}

// voidOpenRequests cancels, in tx, every open request other than reseal id that names one of
// the records the reseal moved, recoveries and reseals alike, with an audit entry each. Their
// approvals carry shares of the records as they were sealed before, which do not combine with
// shares of the new form: counted after the reseal they would meet a quorum that opens
// nothing. The officer or admin opens a new request, which the KRAs of the new set approve.
// A request closed meanwhile is left as it is.
func (s *Service) voidOpenRequests(tx store.Tx, admin policy.Principal, id string, resealed []store.Record) ([]store.Recovery, error) {
	moved := make(map[string]bool, len(resealed))
	for _, r := range resealed {
		moved[r.ID] = true
	}
	open, err := tx.ListRecoveries(store.RecoveryOpen)
	if err != nil {
		return nil, err
	}
	var out []store.Recovery
	for _, o := range open {
		if o.ID == id {
			continue
		}
		full, err := tx.GetRecovery(o.ID) // the listed rows come without their record lists
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(full.Records, func(rid string) bool { return moved[rid] }) {
			continue
		}
		err = tx.CloseRecovery(o.ID, store.RecoveryCancelled, s.now())
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := s.audit(tx, audit.KindRecoveryCancelled, principalActor("admin", admin.Name), o.ID, audit.Details{Request: o.ID,
			RequestKind: full.Kind, Signer: admin.Serial,
			Reason: fmt.Sprintf("its records were resealed by reseal %s; its approvals no longer apply", id)}); err != nil {
			return nil, err
		}
		out = append(out, *full)
	}
	return out, nil
}
