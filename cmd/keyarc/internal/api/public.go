package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
)

// The public listener serves, over plain HTTP, what every certificate's public URLs point at
// (config public_url, escrow/ca's paths):
//
//	GET/HEAD /crl/ca.crl  the newest CRL, DER (application/pkix-crl), from the store
//	GET/HEAD /ca.crt      the CA certificate, DER (application/pkix-cert)
//	/ocsp, /ocsp/...      OCSP, by the OCSP handler (404 when there is none)
//
// Plain HTTP because relying parties fetch these without TLS (RFC 5280 §4.2.1.13, RFC 6960
// Appendix A; the S/MIME BR ask for http:// CDP URLs), and because what is served is signed.
// Nothing here needs the token: a CRL is built by the publisher (escrow.CRLPublisher) and
// stored, and this listener only reads the store, so CRLs are served while the token is away.
// Only DER is served: RFC 5280 §4.2.1.13 says a CDP's HTTP URL points to a DER CRL, and
// §4.2.2.1 that caIssuers points to a DER certificate (or a certs-only CMS bundle).

const (
	// crlMaxAge bounds the Cache-Control max-age of a CRL: a cache in front (a web server, a
	// CDN) serves a CRL at most this long after a newer one is stored, so that a revocation
	// reaches relying parties within about a minute plus the publisher's delay. The max-age is
	// also never beyond the CRL's nextUpdate.
	crlMaxAge = 60 * time.Second
	// crlRecheck is how often the cached CRL is compared with the store's newest, in case
	// a CRL was stored by another process; the publisher of this process hands its CRLs to
	// the cache at once.
	crlRecheck = 30 * time.Second
	// caCertMaxAge is the Cache-Control max-age of the CA certificate.
	caCertMaxAge = 24 * time.Hour
)

// servedCRL is a CRL as served: its bytes, cached in memory, keyed by its number.
type servedCRL struct {
	number     int64
	der        []byte
	thisUpdate time.Time
	nextUpdate time.Time
	etag       string
}

// crlCache holds the newest CRL's bytes, so that a CRL is read from the store once per
// number, never built nor read per request.
type crlCache struct {
	db      store.Store
	log     *slog.Logger
	mu      sync.Mutex // guards cur and checked; held while reading the store
	cur     *servedCRL
	checked time.Time
}

func newCRLCache(db store.Store, log *slog.Logger) *crlCache { return &crlCache{db: db, log: log} }

// put replaces the cached CRL by c if c is newer (the publisher's hook).
func (c *crlCache) put(crl store.CRL) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(&crl)
	c.checked = time.Now()
}

func (c *crlCache) putLocked(crl *store.CRL) {
	if c.cur != nil && crl.Number <= c.cur.number {
		return
	}
	c.cur = &servedCRL{number: crl.Number, der: crl.DER, thisUpdate: crl.ThisUpdate, nextUpdate: crl.NextUpdate,
		etag: `"crl-` + strconv.FormatInt(crl.Number, 10) + `"`}
}

// get returns the newest CRL: the cached one, re-read from the store at most every
// crlRecheck. A store that fails while a CRL is cached leaves the cached one served.
func (c *crlCache) get(ctx context.Context) (*servedCRL, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && time.Since(c.checked) < crlRecheck {
		return c.cur, nil
	}
	var latest *store.CRL
	err := c.db.View(ctx, func(tx store.Tx) error {
		var err error
		latest, err = tx.LatestCRL()
		return err
	})
	switch {
	case err == nil:
		c.putLocked(latest)
		c.checked = time.Now()
	case c.cur != nil:
		c.log.Warn("public listener: cannot read the newest CRL; serving the cached one", "number", c.cur.number, "err", err)
		c.checked = time.Now()
	default:
		return nil, err
	}
	return c.cur, nil
}

// publicRoutes is the public listener's handler.
func (a *Server) publicRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(ca.CRLPath, a.handleCRL)
	mux.HandleFunc(ca.CACertPath, a.handleCACert)
	ocsp := http.Handler(http.NotFoundHandler())
	if a.ocsp != nil {
		ocsp = a.ocsp
	}
	// An OCSP GET carries its request in base64 in the path (RFC 6960 appendix A), where "//"
	// may occur: ServeMux would answer such a path with a redirect to its cleaned form, so
	// OCSP is dispatched before the mux, on the path as sent.
	return a.instrumentPublic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isOCSPPath(r.URL.Path) {
			ocsp.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
}

// isOCSPPath reports whether path is the OCSP URL or below it.
func isOCSPPath(path string) bool {
	return path == ca.OCSPPath || strings.HasPrefix(path, ca.OCSPPath+"/")
}

// instrumentPublic counts the public listener's answers in keyarc_http_requests_total with
// routes named public:<path>. The counters are bound once per route and status code: the
// listener answers OCSP storms, and binding labels per request cost more than the count.
func (a *Server) instrumentPublic(next http.Handler) http.Handler {
	const (
		routeOCSP = iota
		routeCRL
		routeCACert
		routeUnmatched
	)
	names := [...]string{routeOCSP: "public:" + ca.OCSPPath, routeCRL: "public:" + ca.CRLPath,
		routeCACert: "public:" + ca.CACertPath, routeUnmatched: "public:unmatched"}
	var bound [len(names)]sync.Map // status code → prometheus.Counter
	counter := func(route, code int) prometheus.Counter {
		if c, ok := bound[route].Load(code); ok {
			return c.(prometheus.Counter)
		}
		c := a.metrics.requests.WithLabelValues(names[route], strconv.Itoa(code))
		bound[route].Store(code, c)
		return c
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := routeUnmatched
		switch p := r.Pattern; {
		case isOCSPPath(r.URL.Path):
			route = routeOCSP
		case p == ca.CRLPath:
			route = routeCRL
		case p == ca.CACertPath:
			route = routeCACert
		}
		counter(route, sw.code).Inc()
	})
}

// getOrHead refuses other methods with 405 and the Allow header.
func getOrHead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, r.Method+" is not allowed here: use GET or HEAD", http.StatusMethodNotAllowed)
	return false
}

// handleCRL serves the newest stored CRL with an ETag (its number), Last-Modified (its
// thisUpdate) and a Cache-Control max-age that ends by its nextUpdate; conditional requests
// (If-None-Match, If-Modified-Since) get 304, and Range requests their part
// (http.ServeContent). Before the first CRL, or with the storage failing and nothing cached,
// the answer is 503: the appliance's fault, never the client's.
func (a *Server) handleCRL(w http.ResponseWriter, r *http.Request) {
	if !getOrHead(w, r) {
		return
	}
	c, err := a.crls.get(r.Context())
	if err != nil {
		w.Header().Set("Retry-After", "10")
		if errors.Is(err, store.ErrNotFound) {
			http.Error(w, "no CRL has been published yet; the appliance publishes one at start", http.StatusServiceUnavailable)
			return
		}
		a.log.Error("public listener: read the CRL", "err", err)
		http.Error(w, "the CRL cannot be read now (storage unavailable)", http.StatusServiceUnavailable)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/pkix-crl")
	h.Set("ETag", c.etag)
	maxAge := min(crlMaxAge, time.Until(c.nextUpdate))
	if maxAge > 0 {
		h.Set("Cache-Control", "public, no-transform, max-age="+strconv.Itoa(int(maxAge/time.Second)))
	} else {
		// Past nextUpdate (the publisher has been failing): still the newest there is, but
		// caches must come back for the next one.
		h.Set("Cache-Control", "public, no-transform, max-age=0, must-revalidate")
	}
	http.ServeContent(w, r, "", c.thisUpdate, bytes.NewReader(c.der))
}

// handleCACert serves the CA certificate, DER, the target of every certificate's AIA
// caIssuers URL.
func (a *Server) handleCACert(w http.ResponseWriter, r *http.Request) {
	if !getOrHead(w, r) {
		return
	}
	sum := sha256.Sum256(a.caCert.Raw)
	h := w.Header()
	h.Set("Content-Type", "application/pkix-cert")
	h.Set("ETag", `"ca-`+hex.EncodeToString(sum[:8])+`"`)
	h.Set("Cache-Control", "public, no-transform, max-age="+strconv.Itoa(int(caCertMaxAge/time.Second)))
	http.ServeContent(w, r, "", a.caCert.NotBefore, bytes.NewReader(a.caCert.Raw))
}

// publicServer is the plain-HTTP server of the public listener, with the HTTPS listener's
// timeouts.
func (a *Server) publicServer() *http.Server {
	return &http.Server{
		Handler:           a.publicRoutes(),
		ReadHeaderTimeout: a.cfg.HTTP.ReadHeaderTimeout.Duration,
		ReadTimeout:       a.cfg.HTTP.ReadTimeout.Duration,
		WriteTimeout:      a.cfg.HTTP.WriteTimeout.Duration,
		IdleTimeout:       a.cfg.HTTP.IdleTimeout.Duration,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
}

// listenPublic opens the public listener. An address set in the configuration (or with
// --public-addr) that cannot be opened refuses the start; the implicit default
// (127.0.0.1:8080, public_listen not set) only warns when it is taken, so that several
// development appliances can run on one machine: certificates then point at a URL this
// appliance does not serve, which the warning says.
func (a *Server) listenPublic() (net.Listener, error) {
	addr := a.cfg.PublicListenAddr()
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if a.cfg.PublicListenDefault() {
		a.log.Warn("public listener not started: the default address is taken; set public_listen (CRL, OCSP and the CA certificate are not served)",
			"addr", addr, "public_url", string(a.cfg.PublicURL), "err", err)
		return nil, nil
	}
	return nil, err
}
