package escrow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Revocation errors.
var (
	// ErrAlreadyRevoked: the certificate is revoked already. A revocation is final and keeps its
	// first date and reason; the one change allowed is a move to keyCompromise. Errors that wrap
	// it are an [*AlreadyRevokedError], which carries the existing revocations.
	ErrAlreadyRevoked = errors.New("escrow: certificate already revoked")
	// ErrNotIssued: the certificate was never issued (its issuance is pending or failed), so
	// there is nothing to revoke.
	ErrNotIssued = errors.New("escrow: certificate was never issued")
	// ErrInRecoverySet: the certificate is a KRA unwrap certificate of the current recovery
	// set, which every new escrow record is sealed to. It is revoked once an admin has defined
	// a set without it, so that no key is ever sealed to a revoked KRA certificate.
	ErrInRecoverySet = errors.New("escrow: the certificate is in the current recovery set")
	// ErrApplianceCertificate: the certificate is one of the appliance's own (TLS,
	// transport, audit, OCSP responder), unexpired: the appliance uses its key whatever its
	// status, so it is not revoked.
	ErrApplianceCertificate = errors.New("escrow: the certificate is the appliance's own")
)

// Revocation is the revocation state of one certificate.
type Revocation struct {
	Serial    string // canonical
	Mailbox   string // "" for operator and KRA certificates
	Reason    string // RFC 5280 name of the CRLReason (policy.RevocationReasonName)
	RevokedAt time.Time
}

// AlreadyRevokedError is the refusal of a revocation whose certificates are all revoked
// already (and none moves to keyCompromise): Existing are their revocations, as they stay.
type AlreadyRevokedError struct {
	Existing []Revocation
}

func (e *AlreadyRevokedError) Error() string {
	if len(e.Existing) == 1 {
		r := e.Existing[0]
		return fmt.Sprintf("escrow: certificate %s was already revoked on %s (reason %s); a revocation is final, and only a move to keyCompromise may change it",
			r.Serial, r.RevokedAt.UTC().Format(time.RFC3339), r.Reason)
	}
	return fmt.Sprintf("escrow: the %d certificates named were all revoked already; a revocation is final, and only a move to keyCompromise may change it", len(e.Existing))
}

// Unwrap returns [ErrAlreadyRevoked].
func (e *AlreadyRevokedError) Unwrap() error { return ErrAlreadyRevoked }

// RevokeRequest names the certificates to revoke (exactly one of Serial, Email and KeyOf) and
// why.
type RevokeRequest struct {
	// Serial is one certificate (any form [store.NormalizeSerial] reads).
	Serial string
	// Email is a mailbox: every certificate of it that is unexpired (issued, or revoked for a
	// move to keyCompromise), operator credentials that name the mailbox excepted.
	Email string
	// KeyOf is a certificate whose public key is compromised: every unexpired certificate of
	// that key, in any mailbox, and that certificate itself (BR §6.1.2).
	KeyOf string
	// Reason is the RFC 5280 name of an S/MIME BR reason (policy.ParseRevocationReason).
	Reason string
}

// RevokeResult is what a revocation changed.
type RevokeResult struct {
	// Revoked are the certificates revoked now.
	Revoked []Revocation
	// KeyCompromise are certificates revoked before whose reason moved to keyCompromise; their
	// revocation date stays the first one.
	KeyCompromise []Revocation
	// Unchanged are certificates named (by mailbox or key) that were revoked already and stay
	// as they were.
	Unchanged []Revocation
}

// Serials returns the serials whose status changed: revoked now, or moved to keyCompromise.
func (r *RevokeResult) Serials() []string {
	out := make([]string, 0, len(r.Revoked)+len(r.KeyCompromise))
	for _, v := range r.Revoked {
		out = append(out, v.Serial)
	}
	for _, v := range r.KeyCompromise {
		out = append(out, v.Serial)
	}
	return out
}

// Revoke revokes the certificates req names, for by: an admin or officer revokes any
// certificate, a subscriber (by.Role enrollee or empty, by.Mailbox the mailbox of the
// certificate they authenticated with) only those of their own mailbox ([policy.AuthorizeRevoke]).
// The revocations, their audit entry and the authorization's reads are one transaction: all
// of them, or nothing. A certificate revoked already keeps its first revocation, unless the
// reason is keyCompromise and its own is not: its reason moves to keyCompromise (the one change
// the BR allow) and its date stays. Escrow records are not touched: an archived key stays
// recoverable, so that old mail can still be decrypted. After the commit, the metric
// (an optional `Revoked(reason string)` of [Service.Metrics], once per certificate) and
// [Service.Revoked] learn of it.
//
// By mailbox or key, certificates that expired are left out (no CRL lists them), as are
// pending and failed ones and those another CA issued (archived by a bulk import, template
// [TemplateImport]: this CA cannot revoke them); by serial, the certificate is revoked even if
// expired, and one of another CA is refused.
//
// # Errors
//
// [ErrInvalidRequest] (not exactly one of Serial, Email and KeyOf; a malformed serial or
// mailbox; a reason outside the BR set, also wrapping [policy.ErrBadRevocationReason]),
// [ErrNotFound] (no such certificate; a mailbox or key with no issued certificate),
// [ErrNotIssued] (a serial whose issuance is pending or failed, or another CA's certificate),
// [ErrInRecoverySet] (a KRA
// unwrap certificate of the current recovery set: replace the set first),
// [ErrApplianceCertificate] (an unexpired certificate of the appliance's own keys), an [*AlreadyRevokedError]
// (wrapping [ErrAlreadyRevoked]) when nothing would change, [policy.ErrForbidden] (a caller
// who may not revoke these certificates), or, for faults of the appliance, a storage error
// wrapping [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]), wrapped.
func (s *Service) Revoke(ctx context.Context, by policy.Principal, req RevokeRequest) (*RevokeResult, error) {
	n := 0
	for _, f := range []string{req.Serial, req.Email, req.KeyOf} {
		if f != "" {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: name the certificates to revoke with exactly one of serial, email (every certificate of a mailbox) and key_of (every certificate of the key of a serial)", ErrInvalidRequest)
	}
	reason, err := policy.ParseRevocationReason(req.Reason)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	var subject string
	switch {
	case req.Serial != "":
		serial, err := store.NormalizeSerial(req.Serial)
		if err != nil {
			// Not repeated: what is no serial may be a code or password pasted in the wrong place.
			return nil, fmt.Errorf("%w: serial: not a hexadecimal certificate serial", ErrInvalidRequest)
		}
		req.Serial, subject = serial, serial
	case req.KeyOf != "":
		serial, err := store.NormalizeSerial(req.KeyOf)
		if err != nil {
			return nil, fmt.Errorf("%w: key_of: not a hexadecimal certificate serial", ErrInvalidRequest)
		}
		req.KeyOf, subject = serial, "key-of "+serial
	default:
		if req.Email, err = policy.NormalizeMailbox(req.Email); err != nil {
			return nil, fmt.Errorf("%w: email: %w", ErrInvalidRequest, err)
		}
		subject = req.Email
	}
	now := s.now()
	res := &RevokeResult{}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		*res = RevokeResult{}
		targets, keyID, err := revokeTargets(tx, req, now)
		if err != nil {
			return err
		}
		refs := make([]policy.CertRef, len(targets))
		for i, c := range targets {
			refs[i] = policy.CertRef{Serial: c.Serial, Mailbox: c.Email, Role: c.Role, KRA: c.KRA}
		}
		if err := policy.AuthorizeRevoke(by, reason, refs); err != nil {
			return err
		}
		if err := notInRecoverySet(tx, targets); err != nil {
			return err
		}
		if err := notApplianceOwn(targets, now); err != nil {
			return err
		}
		if err := applyRevocations(tx, targets, reason, now, res); err != nil {
			return err
		}
		if len(res.Revoked) == 0 && len(res.KeyCompromise) == 0 {
			return &AlreadyRevokedError{Existing: res.Unchanged}
		}
		d := audit.Details{RevocationReason: policy.RevocationReasonName(reason), Mailbox: req.Email}
		for _, r := range res.Revoked {
			d.Serials = append(d.Serials, r.Serial)
		}
		for _, r := range res.KeyCompromise {
			d.KeyCompromise = append(d.KeyCompromise, r.Serial)
		}
		if keyID != "" {
			d.Serial, d.Fingerprint = req.KeyOf, []string{keyID}
		}
		d.Count = len(d.Serials) + len(d.KeyCompromise)
		return s.audit(tx, audit.KindRevoke, revokeActor(by), subject, d)
	})
	if err != nil {
		return nil, err
	}
	s.revoked(res)
	return res, nil
}

// revokeTargets reads the certificates a request names, in tx. keyID is the key's identity
// for a request by key.
func revokeTargets(tx store.Tx, req RevokeRequest, now time.Time) (targets []store.Certificate, keyID string, err error) {
	live := func(c store.Certificate) bool {
		return (c.State == store.StateIssued || c.State == store.StateRevoked) && (c.NotAfter.IsZero() || c.NotAfter.After(now)) &&
			c.Template != TemplateImport
	}
	switch {
	case req.Serial != "":
		c, err := tx.GetCertificate(req.Serial)
		if errors.Is(err, store.ErrNotFound) {
			return nil, "", fmt.Errorf("%w: no certificate with serial %s", ErrNotFound, req.Serial)
		}
		if err != nil {
			return nil, "", err
		}
		if c.State != store.StateIssued && c.State != store.StateRevoked {
			return nil, "", fmt.Errorf("%w: certificate %s is %s: it was never issued, so there is nothing to revoke", ErrNotIssued, c.Serial, c.State)
		}
		if c.Template == TemplateImport {
			return nil, "", fmt.Errorf("%w: certificate %s was issued by another CA and only its key is archived here (bulk import): revoke it at the CA that issued it", ErrNotIssued, c.Serial)
		}
		return []store.Certificate{*c}, "", nil
	case req.Email != "":
		all, err := tx.ListCertificates(store.Filter{Email: req.Email})
		if err != nil {
			return nil, "", err
		}
		for _, c := range all {
			// The mailbox's own certificates: an operator credential that names the mailbox
			// (for the own-key rule of recoveries) is revoked by its serial.
			if live(c) && c.Role == "" && c.KRA == "" {
				targets = append(targets, c)
			}
		}
		if len(targets) == 0 {
			return nil, "", fmt.Errorf("%w: mailbox %s has no unexpired certificate", ErrNotFound, req.Email)
		}
		return targets, "", nil
	}
	named, err := tx.GetCertificate(req.KeyOf)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", fmt.Errorf("%w: no certificate with serial %s", ErrNotFound, req.KeyOf)
	}
	if err != nil {
		return nil, "", err
	}
	if named.KeyID == "" {
		return nil, "", fmt.Errorf("%w: certificate %s is %s: it was never issued, so it names no key", ErrNotIssued, named.Serial, named.State)
	}
	all, err := tx.CertificatesByKey(named.KeyID)
	if err != nil {
		return nil, "", err
	}
	for _, c := range all {
		if c.Serial == named.Serial && (c.State == store.StateIssued || c.State == store.StateRevoked) && c.Template != TemplateImport || live(c) {
			targets = append(targets, c)
		}
	}
	if len(targets) == 0 {
		if named.Template == TemplateImport {
			return nil, "", fmt.Errorf("%w: certificate %s was issued by another CA (bulk import), and keyarc issued no unexpired certificate of its key: revoke it at the CA that issued it", ErrNotIssued, named.Serial)
		}
		return nil, "", fmt.Errorf("%w: certificate %s is %s: it was never issued, so there is nothing to revoke", ErrNotIssued, named.Serial, named.State)
	}
	return targets, named.KeyID, nil
}

// notInRecoverySet refuses to revoke a KRA unwrap certificate of the current recovery set:
// records would go on being sealed to it.
func notInRecoverySet(tx store.Tx, targets []store.Certificate) error {
	var set *store.RecoverySet
	for _, c := range targets {
		if c.Template != TemplateKRA || c.State != store.StateIssued {
			continue
		}
		if set == nil {
			var err error
			set, err = tx.CurrentRecoverySet()
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
		}
		if slices.Contains(set.KRASerials, c.Serial) {
			return fmt.Errorf("%w: certificate %s is KRA %q's unwrap certificate in recovery set %d, which new escrow records are sealed to; define a recovery set without it first (keyarc admin recovery-set set), then revoke it",
				ErrInRecoverySet, c.Serial, c.KRA, set.Epoch)
		}
	}
	return nil
}

// notApplianceOwn refuses to revoke an unexpired certificate of the appliance's own keys
// (TLS, transport, audit, OCSP responder): the appliance goes on using the key whatever the
// certificate's status, so a revocation would only pretend to retire it. The responder's
// certificate carries id-pkix-ocsp-nocheck besides: relying parties never ask about it.
func notApplianceOwn(targets []store.Certificate, now time.Time) error {
	for _, c := range targets {
		purpose, ok := strings.CutPrefix(c.Template, "appliance-")
		if !ok || AppliancePurpose(purpose).Template() != c.Template || c.State != store.StateIssued ||
			!c.NotAfter.IsZero() && !c.NotAfter.After(now) {
			continue
		}
		return fmt.Errorf("%w: certificate %s is the appliance's own %s certificate, and the appliance goes on using its key whatever its status; a key of the appliance is retired by replacing it (a new state made by keyarc init), not by revoking its certificate",
			ErrApplianceCertificate, c.Serial, purpose)
	}
	return nil
}

// applyRevocations revokes the issued targets with reason at now and moves the revoked ones to
// keyCompromise when reason is keyCompromise, recording each in res.
func applyRevocations(tx store.Tx, targets []store.Certificate, reason int, now time.Time, res *RevokeResult) error {
	for _, c := range targets {
		if c.Template == TemplateImport {
			continue // another CA's: not this CA's to revoke (a recovery's choice leaves it be)
		}
		r := Revocation{Serial: c.Serial, Mailbox: c.Email}
		switch {
		case c.State == store.StateIssued:
			if err := tx.RevokeCertificate(c.Serial, reason, now); err != nil {
				return fmt.Errorf("escrow: revoke %s: %w", c.Serial, err)
			}
			r.Reason, r.RevokedAt = policy.RevocationReasonName(reason), now
			res.Revoked = append(res.Revoked, r)
		case reason == store.ReasonKeyCompromise && c.RevocationReason != store.ReasonKeyCompromise:
			if err := tx.SetKeyCompromise(c.Serial); err != nil {
				return fmt.Errorf("escrow: move %s to keyCompromise: %w", c.Serial, err)
			}
			r.Reason, r.RevokedAt = policy.RevocationReasonName(reason), c.RevokedAt
			res.KeyCompromise = append(res.KeyCompromise, r)
		default:
			r.Reason, r.RevokedAt = policy.RevocationReasonName(c.RevocationReason), c.RevokedAt
			res.Unchanged = append(res.Unchanged, r)
		}
	}
	return nil
}

// revoked tells the metric and [Service.Revoked] of a committed revocation, and logs it.
func (s *Service) revoked(res *RevokeResult) {
	serials := res.Serials()
	if len(serials) == 0 {
		return
	}
	if m, ok := s.Metrics.(interface{ Revoked(reason string) }); ok {
		for _, r := range res.Revoked {
			m.Revoked(r.Reason)
		}
		for range res.KeyCompromise {
			m.Revoked(policy.RevocationReasonName(store.ReasonKeyCompromise))
		}
	}
	for _, r := range res.Revoked {
		s.log().Info("certificate revoked", "serial", r.Serial, "reason", r.Reason)
	}
	for _, r := range res.KeyCompromise {
		s.log().Info("revocation reason moved to keyCompromise", "serial", r.Serial, "revoked_at", r.RevokedAt)
	}
	if s.Revoked != nil {
		s.Revoked(serials)
	}
}

// revokeActor names the caller of a revocation in the audit trail.
func revokeActor(p policy.Principal) string {
	if p.Role == "" || p.Role == policy.RoleEnrollee {
		return "subscriber:" + p.Mailbox
	}
	return principalActor(string(p.Role), p.Name)
}

// clip shortens a caller's value for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// revokeAtFetch revokes, in the fetch's transaction tx, the certificates of a recovery as its
// request said (st.revoke): each record's certificate with the chosen reason and, for
// keyCompromise, every unexpired certificate of the same key (BR §6.1.2). A certificate
// revoked already keeps its revocation (or moves to keyCompromise). One audit entry per record
// that changed something.
func (s *Service) revokeAtFetch(tx store.Tx, officer policy.Principal, st *recoveryState, now time.Time, res *RevokeResult) error {
	done := map[string]bool{}
	for i, r := range st.records {
		choice := policy.RecoveryKeep
		if i < len(st.revoke) {
			choice = st.revoke[i]
		}
		_, reason, keep, err := policy.ParseRecoveryRevocation(choice)
		if err != nil {
			return fmt.Errorf("%w: %w: recovery %s: the revocation choice in its audit entry: %w", ErrIntegrity, check.ErrInconsistent, st.req.ID, err)
		}
		if keep {
			continue
		}
		c, err := tx.GetCertificate(r.Serial)
		if err != nil {
			return fmt.Errorf("escrow: certificate of record %s: %w", r.ID, err)
		}
		var targets []store.Certificate
		if c.State == store.StateIssued || c.State == store.StateRevoked {
			targets = append(targets, *c)
		}
		if reason == store.ReasonKeyCompromise && c.KeyID != "" {
			same, err := tx.CertificatesByKey(c.KeyID)
			if err != nil {
				return err
			}
			for _, o := range same {
				if o.Serial != c.Serial && (o.State == store.StateIssued || o.State == store.StateRevoked) && (o.NotAfter.IsZero() || o.NotAfter.After(now)) {
					targets = append(targets, o)
				}
			}
		}
		var fresh []store.Certificate
		for _, t := range targets {
			if !done[t.Serial] {
				done[t.Serial] = true
				fresh = append(fresh, t)
			}
		}
		var one RevokeResult
		if err := applyRevocations(tx, fresh, reason, now, &one); err != nil {
			return err
		}
		res.Revoked = append(res.Revoked, one.Revoked...)
		res.KeyCompromise = append(res.KeyCompromise, one.KeyCompromise...)
		res.Unchanged = append(res.Unchanged, one.Unchanged...)
		if len(one.Revoked) == 0 && len(one.KeyCompromise) == 0 {
			continue
		}
		d := audit.Details{Request: st.req.ID, Record: r.ID, RevocationReason: policy.RevocationReasonName(reason)}
		for _, v := range one.Revoked {
			d.Serials = append(d.Serials, v.Serial)
		}
		for _, v := range one.KeyCompromise {
			d.KeyCompromise = append(d.KeyCompromise, v.Serial)
		}
		d.Count = len(d.Serials) + len(d.KeyCompromise)
		if err := s.audit(tx, audit.KindRevoke, principalActor(string(officer.Role), officer.Name), st.req.ID, d); err != nil {
			return err
		}
	}
	return nil
}

// recoveryRevocations reads what a recovery request said becomes of its certificates: the
// revoke field of its audit entry (kind recovery-requested), written in the transaction that
// stored the request. The entry is found as the consistency check finds issuance entries: by
// bisection of the trail to the request's creation time (entries are appended in time order),
// then forward over that kind's entries. A request older than the field has none: keep. A
// missing or damaged entry gives an error wrapping [check.ErrInconsistent].
func recoveryRevocations(tx store.Tx, req *store.Recovery) ([]string, error) {
	const (
		slack  = time.Minute // clock steps between the row's time and the entry's
		window = time.Hour   // how far past the creation time the entry is looked for
		page   = 256
	)
	from, err := audit.SeqAt(tx, req.CreatedAt.Add(-slack))
	if err != nil {
		return nil, err
	}
	stop := req.CreatedAt.Add(window)
	for {
		entries, err := tx.AuditOfKindsFrom([]string{string(audit.KindRecoveryRequested)}, from, page)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			from = e.Seq + 1
			if e.At.After(stop) {
				break
			}
			if e.Subject != req.ID {
				continue
			}
			var d audit.Details
			if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
				return nil, fmt.Errorf("%w: audit entry %d of recovery request %s does not decode", check.ErrInconsistent, e.Seq, req.ID)
			}
			if len(d.Revoke) == 0 {
				return nil, nil
			}
			if len(d.Revoke) != len(req.Records) {
				return nil, fmt.Errorf("%w: audit entry %d of recovery request %s says what becomes of %d certificates, the request has %d records",
					check.ErrInconsistent, e.Seq, req.ID, len(d.Revoke), len(req.Records))
			}
			return d.Revoke, nil
		}
		if len(entries) < page || (len(entries) > 0 && entries[len(entries)-1].At.After(stop)) {
			return nil, fmt.Errorf("%w: the audit trail holds no entry of recovery request %s", check.ErrInconsistent, req.ID)
		}
	}
}
