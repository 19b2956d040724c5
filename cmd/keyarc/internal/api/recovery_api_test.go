package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
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

// maximalApproval is the largest approval a KRA can send: a share of the largest size for each
// record of a full reseal batch (or of the largest recovery), and an RSA-8192 signature, as the
// CLI encodes it.
func maximalApproval(t *testing.T) []byte {
	t.Helper()
	var body wire.Approval
	share := base64.StdEncoding.EncodeToString(make([]byte, escrow.MaxShareBytes))
	for i := range max(escrow.MaxResealBatch, policy.MaxRecoveryRecords) {
		body.Shares = append(body.Shares, struct {
			RecordID string `json:"record_id"`
			Share    string `json:"share"`
		}{fmt.Sprintf("%032x", i), share})
	}
	body.Signature = base64.StdEncoding.EncodeToString(make([]byte, 1024))
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestApprovalBodyFitsAFullBatch: a KRA's approval of a full reseal batch is read, not refused
// as too large (it was: 1000 shares of about 410 bytes of JSON each passed maxJSONBody, and
// a reseal of more than about 640 records could never be approved). The limit still holds.
func TestApprovalBodyFitsAFullBatch(t *testing.T) {
	body := maximalApproval(t)
	for _, chunked := range []bool{false, true} {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/recoveries/0123456789abcdef/approvals", bytes.NewReader(body))
		if chunked {
			r.ContentLength = -1
		}
		var got wire.Approval
		if err := decodeApproval(httptest.NewRecorder(), r, &got); err != nil {
			t.Fatalf("an approval of %d shares, %d bytes (chunked %v): %v", max(escrow.MaxResealBatch, policy.MaxRecoveryRecords), len(body), chunked, err)
		}
		if len(got.Shares) != max(escrow.MaxResealBatch, policy.MaxRecoveryRecords) {
			t.Fatalf("%d shares read", len(got.Shares))
		}
	}

	over := append(bytes.Repeat([]byte(" "), maxApprovalBody), body...)
	r := httptest.NewRequest(http.MethodPost, "/api/v1/recoveries/0123456789abcdef/approvals", bytes.NewReader(over))
	var got wire.Approval
	if code, _ := status(decodeApproval(httptest.NewRecorder(), r, &got)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("an approval body of %d bytes: status %d, want 413", len(over), code)
	}
}
