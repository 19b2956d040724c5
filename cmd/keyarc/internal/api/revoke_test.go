package api

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestRevokeStatuses: each refusal of escrow.Service.Revoke gets its status; the conflicts are
// 409 (an already revoked certificate with its existing revocation), and a fault of the
// appliance is never answered as a conflict or another client fault.
func TestRevokeStatuses(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	already := &escrow.AlreadyRevokedError{Existing: []escrow.Revocation{{Serial: "ab", Mailbox: "a@example.org", Reason: "superseded", RevokedAt: at}}}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"already revoked", fmt.Errorf("wrapped: %w", already), http.StatusConflict},
		{"never issued", fmt.Errorf("%w: certificate ab is failed", escrow.ErrNotIssued), http.StatusConflict},
		{"in the recovery set", fmt.Errorf("%w: replace it first", escrow.ErrInRecoverySet), http.StatusConflict},
		{"the appliance's own", fmt.Errorf("%w: its TLS certificate", escrow.ErrApplianceCertificate), http.StatusConflict},
		{"bad reason", fmt.Errorf("%w: %w", escrow.ErrInvalidRequest, policy.ErrBadRevocationReason), http.StatusBadRequest},
		{"unknown serial", fmt.Errorf("%w: no certificate with serial ab", escrow.ErrNotFound), http.StatusNotFound},
		{"someone else's", fmt.Errorf("%w: not yours", policy.ErrForbidden), http.StatusForbidden},
		{"storage", fmt.Errorf("escrow: revoke ab: %w", store.ErrUnavailable), http.StatusServiceUnavailable},
		{"storage under a conflict", fmt.Errorf("%w: %w", store.ErrConflict, store.ErrUnavailable), http.StatusServiceUnavailable},
		{"storage under never issued", fmt.Errorf("%w: %w", escrow.ErrNotIssued, store.ErrUnavailable), http.StatusServiceUnavailable},
		{"a conflict of the store itself", fmt.Errorf("escrow: revoke ab: %w", store.ErrConflict), http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Server{log: slog.New(slog.DiscardHandler)}
			w := httptest.NewRecorder()
			r := httptest.NewRequest("POST", "/api/v1/revocations", nil)
			a.failRevoke(w, r, tc.err)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d (%s)", w.Code, tc.want, w.Body)
			}
			var body wire.AlreadyRevoked
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error == "" {
				t.Fatalf("body %q is not a JSON refusal: %v", w.Body, err)
			}
			if tc.name == "already revoked" {
				if len(body.Existing) != 1 || body.Existing[0].Reason != "superseded" || body.Existing[0].RevokedAt != "2026-03-01T12:00:00Z" {
					t.Fatalf("existing revocations %+v", body.Existing)
				}
			} else if len(body.Existing) != 0 {
				t.Fatalf("existing revocations in a %d", w.Code)
			}
		})
	}
}
