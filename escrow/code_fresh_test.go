package escrow

import (
	"context"
	"crypto"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestAuthenticateEnrolleeEnrollsOnce: two requests that authenticated with the same code
// before either enrolled (each keeping the record it read, checked before signing without a
// new read) enroll once: the claim refuses the other, which gets ErrCodeUsed and no
// certificate. A record read longer ago than codeFresh is read again, so a code spent
// meanwhile is refused before anything is signed.
func TestAuthenticateEnrolleeEnrollsOnce(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	const mailbox = "twice@example.org"
	c, err := env.svc.CreateCode(ctx, mailbox, policy.TemplateSMIMESignature, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var whos [2]Enrollee
	for i := range whos {
		if whos[i], err = env.svc.AuthenticateEnrollee(ctx, mailbox, c.Secret, nil); err != nil {
			t.Fatalf("AuthenticateEnrollee %d: %v", i, err)
		}
		if whos[i].Code == nil || whos[i].Mailbox != mailbox || whos[i].freshCode() == nil {
			t.Fatalf("AuthenticateEnrollee %d: %+v, want the code's fresh record", i, whos[i])
		}
	}
	var (
		wg   sync.WaitGroup
		errs [2]error
		got  [2]*Issued
	)
	for i := range whos {
		wg.Go(func() {
			got[i], errs[i] = env.svc.Enroll(ctx, whos[i], EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: goodCSR(t, mailbox)})
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil && got[i] != nil && got[i].Certificate != nil:
			won++
		case errors.Is(err, ErrCodeUsed) && got[i] == nil:
		default:
			t.Errorf("Enroll %d: %v, %v; want a certificate or ErrCodeUsed", i, got[i], err)
		}
	}
	if won != 1 {
		t.Fatalf("%d enrollments with one code succeeded, want 1", won)
	}
	if rows := env.certs(t, store.Filter{Email: mailbox, State: store.StateIssued}); len(rows) != 1 {
		t.Fatalf("%d issued certificates for %s, want 1", len(rows), mailbox)
	}

	// A record read too long ago is read again: the spent code is refused before signing.
	before := len(env.certs(t, store.Filter{Email: mailbox}))
	stale := whos[0]
	stale.codeRead = time.Now().Add(-codeFresh)
	if stale.freshCode() != nil {
		t.Fatal("a record read codeFresh ago still counts as fresh")
	}
	if _, err := env.svc.Enroll(ctx, stale, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: goodCSR(t, mailbox)}); !errors.Is(err, ErrCodeUsed) {
		t.Fatalf("Enroll with a stale record of a spent code: %v, want ErrCodeUsed", err)
	}
	if after := len(env.certs(t, store.Filter{Email: mailbox})); after != before {
		t.Fatalf("%d certificate rows after the refusal, %d before: something was signed", after, before)
	}
	if _, err := env.svc.AuthenticateEnrollee(ctx, mailbox, c.Secret, nil); !errors.Is(err, ErrCodeUsed) {
		t.Fatalf("AuthenticateEnrollee with the spent code: %v, want ErrCodeUsed", err)
	}
	if _, err := env.svc.AuthenticateEnrollee(ctx, "other@example.org", c.Secret, nil); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("AuthenticateEnrollee with another mailbox: %v, want ErrUnauthorized", err)
	}
}

// TestAuthenticateEnrolleeKey: a request's key given with its code is looked up in the read
// of the code. A key found clear is not looked up again before signing (the enrollment asks
// the store for no View at all); a key revoked for keyCompromise is not marked clear and the
// enrollment refuses it, naming the revoked certificate, with nothing signed; a key found
// clear does not clear another key.
func TestAuthenticateEnrolleeKey(t *testing.T) {
	env := newTestService(t)
	env.signer.mu.Lock()
	env.signer.observe = nil // the test signer's own reads of the store are not the enrollment's
	env.signer.mu.Unlock()
	db := &countingStore{Store: env.svc.Store}
	env.svc.Store = db
	ctx := context.Background()
	authenticate := func(mailbox string, pub crypto.PublicKey) (Enrollee, string) {
		t.Helper()
		c, err := env.svc.CreateCode(ctx, mailbox, policy.TemplateSMIMESignature, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		who, err := env.svc.AuthenticateEnrollee(ctx, mailbox, c.Secret, pub)
		if err != nil {
			t.Fatalf("AuthenticateEnrollee(%s): %v", mailbox, err)
		}
		return who, c.Secret
	}
	keyID := func(k crypto.Signer) string {
		t.Helper()
		id, err := issue.KeyID(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	key := newP256(t)
	alice, _ := authenticate("alice@example.org", key.Public())
	if alice.keyClear != keyID(key) {
		t.Fatalf("keyClear %q, want the key's ID %q", alice.keyClear, keyID(key))
	}
	var issued *Issued
	views, _ := db.count(func() {
		var err error
		if issued, err = env.svc.Enroll(ctx, alice, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: newCSR(t, key, "alice@example.org")}); err != nil {
			t.Fatalf("Enroll: %v", err)
		}
	})
	if views != 0 {
		t.Errorf("an enrollment whose code and key were read with the authentication asked for %d Views, want 0", views)
	}

	if _, err := env.svc.Revoke(ctx, policy.Principal{Role: policy.RoleAdmin, Name: "ada"}, RevokeRequest{Serial: issued.Serial, Reason: "keyCompromise"}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	refused := func(who Enrollee, secret string) {
		t.Helper()
		_, err := env.svc.Enroll(ctx, who, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: newCSR(t, key, who.Mailbox)})
		if !errors.Is(err, policy.ErrKeyNotAllowed) || !strings.Contains(err.Error(), issued.Serial) {
			t.Fatalf("Enroll with the compromised key: %v, want a refusal naming %s", err, issued.Serial)
		}
		if rows := env.certs(t, store.Filter{Email: who.Mailbox}); len(rows) != 0 {
			t.Fatalf("%d certificate rows for %s after the refusal: something was signed", len(rows), who.Mailbox)
		}
		if _, err := env.svc.Authenticate(ctx, who.Mailbox, secret); err != nil {
			t.Fatalf("the code after the refusal: %v, want it unused", err)
		}
	}
	bob, secret := authenticate("bob@example.org", key.Public())
	if bob.keyClear != "" {
		t.Fatalf("a key revoked for keyCompromise was marked clear")
	}
	refused(bob, secret)

	other := newP256(t)
	carol, secret := authenticate("carol@example.org", other.Public())
	if carol.keyClear != keyID(other) {
		t.Fatalf("keyClear %q, want %q", carol.keyClear, keyID(other))
	}
	refused(carol, secret) // cleared for another key: the compromised one is still looked up
}
