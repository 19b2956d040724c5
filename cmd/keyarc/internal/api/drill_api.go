package api

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/policy"
)

// drillRoutes are the recoverability drills and the quorum health (issue 17).
func (a *Server) drillRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/recovery-set/health", a.handleRecoveryHealth)
	mux.HandleFunc("POST /api/v1/drills", a.drillsHandler(http.StatusCreated, a.openDrills))
	mux.HandleFunc("GET /api/v1/drills", a.drillsHandler(http.StatusOK, a.listDrills))
	mux.HandleFunc("GET /api/v1/drills/{id}", a.handleDrillShow)
	mux.HandleFunc("POST /api/v1/drills/{id}/proof", a.handleDrillProof)
}

func (a *Server) handleRecoveryHealth(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActRecoverySetRead, policy.Resource{Kind: "recovery set"}); err != nil {
		a.fail(w, r, err)
		return
	}
	window, margin := a.cfg.Recovery.DrillWindow.Duration, a.cfg.Recovery.CertMargin.Duration
	hs, err := a.svc.RecoveryHealth(r.Context(), window, margin)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toHealthJSON(hs, window, margin))
}

func toHealthJSON(hs []escrow.EpochHealth, window, margin time.Duration) wire.RecoveryHealth {
	out := wire.RecoveryHealth{WindowSeconds: int64(window / time.Second), MarginSeconds: int64(margin / time.Second),
		WindowDays: int(window.Hours() / 24), MarginDays: int(margin.Hours() / 24), Epochs: []wire.EpochHealth{}}
	for _, h := range hs {
		e := wire.EpochHealth{Epoch: h.Epoch, Quorum: h.Quorum, Current: h.Current, Records: h.Records, Proven: h.Proven,
			Valid: h.Valid, Canary: h.Canary, AtRisk: h.AtRisk, NeedsReseal: h.NeedsReseal, Advice: h.Advice, KRAs: []wire.KRAHealth{}}
		for _, k := range h.KRAs {
			kh := wire.KRAHealth{Name: k.Name, Serial: k.Serial, NotAfter: k.NotAfter.UTC().Format(time.RFC3339), Proven: k.Proven, Valid: k.Valid}
			if !k.LastProof.IsZero() {
				kh.LastProof = k.LastProof.UTC().Format(time.RFC3339)
			}
			e.KRAs = append(e.KRAs, kh)
		}
		out.Epochs = append(out.Epochs, e)
	}
	return out
}

// drillCaller is an admin (any drill) or a KRA (its own): policy lets both read the recovery
// set, and the engine decides what each may open or answer.
func (a *Server) drillCaller(r *http.Request, act policy.Action) (policy.Principal, error) {
	p, err := a.principal(r, policy.ActRecoverySetRead, policy.Resource{Kind: "drill", ID: r.PathValue("id")})
	if err != nil {
		return p, err
	}
	if p.Role != policy.RoleAdmin && p.Role != policy.RoleKRA {
		return p, fmt.Errorf("%w: drills are for admins and KRAs", escrow.ErrForbidden)
	}
	if act != "" && !p.Role.May(act) {
		return p, fmt.Errorf("%w: only the drill's KRA fetches its canary shares and answers it", escrow.ErrForbidden)
	}
	return p, nil
}

func toDrillJSON(d *escrow.Drill, items []escrow.DrillShare) wire.Drill {
	out := wire.Drill{ID: d.ID, Campaign: d.Campaign, KRA: d.KRA, Epochs: d.Epochs, Proven: d.Proven, State: d.State, OpenedBy: d.OpenedBy,
		CreatedAt: d.CreatedAt.UTC().Format(time.RFC3339), ExpiresAt: d.ExpiresAt.UTC().Format(time.RFC3339Nano),
		DrillKey: base64.StdEncoding.EncodeToString(d.KeySPKI), KeyHash: d.OAEPHash}
	if !d.ClosedAt.IsZero() {
		out.ClosedAt = d.ClosedAt.UTC().Format(time.RFC3339)
	}
	if out.Epochs == nil {
		out.Epochs = []uint32{}
	}
	for _, it := range items {
		out.Items = append(out.Items, wire.DrillItem{Epoch: it.Epoch, Share: base64.StdEncoding.EncodeToString(it.Share),
			OAEPHash: it.OAEPHash.String(), KeyID: base64.StdEncoding.EncodeToString(it.KeyID),
			Commitment: base64.StdEncoding.EncodeToString(it.Commitment)})
	}
	return out
}

// drillsHandler answers with drills, without their items: an admin or a KRA calls
// ([Server.drillCaller]), find returns the drills, and they are written with status code (an
// empty list as []). Opening and listing drills share it.
func (a *Server) drillsHandler(code int, find func(w http.ResponseWriter, r *http.Request, p policy.Principal) ([]escrow.Drill, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := a.drillCaller(r, "")
		if err != nil {
			a.fail(w, r, err)
			return
		}
		drills, err := find(w, r, p)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		out := make([]wire.Drill, 0, len(drills))
		for i := range drills {
			out = append(out, toDrillJSON(&drills[i], nil))
		}
		writeJSON(w, code, out)
	}
}

// openDrills opens a drill for the KRA the request names, or a campaign of one drill per
// KRA of the current set.
func (a *Server) openDrills(w http.ResponseWriter, r *http.Request, p policy.Principal) ([]escrow.Drill, error) {
	var req wire.DrillRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return nil, err
	}
	drills, err := a.svc.OpenDrill(r.Context(), p, req.KRA, a.cfg.Recovery.DrillTTL.Duration)
	if errors.Is(err, escrow.ErrDrillPending) || errors.Is(err, escrow.ErrDrillsFull) {
		// The KRA's own drill is open, or as many drills as the token keeps keys for: a
		// conflict with the state, not a bad request.
		return nil, &httpStatusError{http.StatusConflict, err.Error()}
	}
	return drills, err
}

// listDrills lists the drills of ?campaign and ?kra (a KRA's own only), the open ones only
// with ?open (a boolean: 1, true; 0 and false list them all).
func (a *Server) listDrills(_ http.ResponseWriter, r *http.Request, p policy.Principal) ([]escrow.Drill, error) {
	q := r.URL.Query()
	kra := q.Get("kra")
	if p.Role == policy.RoleKRA {
		kra = p.Name // a KRA sees its own drills
	}
	open := false
	if v := q.Get("open"); v != "" {
		var err error
		if open, err = strconv.ParseBool(v); err != nil {
			return nil, fmt.Errorf("%w: query parameter open is a boolean (open=1 lists the open drills only), not %.40q", escrow.ErrInvalidRequest, v)
		}
	}
	return a.svc.ListDrills(r.Context(), q.Get("campaign"), kra, open)
}

func (a *Server) handleDrillShow(w http.ResponseWriter, r *http.Request) {
	kra, err := a.drillCaller(r, policy.ActRecoveryApprove)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	d, items, err := a.svc.DrillFor(r.Context(), kra, r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toDrillJSON(d, items))
}

func (a *Server) handleDrillProof(w http.ResponseWriter, r *http.Request) {
	kra, err := a.drillCaller(r, policy.ActRecoveryApprove)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var body wire.DrillProof
	if err := decodeJSON(w, r, &body); err != nil {
		a.fail(w, r, err)
		return
	}
	bad := func(what string, err error) {
		a.fail(w, r, fmt.Errorf("%w: %s is not valid base64: %w", escrow.ErrBadDrillProof, what, err))
	}
	var shares []escrow.ProvenShare
	for _, s := range body.Shares {
		b, err := base64.StdEncoding.DecodeString(s.Share)
		if err != nil {
			bad(fmt.Sprintf("the share of epoch %d", s.Epoch), err)
			return
		}
		shares = append(shares, escrow.ProvenShare{Epoch: s.Epoch, Share: b})
	}
	sig, err := base64.StdEncoding.DecodeString(body.Signature)
	if err != nil {
		bad("the signature", err)
		return
	}
	d, err := a.svc.SubmitDrillProof(r.Context(), kra, r.PathValue("id"), shares, sig)
	if err != nil {
		// The refusals the engine audits and counts against the KRA are refused recovery
		// steps in the metrics too, where the alert on repeated refusals sees them.
		switch {
		case errors.Is(err, escrow.ErrBadDrillProof):
			a.log.Warn("drill proof refused", "drill", r.PathValue("id"), "kra", kra.Name, "err", err)
			a.metrics.approvals.WithLabelValues("bad-drill-proof").Inc()
		case errors.Is(err, escrow.ErrTooManyFailures):
			a.metrics.approvals.WithLabelValues("rate-limited").Inc()
		}
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toDrillJSON(d, nil))
}
