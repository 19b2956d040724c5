package api

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
)

// TestSharesConflict: approvals that meet the quorum but whose shares do not open a record
// are a conflict with the request's state (other KRAs must approve), not a 500; a fault of the
// appliance in the same chain keeps its own status.
func TestSharesConflict(t *testing.T) {
	doNotOpen := fmt.Errorf("%w 0a1b: no 2 of the shares approved by kra1, kra2 open it", escrow.ErrSharesDoNotOpen)
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"shares do not open", doNotOpen, http.StatusConflict},
		{"wrapped", fmt.Errorf("escrow: reseal: %w", doNotOpen), http.StatusConflict},
		{"with the storage's fault", fmt.Errorf("%w: %w", doNotOpen, store.ErrUnavailable), http.StatusServiceUnavailable},
		{"another error", escrow.ErrRecoveryKey, http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, msg := status(sharesConflict(tc.err)); code != tc.want {
				t.Errorf("status(sharesConflict(%v)) = %d %q, want %d", tc.err, code, msg, tc.want)
			}
		})
	}
}
