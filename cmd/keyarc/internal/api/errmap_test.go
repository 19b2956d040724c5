package api

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/bulk"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

// TestStatusContracts: every sentinel named in the "# Errors" contracts of the engine's entry
// points maps to its class: the client's fault to its 4xx, the appliance's (storage, token,
// archive) to a 5xx, also when it hides under a client's sentinel.
func TestStatusContracts(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("escrow: some step: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		// The client's faults.
		{"unauthorized", escrow.ErrUnauthorized, http.StatusUnauthorized},
		{"code used", escrow.ErrCodeUsed, http.StatusUnauthorized},
		{"code expired", escrow.ErrCodeExpired, http.StatusUnauthorized},
		{"forbidden", wrap(escrow.ErrForbidden), http.StatusForbidden},
		{"policy forbidden", wrap(policy.ErrForbidden), http.StatusForbidden},
		{"invalid request", wrap(escrow.ErrInvalidRequest), http.StatusBadRequest},
		{"invalid mailbox", fmt.Errorf("%w: %w", escrow.ErrInvalidRequest, policy.ErrInvalidMailbox), http.StatusBadRequest},
		{"envelope at fault", fmt.Errorf("%w: encrypted_key: %w", escrow.ErrInvalidRequest, cms.ErrMalformed), http.StatusBadRequest},
		{"envelope's OAEP hash", fmt.Errorf("%w: encrypted_key: %w", escrow.ErrInvalidRequest, fmt.Errorf("%w: unwrap content-encryption key: %w", cms.ErrDecrypt, hsm.ErrMechanism)), http.StatusBadRequest},
		{"not found", wrap(escrow.ErrNotFound), http.StatusNotFound},
		{"unknown template", wrap(policy.ErrUnknownTemplate), http.StatusNotFound},
		{"CSR rejected", &policy.RejectError{Reason: "key too small", Cause: policy.ErrKeyNotAllowed}, http.StatusBadRequest},
		{"lint", wrap(ca.ErrLint), http.StatusBadRequest},
		{"key archived elsewhere", wrap(escrow.ErrKeyArchivedElsewhere), http.StatusConflict},
		{"already revoked", wrap(escrow.ErrAlreadyRevoked), http.StatusConflict},
		{"never issued", wrap(escrow.ErrNotIssued), http.StatusConflict},
		{"KRA of the current set", wrap(escrow.ErrInRecoverySet), http.StatusConflict},
		{"KRA key certified already", wrap(escrow.ErrKeyInUse), http.StatusConflict},
		{"KRA name of another key pair", wrap(escrow.ErrKRANameTaken), http.StatusConflict},
		{"too many pending", wrap(escrow.ErrTooManyPending), http.StatusTooManyRequests},
		{"too many failures", escrow.ErrTooManyFailures, http.StatusTooManyRequests},
		{"bad approval", wrap(escrow.ErrBadApproval), http.StatusBadRequest},
		{"already approved", escrow.ErrAlreadyApproved, http.StatusConflict},
		{"recovery requests full", wrap(escrow.ErrRequestsFull), http.StatusConflict},
		{"bad drill proof", wrap(escrow.ErrBadDrillProof), http.StatusBadRequest},
		{"drill closed", wrap(escrow.ErrDrillClosed), http.StatusConflict},
		{"not allowed", wrap(policy.ErrNotAllowed), http.StatusForbidden},
		{"own key", wrap(policy.ErrOwnKey), http.StatusForbidden},
		{"not recoverable", wrap(policy.ErrNotRecoverable), http.StatusConflict},
		{"quorum", &policy.QuorumError{Record: "r1", Have: 1, Need: 2}, http.StatusConflict},
		{"consumed", wrap(policy.ErrConsumed), http.StatusConflict},
		{"closed", wrap(policy.ErrRequestClosed), http.StatusConflict},
		{"expired", wrap(policy.ErrExpired), http.StatusConflict},
		{"nothing to recover", wrap(policy.ErrNothingToRecover), http.StatusNotFound},
		// A mailbox with more active keys than one request may name: the request is too
		// large, not the appliance broken (it was a 500).
		{"too many records", wrap(policy.ErrTooManyRecords), http.StatusBadRequest},
		// A serial or a state the client gave, refused by the entry point that takes it before
		// the store sees it (a recovery request's serial and the pending listing's state were
		// 500s).
		{"client's value the store would refuse", fmt.Errorf("%w: serial %q is not a certificate serial: %w", escrow.ErrInvalidRequest, "zz", store.ErrInvalid), http.StatusBadRequest},

		// The appliance's faults.
		{"storage", wrap(store.ErrUnavailable), http.StatusServiceUnavailable},
		{"storage under a client sentinel", fmt.Errorf("%w: %w", escrow.ErrInvalidRequest, store.ErrUnavailable), http.StatusServiceUnavailable},
		{"no recovery set", wrap(escrow.ErrNoRecoverySet), http.StatusServiceUnavailable},
		{"recovery set changed", fmt.Errorf("%w: %w; retry", escrow.ErrNoRecoverySet, escrow.ErrRecoverySetChanged), http.StatusServiceUnavailable},
		{"token gone", wrap(hsm.ErrTokenGone), http.StatusServiceUnavailable},
		{"token gone under the envelope", fmt.Errorf("%w: encrypted_key: %w", escrow.ErrInvalidRequest, fmt.Errorf("%w: %w", cms.ErrDecrypt, hsm.ErrTokenGone)), http.StatusServiceUnavailable},
		// A PKCS#11 error that is no verdict on the request (CKR_FUNCTION_FAILED,
		// CKR_GENERAL_ERROR, CKR_DEVICE_MEMORY...): hsm.ErrTokenFault, the token's fault (these
		// were a bare 500, and a 400 under the envelope's sentinels).
		{"token failed signing", fmt.Errorf("escrow: issue certificate: sign: %w", fmt.Errorf("hsm: sign with %q: %w: pkcs11: 0x6: CKR_FUNCTION_FAILED", "ca-key", hsm.ErrTokenFault)), http.StatusServiceUnavailable},
		{"token failed under the envelope", fmt.Errorf("%w: encrypted_key: %w", escrow.ErrInvalidRequest, fmt.Errorf("%w: unwrap content-encryption key: %w", cms.ErrDecrypt, hsm.ErrTokenFault)), http.StatusServiceUnavailable},
		{"token failed the recovery key", fmt.Errorf("%w: %w", escrow.ErrRecoveryKey, hsm.ErrTokenFault), http.StatusServiceUnavailable},
		{"token failed a mechanism's self-test", fmt.Errorf("%w: %w", hsm.ErrMechanism, hsm.ErrTokenFault), http.StatusServiceUnavailable},
		{"token failed under a lint", fmt.Errorf("%w: %w", ca.ErrLint, hsm.ErrTokenFault), http.StatusServiceUnavailable},
		{"integrity", fmt.Errorf("%w: %w", escrow.ErrIntegrity, check.ErrInconsistent), http.StatusInternalServerError},
		{"record mismatch", wrap(escrow.ErrRecordMismatch), http.StatusInternalServerError},
		{"recovery key", fmt.Errorf("%w: %w", escrow.ErrRecoveryKey, errors.New("no such key")), http.StatusInternalServerError},
		// The request's recovery key lacking a mechanism is the appliance's fault, not the
		// client's (it was a 400 that told the client to change its openssl options).
		{"recovery key mechanism", fmt.Errorf("%w: decrypt: %w", escrow.ErrRecoveryKey, hsm.ErrMechanism), http.StatusInternalServerError},
		// Only the envelope's RSA-OAEP hash is the client's choice: a mechanism the CA key (or
		// any other key of the appliance) lacks is the appliance's fault (it was a 400 telling the
		// client to change its openssl options).
		{"CA key mechanism", fmt.Errorf("escrow: issue certificate: sign: %w", fmt.Errorf("hsm: sign with %q: %w", "ca-key", hsm.ErrMechanism)), http.StatusInternalServerError},
		{"recovery key, token gone", fmt.Errorf("%w: %w", escrow.ErrRecoveryKey, hsm.ErrTokenGone), http.StatusServiceUnavailable},
		{"audit trail", wrap(audit.ErrAppend), http.StatusInternalServerError},
		{"malformed stored record", wrap(policy.ErrBadRecord), http.StatusInternalServerError},
		{"unknown epoch", wrap(policy.ErrUnknownEpoch), http.StatusInternalServerError},
		{"invalid set", wrap(policy.ErrInvalidSet), http.StatusInternalServerError},
		{"missing row", wrap(store.ErrNotFound), http.StatusInternalServerError},
		{"conflict", wrap(store.ErrConflict), http.StatusInternalServerError},
		// The store refusing a value the appliance itself made is the appliance's bug.
		{"store refuses the appliance's value", wrap(store.ErrInvalid), http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, msg := status(tc.err); code != tc.want {
				t.Errorf("status(%v) = %d %q, want %d", tc.err, code, msg, tc.want)
			}
		})
	}
}

// TestBulkFault: a bulk item never fails for a fault of the appliance's token, a mechanism its
// own keys lack included; an item's envelope with an RSA-OAEP hash the token cannot do fails alone.
func TestBulkFault(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"token gone", fmt.Errorf("sign: %w", hsm.ErrTokenGone), bulk.CauseToken},
		{"pool exhausted", hsm.ErrPoolExhausted, bulk.CauseToken},
		{"token failed one operation", fmt.Errorf("issue: sign: %w", hsm.ErrTokenFault), bulk.CauseToken},
		{"token failed under the envelope", fmt.Errorf("%w: encrypted_key: %w", escrow.ErrInvalidRequest, fmt.Errorf("%w: %w", cms.ErrDecrypt, hsm.ErrTokenFault)), bulk.CauseToken},
		{"CA key mechanism", fmt.Errorf("issue: sign: %w", fmt.Errorf("hsm: sign with %q: %w", "ca-key", hsm.ErrMechanism)), bulk.CauseToken},
		{"envelope's OAEP hash", fmt.Errorf("%w: encrypted_key: %w", escrow.ErrInvalidRequest, fmt.Errorf("%w: %w", cms.ErrDecrypt, hsm.ErrMechanism)), ""},
		{"bad item", escrow.ErrInvalidRequest, ""},
	} {
		if got := bulkFault(tc.err); got != tc.want {
			t.Errorf("%s: bulkFault = %q, want %q", tc.name, got, tc.want)
		}
	}
}
