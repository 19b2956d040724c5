package main

import (
	"context"
	"crypto"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/api"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	addr := fs.String("addr", "", "HTTPS listen address (default: the configuration's listen)")
	metricsAddr := fs.String("metrics-addr", "", "metrics listen address (default: the configuration's metrics_listen)")
	publicAddr := fs.String("public-addr", "", "public plain-HTTP listen address: CRL, OCSP, CA certificate (default: the configuration's public_listen)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the server, from start to stop, to this file (keyarc bench)")
	node := fs.String("node", "", "this node's name among nodes sharing one database (default: the configuration's node, else the host name)")
	if err := cmdline.ParseStateOnly(fs, args, state); err != nil {
		return err
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
	if *publicAddr != "" {
		cfg.PublicListen = *publicAddr
	}
	if *node != "" {
		cfg.Node = *node
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	nodeName, err := cfg.NodeName()
	if err != nil {
		return err
	}
	cfg.Node = nodeName
	// Every line this node logs names it: nodes sharing a database log side by side.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", nodeName)
	reg := prometheus.NewRegistry()
	a, err := openAppliance(cfg, log, reg)
	if err != nil {
		return err
	}
	defer a.Close()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("serve: --cpuprofile: %w", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Serve(ctx, reg)
}

// openAppliance is the server assembly: it takes the state lock, opens the token and checks
// its keys against their certificates, opens the store, builds the escrow engine on them, and
// hands everything to the HTTP server, refusing to start with a message naming the cause.
func openAppliance(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (_ *api.Server, err error) {
	p := api.Parts{Config: cfg, Log: log, Version: version}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.Lock, err = statedir.Lock(cfg); err != nil {
		return nil, err
	}
	p.Token, err = statedir.OpenToken(cfg, &hsm.Options{
		MaxSessions:     cfg.Token.MaxSessions,
		PoolWaitTimeout: cfg.Token.PoolWaitTimeout.Duration,
		CallTimeout:     cfg.Token.CallTimeout.Duration,
		Registerer:      reg,
		Logger:          log,
	})
	if err != nil {
		statedir.AuditPINFailure(cfg, err)
		return nil, err
	}
	tok := p.Token
	mech, err := tok.SelfTest()
	if err != nil {
		return nil, fmt.Errorf("token self-test failed: %w", err)
	}
	p.OAEPHash = mech.OAEPHash.String()

	p.CACert, err = pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	caSigner, err := tok.Signer(cfg.Token.CAKey)
	if err != nil {
		return nil, fmt.Errorf("CA key %q: %w", cfg.Token.CAKey, err)
	}
	caOpts, err := cfg.CAOptions()
	if err != nil {
		return nil, err
	}
	lintRefusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyarc_ca_lint_refusals_total",
		Help: "Certificates refused before signing because zlint warned or erred, by lint.",
	}, []string{"lint"})
	if err := reg.Register(lintRefusals); err != nil {
		return nil, fmt.Errorf("register CA lint metric: %w", err)
	}
	caOpts = append(caOpts, ca.WithLintObserver(func(lint string) { lintRefusals.WithLabelValues(lint).Inc() }))
	p.Issuer, err = ca.New(caSigner, p.CACert, caOpts...)
	if err != nil {
		return nil, fmt.Errorf("CA key %q in the token and %s: %w", cfg.Token.CAKey, cfg.Path(cfg.CA.Certificate), err)
	}
	trCert, err := pemfile.ReadCertificate(cfg.Path(cfg.Transport.Certificate))
	if err != nil {
		return nil, fmt.Errorf("transport certificate: %w", err)
	}
	trKey, err := tok.Decrypter(cfg.Token.TransportKey)
	if err != nil {
		return nil, fmt.Errorf("transport key %q: %w", cfg.Token.TransportKey, err)
	}
	if !statedir.PublicKeysEqual(trKey.Public(), trCert.PublicKey) {
		return nil, fmt.Errorf("transport key %q in the token is not the key of %s", cfg.Token.TransportKey, cfg.Path(cfg.Transport.Certificate))
	}
	auditSigner, err := tok.Signer(cfg.Token.AuditKey)
	if err != nil {
		return nil, fmt.Errorf("audit key %q: %w", cfg.Token.AuditKey, err)
	}
	if err := expectTokenKeys(tok, map[string]crypto.PublicKey{cfg.Token.CAKey: p.CACert.PublicKey,
		cfg.Token.TransportKey: trCert.PublicKey, cfg.Token.AuditKey: auditSigner.Public()}); err != nil {
		return nil, err
	}

	templates, err := policy.Templates(cfg.Templates)
	if err != nil {
		return nil, err
	}
	// keyarc init makes the database: a missing one is a wrong path or a lost file, never
	// replaced by an empty archive.
	if !statedir.DatabaseExists(cfg) {
		return nil, fmt.Errorf("no database at %s (the database setting of %s): run keyarc init, restore a backup with keyarc restore, or correct the path",
			cfg.DatabaseName(), cfg.Path(config.Name))
	}
	db, err := statedir.OpenDatabase(cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	p.DB = db
	if err := db.Check(context.Background()); err != nil {
		return nil, fmt.Errorf("database %s failed its integrity check; restore a backup (keyarc restore): %w", cfg.DatabaseName(), err)
	}
	// A database behind its audit head (rolled back) is refused before anything writes to it.
	if err := api.CheckTrailHead(cfg, db, auditSigner.Public(), log); err != nil {
		return nil, err
	}
	// From here on the process remembers the trail's last committed entry: an append or a
	// checkpoint over a trail that lost it (rows deleted behind the appliance's back) is
	// refused. The Service's store is tracked so that the witness learns what committed.
	trail := &audit.Witness{Logger: log}
	if err := trail.Start(context.Background(), db); err != nil {
		return nil, fmt.Errorf("audit trail: %w", err)
	}
	p.Metrics = api.NewMetrics(reg, version)
	// CRLs: published a few seconds after each revocation, daily, and at start when the
	// newest is older than a day; served from the store by the public listener.
	p.CRL = &escrow.CRLPublisher{Store: p.DB, Issuer: p.Issuer, Logger: log, Metrics: p.Metrics}
	// Several nodes on one PostgreSQL database: one of them, the holder of the leader lease,
	// runs the singletons' periodic work (CRL, OCSP passes, audit checkpoints, sweeps). On
	// SQLite there is one node, and it always leads (a nil Leader).
	var leader *escrow.Leader
	if cfg.IsPostgres() {
		leader = &escrow.Leader{Store: p.DB, Node: cfg.Node, TTL: cfg.Cluster.Leader(), Logger: log}
		// Leases are on the database server's clock; what this node signs and records is on
		// its own: how far apart they are, read at each renewal of the leader lease.
		clockOffset := prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_clock_offset_seconds",
			Help: "How far the database server's clock is ahead of this node's (negative: behind), read at each leader lease renewal.",
		})
		if err := reg.Register(clockOffset); err != nil {
			return nil, fmt.Errorf("register clock offset metric: %w", err)
		}
		leader.OnOffset = func(d time.Duration) { clockOffset.Set(d.Seconds()) }
		// Known before the singletons start, so that the leader's first pass is a full one;
		// a store that fails here is tried again by Run.
		if err := leader.Try(context.Background()); err != nil {
			log.Warn("leader lease: first try failed; trying again", "err", err)
		}
		p.CRL.Leads = leader.Leads
	}
	// The OCSP service starts once the Service that issues its responder certificates is
	// made; the Service's hooks call it only after the appliance serves.
	var ocspSvc *ocspService
	p.Service = &escrow.Service{
		Store:     trail.Track(p.DB),
		Trail:     trail,
		Issuer:    p.Issuer,
		Templates: templates,
		Logger:    log,
		Metrics:   p.Metrics,
		Transport: &escrow.Transport{Cert: trCert, Key: trKey},
		// Shares are encrypted with the OAEP hash this kind of token opens: the KRAs hold
		// tokens like the appliance's.
		ShareOAEPHash: mech.OAEPHash,
		RecoveryKeys:  tokenRecoveryKeys{tok},
		// After a revocation commits: the OCSP responses of the serials are signed again at
		// once, and a CRL follows within seconds. Both only signal their goroutines.
		Revoked: func(serials []string) {
			ocspSvc.Revoked(serials)
			p.CRL.Revoked(serials)
		},
		// New certificates get their first OCSP responses when issuance pauses (the
		// pre-signer's Quiet, at most its MaxDefer later), many to a pass; the responder
		// signs one at once if asked before.
		Certified: func(serials []string) { ocspSvc.Issued(serials) },
	}
	if leader != nil {
		// The node's name goes into every audit entry it writes, and holds its job leases.
		p.Service.Node = cfg.Node
		p.Service.Leads = leader.Leads
		// Another node may be finishing a younger pending issuance: sweeps leave it alone.
		p.Service.SweepAge = clusterSweepAge
	}
	if ocspSvc, err = openOCSP(cfg, tok, p.Service, log, reg); err != nil {
		return nil, fmt.Errorf("OCSP: %w", err)
	}
	// The OCSP pre-signer and the leader's work stop before the store and the token close;
	// the leader lease is given up then, so that another node leads at once.
	stopLeader := func() {}
	if leader != nil {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { leader.Run(ctx) })
		wg.Go(func() { p.Service.RunSweeps(ctx, clusterSweepEvery) })
		stopLeader = func() { cancel(); wg.Wait() }
	}
	p.Stop = func() { ocspSvc.Close(); stopLeader() }
	p.OCSP = ocspSvc.Handler
	// Subscriber notices: follows the audit trail on the leader and sends by mail (notice.go).
	if err := openNotices(cfg, log, reg, &p, leader); err != nil {
		return nil, fmt.Errorf("notices: %w", err)
	}
	// The LDAP publisher follows the audit trail on the leader (directory.go).
	if err := openDirectory(cfg, log, reg, &p, leader); err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	return api.New(p, reg)
}

// With several nodes, the leader sweeps every clusterSweepEvery the issuances left pending
// longer than clusterSweepAge: far longer than any issuance takes, storage outages that a
// bulk job rides out included, so that only those of a node that died are swept.
const (
	clusterSweepAge   = time.Hour
	clusterSweepEvery = 10 * time.Minute
)

// expectTokenKeys pins the keys checked at start-up to the public keys of their certificates
// (the audit key to the key found), so that after every reconnection the token is checked
// again and a token holding other keys under the same labels is not used.
func expectTokenKeys(tok *hsm.Token, keys map[string]crypto.PublicKey) error {
	for label, pub := range keys {
		if err := tok.Expect(label, pub); err != nil {
			return fmt.Errorf("token key %q: %w", label, err)
		}
	}
	return nil
}

// tokenRecoveryKeys keeps the per-request recovery keys in the appliance token.
type tokenRecoveryKeys struct{ tok *hsm.Token }

func (k tokenRecoveryKeys) Generate(label string) (crypto.PublicKey, error) {
	return k.tok.GenerateKey(label, hsm.RSA2048, hsm.UsageDecrypt)
}

func (k tokenRecoveryKeys) Decrypter(label string) (crypto.Decrypter, error) {
	return k.tok.TransientDecrypter(label)
}

// Destroy destroys the key labelled label; one already gone (destroyed by another node) is
// destroyed.
func (k tokenRecoveryKeys) Destroy(label string) error {
	if err := k.tok.DestroyKey(label); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
		return err
	}
	return nil
}

func (k tokenRecoveryKeys) Labels(prefix string) ([]string, error) { return k.tok.KeyLabels(prefix) }

var _ escrow.RecoveryKeys = tokenRecoveryKeys{}

// Garbage-collector defaults of the appliance, used when the environment sets neither GOGC nor
// GOMEMLIMIT. The live heap is small (every queue is bounded), so collecting at 5x that heap
// rather than 2x costs little memory and gains a few percent on a bulk import (the median of
// three 20,000-item import benchmarks: 8,030/s against 7,840/s); the soft limit makes the
// collector work harder long before the heap could grow large.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 192 << 20
)

// tuneGC applies the appliance's garbage-collector defaults (see above).
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
