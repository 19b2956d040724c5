package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
)

// Server is a running keyarc appliance as HTTP sees it: the engine, the token and store it
// was assembled on, and what serving adds (routes, throttling, audit checkpoints, the
// consistency check, bulk jobs, readiness).
type Server struct {
	// version is the build's version, recorded in the audit trail and the build-info metric.
	version  string
	cfg      *config.Config
	log      *slog.Logger
	tok      *hsm.Token
	db       store.Store
	svc      *escrow.Service
	caCert   *x509.Certificate
	caPool   *x509.CertPool
	metrics  *Metrics
	oaepHash string
	audit    *applianceAudit
	// bulkSt runs bulk jobs.
	bulkSt *bulkState
	// lock is held on the state folder while serving.
	lock *os.File
	// ready is 1 while the token answers.
	ready atomic.Bool
	// tokHealth is the token's last cause of not being ready, logged once per change.
	tokHealth tokenHealth
	// logins throttles failed logins and bounds their audit entries (http_throttle.go).
	logins *loginThrottle
	// check is the consistency check of the stored certificates (check.go).
	check *applianceCheck
	// storage is the last storage fault seen, for readiness (storage_health.go).
	storage storageHealth
	// ocsp serves /ocsp and /ocsp/ on the public listener; nil answers 404 there.
	ocsp http.Handler
	// stop is Parts.Stop, called by Close.
	stop func()
	// crlPub publishes CRLs (nil: none are published, the stored ones are served); crls
	// caches the newest for the public listener (public.go).
	crlPub *escrow.CRLPublisher
	crls   *crlCache
}

// Parts are what package main assembles before the server starts: the configuration, the
// state lock, the token and store, the engine built on them, and what start-up checked (the
// CA certificate, the OAEP hash the token's self-test chose).
type Parts struct {
	Config   *config.Config
	Log      *slog.Logger
	Version  string
	Lock     *os.File
	Token    *hsm.Token
	DB       store.Store
	Service  *escrow.Service
	Issuer   *ca.Issuer
	CACert   *x509.Certificate
	OAEPHash string
	Metrics  *Metrics
	// OCSP, when set, serves /ocsp and /ocsp/ on the public listener.
	OCSP http.Handler
	// CRL, when set, publishes CRLs while the server serves; New hands its CRLs to the public
	// listener's cache and its counts to Metrics.
	CRL *escrow.CRLPublisher
	// Stop, when set, stops what package main started beside the server (the OCSP
	// pre-signer); Close calls it first, before the store and the token close.
	Stop func()
}

// Close releases the store, the token and the state lock, in that order; it skips what is
// nil, so it also cleans up after a failed assembly.
func (p *Parts) Close() {
	if p.Stop != nil {
		p.Stop()
		p.Stop = nil
	}
	if p.DB != nil {
		if err := p.DB.Close(); err != nil {
			p.Log.Error("close database", "err", err)
		}
		p.DB = nil
	}
	if p.Token != nil {
		if err := p.Token.Close(); err != nil {
			p.Log.Error("close token", "err", err)
		}
		p.Token = nil
	}
	if p.Lock != nil {
		p.Lock.Close()
		p.Lock = nil
	}
}

// New starts the server side of the appliance on p: the audit trail's checkpoints and
// start-up entry, the start-up consistency check, the bulk job manager, the sweep of
// issuances a crash left half-done and the expiry of old recovery requests. It registers the
// server's metrics on reg. On error it stops what it started and leaves p to the caller; on
// success the server owns p and [Server.Close] releases it. Its errors are those of the audit
// trail (escrow/audit), the consistency check and the store.
func New(p Parts, reg prometheus.Registerer) (*Server, error) {
	a := &Server{cfg: p.Config, log: p.Log, version: p.Version, tok: p.Token, db: p.DB, svc: p.Service,
		caCert: p.CACert, oaepHash: p.OAEPHash, metrics: p.Metrics, lock: p.Lock, ocsp: p.OCSP, crlPub: p.CRL, stop: p.Stop}
	a.crls = newCRLCache(a.db, a.log)
	if c := a.crlPub; c != nil {
		prev := c.OnPublish
		c.OnPublish = func(crl store.CRL) {
			a.crls.put(crl)
			if prev != nil {
				prev(crl)
			}
		}
		if c.Metrics == nil && a.metrics != nil {
			c.Metrics = a.metrics
		}
	}
	ok := false
	defer func() {
		if !ok {
			a.closeAudit()
		}
	}()
	a.caPool = x509.NewCertPool()
	a.caPool.AddCert(a.caCert)
	a.metrics.caExpiry.Set(float64(a.caCert.NotAfter.Unix()))
	reg.MustRegister(newStateCollector(a), newDrillCollector(a))
	registerStoreMetrics(reg, a.db)
	if err := a.openAudit(p.Issuer, reg); err != nil {
		return nil, err
	}
	// The most recent certificates are checked before serving; a failure is logged and
	// counted, and refuses that certificate's recovery, but does not stop the appliance.
	if err := a.openCheck(reg); err != nil {
		return nil, err
	}
	a.bulkSt = newBulkState(a)
	a.registerBulkMetrics(reg)
	// Issuances a crash left half-done are finished now: nothing is served before.
	if n, err := a.svc.Sweep(context.Background(), time.Now()); err != nil {
		return nil, fmt.Errorf("sweep pending issuances: %w", err)
	} else if n > 0 {
		a.log.Warn("interrupted issuances marked failed", "count", n)
	}
	a.expireRecoveries()
	a.ready.Store(true)
	ok = true
	return a, nil
}

// Service is the escrow engine the server serves.
func (a *Server) Service() *escrow.Service { return a.svc }

// CACert is the CA certificate; it also issued the server's TLS certificate.
func (a *Server) CACert() *x509.Certificate { return a.caCert }

// Close signs the audit trail's tail (the shutdown checkpoint) and releases the store, the
// token and the state lock. Call it once, after [Server.Serve] has returned.
func (a *Server) Close() {
	a.closeAudit()
	p := Parts{Log: a.log, DB: a.db, Token: a.tok, Lock: a.lock, Stop: a.stop}
	p.Close()
}

// Serve runs the HTTPS and metrics listeners until ctx ends, then stops in order: no new
// work, bulk batches in flight committed or undone, listeners shut down. Its errors are those
// of loading the TLS key pair and of the listeners.
func (a *Server) Serve(ctx context.Context, reg *prometheus.Registry) error {
	if err := pemfile.CheckSecret(a.cfg.Path(a.cfg.TLS.Key)); err != nil {
		return fmt.Errorf("TLS key: %w", err)
	}
	tlsCert, err := tls.LoadX509KeyPair(a.cfg.Path(a.cfg.TLS.Certificate), a.cfg.Path(a.cfg.TLS.Key))
	if err != nil {
		return fmt.Errorf("TLS certificate and key: %w", err)
	}
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: intermediateSuites,
		Certificates: []tls.Certificate{tlsCert},
		// A client certificate is optional at the TLS layer; each route decides whether it
		// needs one and looks it up in the store. Certificates not issued by this CA are
		// refused during the handshake. Any extended key usage is accepted here: an S/MIME
		// certificate (emailProtection only) authenticates its own re-enrollment.
		ClientAuth:            tls.RequestClientCert,
		VerifyPeerCertificate: a.verifyClient,
	}
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Listen, err)
	}
	mln, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen %s: %w", a.cfg.MetricsListen, err)
	}
	pln, err := a.listenPublic()
	if err != nil {
		ln.Close()
		mln.Close()
		return fmt.Errorf("public_listen %s: %w", a.cfg.PublicListenAddr(), err)
	}
	a.logins = newLoginThrottle(a.cfg.HTTP, reg)
	if a.cfg.IsPostgres() && a.db != nil {
		// Several nodes: every node's failed logins count (http_throttle_shared.go).
		a.logins.shared = &sharedLogins{db: a.db, log: a.log, fresh: sharedLoginsFresh}
	}
	// At the end, after the last request, the login summaries still owed to the audit trail.
	defer a.flushLoginSummaries(context.Background(), true)
	srv := &http.Server{
		Handler:           a.auditHTTP(a.routes()),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: a.cfg.HTTP.ReadHeaderTimeout.Duration,
		ReadTimeout:       a.cfg.HTTP.ReadTimeout.Duration,
		WriteTimeout:      a.cfg.HTTP.WriteTimeout.Duration,
		IdleTimeout:       a.cfg.HTTP.IdleTimeout.Duration,
		MaxHeaderBytes:    32 << 10,
		// HTTP/1.1 only: EST and the API need nothing of HTTP/2, and leaving it out leaves
		// out its attack surface (see README, "Vulnerability scan").
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	mmux := http.NewServeMux()
	mmux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	msrv := &http.Server{Handler: mmux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}

	psrv := a.publicServer()
	errc := make(chan error, 3)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	go func() { errc <- msrv.Serve(mln) }()
	publicAddr := "none"
	if pln != nil {
		publicAddr = pln.Addr().String()
		go func() { errc <- psrv.Serve(pln) }()
	}
	pubCtx, stopPub := context.WithCancel(ctx)
	pubDone := make(chan struct{})
	if a.crlPub != nil {
		go func() { defer close(pubDone); a.crlPub.Run(pubCtx) }()
	} else {
		close(pubDone)
	}
	// The CRL publisher stops before the store closes (Server.Close, after Serve).
	defer func() { stopPub(); a.awaitStop(pubDone, "the CRL publisher") }()
	go a.watchToken(ctx)
	go a.retryOnHUP(ctx)
	go a.watchLogins(ctx)
	go a.runChecks(ctx)
	a.log.Info("keyarc serving", "https", ln.Addr().String(), "metrics", mln.Addr().String(), "public", publicAddr,
		"ca", a.caCert.Subject.String(), "oaep", a.oaepHash)
	// Client commands given --state find this serve through DIR/serve.json.
	if err := config.WriteServeRecord(a.cfg, ln.Addr().String(), mln.Addr().String()); err != nil {
		a.log.Warn("client commands given --state will not find this serve", "err", err)
	}
	defer config.RemoveServeRecord(a.cfg)

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	a.log.Info("shutting down")
	// An orderly stop: take no more work (bulk items, requests), let the bulk batches in flight
	// commit or undo (a bounded wait), and only then let the caller sign the audit trail and
	// close the store (Server.Close).
	a.stopBulk()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = msrv.Shutdown(sctx)
	_ = psrv.Shutdown(sctx)
	serr := srv.Shutdown(sctx)
	a.waitBulkStopped()
	return serr
}

// verifyClient verifies a TLS client certificate against the CA, for any key usage.
func (a *Server) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, r := range raw[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(c)
		}
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: a.caPool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("client certificate not issued by this CA: %w", err)
	}
	return nil
}

// watchToken checks the token every few seconds, so that readiness and the metric follow it.
func (a *Server) watchToken(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for i := 0; ; i++ {
		if a.checkToken() && i%12 == 0 {
			a.expireRecoveries()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Server) checkToken() bool {
	return a.tokenStatus() == nil
}

// awaitStop waits for a background worker that was told to stop, for at most the token's call
// limit and a little: a worker inside a call into a token that stopped answering cannot be
// taken back, and must not hold the shutdown for as long as the token is stuck.
func (a *Server) awaitStop(done <-chan struct{}, what string) {
	limit := a.cfg.Token.CallTimeout.Duration + 2*time.Second
	select {
	case <-done:
	case <-time.After(limit):
		a.log.Error("shutdown goes on without "+what+": it is inside a call into the token that has not returned", "limit", limit)
	}
}
