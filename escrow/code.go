package escrow

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// An enrollment code is 24 base32 characters (120 random bits). Its first eight characters
// are the public handle under which the store keeps it; the store holds only a SHA-256 of the
// whole code, so a copy of the database cannot be used to enroll. The code's entropy makes a
// slow hash unnecessary.
const (
	codeBytes  = 15
	codeIDLen  = 8
	codeLength = 24
)

var codeEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Code is a freshly created enrollment code. Its String method redacts the secret; print
// Secret deliberately, once, to the person who asked for it.
type Code struct {
	ID        string
	Secret    string
	Email     string
	Template  string
	ExpiresAt time.Time
}

// String redacts the code.
func (c Code) String() string { return "code " + c.ID + "-[redacted]" }

// GoString redacts the code.
func (c Code) GoString() string { return c.String() }

func hashCode(secret string) []byte {
	h := sha256.Sum256([]byte("keyarc enrollment code\x00" + secret))
	return h[:]
}

// MaxCodeTTL is the longest an enrollment code stays valid: it is a credential, meant for days
// or weeks (enrollment.code_ttl has the same bound).
const MaxCodeTTL = 90 * 24 * time.Hour

// CreateCode makes a single-use enrollment code for mailbox under template, valid for ttl.
//
// # Errors
//
// [ErrInvalidRequest] (an invalid mailbox, then also [policy.ErrInvalidMailbox]; a ttl that is
// not positive or longer than [MaxCodeTTL]; a template issued by an admin's decision), [policy.ErrUnknownTemplate], or,
// for faults of the appliance, a storage error wrapping [store.ErrUnavailable] or the audit
// trail's ([audit.ErrAppend]), wrapped.
func (s *Service) CreateCode(ctx context.Context, mailbox, template string, ttl time.Duration) (*Code, error) {
	mailbox, err := policy.NormalizeMailbox(mailbox)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	t, ok := s.Templates[template]
	if !ok {
		return nil, policy.UnknownTemplate(template, s.Templates)
	}
	if ttl <= 0 || ttl > MaxCodeTTL {
		return nil, fmt.Errorf("%w: an enrollment code's validity must be positive and at most %s (90 days), not %s", ErrInvalidRequest, MaxCodeTTL, ttl)
	}
	if t.ManualApproval {
		return nil, fmt.Errorf("%w: template %q is issued by an admin's decision, not with an enrollment code", ErrInvalidRequest, template)
	}
	b := make([]byte, codeBytes)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	secret := codeEncoding.EncodeToString(b)
	clear(b)
	now := s.now()
	c := &Code{ID: secret[:codeIDLen], Secret: secret, Email: mailbox, Template: template, ExpiresAt: now.Add(ttl)}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCode(store.Code{
			ID: c.ID, Email: c.Email, Template: template, Hash: hashCode(secret),
			CreatedAt: now, ExpiresAt: c.ExpiresAt,
		}); err != nil {
			return err
		}
		// Never the code, nor its ID (a third of it): the certificate row links them.
		return s.audit(tx, audit.KindCodeCreated, actorFrom(ctx), mailbox, audit.Details{Template: template, Mailbox: mailbox,
			Expires: c.ExpiresAt.Format(time.RFC3339)})
	})
	if err != nil {
		return nil, fmt.Errorf("escrow: store enrollment code: %w", err)
	}
	return c, nil
}

// AuthenticateEnrollee is [Service.Authenticate] that returns the enrollee: the code's mailbox
// and record. An enrollment that follows at once checks that record before signing instead of
// reading the code again; the claim when the certificate is stored stays the authority, so a
// code used by two requests at once still enrolls once.
//
// pub, when the request's public key is known already, is looked up in the same read: a key
// that no certificate revoked for keyCompromise holds is not looked up again before signing.
// A compromised key is refused by the enrollment, with the certificate that names it; here it
// is only not marked clear. Errors as Authenticate.
func (s *Service) AuthenticateEnrollee(ctx context.Context, mailbox, secret string, pub crypto.PublicKey) (Enrollee, error) {
	var keyID string
	if pub != nil {
		keyID, _ = issue.KeyID(pub) // a key x509 cannot encode is refused by the enrollment
	}
	c, clear, err := s.authenticate(ctx, mailbox, secret, keyID)
	if err != nil {
		return Enrollee{}, err
	}
	who := Enrollee{Mailbox: c.Email, Code: c, codeRead: time.Now()}
	if clear {
		who.keyClear = keyID
	}
	return who, nil
}

// Authenticate checks an enrollee's mailbox and enrollment code and returns the code's record.
// It does not use the code up: only a successful enrollment does. Every mismatch gives the same
// ErrUnauthorized, so the answer does not tell which part was wrong, except that a used or
// expired code says so (the enrollee needs a new one). A code still held by an enrollment that
// failed for a fault of the storage, whose undo waits for the storage to answer, is not "used":
// the enrollee was told to retry later, and is told so again.
//
// # Errors
//
// [ErrUnauthorized], [ErrCodeUsed], [ErrCodeExpired], or a storage error wrapping
// [store.ErrUnavailable] (also while the code waits for the undo of a failed attempt).
func (s *Service) Authenticate(ctx context.Context, mailbox, secret string) (*store.Code, error) {
	c, _, err := s.authenticate(ctx, mailbox, secret, "")
	return c, err
}

// codeMatches reports whether c is the code secret of mailbox.
func codeMatches(c *store.Code, secret, mailbox string) bool {
	return subtle.ConstantTimeCompare(c.Hash, hashCode(secret)) == 1 && policy.SameMailbox(c.Email, mailbox)
}

// authenticate is Authenticate that also reports, when keyID is set, whether no certificate
// revoked for keyCompromise holds that key, read in the same View as the code.
func (s *Service) authenticate(ctx context.Context, mailbox, secret, keyID string) (c *store.Code, keyClear bool, err error) {
	secret = strings.ToUpper(strings.TrimSpace(strings.ReplaceAll(secret, "-", "")))
	if len(secret) != codeLength {
		return nil, false, errCodeNotAccepted
	}
	matched := false
	err = s.Store.View(ctx, func(tx store.Tx) error {
		var (
			bad string
			err error
		)
		if keyID == "" {
			c, err = tx.GetCode(secret[:codeIDLen])
		} else {
			c, bad, err = tx.GetCodeCheckingKey(secret[:codeIDLen], keyID) // one statement
		}
		if err != nil {
			return err
		}
		matched = codeMatches(c, secret, mailbox)
		keyClear = matched && keyID != "" && bad == ""
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, errCodeNotAccepted
	}
	if err != nil {
		return nil, false, fmt.Errorf("escrow: look up enrollment code: %w", err)
	}
	if !matched {
		return nil, false, errCodeNotAccepted
	}
	if c.UsedAt != nil {
		if c.Serial != "" && s.undoPending(c.Serial) {
			return nil, false, fmt.Errorf("escrow: the last enrollment with this code failed for a fault of the storage; the code is released as soon as the storage answers: %w", store.ErrUnavailable)
		}
		return nil, false, ErrCodeUsed
	}
	if !s.now().Before(c.ExpiresAt) {
		return nil, false, ErrCodeExpired
	}
	return c, keyClear, nil
}
