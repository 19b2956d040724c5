package escrow

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestPendingQueueBounded: KRA enrollment needs no credential, so the queue it fills is bounded.
func TestPendingQueueBounded(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	err := env.svc.Store.Update(ctx, func(tx store.Tx) error {
		for i := range MaxPendingRequests {
			if err := tx.InsertPending(store.Pending{ID: fmt.Sprintf("p%03d", i), Template: TemplateKRA,
				Name: fmt.Sprintf("k%d", i), Requester: "test", CSR: []byte{1}, State: store.StatePending, CreatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := kraRequest(t, "one-too-many")
	if _, err := env.svc.SubmitKRA(ctx, req); !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("SubmitKRA with a full queue: %v, want ErrTooManyPending", err)
	}
	if err := env.svc.DenyPending(ctx, "p000", "admin"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.svc.SubmitKRA(ctx, req); err != nil {
		t.Fatalf("SubmitKRA after a decision made room: %v", err)
	}
}
