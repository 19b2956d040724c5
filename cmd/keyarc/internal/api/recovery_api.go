package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/policy"
)

func (a *Server) recoveryRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/recoveries", a.handleRecoveryRequest)
	mux.HandleFunc("GET /api/v1/recoveries", a.handleRecoveryList)
	mux.HandleFunc("GET /api/v1/recoveries/{id}", a.handleRecoveryShow)
	mux.HandleFunc("POST /api/v1/recoveries/{id}/approvals", a.handleRecoveryApprove)
	mux.HandleFunc("POST /api/v1/recoveries/{id}/fetch", a.handleRecoveryFetch)
	mux.HandleFunc("POST /api/v1/recoveries/{id}/cancel", a.handleRecoveryCancel)
	mux.HandleFunc("POST /api/v1/reseals", a.handleResealRequest)
	mux.HandleFunc("POST /api/v1/reseals/{id}/complete", a.handleResealComplete)
	a.drillRoutes(mux)
}

func (a *Server) handleResealRequest(w http.ResponseWriter, r *http.Request) {
	admin, err := a.principal(r, policy.ActReseal, policy.Resource{Kind: "reseals"})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req struct {
		Reason string `json:"reason"`
		// Epoch, when set, takes the records of that older epoch alone.
		Epoch uint32 `json:"epoch"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	rec, err := a.svc.RequestReseal(r.Context(), admin, req.Reason, req.Epoch, a.cfg.Recovery.RequestTTL.Duration)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toRecoveryJSON(rec))
}

func (a *Server) handleResealComplete(w http.ResponseWriter, r *http.Request) {
	admin, err := a.principal(r, policy.ActReseal, policy.Resource{Kind: "reseal", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	res, err := a.svc.CompleteResealReport(r.Context(), admin, r.PathValue("id"))
	if err != nil {
		a.fail(w, r, sharesConflict(err))
		return
	}
	// The records whose epoch's quorum did not approve stay where they were: named, so that
	// the admin sees which epochs a new set of KRAs cannot take over.
	type left struct {
		RecordID string `json:"record_id"`
		Epoch    uint32 `json:"epoch"`
		Have     int    `json:"have"`
		Need     int    `json:"need"`
	}
	out := struct {
		ID       string `json:"id"`
		Resealed int    `json:"resealed"`
		Epoch    uint32 `json:"epoch"`
		Left     []left `json:"left"`
	}{ID: r.PathValue("id"), Resealed: res.Resealed, Epoch: res.Epoch, Left: []left{}}
	for _, l := range res.Left {
		out.Left = append(out.Left, left{l.RecordID, l.Epoch, l.Have, l.Need})
	}
	writeJSON(w, http.StatusOK, out)
}

// sharesConflict answers approvals that meet the quorum but whose shares do not open a record
// (escrow.ErrSharesDoNotOpen) with a conflict: the request needs approvals of other KRAs, the
// appliance is not at fault. Any other error, a fault of the appliance in the same chain
// included, is left to status.
func sharesConflict(err error) error {
	if !errors.Is(err, escrow.ErrSharesDoNotOpen) {
		return err
	}
	if code, _ := status(err); code != http.StatusInternalServerError {
		return err
	}
	return &httpStatusError{http.StatusConflict, err.Error()}
}

// principal authenticates the caller, asks policy whether it may do act, and describes it as
// policy sees it.
func (a *Server) principal(r *http.Request, act policy.Action, res policy.Resource) (policy.Principal, error) {
	row, err := a.caller(r, act, res)
	if err != nil {
		return policy.Principal{}, err
	}
	name := row.KRA
	if name == "" {
		name = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	return policy.Principal{Role: policy.Role(row.Role), Name: name, Mailbox: row.Email, Serial: row.Serial}, nil
}

func toRecoveryJSON(rec *escrow.Recovery) wire.Recovery {
	out := wire.Recovery{
		ID: rec.ID, Kind: rec.Kind, State: rec.State, Requester: rec.Requester, RequesterSerial: rec.RequesterSerial, Reason: rec.Reason,
		CreatedAt: rec.CreatedAt.UTC().Format(time.RFC3339), ExpiresAt: rec.ExpiresAt.UTC().Format(time.RFC3339Nano),
		Approvals: rec.Approvals, Have: rec.Have, Need: rec.Need,
		RecoveryKey: base64.StdEncoding.EncodeToString(rec.KeySPKI), KeyOAEPHash: rec.OAEPHash,
	}
	if out.Approvals == nil {
		out.Approvals = []string{}
	}
	for i, it := range rec.Items {
		item := wire.RecoveryItem{RecordID: it.RecordID, Serial: it.Serial, Owner: it.Owner, Epoch: it.Epoch}
		if i < len(rec.Revoke) {
			item.Revoke = rec.Revoke[i]
		}
		out.Items = append(out.Items, item)
	}
	return out
}

func (a *Server) handleRecoveryRequest(w http.ResponseWriter, r *http.Request) {
	officer, err := a.principal(r, policy.ActRecoveryRequest, policy.Resource{Kind: "recoveries"})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req wire.RecoveryRequest
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	rec, err := a.svc.OpenRecovery(r.Context(), officer, escrow.RecoveryRequest{Serial: req.Serial, Email: req.Email, Reason: req.Reason,
		Revoke: req.Revoke, TTL: a.cfg.Recovery.RequestTTL.Duration})
	if err != nil {
		a.metrics.recoveries.WithLabelValues("refused", recoveryReason(err)).Inc()
		a.fail(w, r, err)
		return
	}
	a.metrics.recoveries.WithLabelValues("requested", "").Inc()
	writeJSON(w, http.StatusCreated, toRecoveryJSON(rec))
}

func (a *Server) handleRecoveryList(w http.ResponseWriter, r *http.Request) {
	if _, err := a.principal(r, policy.ActRecoveryRead, policy.Resource{Kind: "recoveries"}); err != nil {
		a.fail(w, r, err)
		return
	}
	list, err := a.svc.ListRecoveries(r.Context(), r.URL.Query().Get("state"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]wire.Recovery, 0, len(list))
	for i := range list {
		out = append(out, toRecoveryJSON(&escrow.Recovery{Recovery: list[i]}))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Server) handleRecoveryShow(w http.ResponseWriter, r *http.Request) {
	p, err := a.principal(r, policy.ActRecoveryRead, policy.Resource{Kind: "recovery", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	if p.Role != policy.RoleKRA {
		rec, err := a.svc.GetRecovery(r.Context(), id)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, toRecoveryJSON(rec))
		return
	}
	rec, shares, err := a.svc.SharesFor(r.Context(), p, id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := toRecoveryJSON(rec)
	for i, sh := range shares {
		if sh.Share != nil {
			out.Items[i].Share = base64.StdEncoding.EncodeToString(sh.Share)
			out.Items[i].OAEPHash = sh.OAEPHash.String()
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Server) handleRecoveryApprove(w http.ResponseWriter, r *http.Request) {
	kra, err := a.principal(r, policy.ActRecoveryApprove, policy.Resource{Kind: "recovery", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req wire.Approval
	if err := decodeApproval(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	var shares []escrow.ApprovedShare
	for _, sh := range req.Shares {
		b, err := decodeB64("shares.share", sh.Share)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		shares = append(shares, escrow.ApprovedShare{RecordID: sh.RecordID, Share: b})
	}
	sig, err := decodeB64("signature", req.Signature)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rec, err := a.svc.SubmitApproval(r.Context(), kra, r.PathValue("id"), shares, sig)
	if err != nil {
		a.metrics.approvals.WithLabelValues(recoveryReason(err)).Inc()
		a.fail(w, r, err)
		return
	}
	a.metrics.approvals.WithLabelValues("accepted").Inc()
	if rec.Have >= rec.Need && len(rec.Approvals) == rec.Need {
		a.metrics.recoveries.WithLabelValues("approved", "").Inc()
	}
	writeJSON(w, http.StatusOK, toRecoveryJSON(rec))
}

func (a *Server) handleRecoveryFetch(w http.ResponseWriter, r *http.Request) {
	officer, err := a.principal(r, policy.ActRecoveryRequest, policy.Resource{Kind: "recovery", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req struct {
		Legacy bool `json:"legacy"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	got, err := a.svc.Fetch(r.Context(), officer, r.PathValue("id"), req.Legacy)
	if err != nil {
		a.metrics.recoveries.WithLabelValues("refused", recoveryReason(err)).Inc()
		a.fail(w, r, sharesConflict(err))
		return
	}
	a.metrics.recoveries.WithLabelValues("completed", "").Inc()
	var out wire.Fetched
	out.Password = got.Password
	if len(got.Revocations.Revoked)+len(got.Revocations.KeyCompromise)+len(got.Revocations.Unchanged) > 0 {
		rv := toRevokedJSON(&got.Revocations)
		out.Revocations = &rv
	}
	for _, f := range got.Files {
		out.Files = append(out.Files, struct {
			Serial string `json:"serial"`
			PFX    string `json:"pfx"`
		}{f.Serial, base64.StdEncoding.EncodeToString(f.PFX)})
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}

func (a *Server) handleRecoveryCancel(w http.ResponseWriter, r *http.Request) {
	p, err := a.canceller(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.svc.CancelRecovery(r.Context(), p, r.PathValue("id")); err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": r.PathValue("id"), "state": "cancelled"})
}

// decodeApproval reads a KRA's approval. It carries a share for each record of the request, so
// a full reseal batch is far larger than other JSON bodies: its limit is maxApprovalBody.
func decodeApproval(w http.ResponseWriter, r *http.Request, v *wire.Approval) error {
	return decodeJSONUpTo(w, r, v, maxApprovalBody)
}

// canceller authenticates the caller of a cancel: an officer cancels the recovery it
// requested, an admin the reseal it requested, so either permission lets the call through;
// the engine, which sees the request's kind and requester, decides the rest.
func (a *Server) canceller(r *http.Request) (policy.Principal, error) {
	res := policy.Resource{Kind: "recovery", ID: r.PathValue("id")}
	p, err := a.principal(r, policy.ActRecoveryRequest, res)
	if !errors.Is(err, policy.ErrForbidden) {
		return p, err
	}
	if p, err := a.principal(r, policy.ActReseal, res); !errors.Is(err, policy.ErrForbidden) {
		return p, err
	}
	return policy.Principal{}, fmt.Errorf("%w: cancelling request %.64q needs the officer role (a recovery) or the admin role (a reseal)", policy.ErrForbidden, res.ID)
}

// expireRecoveries closes expired requests now and then.
func (a *Server) expireRecoveries() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := a.svc.ExpireRecoveries(ctx)
	if err != nil {
		a.log.Error("expire recovery requests", "err", err)
	} else if n > 0 {
		a.log.Info("recovery requests expired", "count", n)
	}
	// Drills end the same way, and every live epoch gets its canary (a new epoch, or one made
	// before drills existed).
	if n, err := a.svc.ExpireDrills(ctx); err != nil {
		a.log.Error("expire drills", "err", err)
	} else if n > 0 {
		a.log.Info("drills expired unanswered", "count", n)
	}
	// A key its request left in the token (a crash between the end's commit and the key's
	// destruction) is destroyed now.
	if _, err := a.svc.DestroyStaleKeys(ctx); err != nil {
		a.log.Error("destroy per-request keys left by ended requests", "err", err)
	}
	if n, err := a.svc.EnsureCanaries(ctx); err != nil {
		a.log.Error("seal the canaries of live epochs", "err", err)
	} else if n > 0 {
		a.log.Info("canaries sealed", "count", n)
	}
}
