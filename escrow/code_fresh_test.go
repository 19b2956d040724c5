package escrow

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

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
		if whos[i], err = env.svc.AuthenticateEnrollee(ctx, mailbox, c.Secret); err != nil {
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
	if _, err := env.svc.AuthenticateEnrollee(ctx, mailbox, c.Secret); !errors.Is(err, ErrCodeUsed) {
		t.Fatalf("AuthenticateEnrollee with the spent code: %v, want ErrCodeUsed", err)
	}
	if _, err := env.svc.AuthenticateEnrollee(ctx, "other@example.org", c.Secret); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("AuthenticateEnrollee with another mailbox: %v, want ErrUnauthorized", err)
	}
}
