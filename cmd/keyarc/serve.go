package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

// appliance is a running keyarc: the token, the engine and the HTTP handlers.
type appliance struct {
	cfg      *config.Config
	log      *slog.Logger
	tok      *hsm.Token
	db       *store.DB
	svc      *escrow.Service
	caCert   *x509.Certificate
	caPool   *x509.CertPool
	metrics  *metrics
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
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	addr := fs.String("addr", "", "HTTPS listen address (default: the configuration's listen)")
	metricsAddr := fs.String("metrics-addr", "", "metrics listen address (default: the configuration's metrics_listen)")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("serve", pos, 0, "no arguments"); err != nil {
		return err
	}
	if *state == "" {
		return cmdline.UsageError{Msg: "serve: --state DIR is required"}
	}
	tuneGC()
	cfg, err := config.Load(*state)
	if err != nil {
		return err
	}
	if *addr != "" {
		cfg.Listen = *addr
	}
	if *metricsAddr != "" {
		cfg.MetricsListen = *metricsAddr
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := prometheus.NewRegistry()
	a, err := openAppliance(cfg, log, reg)
	if err != nil {
		return err
	}
	defer a.close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.serve(ctx, reg)
}

// openAppliance opens the token and the store and checks everything the appliance needs,
// refusing to start with a message naming the cause.
func openAppliance(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*appliance, error) {
	a := &appliance{cfg: cfg, log: log}
	lock, err := statedir.Lock(cfg)
	if err != nil {
		return nil, err
	}
	a.lock = lock
	ok := false
	defer func() {
		if !ok {
			a.close()
		}
	}()
	a.tok, err = statedir.OpenToken(cfg, &hsm.Options{
		MaxSessions:     cfg.Token.MaxSessions,
		PoolWaitTimeout: cfg.Token.PoolWaitTimeout.Duration,
		Registerer:      reg,
		Logger:          log,
	})
	if err != nil {
		statedir.AuditPINFailure(cfg, err)
		return nil, err
	}
	mech, err := a.tok.SelfTest()
	if err != nil {
		return nil, fmt.Errorf("token self-test failed: %w", err)
	}
	a.oaepHash = mech.OAEPHash.String()

	a.caCert, err = pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	caSigner, err := a.tok.Signer(cfg.Token.CAKey)
	if err != nil {
		return nil, fmt.Errorf("CA key %q: %w", cfg.Token.CAKey, err)
	}
	issuer, err := ca.New(caSigner, a.caCert)
	if err != nil {
		return nil, fmt.Errorf("CA key %q in the token and %s: %w", cfg.Token.CAKey, cfg.Path(cfg.CA.Certificate), err)
	}
	trCert, err := pemfile.ReadCertificate(cfg.Path(cfg.Transport.Certificate))
	if err != nil {
		return nil, fmt.Errorf("transport certificate: %w", err)
	}
	trKey, err := a.tok.Decrypter(cfg.Token.TransportKey)
	if err != nil {
		return nil, fmt.Errorf("transport key %q: %w", cfg.Token.TransportKey, err)
	}
	if !statedir.PublicKeysEqual(trKey.Public(), trCert.PublicKey) {
		return nil, fmt.Errorf("transport key %q in the token is not the key of %s", cfg.Token.TransportKey, cfg.Path(cfg.Transport.Certificate))
	}
	auditSigner, err := a.tok.Signer(cfg.Token.AuditKey)
	if err != nil {
		return nil, fmt.Errorf("audit key %q: %w", cfg.Token.AuditKey, err)
	}
	if err := a.expectTokenKeys(map[string]crypto.PublicKey{cfg.Token.CAKey: a.caCert.PublicKey,
		cfg.Token.TransportKey: trCert.PublicKey, cfg.Token.AuditKey: auditSigner.Public()}); err != nil {
		return nil, err
	}
	a.caPool = x509.NewCertPool()
	a.caPool.AddCert(a.caCert)

	templates, err := policy.Templates(cfg.Templates)
	if err != nil {
		return nil, err
	}
	a.db, err = store.Open(cfg.Path(cfg.Database))
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := a.db.Check(context.Background()); err != nil {
		return nil, fmt.Errorf("database %s failed its integrity check; restore a backup (keyarc restore): %w", cfg.Path(cfg.Database), err)
	}
	a.metrics = newMetrics(reg)
	a.metrics.caExpiry.Set(float64(a.caCert.NotAfter.Unix()))
	reg.MustRegister(newStateCollector(a))
	a.svc = &escrow.Service{
		Store:     a.db,
		Issuer:    issuer,
		Templates: templates,
		Logger:    log,
		Metrics:   a.metrics,
		Transport: &escrow.Transport{Cert: trCert, Key: trKey},
		// Shares are encrypted with the OAEP hash this kind of token opens: the KRAs hold
		// tokens like the appliance's.
		ShareOAEPHash: mech.OAEPHash,
		RecoveryKeys:  tokenRecoveryKeys{a.tok},
	}
	if err := a.openAudit(issuer, reg); err != nil {
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
		log.Warn("interrupted issuances marked failed", "count", n)
	}
	a.expireRecoveries()
	a.ready.Store(true)
	ok = true
	return a, nil
}

func (a *appliance) close() {
	a.closeAudit()
	if a.db != nil {
		if err := a.db.Close(); err != nil {
			a.log.Error("close database", "err", err)
		}
	}
	if a.tok != nil {
		if err := a.tok.Close(); err != nil {
			a.log.Error("close token", "err", err)
		}
	}
	if a.lock != nil {
		a.lock.Close()
	}
}

// serve runs the HTTPS and metrics listeners until ctx ends.
func (a *appliance) serve(ctx context.Context, reg *prometheus.Registry) error {
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
	a.logins = newLoginThrottle(a.cfg.HTTP, reg)
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

	errc := make(chan error, 2)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	go func() { errc <- msrv.Serve(mln) }()
	go a.watchToken(ctx)
	go a.retryOnHUP(ctx)
	go a.watchLogins(ctx)
	go a.runChecks(ctx)
	a.log.Info("keyarc serving", "https", ln.Addr().String(), "metrics", mln.Addr().String(),
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
	// close the store (appliance.close).
	a.stopBulk()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = msrv.Shutdown(sctx)
	serr := srv.Shutdown(sctx)
	a.waitBulkStopped()
	return serr
}

// verifyClient verifies a TLS client certificate against the CA, for any key usage.
func (a *appliance) verifyClient(raw [][]byte, _ [][]*x509.Certificate) error {
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
func (a *appliance) watchToken(ctx context.Context) {
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

func (a *appliance) checkToken() bool {
	return a.tokenStatus() == nil
}

// Garbage-collector defaults of the appliance, used when the environment sets neither GOGC nor
// GOMEMLIMIT. The live heap is small (every queue is bounded), so collecting at 5x that heap
// rather than 2x costs little memory and gains a few percent on a bulk import (the median of
// three 20,000-item import benchmarks: 8,030/s against 7,840/s); the soft limit makes the
// collector work harder long before the heap could grow large.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 192 << 20
)

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
