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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/escrow/store"
)

// OCSPPath is where the responder is mounted: POST to it, GET below it (RFC 6960 A.1).
const OCSPPath = "/ocsp"

// ocspLookupTimeout bounds one store lookup.
const ocspLookupTimeout = 5 * time.Second

// The handler keeps the responses it read in memory (at most ocspCacheMax of them), each
// with its header values prepared once, for ocspCacheTTL. With each response it reads the
// certificate's status: a response signed with another status than the certificate's now (a
// revocation the pre-signer has not signed yet) is kept for ocspRecheck only, so that the
// re-signed response is served at most a second after it is stored. A response signed "good"
// for a certificate now revoked is never served: tryLater until the revoked one is stored. A
// response past its nextUpdate is kept for ocspRecheck too. This process drops the responses
// of a revocation at once ([OCSPHandler.Invalidate]); changes made by another process writing
// the store are seen within ocspCacheTTL.
const (
	ocspCacheTTL = time.Minute
	ocspRecheck  = time.Second
	ocspCacheMax = 100_000
)

// ocspEntry is a stored response as served: its bytes and its header values, prepared once.
// It is immutable but for cc, which follows the clock.
type ocspEntry struct {
	resp    *store.OCSPResponse
	expires time.Time // read the store again from then on
	// withheld: resp says good, and the certificate is revoked since (its revoked response is
	// not signed yet). Answered tryLater, never with resp.
	withheld bool
	// Header values, shared by every answer: net/http only reads them.
	length, etagH, lastModified, expiresH []string
	etag                                  string
	cc                                    atomic.Pointer[ocspMaxAge]
}

// ocspMaxAge is a Cache-Control value, right during the second sec (Unix).
type ocspMaxAge struct {
	sec int64
	v   []string
}

// Header values of every answer.
var (
	hvOCSPResponse = []string{"application/ocsp-response"}
	hvNoStore      = []string{"no-store"}
	hvRetryAfter   = []string{"30"}
)

func newOCSPEntry(r *store.OCSPResponse, expires time.Time) *ocspEntry {
	e := &ocspEntry{resp: r, expires: expires,
		etag: `"` + r.Serial + "-" + strconv.FormatInt(r.ThisUpdate.Unix(), 36) + "-" + strconv.Itoa(revokedTag(r)) + `"`}
	e.length = []string{strconv.Itoa(len(r.DER))}
	e.etagH = []string{e.etag}
	e.lastModified = []string{r.ThisUpdate.UTC().Format(http.TimeFormat)}
	e.expiresH = []string{r.NextUpdate.UTC().Format(http.TimeFormat)}
	return e
}

// ocspCacheMaxAge bounds the Cache-Control max-age of an OCSP GET answer, as crlMaxAge bounds a
// CRL's: a cache in front (a web server, a CDN) would otherwise serve a "good" answer until its
// nextUpdate, up to 7 days after a revocation. A revalidation with the ETag costs a 304.
const ocspCacheMaxAge = 60 * time.Second

// cacheControl returns the Cache-Control value of a GET answer at now: max-age is ocspCacheMaxAge,
// and never runs past nextUpdate, counted from the end of now's second so that it is never
// too long.
func (e *ocspEntry) cacheControl(now time.Time) []string {
	sec := now.Unix()
	if c := e.cc.Load(); c != nil && c.sec == sec {
		return c.v
	}
	maxAge := min(max(int64(e.resp.NextUpdate.Sub(time.Unix(sec+1, 0))/time.Second), 0), int64(ocspCacheMaxAge/time.Second))
	c := &ocspMaxAge{sec: sec, v: []string{"max-age=" + strconv.FormatInt(maxAge, 10) + ", public, no-transform, must-revalidate"}}
	e.cc.Store(c)
	return c.v
}

// OCSPMetrics are the responder's and the pre-signer's metrics. It implements
// presign.Metrics.
type OCSPMetrics struct {
	responses  *prometheus.CounterVec
	byStatus   map[string]prometheus.Counter // responses, bound once per status
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
	m.byStatus = make(map[string]prometheus.Counter, len(ocspStatuses))
	for _, s := range ocspStatuses {
		m.byStatus[s] = m.responses.WithLabelValues(s)
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
		m.byStatus[status].Inc()
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
	// SignMissing, when set, signs and stores the responses of serials, issued certificates
	// the store holds no response for yet (presign.Signer.SignSerials): a certificate issued a
	// moment ago, whose first response waits for the pre-signer's next pass, is then answered
	// at once instead of with tryLater; so is a revoked certificate whose stored response
	// still says good. Nil: tryLater until the pre-signer has stored it.
	SignMissing func(ctx context.Context, serials []string) (int, error)
}

// OCSPHandler is the OCSP responder made by [NewOCSPHandler].
type OCSPHandler struct {
	c      OCSPHandlerConfig
	issuer *ocsp.Issuer
	// Pre-encoded unsuccessful responses.
	malformed, unauthorized, tryLater []byte

	// signing holds the serials whose missing response a request is having signed; another
	// request for one waits for it rather than signing again.
	signMu  sync.Mutex
	signing map[string]chan struct{}

	mu    sync.RWMutex
	cache map[string]*ocspEntry
	// gen counts the calls of Invalidate: a response read before one is not kept long.
	gen uint64
}

var _ http.Handler = (*OCSPHandler)(nil)

func (h *OCSPHandler) cached(serial []byte, now time.Time) (*ocspEntry, uint64) {
	h.mu.RLock()
	e, gen := h.cache[string(serial)], h.gen
	h.mu.RUnlock()
	if e != nil && now.Before(e.expires) {
		return e, gen
	}
	return nil, gen
}

// ocspFreshness is how a stored response stands to its certificate's status now.
type ocspFreshness int

const (
	ocspCurrent  ocspFreshness = iota // signed with the certificate's status now
	ocspOlder                         // revoked, signed with an older reason
	ocspWithheld                      // signed good, and the certificate is revoked since
)

// load reads the stored response of serial and tells how it stands to the certificate's
// current status.
func (h *OCSPHandler) load(ctx context.Context, serial string) (r *store.OCSPResponse, fresh ocspFreshness, err error) {
	ctx, cancel := context.WithTimeout(ctx, ocspLookupTimeout)
	defer cancel()
	err = h.c.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if r, err = tx.GetOCSPResponse(serial); err != nil {
			return err
		}
		c, err := tx.GetCertificate(serial)
		if err != nil {
			return err
		}
		switch revoked := c.State == store.StateRevoked; {
		case revoked && !r.Revoked:
			fresh = ocspWithheld
		case revoked != r.Revoked || revoked && c.RevocationReason != r.Reason:
			fresh = ocspOlder
		default:
			fresh = ocspCurrent
		}
		return nil
	})
	return r, fresh, err
}

// remember keeps r, read from the store at now when Invalidate had been called gen times,
// and returns it as served.
func (h *OCSPHandler) remember(serial string, r *store.OCSPResponse, fresh ocspFreshness, now time.Time, gen uint64) *ocspEntry {
	ttl := ocspCacheTTL
	if fresh != ocspCurrent || !now.Before(r.NextUpdate) {
		ttl = ocspRecheck
	}
	e := newOCSPEntry(r, now.Add(ttl))
	e.withheld = fresh == ocspWithheld
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen != gen {
		// A revocation was committed while r was read: r may be older than it.
		e.expires = now.Add(ocspRecheck)
	}
	if len(h.cache) >= ocspCacheMax {
		clear(h.cache)
	}
	h.cache[serial] = e
	return e
}

// Invalidate drops the cached responses of serials (canonical, see store.NormalizeSerial),
// whose status changed: a revocation, a reason changed to keyCompromise. Call it after the
// change is committed (chain it into escrow.Service.Revoked): the next request reads the
// store, finds the response signed with the old status (a good one is withheld: tryLater),
// and reads again every second until the pre-signer has stored the new one. It never blocks
// for long.
func (h *OCSPHandler) Invalidate(serials []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	for _, s := range serials {
		delete(h.cache, s)
	}
}

// NewOCSPHandler returns the OCSP responder (RFC 6960 over HTTP, RFC 5019 profile), mounted at
// [OCSPPath]: POST /ocsp with an application/ocsp-request body, GET /ocsp/{base64 request}. It
// answers from the store only and never signs: a stored response is served byte for byte.
//
// What it answers, and with which HTTP status (the OCSP status is in the body):
//
//   - a stored response: 200, successful; GET answers carry RFC 5019 caching headers
//     (Cache-Control max-age at most a minute and never past nextUpdate, Expires,
//     Last-Modified = thisUpdate, ETag) and
//     get 304 for a matching If-None-Match;
//   - a request for a serial keyarc never issued (or only reserved), for another CA's
//     certificate (issuer name or key hash), or with a CertID hash other than SHA-1 or
//     SHA-256: 200, unauthorized (RFC 6960 §2.3; never "good" for a serial never issued);
//   - a request that is not a DER OCSPRequest, holds more than one CertID (RFC 5019 §2.1.1:
//     one per request, as responses are pre-signed), or a GET whose path is not base64:
//     400, malformedRequest;
//   - a body over 4 KiB: 413 (no OCSP body), other methods 405, another Content-Type 415;
//   - a certificate whose response is not signed yet (just issued): signed at once when
//     [OCSPHandlerConfig.SignMissing] is set, and served as above;
//   - a certificate revoked whose stored response still says good (its revoked response is
//     not signed yet: the token is away, or the pre-signer is a moment behind): 503, tryLater,
//     never the good response;
//   - a response that cannot be signed now (the token is away), or a storage fault: 503,
//     tryLater, with Retry-After: a fault of the appliance is never a client error, and
//     503 keeps caches and CDNs from storing it (RFC 6960 lets HTTP carry any status; the OCSP
//     body still says tryLater to clients that read it).
//
// Unsuccessful answers carry Cache-Control: no-store. Responses read from the store are kept
// in memory (at most 100,000 of them) with their header values, for a minute; a response
// signed with another status than its certificate's now (a revocation not signed yet), or
// past its nextUpdate, for a second only, so that a revocation is served at most a second
// after its response is stored. A revocation committed by this process reaches the handler
// through [OCSPHandler.Invalidate]; one committed by another process writing the same store,
// within a minute. It fails only for a CA certificate whose public key cannot be read.
func NewOCSPHandler(c OCSPHandlerConfig) (*OCSPHandler, error) {
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
	return &OCSPHandler{c: c, issuer: is, malformed: ocsp.ErrorResponse(ocsp.MalformedRequest),
		unauthorized: ocsp.ErrorResponse(ocsp.Unauthorized), tryLater: ocsp.ErrorResponse(ocsp.TryLater),
		cache: map[string]*ocspEntry{}, signing: map[string]chan struct{}{}}, nil
}

// signMissing has the missing response of serial signed (by this request, or by another one
// already doing it) and reads it. It returns ErrNoResponse when there is still none.
func (h *OCSPHandler) signMissing(ctx context.Context, serial string) (*store.OCSPResponse, ocspFreshness, error) {
	h.signMu.Lock()
	wait, busy := h.signing[serial]
	if !busy {
		if len(h.signing) >= ocspMaxSigning {
			h.signMu.Unlock()
			return nil, 0, store.ErrNoResponse
		}
		wait = make(chan struct{})
		h.signing[serial] = wait
	}
	h.signMu.Unlock()
	if busy {
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	} else {
		sctx, cancel := context.WithTimeout(ctx, ocspLookupTimeout)
		_, err := h.c.SignMissing(sctx, []string{serial})
		cancel()
		h.signMu.Lock()
		delete(h.signing, serial)
		h.signMu.Unlock()
		close(wait)
		if err != nil {
			return nil, 0, err
		}
	}
	return h.load(ctx, serial)
}

// ocspMaxSigning bounds the missing responses being signed on demand at once.
const ocspMaxSigning = 64

// ServeHTTP answers one OCSP request (see [NewOCSPHandler]).
func (h *OCSPHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
		if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/ocsp-request" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/ocsp-request" {
				http.Error(w, "ocsp: POST needs Content-Type application/ocsp-request", http.StatusUnsupportedMediaType)
				return
			}
		}
		if r.ContentLength > ocsp.MaxRequestSize {
			h.oversized(w)
			return
		}
		body, err := readBody(r.Body, r.ContentLength)
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
	// The canonical serial (store.FormatSerial of a positive serial), formatted on the
	// stack: a map lookup with string(key) does not allocate.
	var buf [2*64 + 2]byte
	key := id.Serial.Append(buf[:0], 16)
	now := h.c.Now()
	e, gen := h.cached(key, now)
	if e == nil {
		var resp *store.OCSPResponse
		var fresh ocspFreshness
		resp, fresh, err = h.load(r.Context(), string(key))
		if errors.Is(err, store.ErrNoResponse) && h.c.SignMissing != nil {
			resp, fresh, err = h.signMissing(r.Context(), string(key))
		}
		if err == nil && fresh == ocspWithheld && h.c.SignMissing != nil {
			// The revocation is not signed yet (the pre-signer is a moment behind, or its
			// signal was lost in a crash): have it signed now. If that fails too (the token
			// away), the good response stays withheld: tryLater, read again in a second.
			if r2, f2, err2 := h.signMissing(r.Context(), string(key)); err2 == nil {
				resp, fresh = r2, f2
			} else {
				h.c.Log.Debug("ocsp: revocation not signed on demand", "serial", string(key), "err", err2)
			}
		}
		if err == nil {
			e = h.remember(string(key), resp, fresh, now, gen)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalid):
		// Never issued (ErrNotIssued wraps ErrNotFound too), or a serial no store can hold.
		h.fail(w, http.StatusOK, "unauthorized", h.unauthorized)
		return
	case errors.Is(err, store.ErrNoResponse):
		h.c.Log.Info("ocsp: no response signed yet", "serial", string(key))
		h.fail(w, http.StatusServiceUnavailable, "tryLater", h.tryLater)
		return
	default:
		h.c.Log.Error("ocsp: storage or token fault", "serial", string(key), "err", err)
		h.fail(w, http.StatusServiceUnavailable, "tryLater", h.tryLater)
		return
	}
	if e.withheld {
		// A good response for a revoked certificate would tell relying parties to trust it.
		h.c.Log.Debug("ocsp: revocation not signed yet; answering tryLater", "serial", string(key))
		h.fail(w, http.StatusServiceUnavailable, "tryLater", h.tryLater)
		return
	}
	if !now.Before(e.resp.NextUpdate) && h.c.Metrics != nil {
		h.c.Metrics.stale.Inc()
	}
	hd := w.Header()
	hd["Content-Type"] = hvOCSPResponse
	if r.Method == http.MethodGet {
		hd["Cache-Control"] = e.cacheControl(now)
		hd["Expires"] = e.expiresH
		hd["Last-Modified"] = e.lastModified
		hd["Etag"] = e.etagH
		if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagMatch(inm[0], e.etag) {
			h.c.Metrics.answered("successful")
			w.WriteHeader(http.StatusNotModified)
			return
		}
	} else {
		hd["Cache-Control"] = hvNoStore
	}
	hd["Content-Length"] = e.length
	h.c.Metrics.answered("successful")
	w.WriteHeader(http.StatusOK)
	w.Write(e.resp.DER)
}

// readBody reads a request body of at most ocsp.MaxRequestSize+1 bytes, in one buffer sized
// by the Content-Length when there is one.
func readBody(body io.Reader, length int64) ([]byte, error) {
	if length < 0 || length > ocsp.MaxRequestSize {
		return io.ReadAll(io.LimitReader(body, ocsp.MaxRequestSize+1))
	}
	b := make([]byte, length, length+1)
	if _, err := io.ReadFull(body, b); err != nil {
		return nil, err
	}
	// A body longer than its Content-Length is the server's to refuse; nothing is left here.
	return b, nil
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
func (h *OCSPHandler) refuse(w http.ResponseWriter, err error) {
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

func (h *OCSPHandler) oversized(w http.ResponseWriter) {
	h.c.Metrics.answered("oversized")
	w.Header().Set("Connection", "close")
	http.Error(w, "ocsp: request larger than 4096 bytes", http.StatusRequestEntityTooLarge)
}

func (h *OCSPHandler) fail(w http.ResponseWriter, code int, status string, body []byte) {
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
