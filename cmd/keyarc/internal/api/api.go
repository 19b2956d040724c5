package api

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/jsonstrict"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// apiRoutes adds the JSON API under /api/v1/.
func (a *Server) apiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/transport-certificate", a.handleTransportCert)
	mux.HandleFunc("POST /api/v1/enroll", a.handleEnroll)
	mux.HandleFunc("POST /api/v1/kra/enroll", a.handleKRAEnroll)
	mux.HandleFunc("GET /api/v1/kra/enroll/{id}", a.handleKRAEnrollStatus)
	mux.HandleFunc("GET /api/v1/pending", a.handlePendingList)
	mux.HandleFunc("POST /api/v1/pending/{id}/issue", a.handlePendingIssue)
	mux.HandleFunc("POST /api/v1/pending/{id}/deny", a.handlePendingDeny)
	mux.HandleFunc("GET /api/v1/recovery-set", a.handleRecoverySetShow)
	mux.HandleFunc("POST /api/v1/recovery-set", a.handleRecoverySetSet)
	mux.HandleFunc("GET /api/v1/whoami", a.handleWhoami)
	mux.HandleFunc("GET /api/v1/templates", a.handleTemplates)
	mux.HandleFunc("POST /api/v1/revocations", a.handleRevoke)
	a.recoveryRoutes(mux)
	a.auditRoutes(mux)
	a.bulkRoutes(mux)
	a.directoryRoutes(mux)
}

func (a *Server) handleTemplates(w http.ResponseWriter, r *http.Request) {
	names := make([]string, 0, len(a.svc.Templates))
	for n := range a.svc.Templates {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]wire.Template, 0, len(names))
	for _, n := range names {
		t := a.svc.Templates[n]
		out = append(out, wire.Template{Name: t.Name, Purpose: t.Purpose, KeyUsage: t.KeyUsage, ExtKeyUsage: t.ExtKeyUsage,
			ValidityDays: t.ValidityDays, Archive: t.Archive, ServerKeygen: t.ServerKeygen, ManualApproval: t.ManualApproval})
	}
	writeJSON(w, http.StatusOK, out)
}

// decodeJSON reads a JSON body of at most maxJSONBody bytes strictly: unknown fields are
// errors.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeJSONUpTo(w, r, v, maxJSONBody)
}

// decodeJSONUpTo is decodeJSON for a route whose bodies may be larger (up to limit bytes).
func decodeJSONUpTo(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	if r.ContentLength > limit {
		return bodyTooLarge(limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return bodyTooLarge(limit)
		}
		if isTimeout(err) {
			return bodyTimeout
		}
		return fmt.Errorf("%w: request body could not be read: %w", escrow.ErrInvalidRequest, err)
	}
	// encoding/json lets the last of two equal keys win, and matches keys to fields without
	// regard to case: {"reason":"a","Reason":"b"} would be read as "b" here and maybe as "a"
	// by whatever checked it before.
	if key := jsonstrict.DuplicateKey(body); key != "" {
		return fmt.Errorf("%w: request body holds the key %.64q twice (keys are matched without regard to case)", escrow.ErrInvalidRequest, key)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body is not the expected JSON: %w", escrow.ErrInvalidRequest, wire.DecodeError(err))
	}
	if dec.More() {
		return fmt.Errorf("%w: request body holds more than one JSON value", escrow.ErrInvalidRequest)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// decodeB64 decodes a base64 (standard or URL alphabet, padding optional) JSON field.
func decodeB64(field, s string) ([]byte, error) {
	s = strings.Map(dropSpace, s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, fmt.Errorf("%w: field %s is not base64", escrow.ErrInvalidRequest, field)
}

// parseCSRField reads the PKCS#10 request in a JSON field: base64 DER, or PEM.
func parseCSRField(field, s string) (*x509.CertificateRequest, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: field %s (base64 DER PKCS#10) is required", escrow.ErrInvalidRequest, field)
	}
	if b, _ := pem.Decode([]byte(strings.TrimSpace(s))); b != nil {
		return parseCSR("field "+field, "DER or PEM", b.Bytes)
	}
	der, err := decodeB64(field, s)
	if err != nil {
		return nil, err
	}
	return parseCSR("field "+field, "DER or PEM", der)
}

func (a *Server) handleTransportCert(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	// Which RSA-OAEP hash the token can open, so clients choose one that works.
	w.Header().Set("Keyarc-Transport-OAEP", strings.ToLower(strings.ReplaceAll(a.oaepHash, "-", "")))
	io.WriteString(w, pemfile.Encode(a.svc.Transport.Cert))
}

func (a *Server) toIssued(is *escrow.Issued) wire.Issued {
	out := wire.Issued{
		Serial: is.Serial, Certificate: pemfile.Encode(is.Certificate), Chain: pemfile.Encode(a.caCert),
		RecordID: is.RecordID, NotAfter: is.Certificate.NotAfter.UTC().Format("2006-01-02T15:04:05Z"),
	}
	if is.RecordID != "" {
		out.Notice = wire.EscrowNotice
	}
	return out
}

// handleEnroll: JSON enrollment, with the private key of archiving templates in a CMS envelope
// to the transport certificate.
func (a *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	who, cert, err := a.authenticate(r, false, nil)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req wire.EnrollRequest
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Template == "" {
		a.fail(w, r, fmt.Errorf("%w: field template is required", escrow.ErrInvalidRequest))
		return
	}
	if err := a.authorizeCredential(r.Context(), cert, req.Template); err != nil {
		a.refuse(w, r, req.Template, err)
		return
	}
	csr, err := parseCSRField("csr", req.CSR)
	if err != nil {
		a.refuse(w, r, req.Template, err)
		return
	}
	var issued *escrow.Issued
	er := escrow.EnrollRequest{Template: req.Template, CSR: csr}
	if req.EncryptedKey != "" {
		var env []byte
		if env, err = decodeB64("encrypted_key", req.EncryptedKey); err == nil {
			issued, err = a.svc.EnrollArchived(r.Context(), who, er, env)
		}
	} else {
		issued, err = a.svc.Enroll(r.Context(), who, er)
	}
	if err != nil {
		a.refuse(w, r, req.Template, err)
		return
	}
	writeJSON(w, http.StatusOK, a.toIssued(issued))
}

func toPendingJSON(p escrow.Pending) wire.Pending {
	return wire.Pending{
		ID: p.ID, Template: p.Template, Name: p.Name, Requester: p.Requester, State: p.State,
		CreatedAt: p.CreatedAt.UTC().Format("2006-01-02T15:04:05Z"), DecidedBy: p.DecidedBy, Serial: p.Serial,
		Fingerprints: p.Fingerprints,
	}
}

// handleKRAEnroll records a KRA's enrollment as a pending request. It needs no credential: an
// admin decides, comparing the key fingerprints with the KRA in person.
func (a *Server) handleKRAEnroll(w http.ResponseWriter, r *http.Request) {
	var req wire.KRAEnrollRequest
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	auth, err := parseCSRField("auth_csr", req.AuthCSR)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	spki, err := decodeB64("unwrap_public_key", req.UnwrapKey)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	unwrap, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		a.fail(w, r, fmt.Errorf("%w: field unwrap_public_key is not a DER SubjectPublicKeyInfo", escrow.ErrInvalidRequest))
		return
	}
	proof, err := decodeB64("proof", req.Proof)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	id, err := a.svc.SubmitKRA(r.Context(), escrow.KRARequest{Name: req.Name, UnwrapKey: unwrap, AuthCSR: auth, Proof: proof, Requester: r.RemoteAddr})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, wire.Pending{ID: id, Template: escrow.TemplateKRA, Name: req.Name, State: store.StatePending,
		Fingerprints: []string{escrow.PublicKeyFingerprint(unwrap), escrow.PublicKeyFingerprint(auth.PublicKey)}})
}

// handleKRAEnrollStatus lets a KRA collect its certificates once issued (certificates are public).
func (a *Server) handleKRAEnrollStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var p *store.Pending
	var certs []store.Certificate
	err := a.db.View(r.Context(), func(tx store.Tx) error {
		var err error
		if p, err = tx.GetPending(id); err != nil {
			return err
		}
		if p.State == store.StateIssued {
			certs, err = tx.ListCertificates(store.Filter{KRA: p.Name, State: store.StateIssued})
		}
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		err = fmt.Errorf("%w: no pending request %q", escrow.ErrNotFound, id)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := wire.KRAEnrollStatus{Pending: toPendingJSON(escrow.Pending{Pending: *p})}
	// The newest unwrap and auth certificates of this KRA.
	for _, c := range certs {
		block := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER}))
		if c.Template == escrow.TemplateKRA {
			out.Unwrap = block
		} else if c.Role == string(policy.RoleKRA) {
			out.Auth = block
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Server) handlePendingList(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActAdminPending, policy.Resource{Kind: "pending requests"}); err != nil {
		a.fail(w, r, err)
		return
	}
	state := r.URL.Query().Get("state")
	if state == "" {
		state = store.StatePending
	} else if state == "all" {
		state = ""
	}
	list, err := a.svc.ListPending(r.Context(), state)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]wire.Pending, 0, len(list))
	for _, p := range list {
		out = append(out, toPendingJSON(p))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Server) handlePendingIssue(w http.ResponseWriter, r *http.Request) {
	admin, err := a.caller(r, policy.ActAdminPending, policy.Resource{Kind: "pending request", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	issued, err := a.svc.IssuePending(r.Context(), r.PathValue("id"), admin.Subject)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]wire.Issued, 0, len(issued))
	for _, is := range issued {
		out = append(out, a.toIssued(is))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Server) handlePendingDeny(w http.ResponseWriter, r *http.Request) {
	admin, err := a.caller(r, policy.ActAdminPending, policy.Resource{Kind: "pending request", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.svc.DenyPending(r.Context(), r.PathValue("id"), admin.Subject); err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": r.PathValue("id"), "state": store.StateDenied})
}

func toRecoverySetJSON(rs *escrow.RecoverySet) wire.RecoverySet {
	out := wire.RecoverySet{Epoch: rs.Epoch, Quorum: rs.Quorum}
	for i, c := range rs.KRAs {
		out.KRAs = append(out.KRAs, wire.RecoveryKRA{Name: rs.Names[i], Serial: store.FormatSerial(c.SerialNumber),
			NotAfter: c.NotAfter.UTC().Format("2006-01-02T15:04:05Z")})
	}
	return out
}

func (a *Server) handleRecoverySetShow(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActRecoverySetRead, policy.Resource{Kind: "recovery set"}); err != nil {
		a.fail(w, r, err)
		return
	}
	rs, err := a.svc.CurrentRecoverySet(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toRecoverySetJSON(rs))
}

func (a *Server) handleRecoverySetSet(w http.ResponseWriter, r *http.Request) {
	admin, err := a.caller(r, policy.ActRecoverySet, policy.Resource{Kind: "recovery set"})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req struct {
		Quorum int      `json:"quorum"`
		KRAs   []string `json:"kras"`
	}
	if err := decodeJSON(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	rs, err := a.svc.SetRecoverySet(r.Context(), req.Quorum, req.KRAs, admin.Subject)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toRecoverySetJSON(rs))
}

func (a *Server) handleWhoami(w http.ResponseWriter, r *http.Request) {
	c, err := a.caller(r, policy.ActWhoami, policy.Resource{})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"subject": c.Subject, "role": c.Role, "kra": c.KRA, "serial": c.Serial})
}

// caller authenticates the caller by client certificate and asks policy whether its role
// may do act. The refusal wraps escrow.ErrUnauthorized (no or unknown credential) or
// policy.ErrForbidden (the role lacks the permission).
func (a *Server) caller(r *http.Request, act policy.Action, res policy.Resource) (*store.Certificate, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: this call needs a keyarc credential (TLS client certificate)", escrow.ErrUnauthorized)
	}
	c, err := a.clientCertificate(r.Context(), r.TLS.PeerCertificates[0])
	if err != nil {
		return nil, err
	}
	if err := policy.Authorize(policy.Principal{Role: policy.Role(c.Role)}, act, res); err != nil {
		return nil, err
	}
	return c, nil
}
