package api

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/web"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

// Request body limits, checked before anything is parsed.
const (
	maxCSRBody  = 64 << 10
	maxJSONBody = 256 << 10
	// maxApprovalBody bounds a KRA's approval (POST /api/v1/recoveries/{id}/approvals), which
	// carries one share for each record of the request: a full reseal batch
	// (escrow.MaxResealBatch) or the most records of one recovery (policy.MaxRecoveryRecords),
	// each share up to escrow.MaxShareBytes, base64 in a JSON object with its record ID
	// (approvalShareJSON at its largest), and maxJSONBody for the rest.
	maxApprovalBody   = max(escrow.MaxResealBatch, policy.MaxRecoveryRecords)*approvalShareJSON + maxJSONBody
	approvalShareJSON = 4*((escrow.MaxShareBytes+2)/3) + 128
)

func (a *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", a.handleReady)
	mux.HandleFunc("GET /.well-known/est/cacerts", a.handleCACerts)
	mux.HandleFunc("GET /.well-known/est/{template}/cacerts", a.handleCACerts)
	mux.HandleFunc("GET /.well-known/est/csrattrs", a.handleCSRAttrs)
	mux.HandleFunc("GET /.well-known/est/{template}/csrattrs", a.handleCSRAttrs)
	mux.HandleFunc("POST /.well-known/est/{template}/simpleenroll", a.handleSimpleEnroll)
	mux.HandleFunc("POST /.well-known/est/{template}/simplereenroll", a.handleSimpleEnroll)
	mux.HandleFunc("POST /.well-known/est/{template}/serverkeygen", a.handleServerKeygen)
	// Without a label (RFC 7030 3.2.2 makes the label optional) the credential names the
	// template: see authenticateFor.
	mux.HandleFunc("POST /.well-known/est/simpleenroll", a.handleSimpleEnroll)
	mux.HandleFunc("POST /.well-known/est/simplereenroll", a.handleSimpleEnroll)
	mux.HandleFunc("POST /.well-known/est/serverkeygen", a.handleServerKeygen)
	a.apiRoutes(mux)
	// The enrollment page and its files (package web).
	page := web.Handler()
	mux.Handle("GET /{$}", page)
	mux.Handle("GET "+web.Prefix, page)
	return a.instrument(a.crossOrigin(a.requireContentType(mux)))
}

// statusWriter remembers the status code for the request counter.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (a *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		a.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
	})
}

// readyBody is /readyz's JSON answer: whether this node serves, and what it is among nodes
// sharing one database. A load balancer needs only the status code; an operator reads the rest.
type readyBody struct {
	// Status is "ready" or "not ready".
	Status string `json:"status"`
	// Reason says why the node is not ready, and what to do; empty when ready.
	Reason string `json:"reason,omitempty"`
	// Node is this node's name (the holder name of its leases).
	Node string `json:"node"`
	// Leader is true while this node holds the leader lease and runs the singletons (CRL,
	// OCSP passes, audit checkpoints, sweeps); one node alone on SQLite always leads.
	Leader bool `json:"leader"`
	// JobLeases counts the bulk jobs whose lease this node holds, as last read with the
	// readiness check of the database (absent when the database could not be read).
	JobLeases *int `json:"job_leases,omitempty"`
}

func (a *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	body := readyBody{Status: "ready", Node: a.cfg.Node, Leader: a.svc.Leads == nil || a.svc.Leads()}
	code := http.StatusOK
	if err := a.tokenStatus(); err != nil {
		_, msg := tokenCause(err)
		body.Status, body.Reason, code = "not ready", "not ready: "+msg, http.StatusServiceUnavailable
	} else if jobs, err := a.storageStatus(r.Context()); err != nil {
		body.Status, body.Reason, code = "not ready", "not ready: storage unavailable", http.StatusServiceUnavailable
	} else {
		body.JobLeases = &jobs
	}
	if code != http.StatusOK {
		w.Header().Set("Retry-After", "5")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}

func (a *Server) handleCACerts(w http.ResponseWriter, r *http.Request) {
	if t := r.PathValue("template"); t != "" {
		if _, err := a.svc.Template(t); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	der, err := cms.CertsOnly(a.caCert)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeBase64(w, "application/pkcs7-mime", der)
}

// handleSimpleEnroll serves EST simpleenroll and simplereenroll (RFC 7030 4.2). The enrollee
// authenticates with HTTP Basic (mailbox and enrollment code) or, for re-enrollment or as an
// alternative, with a certificate this CA issued.
func (a *Server) handleSimpleEnroll(w http.ResponseWriter, r *http.Request) {
	reenroll := strings.HasSuffix(r.URL.Path, "/simplereenroll")
	// With an enrollment code, the request is read first: the read of the code then also finds
	// whether its key was revoked for keyCompromise, and nothing more is read before signing.
	// A body that cannot be read (too large, too slow) is answered at once; a refused
	// credential is still answered before anything wrong with the request it carries.
	var csr *x509.CertificateRequest
	var csrErr error
	var pub crypto.PublicKey
	if _, _, basic := r.BasicAuth(); basic && !reenroll {
		body, err := readCSRBody(w, r)
		if err != nil {
			a.refuse(w, r, r.PathValue("template"), err)
			return
		}
		if csr, csrErr = parseCSRBody(body); csr != nil {
			pub = csr.PublicKey
		}
	}
	who, template, err := a.authenticateFor(r, r.PathValue("template"), reenroll, pub)
	if err != nil {
		a.refuse(w, r, template, err)
		return
	}
	if csr == nil && csrErr == nil {
		csr, csrErr = readCSR(w, r)
	}
	if csrErr != nil {
		a.refuse(w, r, template, csrErr)
		return
	}
	issued, err := a.svc.Enroll(r.Context(), who, escrow.EnrollRequest{Template: template, CSR: csr})
	if err != nil {
		a.refuse(w, r, template, err)
		return
	}
	der, err := cms.CertsOnly(issued.Certificate)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeBase64(w, "application/pkcs7-mime; smime-type=certs-only", der)
}

// authenticateFor establishes who is enrolling for template (see authenticate), then applies
// the template's credential rule, and returns the template enrolled for.
//
// An empty template is EST without a label (/.well-known/est/simpleenroll): the credential
// names it. An enrollment code enrolls for the template it was issued for; a client
// certificate re-enrolls for its own template (RFC 7030 4.2.2). An operator credential has a
// template too (client-auth) and is refused by the credential rule, as it is with a label.
// Without a credential the template stays empty and the refusal is authenticate's.
func (a *Server) authenticateFor(r *http.Request, template string, needCert bool, pub crypto.PublicKey) (escrow.Enrollee, string, error) {
	who, cert, err := a.authenticate(r, needCert, pub)
	if err != nil {
		return who, template, err
	}
	if template == "" {
		switch {
		case who.Code != nil:
			template = who.Code.Template
		case cert != nil:
			template = cert.Template
		}
	}
	return who, template, a.authorizeCredential(r.Context(), cert, template)
}

// authenticate establishes who is calling: a client certificate issued by this CA (verified
// by TLS, then looked up: it must be issued, unexpired and not revoked), returned with its
// row, or HTTP Basic with a mailbox and an enrollment code. An operator credential presented
// along with HTTP Basic (a browser may offer it unasked) gives way to the code. Which
// certificate may enroll for which template is decided by authorizeCredential. pub, the
// request's public key when it is known already, goes with the code (see
// escrow.Service.AuthenticateEnrollee).
func (a *Server) authenticate(r *http.Request, needCert bool, pub crypto.PublicKey) (escrow.Enrollee, *store.Certificate, error) {
	user, pass, basic := r.BasicAuth()
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c, err := a.clientCertificate(r.Context(), r.TLS.PeerCertificates[0])
		if err != nil {
			return escrow.Enrollee{}, nil, err
		}
		if c.Role == "" || needCert || !basic {
			return escrow.Enrollee{Mailbox: c.Email, Renewing: c.Serial}, c, nil
		}
	}
	if needCert {
		return escrow.Enrollee{}, nil, &httpStatusError{http.StatusUnauthorized, "re-enrollment needs the current certificate as TLS client certificate"}
	}
	if !basic {
		return escrow.Enrollee{}, nil, fmt.Errorf("%w: authenticate with HTTP Basic (mailbox and enrollment code) or a client certificate", escrow.ErrUnauthorized)
	}
	who, err := a.svc.AuthenticateEnrollee(r.Context(), user, pass, pub)
	if err != nil {
		return escrow.Enrollee{}, nil, err
	}
	return who, nil, nil
}

// clientCertificate looks up a TLS client certificate in the store.
func (a *Server) clientCertificate(ctx context.Context, c *x509.Certificate) (*store.Certificate, error) {
	var row *store.Certificate
	err := a.db.View(ctx, func(tx store.Tx) error {
		var err error
		row, err = tx.GetCertificate(store.FormatSerial(c.SerialNumber))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: client certificate unknown to this appliance", escrow.ErrUnauthorized)
	}
	if err != nil {
		return nil, err
	}
	if row.State != store.StateIssued {
		return nil, fmt.Errorf("%w: client certificate is %s", escrow.ErrUnauthorized, row.State)
	}
	if time.Now().After(c.NotAfter) {
		return nil, fmt.Errorf("%w: client certificate expired", escrow.ErrUnauthorized)
	}
	// The row decides what the certificate may do (its template, mailbox, role): trust it only
	// once it agrees with the certificate the handshake verified and with its audited issuance.
	if err := a.svc.CheckCredential(ctx, row, c); err != nil {
		return nil, err
	}
	return row, nil
}

// readCSR reads an EST PKCS#10 body: base64 DER, line breaks allowed.
func readCSR(w http.ResponseWriter, r *http.Request) (*x509.CertificateRequest, error) {
	body, err := readCSRBody(w, r)
	if err != nil {
		return nil, err
	}
	return parseCSRBody(body)
}

// readCSRBody reads an EST body, up to maxCSRBody bytes.
func readCSRBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > maxCSRBody {
		return nil, bodyTooLarge(maxCSRBody)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCSRBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, bodyTooLarge(maxCSRBody)
		}
		if isTimeout(err) {
			return nil, bodyTimeout
		}
		return nil, fmt.Errorf("%w: read body: %v", escrow.ErrInvalidRequest, err)
	}
	return body, nil
}

// parseCSRBody parses an EST body: base64 DER, line breaks allowed.
func parseCSRBody(body []byte) (*x509.CertificateRequest, error) {
	der, err := base64.StdEncoding.DecodeString(strings.Map(dropSpace, string(body)))
	if err != nil {
		return nil, fmt.Errorf("%w: body is not base64 (EST sends the PKCS#10 request as base64 DER)", escrow.ErrInvalidRequest)
	}
	return parseCSR("body", "base64 DER, as EST sends it", der)
}

// parseCSR parses a DER PKCS#10 request named what (the body, a JSON field) for the client;
// forms names the encodings the caller accepts, for the refusal.
// The ASN.1 decoder's reasons are Go struct dumps: the client is told only that the bytes are
// not a request. The x509 package's own reasons (an unsupported curve, a malformed key) are
// plain words and hold no input bytes: they are kept.
func parseCSR(what, forms string, der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err == nil {
		return csr, nil
	}
	var se asn1.StructuralError
	var sy asn1.SyntaxError
	if errors.As(err, &se) || errors.As(err, &sy) || strings.HasPrefix(err.Error(), "asn1:") || strings.Contains(err.Error(), "{class:") {
		return nil, fmt.Errorf("%w: %s: not a PKCS#10 certificate request (%s)", escrow.ErrInvalidRequest, what, forms)
	}
	return nil, fmt.Errorf("%w: %s: a PKCS#10 certificate request this CA cannot read: %s", escrow.ErrInvalidRequest, what,
		strings.TrimPrefix(err.Error(), "x509: "))
}

// bodyTimeout refuses a body that did not arrive within the server's read timeout (a slow
// client); the connection is closed after the answer.
var bodyTimeout = &httpStatusError{http.StatusRequestTimeout, "the request body did not arrive in time; send it at once"}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bodyTooLarge is the refusal of a body over limit bytes: by its declared Content-Length, before
// anything is read, or as soon as the reader passes limit.
func bodyTooLarge(limit int64) error {
	return &httpStatusError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", limit)}
}

func dropSpace(r rune) rune {
	switch r {
	case ' ', '\t', '\r', '\n':
		return -1
	}
	return r
}

func writeBase64(w http.ResponseWriter, contentType string, der []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	enc := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76])
		b.WriteString("\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc)
	b.WriteString("\r\n")
	io.WriteString(w, b.String())
}

// httpStatusError carries a status decided by the HTTP layer itself.
type httpStatusError struct {
	code int
	msg  string
}

func (e *httpStatusError) Error() string { return e.msg }

// kraApprovalLockout is the longest a KRA locked out of approving after too many refused
// approvals (escrow.ErrTooManyFailures) waits: the engine's window, 15 minutes, counted from
// the refusals. The engine does not say how much of it is left, so the answer gives the bound.
const kraApprovalLockout = 15 * time.Minute

// integrityMessage is the client's answer to an archive that failed its consistency check.
const integrityMessage = "the archive failed its consistency check for this certificate; an administrator must run keyarc check"

// status maps an error to an HTTP status and a message fit for the client. Anything it does not
// recognise is a 500 whose details go to the log only.
//
// The cases follow from the error contracts of the engine: each exported entry point of escrow
// names, under "# Errors", the sentinels it returns (escrow's own, and policy's, store's, ca's,
// cms's and check's it passes on). A sentinel of the client's fault is a 4xx here; a fault of
// the appliance (storage, token, database, archive) is a 503 when retrying may help, else a
// 500, and never a 4xx, even when it hides under a client's sentinel: those cases come first.
// Sentinels of the archive's fault with no case of their own ([policy.ErrBadRecord],
// [policy.ErrUnknownEpoch], [policy.ErrInvalidSet], store.ErrNotFound for a row a request
// names, [audit.ErrAppend]) are the default 500. So is a bare store.ErrInvalid: the store
// refusing a value the appliance made is the appliance's bug. A value the client gave (a
// serial, a state) is checked by the entry point that takes it, which answers
// [escrow.ErrInvalidRequest] naming it, a 400, before the store sees it. A new sentinel in a
// contract gets its case here and a row in TestStatusContracts (errmap_test.go).
func status(err error) (int, string) {
	var hs *httpStatusError
	var rej *policy.RejectError
	switch {
	// Faults of the appliance first: they may hide under a client-error wrapper, and they are
	// never the client's fault.
	case errors.Is(err, store.ErrUnavailable):
		return http.StatusServiceUnavailable, "storage unavailable; retry later"
	case errors.Is(err, hsm.ErrPoolExhausted):
		return http.StatusServiceUnavailable, "the appliance token is busy; retry shortly"
	case errors.Is(err, hsm.ErrTokenGone), errors.Is(err, hsm.ErrKeyChanged):
		// A refused PIN or a swapped token is the appliance's fault, never the client's.
		_, msg := tokenCause(err)
		return http.StatusServiceUnavailable, msg
	case errors.Is(err, hsm.ErrTokenFault):
		// Any PKCS#11 error that is no verdict on the request (CKR_FUNCTION_FAILED,
		// CKR_GENERAL_ERROR, CKR_DEVICE_MEMORY...): the token failed, the request did not.
		return http.StatusServiceUnavailable, "the appliance token is unavailable (it failed an operation); retry later"
	case errors.Is(err, escrow.ErrRecoveryKey):
		// The request's recovery key is the appliance's, whatever mechanism it lacks.
		return http.StatusInternalServerError, "the recovery key of this request in the appliance token is unusable; an administrator must look at the log"
	case errors.Is(err, hsm.ErrMechanism) && errors.Is(err, cms.ErrDecrypt):
		// The client chose the RSA-OAEP hash of its envelope to the transport key.
		return http.StatusBadRequest, "the appliance token cannot do this mechanism (RSA-OAEP here needs SHA-1: openssl cms -keyopt rsa_oaep_md:sha1)"
	case errors.Is(err, hsm.ErrMechanism):
		// Any other key of the appliance (CA, audit, OCSP) lacking a mechanism is its own fault.
		return http.StatusInternalServerError, "the appliance token refused a mechanism it needs; an administrator must look at the log"
	case errors.Is(err, escrow.ErrNoRecoverySet):
		return http.StatusServiceUnavailable, err.Error()
	case errors.Is(err, escrow.ErrRecordMismatch):
		// A tampered or damaged archive is the appliance's fault: the class is named, the
		// record, the row and the reason go to the log only.
		return http.StatusInternalServerError, strings.Replace(integrityMessage, "certificate;", "certificate (its escrow record does not match it);", 1)
	case errors.Is(err, escrow.ErrIntegrity), errors.Is(err, check.ErrInconsistent):
		return http.StatusInternalServerError, integrityMessage
	case errors.As(err, &hs):
		return hs.code, hs.msg
	case errors.Is(err, escrow.ErrTooManyFailures):
		return http.StatusTooManyRequests, fmt.Sprintf("%v; retry after %d seconds at most (the lock-out ends %s after the refused approvals)",
			err, int(kraApprovalLockout.Seconds()), kraApprovalLockout)
	case errors.Is(err, escrow.ErrTooManyPending):
		return http.StatusTooManyRequests, err.Error()
	case errors.Is(err, policy.ErrQuorum), errors.Is(err, escrow.ErrAlreadyApproved),
		errors.Is(err, policy.ErrConsumed), errors.Is(err, policy.ErrRequestClosed), errors.Is(err, policy.ErrExpired),
		errors.Is(err, policy.ErrNotRecoverable), errors.Is(err, escrow.ErrDrillClosed), errors.Is(err, escrow.ErrRequestsFull):
		return http.StatusConflict, err.Error()
	case errors.Is(err, policy.ErrNotAllowed), errors.Is(err, policy.ErrOwnKey):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, policy.ErrNothingToRecover):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, escrow.ErrKeyArchivedElsewhere), errors.Is(err, escrow.ErrAlreadyRevoked),
		errors.Is(err, escrow.ErrNotIssued), errors.Is(err, escrow.ErrInRecoverySet),
		errors.Is(err, escrow.ErrKeyInUse), errors.Is(err, escrow.ErrKRANameTaken):
		return http.StatusConflict, err.Error()
	case errors.Is(err, escrow.ErrBadApproval), errors.Is(err, escrow.ErrBadDrillProof):
		return http.StatusBadRequest, err.Error()
	case errors.As(err, &rej), errors.Is(err, policy.ErrRejected):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, escrow.ErrInvalidRequest), errors.Is(err, policy.ErrInvalidMailbox), errors.Is(err, policy.ErrTooManyRecords):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, escrow.ErrCodeUsed), errors.Is(err, escrow.ErrCodeExpired), errors.Is(err, escrow.ErrUnauthorized):
		return http.StatusUnauthorized, err.Error()
	case errors.Is(err, escrow.ErrForbidden), errors.Is(err, policy.ErrForbidden):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, policy.ErrUnknownTemplate), errors.Is(err, escrow.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, ca.ErrLint):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "request timed out; retry later"
	}
	return http.StatusInternalServerError, "internal error"
}

// fail answers with the status of err. JSON callers get {"error": "..."}.
func (a *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	a.noteStorageFault(err)
	code, msg := status(err)
	switch {
	case code >= 500:
		a.log.Error("request failed", "route", r.Pattern, "err", err)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		// Failed logins are in the audit trail, bounded (auditHTTP): an outsider's storm of
		// them must not flood the log either.
		a.log.Debug("request refused", "route", r.Pattern, "status", code, "reason", msg)
	default:
		a.log.Info("request refused", "route", r.Pattern, "status", code, "reason", msg)
	}
	if code == http.StatusUnauthorized && r.TLS != nil && len(r.TLS.PeerCertificates) == 0 {
		w.Header().Set("WWW-Authenticate", `Basic realm="keyarc enrollment"`)
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	if errors.Is(err, escrow.ErrTooManyFailures) {
		w.Header().Set("Retry-After", strconv.Itoa(int(kraApprovalLockout.Seconds())))
	}
	if strings.HasPrefix(r.URL.Path, "/api/") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"error": msg})
		return
	}
	http.Error(w, msg, code)
}

// refused counts a refusal by template (only known template names become labels) and class.
func (a *Server) refused(template string, err error) {
	if _, ok := a.svc.Templates[template]; !ok {
		template = "unknown"
	}
	a.metrics.Refused(template, refusalClass(err))
}

// handleServerKeygen serves EST serverkeygen (RFC 7030 4.4.2): the appliance generates the key,
// archives it, and answers multipart/mixed with the private key (application/pkcs8) and the
// certificate (certs-only PKCS#7). The key travels inside this TLS connection only.
func (a *Server) handleServerKeygen(w http.ResponseWriter, r *http.Request) {
	who, template, err := a.authenticateFor(r, r.PathValue("template"), false, nil)
	if err != nil {
		a.refuse(w, r, template, err)
		return
	}
	csr, err := readCSR(w, r)
	if err != nil {
		a.refuse(w, r, template, err)
		return
	}
	issued, pkcs8, err := a.svc.ServerKeygen(r.Context(), who, escrow.EnrollRequest{Template: template, CSR: csr})
	if err != nil {
		a.refuse(w, r, template, err)
		return
	}
	defer clear(pkcs8)
	p7, err := cms.CertsOnly(issued.Certificate)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	part := func(contentType string, der []byte) {
		h := textproto.MIMEHeader{}
		h.Set("Content-Type", contentType)
		h.Set("Content-Transfer-Encoding", "base64")
		pw, _ := mw.CreatePart(h)
		io.WriteString(pw, base64.StdEncoding.EncodeToString(der)+"\r\n")
	}
	part("application/pkcs8", pkcs8)
	part("application/pkcs7-mime; smime-type=certs-only", p7)
	mw.Close()
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.Header().Set("Cache-Control", "no-store") // it holds the private key
	w.Write(buf.Bytes())
	clear(buf.Bytes())
}
