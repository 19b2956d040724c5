package escrow

import (
	"context"
	"crypto"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

// TestEnrollUnknownCodeIsUnauthorized: a code the store does not hold is not accepted
// (ErrUnauthorized, a 401), not a missing row (a 500).
func TestEnrollUnknownCodeIsUnauthorized(t *testing.T) {
	env := newTestService(t)
	const mailbox = "alice@example.org"
	who := Enrollee{Mailbox: mailbox, Code: &store.Code{ID: "NOSUCHID", Email: mailbox, Template: policy.TemplateSMIMESignature,
		ExpiresAt: t0.Add(time.Hour)}}
	_, err := env.svc.Enroll(context.Background(), who, EnrollRequest{Template: policy.TemplateSMIMESignature,
		CSR: newCSR(t, newP256(t), mailbox)})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Enroll with a code the store does not hold: %v, want %v", err, ErrUnauthorized)
	}
}

// TestEnrollArchivedUnknownCodeIsUnauthorized: the same for an archiving template, whose code
// is claimed by the reservation.
func TestEnrollArchivedUnknownCodeIsUnauthorized(t *testing.T) {
	env := newTestService(t)
	const mailbox = "alice@example.org"
	key := newP256(t)
	who := Enrollee{Mailbox: mailbox, Code: &store.Code{ID: "NOSUCHID", Email: mailbox, Template: policy.TemplateSMIMEEncryption,
		ExpiresAt: t0.Add(time.Hour)}}
	_, err := env.svc.EnrollArchived(context.Background(), who, EnrollRequest{Template: policy.TemplateSMIMEEncryption,
		CSR: newCSR(t, key, mailbox)}, envelope(t, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256))
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("EnrollArchived with a code the store does not hold: %v, want %v", err, ErrUnauthorized)
	}
}

// mechanismless is a recovery key the token cannot use for RSA-OAEP.
type mechanismless struct{ crypto.Decrypter }

func (mechanismless) Decrypt(io.Reader, []byte, crypto.DecrypterOpts) ([]byte, error) {
	return nil, hsm.ErrMechanism
}

type mechanismlessKeys struct{ *softRecoveryKeys }

func (k mechanismlessKeys) Decrypter(label string) (crypto.Decrypter, error) {
	d, err := k.softRecoveryKeys.Decrypter(label)
	return mechanismless{d}, err
}

// TestFetchRecoveryKeyFault: a recovery key that cannot decrypt the approved shares is the
// appliance's fault (ErrRecoveryKey), whatever the token's reason, and nothing is consumed.
func TestFetchRecoveryKeyFault(t *testing.T) {
	e := newSnapshotEnv(t)
	ctx := context.Background()
	rec, err := e.svc.RequestRecovery(ctx, e.officer, "", "owner@example.org", "laptop lost", time.Hour)
	if err != nil {
		t.Fatalf("RequestRecovery: %v", err)
	}
	for _, i := range []int{0, 1} {
		shown, items, err := e.svc.SharesFor(ctx, e.kraPrincipal(t, i), rec.ID)
		if err != nil {
			t.Fatalf("SharesFor: %v", err)
		}
		shares, sig := e.approval(t, i, shown, items)
		if _, err := e.svc.SubmitApproval(ctx, e.kraPrincipal(t, i), rec.ID, shares, sig); err != nil {
			t.Fatalf("SubmitApproval: %v", err)
		}
	}
	e.svc.RecoveryKeys = mechanismlessKeys{e.svc.RecoveryKeys.(*softRecoveryKeys)}
	if _, err := e.svc.Fetch(ctx, e.officer, rec.ID, false); !errors.Is(err, ErrRecoveryKey) || !errors.Is(err, hsm.ErrMechanism) {
		t.Fatalf("Fetch: %v, want %v wrapping %v", err, ErrRecoveryKey, hsm.ErrMechanism)
	}
	got, err := e.svc.GetRecovery(ctx, rec.ID)
	if err != nil {
		t.Fatalf("GetRecovery: %v", err)
	}
	if got.State != store.RecoveryOpen {
		t.Errorf("request is %s after the failed fetch, want %s", got.State, store.RecoveryOpen)
	}
}

// TestRecoveryIDNotEchoed: what is not a request ID (a path, a huge string) is not found, as an
// unknown ID is, without the store being asked and without the value repeated in the error.
func TestRecoveryIDNotEchoed(t *testing.T) {
	e := newSnapshotEnv(t)
	ctx := context.Background()
	for _, id := range []string{strings.Repeat("A", 5000), "../../etc/passwd", "0123456789ABCDEF", "0123456789abcde"} {
		_, err := e.svc.GetRecovery(ctx, id)
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("GetRecovery(%.20q): %v, want ErrNotFound", id, err)
		}
		if err != nil && strings.Contains(err.Error(), id) {
			t.Errorf("GetRecovery(%.20q): the error repeats the ID: %.200s", id, err)
		}
		if _, err := e.svc.Fetch(ctx, e.officer, id, false); !errors.Is(err, ErrNotFound) || strings.Contains(err.Error(), id) {
			t.Errorf("Fetch(%.20q): %.200v, want ErrNotFound without the ID", id, err)
		}
	}
}
