package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Errors of recovery requests and their evaluation.
var (
	// ErrNotAllowed means the caller's role or identity may not do this step of a recovery.
	ErrNotAllowed = errors.New("policy: not allowed")
	// ErrNothingToRecover means a recovery request names no record.
	ErrNothingToRecover = errors.New("policy: nothing to recover")
	// ErrTooManyRecords means a recovery request names more than [MaxRecoveryRecords] records.
	ErrTooManyRecords = errors.New("policy: too many records in one recovery request")
	// ErrBadRecord means a record reference is malformed: empty ID, the same ID twice, or an
	// owner that is not a mailbox.
	ErrBadRecord = errors.New("policy: malformed record reference")
	// ErrOwnKey means a recovery officer asked for a key of their own mailbox.
	ErrOwnKey = errors.New("policy: a recovery officer may not recover their own key")
	// ErrNotRecoverable means a record is not in the active state.
	ErrNotRecoverable = errors.New("policy: record is not recoverable")
	// ErrConsumed means the request has already been used to recover its keys.
	ErrConsumed = errors.New("policy: recovery request already consumed")
	// ErrRequestClosed means the request is cancelled, expired, or in an unknown state.
	ErrRequestClosed = errors.New("policy: recovery request is closed")
	// ErrExpired means the request's expiry has passed.
	ErrExpired = errors.New("policy: recovery request has expired")
	// ErrQuorum is matched by every *[QuorumError].
	ErrQuorum = errors.New("policy: recovery quorum not met")
	// ErrUnknownEpoch means a record is sealed under a recovery-set epoch that policy was not
	// given.
	ErrUnknownEpoch = errors.New("policy: no recovery set for the record's epoch")
	// ErrInvalidSet means a recovery set cannot be used: its quorum is not 1 <= m <= n, a KRA
	// name is empty or listed twice, two KRAs have one unwrap key, or its Epoch differs from
	// the key it was given under.
	ErrInvalidSet = errors.New("policy: invalid recovery set")
)

// MaxRecoveryRecords is the most records one recovery request may name.
const MaxRecoveryRecords = 1000

// States of a recovery request ([Request.State]).
const (
	RequestOpen      = "open"
	RequestConsumed  = "consumed"
	RequestCancelled = "cancelled"
	RequestExpired   = "expired"
)

// RecordActive is the only escrow record state ([RecordRef.State]) that can be recovered.
const RecordActive = "active"

// Reasons of a [Rejection], a fixed set fit for a metric label.
const (
	ReasonBadSignature = "bad-signature" // the escrow layer did not verify the signature
	ReasonOtherRequest = "other-request" // the signed approval names another request
	ReasonNotKRA       = "not-kra"       // the signer is not a KRA, or not the KRA the approval names
	ReasonNotInSet     = "not-in-set"    // the KRA is not in the recovery set of the record's epoch
	ReasonOtherKey     = "other-key"     // the signer's credential is not bound to the set member's unwrap key
	ReasonExpiredKRA   = "expired-kra"   // the KRA's auth certificate or set membership has expired
	ReasonRequester    = "requester"     // the signer is the requester
	ReasonOwner        = "owner"         // the signer owns the key
	ReasonDuplicate    = "duplicate"     // this KRA was already counted for the record
	ReasonNoShare      = "no-share"      // the approval carries no share for the record
)

// Principal is an authenticated caller as the appliance knows it from its credential.
type Principal struct {
	Role    Role
	Name    string // credential identity (operator name, or KRA name for RoleKRA)
	Mailbox string // the caller's own mailbox, if its credential has one ("" otherwise)
	Serial  string // serial of the credential certificate presented
}

// RecordRef is an escrow record a recovery asks for.
type RecordRef struct {
	ID    string
	Owner string // mailbox of the key's owner
	Epoch uint32 // recovery-set epoch it is sealed under
	State string // must be RecordActive to be recoverable
}

// RecoverySet is the recovery set of one epoch as policy sees it: the KRA identities (names and
// unwrap keys) allowed to approve records sealed under Epoch, the validity of each one's unwrap
// certificate, and the quorum m.
type RecoverySet struct {
	Epoch  uint32
	Quorum int
	KRAs   []SetMember
}

// SetMember is one KRA of a [RecoverySet]. NotAfter is the expiry of its unwrap certificate;
// Key identifies its unwrap key (the escrow layer uses the hex SHA-256 of the key's
// SubjectPublicKeyInfo). A member is the KRA holding that key, not whoever holds the name: an
// approval counts for it only when its [Approval.UnwrapKey] is Key.
type SetMember struct {
	Name     string
	Key      string
	NotAfter time.Time
}

// Request is a recovery request.
type Request struct {
	ID string
	// Reseal marks a request that moves records to the current recovery set inside the
	// appliance (no key is delivered): an admin opens it, and the owner rule does not apply.
	Reseal    bool
	Requester Principal
	Records   []RecordRef
	CreatedAt time.Time
	ExpiresAt time.Time
	State     string // RequestOpen, RequestConsumed, RequestCancelled or RequestExpired
}

// Approval is one KRA's approval as verified by the escrow layer (signature checked against
// the KRA's auth certificate, which this appliance issued).
type Approval struct {
	RequestID string // the request the signed approval names
	KRA       string // KRA identity (name) of the signer's auth certificate
	// UnwrapKey identifies the unwrap key the signer's auth credential was enrolled with, as
	// [SetMember.Key] does; "" when the escrow layer cannot tell which (the approval then
	// counts for no member that has a key).
	UnwrapKey      string
	Signer         Principal // the credential that submitted the approval
	SignerNotAfter time.Time // auth certificate expiry
	Records        []string  // record IDs this approval carries a re-encrypted share for
	SignatureOK    bool      // the escrow layer verified the signature over the exact request binding
}

// Rejection says why one approval was not counted, for one record of the request or (Record
// "") for all of them. Reason is one of the Reason constants.
type Rejection struct {
	KRA    string
	Record string
	Reason string
}

// QuorumError means a record of the request has fewer distinct eligible KRA approvals than
// its recovery set's quorum. errors.Is(err, [ErrQuorum]) holds.
type QuorumError struct {
	Record     string // ID of the first record, in request order, that lacks quorum
	Have, Need int
}

// Error implements error.
func (e *QuorumError) Error() string {
	return fmt.Sprintf("policy: recovery quorum not met: record %q has %d of the %d KRA approvals it needs", truncate(e.Record), e.Have, e.Need)
}

// Is reports whether target is [ErrQuorum].
func (e *QuorumError) Is(target error) bool { return target == ErrQuorum }

// Grant is the proof that the quorum of every record of a request was met. Only policy can
// make a valid one ([Evaluate]); the zero Grant is not valid. A Grant is read-only and safe
// for concurrent use.
type Grant struct {
	requestID string
	records   map[string][]string // record ID -> every eligible KRA name (at least quorum), sorted
	approvals map[string][]int    // record ID -> index in Evaluate's approvals, aligned with records
	quorum    map[string]int      // record ID -> the quorum of its recovery set
	at        time.Time
	ok        bool
}

// Valid reports whether g was made by [Evaluate] for a request whose quorum was met.
func (g Grant) Valid() bool { return g.ok && g.requestID != "" && len(g.records) > 0 }

// RequestID returns the ID of the request g grants.
func (g Grant) RequestID() string { return g.requestID }

// At returns the time that was passed to [Evaluate] when g was made.
func (g Grant) At() time.Time { return g.at }

// KRAsFor returns the names of every KRA whose approval counts for record recordID, sorted:
// at least [Grant.Quorum] of them; nil if g does not grant it. The escrow layer opens the
// record with the shares of any Quorum of them. It may have to try more than one such subset:
// a KRA can send a share that is not its share of the record, and only the record's
// authentication tells.
func (g Grant) KRAsFor(recordID string) []string { return slices.Clone(g.records[recordID]) }

// Quorum returns the number of shares that open record recordID (its recovery set's quorum
// m); 0 if g does not grant it.
func (g Grant) Quorum(recordID string) int { return g.quorum[recordID] }

// ApprovalsFor returns, aligned with [Grant.KRAsFor], the index in the approvals slice given
// to [Evaluate] of the approval whose share of record recordID was counted for each KRA. The
// escrow layer takes each share from exactly that approval: when one KRA submitted twice, it
// is the first eligible approval, never one that was not checked.
func (g Grant) ApprovalsFor(recordID string) []int { return slices.Clone(g.approvals[recordID]) }

// Records returns the IDs of the records g grants, sorted.
func (g Grant) Records() []string {
	ids := make([]string, 0, len(g.records))
	for id := range g.records {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// CheckRecoveryRequest checks that officer may open a recovery request for records, before
// the request is stored.
//
// # Errors
//
//   - [ErrNotAllowed]: officer is not a [RoleOfficer].
//   - [ErrNothingToRecover]: records is empty; [ErrTooManyRecords]: more than
//     [MaxRecoveryRecords].
//   - [ErrBadRecord]: a record has an empty ID, the same ID appears twice, or its owner is not
//     a valid mailbox (the owner check below could not work).
//   - [ErrOwnKey]: a record is owned by the officer's own mailbox ([SameMailbox]).
//   - [ErrNotRecoverable]: a record is not [RecordActive].
func CheckRecoveryRequest(officer Principal, records []RecordRef) error {
	if officer.Role != RoleOfficer {
		return fmt.Errorf("%w: only a recovery officer may request a recovery, not role %q", ErrNotAllowed, officer.Role)
	}
	if officer.Name == "" {
		return fmt.Errorf("%w: the recovery officer's credential has no name", ErrNotAllowed)
	}
	return checkRecords(officer, records)
}

// CheckResealRequest is CheckRecoveryRequest for a reseal: the caller must be an admin; the
// records must be active. Keys stay in the appliance, so the owner rule does not apply.
func CheckResealRequest(admin Principal, records []RecordRef) error {
	if admin.Role != RoleAdmin {
		return fmt.Errorf("%w: only an admin may reseal records, not role %q", ErrNotAllowed, admin.Role)
	}
	return checkRecords(Principal{}, records)
}

func checkRecords(officer Principal, records []RecordRef) error {
	if len(records) == 0 {
		return fmt.Errorf("%w: the request names no escrow record", ErrNothingToRecover)
	}
	if len(records) > MaxRecoveryRecords {
		return fmt.Errorf("%w: %d records; split it into requests of at most %d", ErrTooManyRecords, len(records), MaxRecoveryRecords)
	}
	seen := make(map[string]bool, len(records))
	for _, r := range records {
		if r.ID == "" {
			return fmt.Errorf("%w: a record has an empty ID", ErrBadRecord)
		}
		if seen[r.ID] {
			return fmt.Errorf("%w: record %q is named twice", ErrBadRecord, truncate(r.ID))
		}
		seen[r.ID] = true
		if err := ValidateMailbox(r.Owner); err != nil {
			return fmt.Errorf("%w: record %q: owner: %w", ErrBadRecord, truncate(r.ID), err)
		}
		if officer.Mailbox != "" && SameMailbox(officer.Mailbox, r.Owner) {
			return fmt.Errorf("%w: record %q belongs to %s, the officer's own mailbox; another officer must ask", ErrOwnKey, truncate(r.ID), r.Owner)
		}
		if r.State != RecordActive {
			return fmt.Errorf("%w: record %q is %q; only %q records can be recovered", ErrNotRecoverable, truncate(r.ID), truncate(r.State), RecordActive)
		}
	}
	return nil
}

// checkOpen checks that req can still collect approvals and be granted at now.
func checkOpen(req Request, now time.Time) error {
	switch req.State {
	case RequestOpen:
	case RequestConsumed:
		return fmt.Errorf("%w: request %q was already used; open a new one", ErrConsumed, truncate(req.ID))
	case RequestExpired:
		return fmt.Errorf("%w: request %q is expired (%w); open a new one", ErrRequestClosed, truncate(req.ID), ErrExpired)
	default:
		return fmt.Errorf("%w: request %q is %q", ErrRequestClosed, truncate(req.ID), truncate(req.State))
	}
	if !now.Before(req.ExpiresAt) {
		return fmt.Errorf("%w: request %q expired at %s; open a new one", ErrExpired, truncate(req.ID), req.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// CheckApprover checks, before an approval is stored, that p may approve req at now: p is a
// KRA, req is open and unexpired, and p is not the requester (same name, same certificate
// serial, or same mailbox). It does not check the recovery set: [Evaluate] does, per record.
//
// # Errors
//
// [ErrNotAllowed] for a caller that is not a KRA or is the requester; [ErrConsumed],
// [ErrRequestClosed] or [ErrExpired] for a request that can no longer be approved.
func CheckApprover(p Principal, req Request, now time.Time) error {
	if p.Role != RoleKRA {
		return fmt.Errorf("%w: only a key recovery agent may approve a recovery, not role %q", ErrNotAllowed, p.Role)
	}
	if p.Name == "" {
		return fmt.Errorf("%w: the KRA credential has no name", ErrNotAllowed)
	}
	if err := checkOpen(req, now); err != nil {
		return err
	}
	if isRequester(p, req.Requester) {
		return fmt.Errorf("%w: %q opened request %q and may not approve it", ErrNotAllowed, truncate(p.Name), truncate(req.ID))
	}
	return nil
}

// isRequester reports whether p is the requester r: the same name (ignoring case), the same
// certificate serial, or the same non-empty mailbox. Names and serials compare even when empty,
// so a missing identity never lets an approval through.
func isRequester(p, r Principal) bool {
	return strings.EqualFold(p.Name, r.Name) ||
		strings.EqualFold(p.Serial, r.Serial) ||
		sameNonEmpty(p.Mailbox, r.Mailbox)
}

func sameNonEmpty(a, b string) bool {
	return a != "" && b != "" && (a == b || SameMailbox(a, b))
}

// checkSet checks that set, given under epoch, can be used to count approvals.
func checkSet(epoch uint32, set RecoverySet) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: epoch %d: %s", ErrInvalidSet, epoch, fmt.Sprintf(format, args...))
	}
	if set.Epoch != epoch {
		return bad("the set given for it says epoch %d", set.Epoch)
	}
	if set.Quorum < 1 || set.Quorum > len(set.KRAs) {
		return bad("quorum %d with %d KRAs; it must be 1 <= m <= n", set.Quorum, len(set.KRAs))
	}
	for i, m := range set.KRAs {
		if m.Name == "" {
			return bad("KRA %d has no name", i+1)
		}
		for _, o := range set.KRAs[:i] {
			if strings.EqualFold(o.Name, m.Name) {
				return bad("KRA %q is listed twice", truncate(m.Name))
			}
			if m.Key != "" && o.Key == m.Key {
				// One key holder would hold two shares: one KRA would count twice.
				return bad("KRAs %q and %q have the same unwrap key", truncate(o.Name), truncate(m.Name))
			}
		}
	}
	return nil
}

// member returns the member of set named name (exactly).
func member(set RecoverySet, name string) (SetMember, bool) {
	for _, m := range set.KRAs {
		if m.Name == name {
			return m, true
		}
	}
	return SetMember{}, false
}

// holds reports whether approval a was made with a credential of member m's key pair: the
// name says which member the approval is for, the unwrap key whether its signer is that
// member. A second credential issued under the same name with another key is not the member.
func holds(m SetMember, a Approval) bool { return a.UnwrapKey == m.Key }

// tally is the single place where approvals are counted; Evaluate and Explain both use it,
// so they never disagree. counted maps a record ID to the KRA names counted for it and the
// index of the approval each was counted from.
func tally(req Request, sets map[uint32]RecoverySet, approvals []Approval, now time.Time) (counted map[string]map[string]int, rejections []Rejection) {
	counted = make(map[string]map[string]int, len(req.Records))
	// keys are the unwrap keys counted for each record: one key counts once, whatever name it
	// comes under (checkSet refuses a set where two members share one; this holds anyway).
	keys := make(map[string]map[string]bool, len(req.Records))
	for _, r := range req.Records {
		counted[r.ID] = map[string]int{}
		keys[r.ID] = map[string]bool{}
	}
	reject := func(a Approval, record, reason string) {
		rejections = append(rejections, Rejection{KRA: a.KRA, Record: record, Reason: reason})
	}
	// A KRA may hold more than one credential (a renewed certificate, say), and only some of
	// them may carry a mailbox. What any authenticated approval of a KRA reveals about who it
	// is applies to all of its approvals: if one of them is the requester's or the owner's,
	// none counts for that request or that record.
	isKRA := func(a Approval) bool {
		return a.SignatureOK && a.RequestID == req.ID && a.Signer.Role == RoleKRA && a.KRA != "" && a.Signer.Name == a.KRA
	}
	requester := map[string]bool{}
	mailboxes := map[string][]string{}
	for _, a := range approvals {
		if !isKRA(a) {
			continue
		}
		if isRequester(a.Signer, req.Requester) {
			requester[a.KRA] = true
		}
		if a.Signer.Mailbox != "" && !slices.Contains(mailboxes[a.KRA], a.Signer.Mailbox) {
			mailboxes[a.KRA] = append(mailboxes[a.KRA], a.Signer.Mailbox)
		}
	}
	owns := func(kra, owner string) bool {
		return slices.ContainsFunc(mailboxes[kra], func(m string) bool { return SameMailbox(m, owner) })
	}
	for i, a := range approvals {
		// Checks that concern the approval as a whole.
		switch {
		case !a.SignatureOK:
			reject(a, "", ReasonBadSignature)
			continue
		case a.RequestID != req.ID:
			reject(a, "", ReasonOtherRequest)
			continue
		case !isKRA(a):
			reject(a, "", ReasonNotKRA)
			continue
		case !a.SignerNotAfter.After(now):
			reject(a, "", ReasonExpiredKRA)
			continue
		case requester[a.KRA]:
			reject(a, "", ReasonRequester)
			continue
		}
		shares := make(map[string]bool, len(a.Records))
		for _, id := range a.Records {
			shares[id] = true
		}
		before, anyCounted := len(rejections), false
		// Checks per record. A pair where the KRA is outside the record's set and the
		// approval claims no share for it is not a rejection: that KRA was never asked.
		for _, r := range req.Records {
			set, known := sets[r.Epoch]
			m, in := member(set, a.KRA)
			switch {
			case !known || !in:
				if shares[r.ID] {
					reject(a, r.ID, ReasonNotInSet)
				}
			case !holds(m, a):
				reject(a, r.ID, ReasonOtherKey)
			case !m.NotAfter.After(now):
				reject(a, r.ID, ReasonExpiredKRA)
			case owns(a.KRA, r.Owner):
				reject(a, r.ID, ReasonOwner)
			case !shares[r.ID]:
				reject(a, r.ID, ReasonNoShare)
			default:
				if _, dup := counted[r.ID][a.KRA]; dup || m.Key != "" && keys[r.ID][m.Key] {
					reject(a, r.ID, ReasonDuplicate)
				} else {
					counted[r.ID][a.KRA] = i
					keys[r.ID][m.Key] = true
					anyCounted = true
				}
			}
		}
		if !anyCounted && len(rejections) == before {
			// In no record's set, and no share claimed: still say why it did not count.
			reject(a, "", ReasonNotInSet)
		}
	}
	return counted, rejections
}

// Evaluate decides whether the approvals collected for req meet the quorum of every record at
// now, and if so returns a valid [Grant]; sets holds the recovery set of each epoch. It is
// pure: the same arguments always give the same answer.
//
// An approval counts for a record when all of these hold: the escrow layer verified its
// signature; it names req.ID; its signer is a KRA whose credential name is the approval's KRA
// name; that KRA is a member of the record's epoch set, and the signer's credential was
// enrolled with that member's unwrap key ([Approval.UnwrapKey] is [SetMember.Key]); the
// member's unwrap certificate and the signer's auth certificate are unexpired; the signer is
// neither the requester (same name ignoring case, same serial, or same mailbox) nor the key's
// owner; and the approval carries a share for the record. One KRA counts once per record
// however many approvals or certificates it has, and one unwrap key once whatever name it
// comes under; the first approval, in slice order, that counts is the one used. Exclusion is
// by KRA identity: if any authenticated approval of a KRA (signature verified, this request,
// signer is that KRA) is the requester's, or carries the owner's mailbox, no approval of that
// KRA counts for the request, or for that record, even one made with a credential without a
// mailbox.
//
// The Grant names, for each record, every eligible KRA in sorted order (at least the quorum
// m, [Grant.Quorum]) and, through [Grant.ApprovalsFor], the approvals their shares come from:
// a share is known good only once the record opens, so the escrow layer may need more than
// the first m.
//
// # Errors
//
// Checked in this order, the first failure returned:
//   - [ErrConsumed], [ErrRequestClosed] (a state other than open; an expired state also matches
//     [ErrExpired]), [ErrExpired] (now is not before req.ExpiresAt);
//   - the checks of [CheckRecoveryRequest] on req.Requester and req.Records, again, in case the
//     stored request or records changed since it was opened;
//   - [ErrUnknownEpoch] for a record whose epoch has no set, [ErrInvalidSet] for a set that
//     cannot be used (a quorum of 0 would otherwise grant without approvals);
//   - a *[QuorumError] (matching [ErrQuorum]) for the first record, in request order, with
//     fewer distinct eligible KRAs than its set's quorum.
//
// [Explain] tells why each approval that did not count was left out.
func Evaluate(req Request, sets map[uint32]RecoverySet, approvals []Approval, now time.Time) (Grant, error) {
	g, _, err := evaluate(req, sets, approvals, now, false)
	return g, err
}

// EvaluateReseal is [Evaluate] for a reseal request, which may move fewer records than it
// names: a record whose quorum is not met (sealed under an older epoch whose KRAs can no
// longer reach its quorum, a KRA's token lost) is left out of the Grant and reported in left,
// in request order, rather than keep the records of every other epoch where they are. Each
// record granted has met its own set's quorum, exactly as [Evaluate] requires.
//
// # Errors
//
// Those of [Evaluate], in its order, with the *[QuorumError] of the first record only when no
// record meets its quorum; [ErrNotAllowed] for a request that is not a reseal (a recovery is
// granted whole or not at all).
func EvaluateReseal(req Request, sets map[uint32]RecoverySet, approvals []Approval, now time.Time) (g Grant, left []QuorumError, err error) {
	if !req.Reseal {
		return Grant{}, nil, fmt.Errorf("%w: request %q is a recovery; it is granted whole or not at all", ErrNotAllowed, truncate(req.ID))
	}
	return evaluate(req, sets, approvals, now, true)
}

// evaluate is [Evaluate], and with partial [EvaluateReseal].
func evaluate(req Request, sets map[uint32]RecoverySet, approvals []Approval, now time.Time, partial bool) (Grant, []QuorumError, error) {
	if err := checkOpen(req, now); err != nil {
		return Grant{}, nil, err
	}
	if req.ID == "" {
		return Grant{}, nil, fmt.Errorf("%w: the request has no ID", ErrRequestClosed)
	}
	opener, owner := RoleOfficer, req.Requester
	if req.Reseal {
		opener, owner = RoleAdmin, Principal{}
	}
	if req.Requester.Role != opener || req.Requester.Name == "" {
		return Grant{}, nil, fmt.Errorf("%w: request %q was not opened by a named %s", ErrNotAllowed, truncate(req.ID), opener)
	}
	if err := checkRecords(owner, req.Records); err != nil {
		return Grant{}, nil, err
	}
	for _, r := range req.Records {
		set, ok := sets[r.Epoch]
		if !ok {
			return Grant{}, nil, fmt.Errorf("%w: record %q is sealed under epoch %d", ErrUnknownEpoch, truncate(r.ID), r.Epoch)
		}
		if err := checkSet(r.Epoch, set); err != nil {
			return Grant{}, nil, err
		}
	}
	counted, _ := tally(req, sets, approvals, now)
	var left []QuorumError
	g := Grant{
		requestID: req.ID,
		records:   make(map[string][]string, len(req.Records)),
		approvals: make(map[string][]int, len(req.Records)),
		quorum:    make(map[string]int, len(req.Records)),
		at:        now,
	}
	for _, r := range req.Records {
		need := sets[r.Epoch].Quorum
		names := make([]string, 0, len(counted[r.ID]))
		for name := range counted[r.ID] {
			names = append(names, name)
		}
		if len(names) < need {
			if !partial {
				return Grant{}, nil, &QuorumError{Record: r.ID, Have: len(names), Need: need}
			}
			left = append(left, QuorumError{Record: r.ID, Have: len(names), Need: need})
			continue
		}
		slices.Sort(names)
		idx := make([]int, len(names))
		for j, name := range names {
			idx[j] = counted[r.ID][name]
		}
		g.records[r.ID], g.approvals[r.ID], g.quorum[r.ID] = names, idx, need
	}
	if len(g.records) == 0 {
		first := left[0]
		return Grant{}, nil, &first
	}
	g.ok = true
	return g, left, nil
}

// Explain returns why each approval was not counted, for the audit trail and metrics, in
// approval order and then request record order. It applies exactly the rules of [Evaluate]
// to each approval; it does not report the request-level reasons (state, expiry, unknown
// epoch, quorum) that [Evaluate] returns as errors. A rejection with an empty Record concerns
// every record. An approval that counts for one record may still be rejected for another
// (its KRA owns that key, or it carries no share for it); an approval from a KRA outside a
// record's set that claims no share for that record is not rejected for it.
func Explain(req Request, sets map[uint32]RecoverySet, approvals []Approval, now time.Time) []Rejection {
	_, rejections := tally(req, sets, approvals, now)
	return rejections
}
