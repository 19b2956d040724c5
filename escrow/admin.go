package escrow

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Built-in template names the engine relies on.
const (
	TemplateKRA        = "kra"
	TemplateClientAuth = "client-auth"
)

// MaxPendingRequests bounds the requests waiting for an admin's decision.
const MaxPendingRequests = 100

// ErrTooManyPending: the queue of requests waiting for an admin is full.
var ErrTooManyPending = errors.New("escrow: too many requests wait for an admin's decision; try again after they are decided")

// Refusals of a KRA enrollment that conflicts with what the appliance has certified: one key
// pair is one KRA, and one KRA name is one key pair. Without them one token could enroll under
// a second name and hold two shares of a recovery set, or a second token could take a KRA's
// name and be handed that KRA's place in its recovery sets.
var (
	// ErrKeyInUse: a KRA's unwrap or auth key is already certified by this appliance to
	// another KRA, for another purpose, or in any other certificate.
	ErrKeyInUse = errors.New("escrow: the key is already certified by this appliance for another holder or purpose")
	// ErrKRANameTaken: the KRA name already has valid certificates with other keys.
	ErrKRANameTaken = errors.New("escrow: the KRA name belongs to another key pair")
)

// validName is the form of a KRA or credential name.
var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// KRARequest is a Key Recovery Agent's enrollment. The unwrap key (RSA, decrypt-only in the
// KRA's token) cannot sign a CSR of its own, so it travels as a public key, bound to the request
// by the auth key's signature: the auth CSR (sign-only key, for mutual TLS and signed
// approvals) and Proof, the auth key's signature over [KRABinding].
type KRARequest struct {
	Name      string
	UnwrapKey crypto.PublicKey
	AuthCSR   *x509.CertificateRequest
	Proof     []byte
	// Requester describes who submitted it (for example the remote address), for the admin.
	Requester string
}

// KRABinding is what a KRA's auth key signs (SHA-256, then ECDSA or RSA PKCS#1 v1.5) to bind
// its unwrap key to its enrollment. Its only error is crypto/x509's, for a key it cannot
// encode; there is no sentinel.
func KRABinding(name string, unwrapKey crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(unwrapKey)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(append([]byte("keyarc KRA enrollment\x00"+name+"\x00"), spki...))
	return sum[:], nil
}

// Pending is a request waiting for an admin, as shown to the admin.
type Pending struct {
	store.Pending
	// Fingerprints are the SHA-256 of the requested public keys (unwrap, auth), which the admin
	// compares with what the KRA reads off their own screen before issuing.
	Fingerprints []string
}

// SubmitKRA records a KRA enrollment as a pending request for an admin's decision and returns
// its ID.
//
// # Errors
//
// [ErrInvalidRequest] (a bad name, a missing or non-RSA unwrap key, one key for both
// purposes, a proof that does not verify), policy's refusal of the unwrap key or the auth CSR
// ([policy.ErrRejected]), [ErrKeyInUse] and [ErrKRANameTaken] as for [Service.IssueKRA]
// (checked again when the request is issued), [ErrTooManyPending] when the queue is full, or,
// for faults of the appliance, a storage error wrapping [store.ErrUnavailable] or the audit
// trail's ([audit.ErrAppend]), wrapped.
func (s *Service) SubmitKRA(ctx context.Context, req KRARequest) (string, error) {
	if !validName.MatchString(req.Name) {
		return "", fmt.Errorf("%w: KRA name %q: use 1 to 64 lower-case letters, digits, '.', '_' or '-'", ErrInvalidRequest, req.Name)
	}
	kra, err := s.Template(TemplateKRA)
	if err != nil {
		return "", err
	}
	auth, err := s.Template(TemplateClientAuth)
	if err != nil {
		return "", err
	}
	if req.AuthCSR == nil || req.UnwrapKey == nil {
		return "", fmt.Errorf("%w: a KRA enrollment needs the unwrap public key and the auth certificate request", ErrInvalidRequest)
	}
	if _, ok := req.UnwrapKey.(*rsa.PublicKey); !ok {
		return "", fmt.Errorf("%w: the KRA unwrap key must be RSA (shares are RSA-OAEP encrypted to it)", ErrInvalidRequest)
	}
	if err := kra.CheckPublicKey(req.UnwrapKey); err != nil {
		return "", fmt.Errorf("unwrap key: %w", err)
	}
	if err := auth.CheckCSR(req.AuthCSR, ""); err != nil {
		return "", fmt.Errorf("auth request: %w", err)
	}
	digest, err := KRABinding(req.Name, req.UnwrapKey)
	if err != nil {
		return "", fmt.Errorf("%w: unwrap key: %v", ErrInvalidRequest, err)
	}
	if !verifyDigest(req.AuthCSR.PublicKey, digest, req.Proof) {
		return "", fmt.Errorf("%w: proof is not the auth key's signature binding the unwrap key to KRA %q", ErrInvalidRequest, req.Name)
	}
	spki, _ := x509.MarshalPKIXPublicKey(req.UnwrapKey)
	unwrapID, authID := spkiKeyID(spki), PublicKeyFingerprint(req.AuthCSR.PublicKey)
	id, err := newID()
	if err != nil {
		return "", err
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		// KRA enrollment needs no credential (an admin decides), so bound what it can store.
		if waiting, err := tx.ListPending(store.StatePending); err != nil {
			return err
		} else if len(waiting) >= MaxPendingRequests {
			return ErrTooManyPending
		}
		if err := kraKeysFree(tx, req.Name, unwrapID, authID, s.now()); err != nil {
			return err
		}
		if err := tx.InsertPending(store.Pending{
			ID: id, Template: TemplateKRA, Name: req.Name, Requester: req.Requester,
			CSR: req.AuthCSR.Raw, PublicKey: spki, State: store.StatePending, CreatedAt: s.now(),
		}); err != nil {
			return err
		}
		return s.audit(tx, audit.KindPendingSubmitted, actorFrom(ctx), req.Name, audit.Details{Request: id, Template: TemplateKRA,
			KRA: req.Name, Remote: req.Requester, Fingerprint: fingerprints(spki, req.AuthCSR.Raw)})
	})
	if err != nil {
		return "", fmt.Errorf("escrow: store pending request: %w", err)
	}
	s.log().Info("KRA enrollment pending", "id", id, "kra", req.Name)
	return id, nil
}

// verifyDigest checks a signature over a SHA-256 digest by an ECDSA or RSA (PKCS#1 v1.5) key.
func verifyDigest(pub crypto.PublicKey, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
	}
	return false
}

// ListPending returns the requests in state: pending, issued or denied (all when empty). A
// state other than those is an [ErrInvalidRequest]; its other errors are the store's
// ([store.ErrUnavailable]).
func (s *Service) ListPending(ctx context.Context, state string) ([]Pending, error) {
	switch state {
	case "", store.StatePending, store.StateIssued, store.StateDenied:
	default:
		return nil, fmt.Errorf("%w: state %q is not a state of pending requests: use pending, issued or denied", ErrInvalidRequest, clip(state))
	}
	var rows []store.Pending
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		rows, err = tx.ListPending(state)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Pending, 0, len(rows))
	for _, p := range rows {
		out = append(out, Pending{Pending: p, Fingerprints: fingerprints(p.PublicKey, p.CSR)})
	}
	return out, nil
}

// fingerprints of a pending KRA request: the unwrap key (SPKI) and the auth key (CSR).
func fingerprints(spki, csrDER []byte) []string {
	var out []string
	if pub, err := x509.ParsePKIXPublicKey(spki); err == nil {
		out = append(out, PublicKeyFingerprint(pub))
	}
	if csr, err := x509.ParseCertificateRequest(csrDER); err == nil {
		out = append(out, PublicKeyFingerprint(csr.PublicKey))
	}
	return out
}

// PublicKeyFingerprint is the SHA-256 of a public key's SubjectPublicKeyInfo, in hex; "" for a
// key crypto/x509 cannot encode.
func PublicKeyFingerprint(pub crypto.PublicKey) string {
	id, _ := issue.KeyID(pub)
	return id
}

// IssuePending issues a pending KRA request: an unwrap certificate (template kra) and an auth
// certificate (client-auth, role kra), both naming the KRA.
//
// # Errors
//
// [ErrNotFound] for no such request, [ErrInvalidRequest] for one already decided or of another
// template, those of [Service.IssueKRA], or, for faults of the appliance, a stored request that
// does not parse, a storage error wrapping [store.ErrUnavailable] or the audit trail's
// ([audit.ErrAppend]), wrapped.
func (s *Service) IssuePending(ctx context.Context, id, admin string) ([]*Issued, error) {
	// One decision at a time: two admins issuing the same request must not both pass the
	// pending check. (One process owns the database.)
	s.decideMu.Lock()
	defer s.decideMu.Unlock()
	p, err := s.getPending(ctx, id)
	if err != nil {
		return nil, err
	}
	if p.Template != TemplateKRA {
		return nil, fmt.Errorf("%w: pending request %s is for template %q, which this appliance cannot issue by decision", ErrInvalidRequest, id, p.Template)
	}
	unwrapKey, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("escrow: pending request %s: %w", id, err)
	}
	authCSR, err := x509.ParseCertificateRequest(p.CSR)
	if err != nil {
		return nil, fmt.Errorf("escrow: pending request %s: %w", id, err)
	}
	out, err := s.issueKRA(ctx, p.Name, unwrapKey, authCSR.PublicKey)
	if err != nil {
		return nil, err
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.DecidePendingAt(id, store.StateIssued, admin, out[0].Serial, s.now()); err != nil {
			return err
		}
		return s.audit(tx, audit.KindPendingDecided, principalActor("admin", admin), p.Name, audit.Details{Request: id,
			Template: p.Template, KRA: p.Name, Decision: store.StateIssued, Serials: []string{out[0].Serial, out[1].Serial}})
	})
	if err != nil {
		return nil, fmt.Errorf("escrow: record decision on %s: %w", id, err)
	}
	return out, nil
}

// IssueKRA issues a KRA's unwrap and auth certificates directly (used by IssuePending and by a
// local bootstrap such as `keyarc init --dev`).
//
// A key pair is one KRA, and a KRA name one key pair: neither key may be in any certificate
// of this appliance other than an earlier one of the same KRA for the same purpose, and the
// name may have no valid (issued, unexpired) KRA certificate with another key. Certifying the
// same two keys again for the same name (a renewal) is allowed.
//
// # Errors
//
// [ErrInvalidRequest] for an unwrap key that is not RSA or one key for both purposes, policy's
// refusal of either key ([policy.ErrRejected]), [ErrKeyInUse] for a key already certified to
// another holder or purpose, [ErrKRANameTaken] for a name whose valid certificates hold other
// keys, the CA's [ca.ErrLint], or, for faults of the appliance, a storage error wrapping
// [store.ErrUnavailable], the CA signer's (token's) error or the audit trail's, wrapped.
func (s *Service) IssueKRA(ctx context.Context, name string, unwrapKey, authKey crypto.PublicKey) ([]*Issued, error) {
	// The checks and the issuance are one decision: two issuances for one name or one key must
	// not both pass the checks. (One process owns the database.)
	s.decideMu.Lock()
	defer s.decideMu.Unlock()
	return s.issueKRA(ctx, name, unwrapKey, authKey)
}

// issueKRA is [Service.IssueKRA] for a caller that holds decideMu.
func (s *Service) issueKRA(ctx context.Context, name string, unwrapKey, authKey crypto.PublicKey) ([]*Issued, error) {
	kra, err := s.Template(TemplateKRA)
	if err != nil {
		return nil, err
	}
	auth, err := s.Template(TemplateClientAuth)
	if err != nil {
		return nil, err
	}
	if err := kra.CheckPublicKey(unwrapKey); err != nil {
		return nil, err
	}
	if _, ok := unwrapKey.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: the KRA unwrap key must be RSA", ErrInvalidRequest)
	}
	if err := auth.CheckPublicKey(authKey); err != nil {
		return nil, err
	}
	// The identities the store gives the certificates' keys (both keys passed policy, so
	// crypto/x509 encodes them).
	unwrapID, authID := PublicKeyFingerprint(unwrapKey), PublicKeyFingerprint(authKey)
	if err := s.Store.View(ctx, func(tx store.Tx) error {
		return kraKeysFree(tx, name, unwrapID, authID, s.now())
	}); err != nil {
		return nil, err
	}
	unwrap, err := s.issue(ctx, issuance{template: kra, pub: unwrapKey, kra: name,
		subject: &pkix.Name{CommonName: "KRA " + name + " (key recovery)"}})
	if err != nil {
		return nil, err
	}
	authCert, err := s.issue(ctx, issuance{template: auth, pub: authKey, kra: name, role: string(policy.RoleKRA),
		subject: &pkix.Name{CommonName: "KRA " + name + " (authentication)"}})
	if err != nil {
		return nil, err
	}
	return []*Issued{unwrap, authCert}, nil
}

// spkiKeyID is the key identity of a DER SubjectPublicKeyInfo as the store keeps it for
// certificates ([store.Certificate.KeyID]) and [PublicKeyFingerprint] gives it for a key: its
// SHA-256, in lower-case hex.
func spkiKeyID(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// isUnwrapOf reports whether c is an unwrap certificate of KRA name.
func isUnwrapOf(c store.Certificate, name string) bool {
	return c.Template == TemplateKRA && c.KRA == name
}

// isAuthOf reports whether c is an auth certificate (the approving credential) of KRA name.
func isAuthOf(c store.Certificate, name string) bool {
	return c.Template == TemplateClientAuth && c.Role == string(policy.RoleKRA) && c.KRA == name
}

// kraKeysFree checks, in tx at now, that KRA name may be certified with the unwrap key and the
// auth key of identities unwrapID and authID ([store.KeyID]): two keys; neither in any stored
// certificate (whatever its state or expiry) other than one of the same KRA for the same
// purpose; and no valid certificate of the name with another key. Its refusals name no other
// holder: the request may come from anyone.
func kraKeysFree(tx store.Tx, name, unwrapID, authID string, now time.Time) error {
	if unwrapID == authID {
		return fmt.Errorf("%w: KRA %q: the unwrap key and the auth key are one key; make one key to decrypt and another to sign", ErrInvalidRequest, name)
	}
	for _, k := range []struct {
		purpose, id string
		same        func(store.Certificate, string) bool
	}{{"unwrap", unwrapID, isUnwrapOf}, {"auth", authID, isAuthOf}} {
		certs, err := tx.CertificatesByKey(k.id)
		if err != nil {
			return err
		}
		for _, c := range certs {
			if !k.same(c, name) {
				return fmt.Errorf("%w: the %s key offered for KRA %q is already certified for another holder or purpose; each KRA enrolls with new keys made in its own token",
					ErrKeyInUse, k.purpose, name)
			}
		}
	}
	certs, err := tx.ListCertificates(store.Filter{KRA: name})
	if err != nil {
		return err
	}
	for _, c := range certs {
		if c.State != store.StateIssued || !now.Before(c.NotAfter) {
			continue
		}
		if isUnwrapOf(c, name) && c.KeyID != unwrapID || isAuthOf(c, name) && c.KeyID != authID {
			return fmt.Errorf("%w: KRA %q already has valid certificates for other keys; enroll under another name, or have an admin revoke KRA %q's certificates first",
				ErrKRANameTaken, name, name)
		}
	}
	return nil
}

// DenyPending refuses a pending request.
//
// # Errors
//
// [ErrNotFound] for no such request, [ErrInvalidRequest] for one already decided, or, for
// faults of the appliance, a storage error wrapping [store.ErrUnavailable] or the audit
// trail's ([audit.ErrAppend]).
func (s *Service) DenyPending(ctx context.Context, id, admin string) error {
	s.decideMu.Lock()
	defer s.decideMu.Unlock()
	p, err := s.getPending(ctx, id)
	if err != nil {
		return err
	}
	return s.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.DecidePendingAt(id, store.StateDenied, admin, "", s.now()); err != nil {
			return err
		}
		return s.audit(tx, audit.KindPendingDecided, principalActor("admin", admin), p.Name, audit.Details{Request: id,
			Template: p.Template, KRA: p.Name, Decision: store.StateDenied})
	})
}

func (s *Service) getPending(ctx context.Context, id string) (*store.Pending, error) {
	var p *store.Pending
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		p, err = tx.GetPending(id)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no pending request %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if p.State != store.StatePending {
		return nil, fmt.Errorf("%w: request %s is already %s", ErrInvalidRequest, id, p.State)
	}
	return p, nil
}

// IssueCredential issues a client-auth certificate for a role (admin, officer, auditor) to pub.
// It is how operators get their mutual-TLS credentials. mailbox, when set, is the operator's
// own mailbox: policy uses it to keep an officer from recovering their own keys.
//
// # Errors
//
// [ErrInvalidRequest] for another role, a bad name or mailbox (then also
// [policy.ErrInvalidMailbox]), policy's refusal of pub ([policy.ErrRejected]), or those of
// [Service.IssueKRA]'s issuance ([ca.ErrLint], the appliance's faults).
func (s *Service) IssueCredential(ctx context.Context, role policy.Role, name, mailbox string, pub crypto.PublicKey) (*Issued, error) {
	switch role {
	case policy.RoleAdmin, policy.RoleOfficer, policy.RoleAuditor:
	default:
		return nil, fmt.Errorf("%w: role %q: choose admin, officer or auditor (KRAs enroll with `keyarc kra enroll`)", ErrInvalidRequest, role)
	}
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("%w: name %q: use 1 to 64 lower-case letters, digits, '.', '_' or '-'", ErrInvalidRequest, name)
	}
	t, err := s.Template(TemplateClientAuth)
	if err != nil {
		return nil, err
	}
	if err := t.CheckPublicKey(pub); err != nil {
		return nil, err
	}
	if mailbox != "" {
		var err error
		if mailbox, err = policy.NormalizeMailbox(mailbox); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
	}
	return s.issue(ctx, issuance{template: t, pub: pub, role: string(role), mailbox: mailbox,
		subject: &pkix.Name{CommonName: name, OrganizationalUnit: []string{string(role)}}})
}

// SetRecoverySet defines a new recovery set: n KRA unwrap certificates (by serial) and a quorum
// m, 1 <= m <= n. It becomes a new epoch; records sealed earlier keep theirs.
//
// # Errors
//
// [ErrInvalidRequest] (a quorum out of range, a serial that is not a valid, unexpired KRA
// unwrap certificate, two certificates of one KRA or of one key), or, for faults of the
// appliance, a storage
// error wrapping [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]).
func (s *Service) SetRecoverySet(ctx context.Context, quorum int, serials []string, admin string) (*RecoverySet, error) {
	if len(serials) == 0 {
		return nil, fmt.Errorf("%w: a recovery set needs at least one KRA certificate", ErrInvalidRequest)
	}
	if len(serials) > 255 {
		return nil, fmt.Errorf("%w: at most 255 KRAs in a recovery set", ErrInvalidRequest)
	}
	if quorum < 1 || quorum > len(serials) {
		return nil, fmt.Errorf("%w: quorum %d must be between 1 and the number of KRAs (%d)", ErrInvalidRequest, quorum, len(serials))
	}
	now := s.now()
	var epoch uint32
	err := s.Store.Update(ctx, func(tx store.Tx) error {
		seen := map[string]string{}
		seenKey := map[string]*store.Certificate{}
		canon := make([]string, 0, len(serials))
		for _, serial := range serials {
			c, err := tx.GetCertificate(serial)
			if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
				return fmt.Errorf("%w: no certificate with serial %q", ErrInvalidRequest, serial)
			}
			if err != nil {
				return err
			}
			switch {
			case c.Template != TemplateKRA:
				return fmt.Errorf("%w: certificate %s is a %s certificate, not a KRA unwrap certificate", ErrInvalidRequest, c.Serial, c.Template)
			case c.State != store.StateIssued:
				return fmt.Errorf("%w: KRA certificate %s is %s", ErrInvalidRequest, c.Serial, c.State)
			case !now.Before(c.NotAfter):
				return fmt.Errorf("%w: KRA certificate %s expired", ErrInvalidRequest, c.Serial)
			}
			if prev, dup := seen[c.KRA]; dup {
				return fmt.Errorf("%w: certificates %s and %s belong to the same KRA %q; a KRA holds one share", ErrInvalidRequest, prev, c.Serial, c.KRA)
			}
			// Names differ, keys must too: whoever holds one unwrap key would hold two shares.
			if prev, dup := seenKey[c.KeyID]; dup || c.KeyID == "" {
				if !dup {
					return fmt.Errorf("%w: KRA certificate %s has no key identity in the store", ErrInvalidRequest, c.Serial)
				}
				return fmt.Errorf("%w: certificates %s (KRA %q) and %s (KRA %q) are for the same unwrap key; one key holds one share, so give each KRA once",
					ErrInvalidRequest, prev.Serial, prev.KRA, c.Serial, c.KRA)
			}
			seen[c.KRA] = c.Serial
			seenKey[c.KeyID] = c
			canon = append(canon, c.Serial)
		}
		var err error
		epoch, err = tx.InsertRecoverySet(store.RecoverySet{Quorum: quorum, KRASerials: canon, CreatedAt: now, CreatedBy: admin})
		if err != nil {
			return err
		}
		return s.audit(tx, audit.KindRecoverySetChanged, principalActor("admin", admin), fmt.Sprintf("epoch %d", epoch),
			audit.Details{Epoch: epoch, Quorum: quorum, Serials: canon})
	})
	if err != nil {
		return nil, err
	}
	s.log().Info("recovery set changed", "epoch", epoch, "quorum", quorum, "kras", len(serials), "by", admin)
	return s.CurrentRecoverySet(ctx)
}

// isNewID reports whether id has the form [newID] gives: 16 lower-case hex digits.
func isNewID(id string) bool {
	ok := len(id) == 16
	for i := 0; ok && i < len(id); i++ {
		ok = '0' <= id[i] && id[i] <= '9' || 'a' <= id[i] && id[i] <= 'f'
	}
	return ok
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
