package issue

import (
	"context"
	"crypto"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// DirectRequest is an issuance that archives no key (a signing certificate, a KRA or role
// credential).
type DirectRequest struct {
	Template *policy.Template
	Pub      crypto.PublicKey
	Serial   *big.Int
	// Mailbox is the certificate's rfc822Name and subject CN; empty for KRA certificates.
	Mailbox string
	// Subject overrides the subject (KRA and credential certificates).
	Subject *pkix.Name
	CodeID  string
	// Code is CodeID's record as the caller read it while serving this request (the
	// enrollee's authentication), or nil; see [SignedRequest].Code.
	Code *store.Code
	// KeyClear is Pub's [KeyID] when the caller's read of Code found no certificate revoked for
	// keyCompromise holding it, or empty; see [SignedRequest].KeyClear.
	KeyClear string
	Role     string
	KRA      string
	// Actor names who acts, for the audit entry; Fingerprint is the key's public-key
	// fingerprint, for the same entry.
	Actor       string
	Fingerprint string
}

// IssueDirect issues a certificate that archives nothing in one durable step: the CA signs,
// then one transaction claims the code, stores the certificate and its audit entry
// ([Pipeline.IssueSigned] with the request and row the template makes). With no escrow record
// to commit first, a reservation would only cost an fsync. A spent or expired code is refused
// before anything is signed (the claim settles races). If the transaction fails (the code was
// used meanwhile, the disk is full), no certificate is returned and the signed one is kept on
// record as failed: a CA keeps every certificate it signs.
//
// # Errors
//
// [store.ErrCodeUsed], [store.ErrCodeExpired], [store.ErrNotFound] (no such code), the CA's
// [ca.ErrLint], or a storage error wrapping [store.ErrUnavailable].
func (p *Pipeline) IssueDirect(ctx context.Context, r DirectRequest) (Result, error) {
	t := r.Template
	if t == nil || r.Serial == nil {
		return Result{}, fmt.Errorf("%w: incomplete issuance", ErrInvalid)
	}
	now := p.now()
	subject := pkix.Name{CommonName: r.Mailbox}
	if r.Subject != nil {
		subject = *r.Subject
	}
	req := ca.Request{
		Serial:             r.Serial,
		PublicKey:          r.Pub,
		Subject:            subject,
		KeyUsage:           t.KeyUsageFor(r.Pub),
		ExtKeyUsage:        ExtKeyUsages(t),
		UnknownExtKeyUsage: UnknownExtKeyUsages(t),
		NotBefore:          now,
		Validity:           time.Duration(t.ValidityDays) * 24 * time.Hour,
		Policies:           t.CertificatePolicies(),
	}
	if r.Mailbox != "" {
		req.EmailAddresses = []string{r.Mailbox}
	}
	return p.IssueSigned(ctx, SignedRequest{
		CA:            req,
		Row:           store.Certificate{Template: t.Name, Email: r.Mailbox, CodeID: r.CodeID, Role: r.Role, KRA: r.KRA},
		Code:          r.Code,
		RefuseRevoked: true,
		KeyClear:      r.KeyClear,
		Kind:          audit.KindEnroll,
		Actor:         r.Actor,
		Details:       audit.Details{Template: t.Name, Mailbox: r.Mailbox, Role: r.Role, KRA: r.KRA, Fingerprint: []string{r.Fingerprint}},
	})
}

// SignedRequest is one certificate signed and stored in one durable step, with no escrow
// record: what the CA signs, the row that keeps it and the audit entry that records it. It
// serves certificates that no template describes (the appliance's own) as well as
// [Pipeline.IssueDirect].
type SignedRequest struct {
	// CA is what the CA signs; its Serial and NotBefore are required.
	CA ca.Request
	// Row is the certificate's row; its Template is required. Serial, Subject, State, DER,
	// NotBefore, NotAfter and CreatedAt are set from CA and the signed certificate. A CodeID
	// is claimed in the same transaction (and checked before anything is signed).
	Row store.Certificate
	// Code, when it is the record of Row.CodeID, is that code as the caller read it from the
	// store while serving this request (the enrollee's authentication): the check before
	// signing uses it instead of reading the code again. Only a record read for this request
	// may be passed. The claim in the transaction stays the authority either way: a code used
	// meanwhile is refused there, once.
	Code *store.Code
	// RefuseRevoked refuses, before anything is signed, a public key that a certificate
	// revoked for keyCompromise holds ([CompromisedKeyError]): a subscriber's key. The
	// appliance's own certificates leave it unset.
	RefuseRevoked bool
	// KeyClear, with RefuseRevoked, is the [KeyID] of CA.PublicKey when the caller found no
	// certificate revoked for keyCompromise holding it, in the same read that gave Code; the
	// check before signing is then not made again. Only a read made for this request may be
	// passed; a KeyClear of another key is ignored.
	KeyClear string
	// Kind, Actor and Details make the audit entry; Details' Serial and NotAfter are set from
	// the signed certificate. Its subject is the row's mailbox, else the certificate's subject.
	Kind    audit.Kind
	Actor   string
	Details audit.Details
}

// IssueSigned has the CA sign r.CA, then stores the certificate as issued with its audit entry
// (and claims r.Row.CodeID) in one transaction. If that transaction fails, no certificate is
// returned and the signed one is kept on record as failed.
//
// # Errors
//
// [ErrInvalid] (no serial, no NotBefore, no template, no audit kind), [store.ErrCodeUsed],
// [store.ErrCodeExpired], [store.ErrNotFound] (no such code), the CA's [ca.ErrLint], or a
// storage error wrapping [store.ErrUnavailable].
func (p *Pipeline) IssueSigned(ctx context.Context, r SignedRequest) (Result, error) {
	req, row := r.CA, r.Row
	if req.Serial == nil || req.NotBefore.IsZero() || row.Template == "" || r.Kind == "" {
		return Result{}, fmt.Errorf("%w: incomplete issuance", ErrInvalid)
	}
	row.Serial, row.Subject, row.State = store.FormatSerial(req.Serial), req.Subject.String(), store.StatePending
	row.CreatedAt = p.now()
	// Sign nothing for a code that is already spent (the claim below settles races) nor for a
	// compromised key, both read in one View. A code record the caller read for this request,
	// and a key it found clear in the same read, are not read again.
	checkCode := func(c *store.Code) error {
		switch {
		case c.UsedAt != nil:
			return store.ErrCodeUsed
		case !req.NotBefore.Before(c.ExpiresAt):
			return store.ErrCodeExpired
		}
		return nil
	}
	readCode := row.CodeID != ""
	if c := r.Code; readCode && c != nil && c.ID == row.CodeID {
		if err := checkCode(c); err != nil {
			return Result{}, err
		}
		readCode = false
	}
	var keyID string
	if r.RefuseRevoked {
		var err error
		if keyID, err = KeyID(req.PublicKey); err != nil {
			return Result{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if keyID == r.KeyClear {
			keyID = "" // checked clear in the caller's read
		}
	}
	if readCode || keyID != "" {
		err := p.Store.View(ctx, func(tx store.Tx) error {
			var (
				c   *store.Code
				bad string // the certificate that compromised the key
				err error
			)
			switch {
			case !readCode:
				return refuseCompromised(tx, []string{keyID})
			case keyID != "":
				c, bad, err = tx.GetCodeCheckingKey(row.CodeID, keyID) // both in one statement
			default:
				c, err = tx.GetCode(row.CodeID)
			}
			if err != nil {
				return err
			}
			if err := checkCode(c); err != nil {
				return err
			}
			if bad != "" {
				return CompromisedKeyError(bad)
			}
			return nil
		})
		if err != nil {
			return Result{}, err
		}
	}
	cert, err := p.Issuer.Issue(req)
	if err != nil {
		return Result{}, fmt.Errorf("issue: issue certificate: %w", err)
	}
	row.State, row.DER, row.NotBefore, row.NotAfter = store.StateIssued, cert.Raw, cert.NotBefore, cert.NotAfter
	d := r.Details
	d.Serial, d.NotAfter, d.CertHash = row.Serial, cert.NotAfter.UTC().Format(time.RFC3339), certHash(cert.Raw)
	ctx = context.WithoutCancel(ctx)
	err = p.Store.Update(ctx, func(tx store.Tx) error {
		insert := tx.InsertCertificate
		if row.CodeID != "" {
			// The claim and the certificate in one statement where the store can.
			insert = func(c store.Certificate) error { return tx.InsertCertificateClaiming(c, req.NotBefore) }
		}
		if err := insert(row); err != nil {
			return err
		}
		return p.Audit(tx, r.Kind, actorOr(r.Actor), subjectOr(row.Email, row.Subject), d)
	})
	if err != nil {
		p.keepFailed(ctx, row)
		if errors.Is(err, store.ErrCodeUsed) || errors.Is(err, store.ErrCodeExpired) {
			return Result{}, err
		}
		return Result{}, fmt.Errorf("issue: store certificate: %w", err)
	}
	return Result{Certificate: cert, Serial: row.Serial}, nil
}

// keepFailed keeps a signed but undelivered certificate on record, as failed.
func (p *Pipeline) keepFailed(ctx context.Context, row store.Certificate) {
	void := row
	void.State, void.CodeID = store.StateFailed, ""
	if err := p.Store.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(void) }); err != nil {
		p.log().Error("keep a signed but undelivered certificate on record", "serial", row.Serial, "err", err)
	}
}

func subjectOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
