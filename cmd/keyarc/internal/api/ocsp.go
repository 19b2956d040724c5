package api

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/escrow/store"
)

// OCSPPath is where the responder is mounted: POST to it, GET below it (RFC 6960 A.1).
const OCSPPath = "/ocsp"

// ocspLookupTimeout bounds one store lookup.
const ocspLookupTimeout = 5 * time.Second

// The handler keeps the responses it read for ocspCacheTTL, at most ocspCacheMax of them: a
// response re-signed in the store (a revocation) is served at most a second later, and a
// burst of requests for the same certificates costs one store read per certificate a second.
const (
	ocspCacheTTL = time.Second
	ocspCacheMax = 100_000
)

type ocspCached struct {
	resp    *store.OCSPResponse
	expires time.Time
}

// OCSPMetrics are the responder's and the pre-signer's metrics. It implements
// presign.Metrics.
type OCSPMetrics struct {
	responses  *prometheus.CounterVec
	stale      prometheus.Counter
	signed     prometheus.Counter
	passes     *prometheus.CounterVec
	lastPass   prometheus.Gauge
	certExpiry prometheus.Gauge
}

// OCSP response outcomes counted in keyarc_ocsp_responses_total{status}: the OCSP response
// statuses, and "oversized" for a request refused with 413 before it was read.
var ocspStatuses = []string{"successful", "malformedRequest", "unauthorized", "tryLater", "oversized"}

// NewOCSPMetrics registers the OCSP metrics with reg:
//
//   - keyarc_ocsp_responses_total{status}: answers by status (see above);
//   - keyarc_ocsp_stale_responses_total: stored responses served after their nextUpdate
//     (the pre-signer is behind: the token or the storage has been away);
//   - keyarc_ocsp_signed_total: responses pre-signed and stored;
//   - keyarc_ocsp_presign_passes_total{result}: passes of the pre-signer, ok or failed;
//   - keyarc_ocsp_presign_last_success_timestamp_seconds: the end of the last complete pass
//     (alert when it is older than a day: responses are refreshed after 3 days and expire
//     after 7);
//   - keyarc_ocsp_responder_cert_expiry_timestamp_seconds: when the responder certificate
//     expires (renewed 8 days before).
//
// # Errors
//
// The registerer's, for example when they are registered twice.
func NewOCSPMetrics(reg prometheus.Registerer) (*OCSPMetrics, error) {
	m := &OCSPMetrics{
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyarc_ocsp_responses_total",
			Help: "OCSP answers by status (OCSP response status, or oversized for HTTP 413)."}, []string{"status"}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyarc_ocsp_stale_responses_total",
			Help: "Pre-signed OCSP responses served after their nextUpdate."}),
		signed: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyarc_ocsp_signed_total",
			Help: "OCSP responses pre-signed and stored."}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyarc_ocsp_presign_passes_total",
			Help: "Passes of the OCSP pre-signer by result (ok, failed)."}, []string{"result"}),
		lastPass: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyarc_ocsp_presign_last_success_timestamp_seconds",
			Help: "Unix time of the end of the last OCSP pre-signing pass that signed everything due."}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyarc_ocsp_responder_cert_expiry_timestamp_seconds",
			Help: "Unix time at which the OCSP responder certificate expires."}),
	}
	for _, c := range []prometheus.Collector{m.responses, m.stale, m.signed, m.passes, m.lastPass, m.certExpiry} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, s := range ocspStatuses {
		m.responses.WithLabelValues(s)
	}
	m.passes.WithLabelValues("ok")
	m.passes.WithLabelValues("failed")
	return m, nil
}

// OCSPSigned implements presign.Metrics.
func (m *OCSPMetrics) OCSPSigned(n int) {
	if m != nil {
		m.signed.Add(float64(n))
	}
}

// OCSPPass implements presign.Metrics.
func (m *OCSPMetrics) OCSPPass(at time.Time, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.passes.WithLabelValues("failed").Inc()
		return
	}
	m.passes.WithLabelValues("ok").Inc()
	m.lastPass.Set(float64(at.Unix()))
}

// ResponderCertExpiry records the responder certificate's expiry.
func (m *OCSPMetrics) ResponderCertExpiry(t time.Time) {
	if m != nil {
		m.certExpiry.Set(float64(t.Unix()))
	}
}

func (m *OCSPMetrics) answered(status string) {
	if m != nil {
		m.responses.WithLabelValues(status).Inc()
	}
}

// OCSPHandlerConfig is what [NewOCSPHandler] needs.
type OCSPHandlerConfig struct {
	// Store holds the pre-signed responses (escrow/ocsp/presign keeps them current).
	Store store.Store
	// CA is the certificate whose certificates the responder answers for.
	CA      *x509.Certificate
	Metrics *OCSPMetrics // nil: none
	Log     *slog.Logger // nil: slog.Default()
	Now     func() time.Time
}

type ocspHandler struct {
	c      OCSPHandlerConfig
	issuer *ocsp.Issuer
	// Pre-encoded unsuccessful responses.
	malformed, unauthorized, tryLater []byte

	mu    sync.RWMutex
	cache map[string]ocspCached
}

func (h *ocspHandler) cached(serial string, now time.Time) *store.OCSPResponse {
	h.mu.RLock()
	c, ok := h.cache[serial]
	h.mu.RUnlock()
	if ok && now.Before(c.expires) {
		return c.resp
	}
	return nil
}

func (h *ocspHandler) remember(serial string, r *store.OCSPResponse, now time.Time) {
	h.mu.Lock()
	if len(h.cache) >= ocspCacheMax {
		clear(h.cache)
	}
	h.cache[serial] = ocspCached{resp: r, expires: now.Add(ocspCacheTTL)}
	h.mu.Unlock()
}

// NewOCSPHandler returns the OCSP responder (RFC 6960 over HTTP, RFC 5019 profile), mounted at
// [OCSPPath]: POST /ocsp with an application/ocsp-request body, GET /ocsp/{base64 request}. It
// answers from the store only and never signs: a stored response is served byte for byte.
//
// What it answers, and with which HTTP status (the OCSP status is in the body):
//
//   - a stored response: 200, successful; GET answers carry RFC 5019 caching headers
//     (Cache-Control max-age up to nextUpdate, Expires, Last-Modified = thisUpdate, ETag) and
//     get 304 for a matching If-None-Match;
//   - a request for a serial keyarc never issued (or only reserved), for another CA's
//     certificate (issuer name or key hash), or with a CertID hash other than SHA-1 or
//     SHA-256: 200, unauthorized (RFC 6960 §2.3; never "good" for a serial never issued);
//   - a request that is not a DER OCSPRequest, holds more than one CertID (RFC 5019 §2.1.1:
//     one per request, as responses are pre-signed), or a GET whose path is not base64:
//     400, malformedRequest;
//   - a body over 4 KiB: 413 (no OCSP body), other methods 405, another Content-Type 415;
//   - a certificate whose response is not signed yet (just issued), or a storage fault: 503,
//     tryLater, with Retry-After: a fault of the appliance is never a client error, and
//     503 keeps caches and CDNs from storing it (RFC 6960 lets HTTP carry any status; the OCSP
//     body still says tryLater to clients that read it).
//
// Unsuccessful answers carry Cache-Control: no-store. Responses read from the store are kept
// in memory for a second (at most 100,000 of them), so a re-signed response is served at most
// a second after it is stored. It fails only for a CA certificate
// whose public key cannot be read.
func NewOCSPHandler(c OCSPHandlerConfig) (http.Handler, error) {
	is, err := ocsp.NewIssuer(c.CA)
	if err != nil {
		return nil, err
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &ocspHandler{c: c, issuer: is, malformed: ocsp.ErrorResponse(ocsp.MalformedRequest),
		unauthorized: ocsp.ErrorResponse(ocsp.Unauthorized), tryLater: ocsp.ErrorResponse(ocsp.TryLater),
		cache: map[string]ocspCached{}}, nil
}

func (h *ocspHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	if path != OCSPPath && !strings.HasPrefix(path, OCSPPath+"/") {
		http.NotFound(w, r)
		return
	}
	var der []byte
	switch r.Method {
	case http.MethodGet:
		enc := strings.TrimPrefix(strings.TrimPrefix(path, OCSPPath), "/")
		if enc == "" {
			h.fail(w, http.StatusBadRequest, "malformedRequest", h.malformed)
			return
		}
		var err error
		if der, err = ocsp.DecodeGET(enc); err != nil {
			h.refuse(w, err)
			return
		}
	case http.MethodPost:
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/ocsp-request" {
				http.Error(w, "ocsp: POST needs Content-Type application/ocsp-request", http.StatusUnsupportedMediaType)
				return
			}
		}
		if r.ContentLength > ocsp.MaxRequestSize {
			h.oversized(w)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, ocsp.MaxRequestSize+1))
		if err != nil {
			h.fail(w, http.StatusBadRequest, "malformedRequest", h.malformed)
			return
		}
		if len(body) > ocsp.MaxRequestSize {
			h.oversized(w)
			return
		}
		der = body
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "ocsp: use GET or POST", http.StatusMethodNotAllowed)
		return
	}
	req, err := ocsp.ParseRequest(der)
	if err != nil {
		h.refuse(w, err)
		return
	}
	if len(req.CertIDs) != 1 {
		h.c.Log.Debug("ocsp: request with several CertIDs", "count", len(req.CertIDs))
		h.fail(w, http.StatusBadRequest, "malformedRequest", h.malformed)
		return
	}
	id := req.CertIDs[0]
	if !h.issuer.Matches(id) || id.Serial.Sign() <= 0 {
		h.fail(w, http.StatusOK, "unauthorized", h.unauthorized)
		return
	}
	serial := store.FormatSerial(id.Serial)
	now := h.c.Now()
	resp := h.cached(serial, now)
	if resp == nil {
		ctx, cancel := context.WithTimeout(r.Context(), ocspLookupTimeout)
		err = h.c.Store.View(ctx, func(tx store.Tx) error {
			var err error
			resp, err = tx.GetOCSPResponse(serial)
			return err
		})
		cancel()
		if err == nil {
			h.remember(serial, resp, now)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalid):
		// Never issued (ErrNotIssued wraps ErrNotFound too), or a serial no store can hold.
		h.fail(w, http.StatusOK, "unauthorized", h.unauthorized)
		return
	case errors.Is(err, store.ErrNoResponse):
		h.c.Log.Info("ocsp: no response signed yet", "serial", serial)
		h.fail(w, http.StatusServiceUnavailable, "tryLater", h.tryLater)
		return
	default:
		h.c.Log.Error("ocsp: storage fault", "serial", serial, "err", err)
		h.fail(w, http.StatusServiceUnavailable, "tryLater", h.tryLater)
		return
	}
	if !now.Before(resp.NextUpdate) && h.c.Metrics != nil {
		h.c.Metrics.stale.Inc()
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/ocsp-response")
	if r.Method == http.MethodGet {
		etag := `"` + serial + "-" + strconv.FormatInt(resp.ThisUpdate.Unix(), 36) + "-" + strconv.Itoa(revokedTag(resp)) + `"`
		maxAge := int64(resp.NextUpdate.Sub(now) / time.Second)
		if maxAge < 0 {
			maxAge = 0
		}
		hd.Set("Cache-Control", "max-age="+strconv.FormatInt(maxAge, 10)+", public, no-transform, must-revalidate")
		hd.Set("Expires", resp.NextUpdate.UTC().Format(http.TimeFormat))
		hd.Set("Last-Modified", resp.ThisUpdate.UTC().Format(http.TimeFormat))
		hd.Set("ETag", etag)
		if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatch(inm, etag) {
			h.c.Metrics.answered("successful")
			w.WriteHeader(http.StatusNotModified)
			return
		}
	} else {
		hd.Set("Cache-Control", "no-store")
	}
	hd.Set("Content-Length", strconv.Itoa(len(resp.DER)))
	h.c.Metrics.answered("successful")
	w.WriteHeader(http.StatusOK)
	w.Write(resp.DER)
}

func revokedTag(r *store.OCSPResponse) int {
	if r.Revoked {
		return 1 + r.Reason
	}
	return 0
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// refuse answers a request that did not parse.
func (h *ocspHandler) refuse(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ocsp.ErrTooLarge):
		h.oversized(w)
	case errors.Is(err, ocsp.ErrUnsupportedHash):
		h.fail(w, http.StatusOK, "unauthorized", h.unauthorized)
	default:
		h.c.Log.Debug("ocsp: malformed request", "err", err)
		h.fail(w, http.StatusBadRequest, "malformedRequest", h.malformed)
	}
}

func (h *ocspHandler) oversized(w http.ResponseWriter) {
	h.c.Metrics.answered("oversized")
	w.Header().Set("Connection", "close")
	http.Error(w, "ocsp: request larger than 4096 bytes", http.StatusRequestEntityTooLarge)
}

func (h *ocspHandler) fail(w http.ResponseWriter, code int, status string, body []byte) {
	h.c.Metrics.answered(status)
	hd := w.Header()
	hd.Set("Content-Type", "application/ocsp-response")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	if code == http.StatusServiceUnavailable {
		hd.Set("Retry-After", "30")
	}
	w.WriteHeader(code)
	w.Write(body)
}
