package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// handleRevoke is POST /api/v1/revocations. The caller authenticates with a client
// certificate: an admin's or officer's credential revokes any certificate; a subscriber's own
// certificate (no operator role) revokes the certificates of its mailbox
// (policy.AuthorizeRevoke, which the engine applies to the certificates it reads). Answers:
// 200 with what changed; 400 for a bad request or a reason outside the S/MIME BR set (the
// message lists the allowed ones); 403 for someone else's certificate; 404 for an unknown
// serial or a mailbox with no certificate; 409 with the existing revocations when they were
// all revoked already (only a move to keyCompromise changes a revocation), for a certificate
// never issued, or for a KRA unwrap certificate of the current recovery set (replace the set
// first).
func (a *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	who, err := a.revoker(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req wire.RevokeRequest
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	res, err := a.svc.Revoke(r.Context(), who, escrow.RevokeRequest{Serial: req.Serial, Email: req.Email, KeyOf: req.KeyOf, Reason: req.Reason})
	if err != nil {
		a.failRevoke(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toRevokedJSON(res))
}

// revoker authenticates the caller of a revocation by its client certificate and describes
// it as policy sees it: an operator with its role, or a subscriber (role enrollee) with the
// mailbox of the certificate presented. Whether it may revoke what it names is the engine's
// decision, which reads the certificates.
func (a *Server) revoker(r *http.Request) (policy.Principal, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return policy.Principal{}, fmt.Errorf("%w: revoking needs a TLS client certificate: an admin's or officer's credential, or the subscriber's own certificate", escrow.ErrUnauthorized)
	}
	peer := r.TLS.PeerCertificates[0]
	row, err := a.clientCertificate(r.Context(), peer)
	if err != nil {
		return policy.Principal{}, err
	}
	if row.Role == "" {
		return policy.Principal{Role: policy.RoleEnrollee, Name: row.Email, Mailbox: row.Email, Serial: row.Serial}, nil
	}
	if err := policy.Authorize(policy.Principal{Role: policy.Role(row.Role)}, policy.ActRevoke, policy.Resource{Kind: "certificates"}); err != nil {
		return policy.Principal{}, err
	}
	name := row.KRA
	if name == "" {
		name = peer.Subject.CommonName
	}
	return policy.Principal{Role: policy.Role(row.Role), Name: name, Mailbox: row.Email, Serial: row.Serial}, nil
}

// failRevoke answers a refused revocation: the engine's conflicts (already revoked, never
// issued) are 409, the first with the existing revocations; anything else as [Server.fail].
// A fault of the appliance is never answered as a conflict, even wrapped with one.
func (a *Server) failRevoke(w http.ResponseWriter, r *http.Request, err error) {
	var already *escrow.AlreadyRevokedError
	switch {
	case errors.Is(err, store.ErrUnavailable):
		a.fail(w, r, err)
	case errors.As(err, &already):
		a.log.Info("request refused", "route", r.Pattern, "status", http.StatusConflict, "reason", err.Error())
		out := wire.AlreadyRevoked{Error: err.Error(), Existing: toRevocationsJSON(already.Existing)}
		writeJSON(w, http.StatusConflict, out)
	case errors.Is(err, escrow.ErrNotIssued), errors.Is(err, escrow.ErrInRecoverySet), errors.Is(err, escrow.ErrApplianceCertificate):
		a.fail(w, r, &httpStatusError{http.StatusConflict, err.Error()})
	default:
		a.fail(w, r, err)
	}
}

func toRevocationsJSON(rs []escrow.Revocation) []wire.Revocation {
	out := make([]wire.Revocation, 0, len(rs))
	for _, v := range rs {
		out = append(out, wire.Revocation{Serial: v.Serial, Mailbox: v.Mailbox, Reason: v.Reason, RevokedAt: v.RevokedAt.UTC().Format(time.RFC3339)})
	}
	return out
}

func toRevokedJSON(res *escrow.RevokeResult) wire.Revoked {
	out := wire.Revoked{Revoked: toRevocationsJSON(res.Revoked)}
	if len(res.KeyCompromise) > 0 {
		out.KeyCompromise = toRevocationsJSON(res.KeyCompromise)
	}
	if len(res.Unchanged) > 0 {
		out.Unchanged = toRevocationsJSON(res.Unchanged)
	}
	return out
}
