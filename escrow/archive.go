package escrow

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// ErrNoRecoverySet: archival is impossible until an admin defines a valid recovery set.
var ErrNoRecoverySet = errors.New("escrow: key archival is unavailable")

// ErrKeyArchivedElsewhere: the private key is already archived for another mailbox, so it is
// refused. A key belongs to one mailbox; otherwise a recovery of either mailbox would release
// the other's key. It is the store's own sentinel, so the refusal of every insert path (single
// enrollment, bulk enroll and import) matches it, in one transaction with the record's insert.
//
// The same mailbox may archive the same key again (a renewal that keeps its key): that makes a
// second record, not a reference to the first, because a record binds the serial of its one
// certificate and a recovery by serial opens exactly that record (see checkBinding).
var ErrKeyArchivedElsewhere = store.ErrKeyArchivedElsewhere

// Transport is the appliance's key-transport pair: clients encrypt their private keys to Cert in
// a CMS envelope, and Key (in the token) opens them.
type Transport struct {
	Cert *x509.Certificate
	Key  crypto.Decrypter
}

// RecoverySet is a recovery set as the engine uses it: its epoch, quorum and KRA unwrap
// certificates, in share order.
type RecoverySet struct {
	Epoch  uint32
	Quorum int
	KRAs   []*x509.Certificate
	// Names are the KRAs' identities, in the same order.
	Names      []string
	recipients []record.Recipient
}

// recoverySets caches the current recovery set; it is reloaded when the store's epoch moves.
type recoverySets struct {
	mu  sync.Mutex
	cur *RecoverySet
}

// CurrentRecoverySet returns the current recovery set, checked usable at now: it exists, and
// none of its KRA certificates has expired.
//
// # Errors
//
// [ErrNoRecoverySet] when no set is defined or a KRA certificate expired; a storage error
// wrapping [store.ErrUnavailable]. Any other error (a KRA certificate of the set missing or
// unusable) is a fault of the archive.
func (s *Service) CurrentRecoverySet(ctx context.Context) (*RecoverySet, error) {
	var rs *RecoverySet
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		rs, err = s.currentSetIn(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.usable(rs)
}

// currentSetIn reads the current recovery set in tx, resolved from the cache while its epoch
// has not moved (a set never changes once stored), without the usability check.
func (s *Service) currentSetIn(tx store.Tx) (*RecoverySet, error) {
	row, err := tx.CurrentRecoverySet()
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no recovery set is defined; an admin must run `keyarc admin recovery-set set`", ErrNoRecoverySet)
	}
	if err != nil {
		return nil, err
	}
	s.sets.mu.Lock()
	cached := s.sets.cur
	s.sets.mu.Unlock()
	if cached == nil || cached.Epoch != row.Epoch {
		if cached, err = s.recoverySetIn(tx, row); err != nil {
			return nil, err
		}
		s.sets.mu.Lock()
		s.sets.cur = cached
		s.sets.mu.Unlock()
	}
	return cached, nil
}

// sealingSet is the recovery set to seal a single enrollment's key for: the cached current set,
// without a read of the store. It is what an enrollment's reservation checks against the store
// (the epoch check of escrow/issue); when the set has changed since, the enrollment seals again for the new one.
func (s *Service) sealingSet(ctx context.Context) (*RecoverySet, error) {
	s.sets.mu.Lock()
	cached := s.sets.cur
	s.sets.mu.Unlock()
	if cached == nil {
		return s.CurrentRecoverySet(ctx)
	}
	return s.usable(cached)
}

// usable refuses a recovery set with an expired KRA certificate.
func (s *Service) usable(rs *RecoverySet) (*RecoverySet, error) {
	now := s.now()
	for i, c := range rs.KRAs {
		if now.After(c.NotAfter) {
			return nil, fmt.Errorf("%w: the certificate of KRA %q in recovery set %d expired on %s; an admin must replace it",
				ErrNoRecoverySet, rs.Names[i], rs.Epoch, c.NotAfter.Format(time.DateOnly))
		}
	}
	return rs, nil
}

// errRecoverySetChanged: a record was sealed for a recovery set that is no longer the current
// one when it was to be committed (the issuance pipeline's epoch check refused it). It is both
// an [ErrNoRecoverySet] and an [ErrRecoverySetChanged].
var errRecoverySetChanged = fmt.Errorf("%w: %w; retry", ErrNoRecoverySet, ErrRecoverySetChanged)

// recoverySetIn resolves a stored recovery set's KRA serials to certificates, in tx.
func (s *Service) recoverySetIn(tx store.Tx, row *store.RecoverySet) (*RecoverySet, error) {
	rs := &RecoverySet{Epoch: row.Epoch, Quorum: row.Quorum}
	for _, serial := range row.KRASerials {
		c, err := tx.GetCertificate(serial)
		if err != nil {
			return nil, fmt.Errorf("escrow: recovery set %d: KRA certificate %s: %w", row.Epoch, serial, err)
		}
		cert, err := x509.ParseCertificate(c.DER)
		if err != nil {
			return nil, fmt.Errorf("escrow: recovery set %d: KRA certificate %s: %w", row.Epoch, serial, err)
		}
		rcpt, err := record.RecipientFromCertificate(cert)
		if err != nil {
			return nil, fmt.Errorf("escrow: recovery set %d: KRA certificate %s: %w", row.Epoch, serial, err)
		}
		rs.KRAs = append(rs.KRAs, cert)
		rs.Names = append(rs.Names, c.KRA)
		rs.recipients = append(rs.recipients, rcpt)
	}
	return rs, nil
}

// EnrollArchived issues a certificate of an archiving template. envelope is the client's PKCS#8
// private key in a CMS EnvelopedData or AuthEnvelopedData to the transport certificate. The key
// must be the pair of the CSR's public key; it is sealed for the recovery set and the record is
// durably committed before the certificate is signed, through the issuance pipeline
// ([Service.Pipeline]); if the recovery set changes meanwhile, the key is sealed again for the
// new set and the enrollment retried once.
//
// # Errors
//
// Those of [Service.Enroll], and: [ErrInvalidRequest] for a template that does not archive, a
// missing or bad envelope or a key that is not the CSR's (wrapping [cms.ErrNoRecipient],
// [cms.ErrMalformed], [cms.ErrUnsupported] or [cms.ErrDecrypt] when the envelope is at fault;
// a token failure under [cms.ErrDecrypt] stays in the chain), [ErrKeyArchivedElsewhere],
// [ErrNoRecoverySet] (no usable set, no transport key, or the set changed twice during the
// enrollment; then also [ErrRecoverySetChanged]). The transport key's own failure (the token's
// error) and a failure to seal are the appliance's, wrapped.
func (s *Service) EnrollArchived(ctx context.Context, who Enrollee, req EnrollRequest, envelope []byte) (*Issued, error) {
	ctx = WithActor(ctx, "enrollee:"+who.Mailbox)
	t, err := s.checkRequest(who, req)
	if err != nil {
		return nil, s.refuse(ctx, who, req.Template, err)
	}
	if !t.Archive {
		return nil, fmt.Errorf("%w: template %q does not archive keys; do not send encrypted_key (use EST simpleenroll)", ErrInvalidRequest, t.Name)
	}
	if len(envelope) == 0 {
		return nil, fmt.Errorf("%w: template %q requires an encrypted private key (field encrypted_key)", ErrInvalidRequest, t.Name)
	}
	if s.Transport == nil {
		return nil, fmt.Errorf("%w: no transport key configured", ErrNoRecoverySet)
	}
	pkcs8, err := cms.Decrypt(envelope, s.Transport.Cert, s.Transport.Key)
	if err != nil {
		return nil, s.refuse(ctx, who, t.Name, envelopeError(err))
	}
	defer clear(pkcs8)
	if err := checkKeyPair(pkcs8, req.CSR.PublicKey); err != nil {
		return nil, s.refuse(ctx, who, t.Name, err)
	}
	iss, err := s.archiveAndIssue(ctx, who, t, req.CSR.PublicKey, pkcs8)
	if errors.Is(err, ErrKeyArchivedElsewhere) {
		return nil, s.refuse(ctx, who, t.Name, err)
	}
	return iss, err
}

// archiveAndIssue seals pkcs8 for the current recovery set and issues the certificate. The set
// comes from the cache; if the reservation finds that it changed meanwhile, the key is sealed
// once more, for the set the store now holds.
func (s *Service) archiveAndIssue(ctx context.Context, who Enrollee, t *policy.Template, pub crypto.PublicKey, pkcs8 []byte) (*Issued, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrInvalidRequest, err)
	}
	getSet := s.sealingSet
	for attempt := 1; ; attempt++ {
		rs, err := getSet(ctx)
		if err != nil {
			return nil, err
		}
		seal := func(serial []byte) (*SealedRecord, error) {
			return s.sealRecord(rs, s.issuerName(), serial, spki, pkcs8)
		}
		iss, err := s.issue(ctx, issuance{template: t, pub: pub, mailbox: who.Mailbox, codeID: who.codeID(), seal: seal})
		if errors.Is(err, errRecoverySetChanged) && attempt == 1 {
			getSet = s.CurrentRecoverySet
			continue
		}
		return iss, err
	}
}

// sealRecord makes the escrow record of one private key, binding the issuer, the certificate
// serial and the public key (spki, DER) into its header. It calls no HSM.
func (s *Service) sealRecord(rs *RecoverySet, issuer string, serial, spki, pkcs8 []byte) (*SealedRecord, error) {
	id, err := record.NewID()
	if err != nil {
		return nil, err
	}
	h := record.Header{
		ID:       id,
		Issuer:   issuer,
		Serial:   serial,
		SPKIHash: sha256.Sum256(spki),
		Epoch:    rs.Epoch,
		M:        uint8(rs.Quorum),
		N:        uint8(len(rs.recipients)),
		OAEPHash: s.shareHash(),
	}
	r, err := record.Seal(h, pkcs8, rs.recipients)
	if err != nil {
		return nil, fmt.Errorf("escrow: seal: %w", err)
	}
	blob, err := r.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("escrow: seal: %w", err)
	}
	return &SealedRecord{ID: hex.EncodeToString(id[:]), Blob: blob, Epoch: rs.Epoch,
		Fingerprint: hex.EncodeToString(h.SPKIHash[:])}, nil
}

// issuerName is the issuer bound into record headers: the CA's subject key identifier, or its
// subject when it has none.
func (s *Service) issuerName() string {
	c := s.Issuer.Certificate()
	if len(c.SubjectKeyId) > 0 {
		return hex.EncodeToString(c.SubjectKeyId)
	}
	return c.Subject.String()
}

func (s *Service) shareHash() crypto.Hash {
	if s.ShareOAEPHash != 0 {
		return s.ShareOAEPHash
	}
	return crypto.SHA1
}

// checkKeyPair parses a PKCS#8 private key (crypto/x509 validates RSA keys as it parses) and
// checks that it is the pair of pub.
func checkKeyPair(pkcs8 []byte, pub crypto.PublicKey) error {
	k, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return fmt.Errorf("%w: the encrypted key is not a valid PKCS#8 private key", ErrInvalidRequest)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return fmt.Errorf("%w: the encrypted key is of an unsupported type %T", ErrInvalidRequest, k)
	}
	if !publicKeysEqual(signer.Public(), pub) {
		return fmt.Errorf("%w: the private key is not the pair of the certificate request's public key", ErrInvalidRequest)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// envelopeError turns a CMS error into a client error that says what was wrong with the
// envelope (the cms errors carry no key material).
func envelopeError(err error) error {
	switch {
	case errors.Is(err, cms.ErrNoRecipient):
		return fmt.Errorf("%w: encrypted_key is not encrypted to this appliance's transport certificate (GET /api/v1/transport-certificate): %v", ErrInvalidRequest, err)
	case errors.Is(err, cms.ErrMalformed), errors.Is(err, cms.ErrUnsupported), errors.Is(err, cms.ErrDecrypt):
		// %w twice: a token failure under ErrDecrypt must still be seen as one by the caller.
		return fmt.Errorf("%w: encrypted_key: %w", ErrInvalidRequest, err)
	}
	return fmt.Errorf("escrow: open transport envelope: %w", err)
}

// IssueArchivedKey archives pkcs8 and issues a certificate for mailbox under an archiving
// template, without an enrollment code: the caller (a bulk job submitted by an admin) has
// already been authorised. pkcs8 must be the pair of pub.
//
// # Errors
//
// Those of [Service.EnrollArchived] but the enrollee's ([ErrUnauthorized], [ErrForbidden],
// [ErrCodeUsed], [ErrCodeExpired]) and the envelope's; [ErrInvalidRequest] also for a mailbox
// that is not one (wrapping [policy.ErrInvalidMailbox]) or a key that is not pub's pair, and
// policy's refusal of pub ([policy.ErrRejected]).
func (s *Service) IssueArchivedKey(ctx context.Context, mailbox, template string, pub crypto.PublicKey, pkcs8 []byte) (*Issued, error) {
	t, err := s.Template(template)
	if err != nil {
		return nil, err
	}
	if !t.Archive {
		return nil, fmt.Errorf("%w: template %q does not archive keys", ErrInvalidRequest, t.Name)
	}
	if mailbox, err = policy.NormalizeMailbox(mailbox); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err := t.CheckPublicKey(pub); err != nil {
		return nil, err
	}
	if err := checkKeyPair(pkcs8, pub); err != nil {
		return nil, err
	}
	return s.archiveAndIssue(ctx, Enrollee{Mailbox: mailbox}, t, pub, pkcs8)
}

// TemplateImport names certificates archived from another CA: they are stored, not issued.
const TemplateImport = issue.TemplateImport

// ImportArchived archives the private key of a certificate issued by another CA (a migration):
// the key must be the pair of the certificate; the record binds the certificate's issuer and
// serial; the certificate is stored as it is, not re-issued. It returns the record ID. If the
// recovery set changes while the key is sealed, it is sealed again for the new set, once.
//
// # Errors
//
// [ErrInvalidRequest] (no mailbox or an invalid one, a key that is not the certificate's, a
// serial already in the archive), [ErrKeyArchivedElsewhere], [ErrNoRecoverySet] (and
// [ErrRecoverySetChanged] if the set changed twice), or, for faults of the appliance, a storage
// error wrapping [store.ErrUnavailable], the audit trail's ([audit.ErrAppend]) or a failure to
// seal, wrapped.
func (s *Service) ImportArchived(ctx context.Context, cert *x509.Certificate, pkcs8 []byte) (string, error) {
	if len(cert.EmailAddresses) == 0 {
		return "", fmt.Errorf("%w: certificate %x names no mailbox (rfc822Name)", ErrInvalidRequest, cert.SerialNumber)
	}
	mailbox, err := policy.NormalizeMailbox(cert.EmailAddresses[0])
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if err := checkKeyPair(pkcs8, cert.PublicKey); err != nil {
		return "", err
	}
	for attempt := 1; ; attempt++ {
		rs, err := s.CurrentRecoverySet(ctx)
		if err != nil {
			return "", err
		}
		rec, err := s.SealForImport(rs, cert, pkcs8)
		if err != nil {
			return "", err
		}
		err = s.CommitImport(ctx, cert, mailbox, rec, nil)
		if errors.Is(err, ErrRecoverySetChanged) && attempt == 1 {
			continue // the set changed while the key was sealed: seal it for the new one
		}
		if err != nil {
			return "", err
		}
		return rec.ID, nil
	}
}

// issuerOf names a certificate's issuer for a record header: its authority key identifier, or
// its issuer DN.
func issuerOf(c *x509.Certificate) string {
	if len(c.AuthorityKeyId) > 0 {
		return hex.EncodeToString(c.AuthorityKeyId)
	}
	return c.Issuer.String()
}
