package escrow

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestCodeHeldByDeferredUndo: while the undo of an enrollment that failed for a storage fault
// waits for the storage, its code answers "storage unavailable, retry later", not "already
// used"; once the undo lands, the same code authenticates again, without a restart.
func TestCodeHeldByDeferredUndo(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	s := env.svc
	s.undoOnce.Do(func() { s.undoer = &issue.Undoer{Store: s.Store, MinWait: 300 * time.Millisecond} })
	who := env.enrollee(t, "held@example.org", policy.TemplateSMIMEEncryption)
	const serial = "7e57"
	// What a reservation whose finish the storage refused leaves: the code claimed for a
	// pending certificate.
	err := s.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.ClaimCode(who.Code.ID, s.now()); err != nil {
			return err
		}
		return tx.InsertCertificate(store.Certificate{Serial: serial, Template: policy.TemplateSMIMEEncryption,
			Email: who.Mailbox, Subject: "CN=" + who.Mailbox, State: store.StatePending, CreatedAt: s.now(), CodeID: who.Code.ID})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !s.undos().Defer(serial, nil, fmt.Errorf("%w: disk I/O error", store.ErrUnavailable)) {
		t.Fatal("Defer refused")
	}
	if err := env.codeErr(t, who); !errors.Is(err, store.ErrUnavailable) || errors.Is(err, ErrCodeUsed) {
		t.Fatalf("code held by a deferred undo: %v, want ErrUnavailable (retry later), not ErrCodeUsed", err)
	}
	for deadline := time.Now().Add(10 * time.Second); s.PendingUndos() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the deferred undo did not land")
		}
	}
	if err := env.codeErr(t, who); err != nil {
		t.Fatalf("code after the deferred undo: %v, want usable", err)
	}
	if c := env.certificate(t, serial); c.State != store.StateFailed {
		t.Errorf("certificate after the deferred undo: %s, want failed", c.State)
	}
}
