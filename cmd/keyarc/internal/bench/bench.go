// Package bench is `keyarc bench`: it measures the raw crypto limits of this machine (seal,
// sign, CMS open, CSR check, PKCS#8 and PKCS#12 work), the rates of the bulk pipeline, the
// enrollment and EST storms over HTTPS on loopback, the peak memory of a large import in a
// child `keyarc serve`, and the OCSP responder from outside, each on a throw-away development
// state made by this very binary.
//
// It prints rates and ratios to the raw limits; it asserts nothing. The appliance it drives in
// process comes from package main through [Env] (bench does not import the server packages),
// so that the measured server is exactly the one `keyarc serve` runs.
//
// Out-of-process storms (the OCSP round; see ocsp.go) run a `keyarc loadgen` child
// (cmd/keyarc/internal/loadgen) against a `keyarc serve` child over TCP, in windows the bench
// starts one at a time, and read the server's CPU time (utime+stime in /proc/PID/stat) just
// before and just after each: rate, p50/p99 latency and server CPU per request are the
// server's alone, not shared with a client in the same process. The EST and archival
// enrollment storms (storms.go) run the same way over HTTPS, with their requests (fresh CSRs
// and one-time codes, sent once each) made before the windows, and check after each window
// that every certificate counted is issued in the database. The in-process storms of the CA
// rounds stay, printed as such: both figures are shown, each named.
//
// The PostgreSQL round (pg.go; --only pg, and part of a full run unless --no-pg) runs a
// PostgreSQL server of its own (initdb in a temporary folder, a unix socket only), the import
// and enroll jobs against their crypto limits on it, and the EST storm from outside against
// one node on SQLite, one on PostgreSQL and three on one PostgreSQL database, with the
// database server's CPU time per certificate beside the nodes'.
//
// # Concurrency
//
// [Run] is called once per process; it starts its own goroutines (load generators, a bulk
// manager, an HTTPS server) and child processes, and stops them before it returns.
package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/bulk"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/policy"
)

// Appliance is the in-process appliance the bench drives: package main's server assembly.
type Appliance interface {
	// Service is the escrow engine the appliance serves.
	Service() *escrow.Service
	// CACert is the CA certificate that issued the appliance's TLS certificate.
	CACert() *x509.Certificate
	// Serve runs the HTTPS and metrics listeners until ctx is done.
	Serve(ctx context.Context, reg *prometheus.Registry) error
	// Close releases the store and the tokens.
	Close()
}

// Env is what the bench needs from package main.
type Env struct {
	// Open opens the appliance of the development state folder state, listening on listen
	// (HTTPS) and metricsListen.
	Open func(state, listen, metricsListen string, log *slog.Logger, reg *prometheus.Registry) (Appliance, error)
	// CACert reads the CA certificate of the state folder.
	CACert func(state string) (*x509.Certificate, error)
	// AdminClient is an HTTPS client of the appliance at server that presents the state's
	// development admin credential.
	AdminClient func(state, server string) (*http.Client, error)
	// TuneGC applies the appliance's own garbage-collector settings.
	TuneGC func()
}

// Run is `keyarc bench`: it measures the raw crypto limits of this machine and the rates of
// the bulk pipeline, the enrollment storms and the memory of a large import, on throw-away
// development states. Its errors are those of the appliance, the bulk manager and the
// load generators, wrapped with the round that failed; a bad command line is a
// cmdline.UsageError.
func Run(args []string, env Env) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	items := fs.Int("items", 10_000, "items per enroll and import job")
	keygenItems := fs.Int("keygen-items", 400, "items of the RSA-2048 keygen job (about 70 ms of CPU each)")
	stormN := fs.Int("storm", 3000, "enrollments per in-process storm")
	runs := fs.Int("runs", 3, "runs of each enroll and import job and of the enrollment storm (the median is reported)")
	rssItems := fs.Int("rss-items", 100_000, "items of the import job whose peak memory is measured (0: skip)")
	raw := fs.Duration("raw", 2*time.Second, "duration of each raw measurement")
	keep := fs.Bool("keep", false, "keep the temporary states")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	only := fs.String("only", "", "run one round only: ca (raw limits, jobs, in-process storms), rss (peak memory), ocsp, est or enroll (out-of-process storms), pg (jobs and the EST storm on PostgreSQL beside SQLite, one node and three), recovery (latency from the m-th approval to the PKCS#12 in hand, through the CLI)")
	pgRuns := fs.Int("pg-runs", 1, "runs of each job on PostgreSQL and of the EST storm on one PostgreSQL node, each storm between two on SQLite (the median is reported)")
	noPG := fs.Bool("no-pg", false, "skip the PostgreSQL round in a full run")
	pgRate := fs.Int("pg-est-prepare-rate", 2000, "EST requests per second to prepare codes and CSRs for, in the PostgreSQL round")
	pgWindow := fs.Duration("pg-storm-window", 10*time.Second, "length of each window of the PostgreSQL round's EST storms")
	recoveries := fs.Int("recoveries", 10, "recoveries of the recovery round (the median latency is reported)")
	var st enrollShape
	fs.IntVar(&st.estClients, "est-clients", 8, "keep-alive HTTPS clients of the out-of-process EST storm")
	fs.IntVar(&st.enrollClients, "enroll-clients", 64, "keep-alive HTTPS clients of the out-of-process archival storm")
	fs.IntVar(&st.windows, "storm-windows", 3, "measured windows of each out-of-process enrollment storm")
	fs.DurationVar(&st.window, "storm-window", 20*time.Second, "length of each out-of-process enrollment storm window")
	fs.IntVar(&st.estRate, "est-prepare-rate", 2500, "EST requests per second to prepare codes and CSRs for (windows and warm-up)")
	fs.IntVar(&st.enrollRate, "enroll-prepare-rate", 1500, "archival requests per second to prepare codes, CSRs and envelopes for")
	fs.StringVar(&st.profileDir, "serve-cpuprofile", "", "write to folder `DIR` the CPU profile of each out-of-process enrollment storm's keyarc serve child (serve-est.pprof, serve-enroll.pprof)")
	var o ocspShape
	fs.IntVar(&o.certs, "ocsp-certs", 5000, "certificates whose OCSP responses the OCSP round asks for")
	fs.IntVar(&o.clients, "ocsp-clients", 8, "keep-alive clients of the OCSP round")
	fs.IntVar(&o.windows, "ocsp-windows", 3, "measured windows of the OCSP round")
	fs.DurationVar(&o.window, "ocsp-window", 20*time.Second, "length of each OCSP window")
	fs.BoolVar(&o.ceiling, "ocsp-ceiling", true, "also measure a trivial net/http handler under the same load")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "keyarc-bench-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	env.TuneGC() // the appliance's own settings: the jobs and storms below run in this process
	if *runs < 1 {
		return fmt.Errorf("bench: --runs must be at least 1")
	}
	switch {
	case *only != "" && *only != "ca" && *only != "rss" && *only != "ocsp" && *only != "est" && *only != "enroll" && *only != "pg" && *only != "recovery":
		return cmdline.UsageError{Msg: fmt.Sprintf("bench: --only %q: use ca, rss, ocsp, est, enroll, pg or recovery", *only)}
	case *recoveries < 1:
		return cmdline.UsageError{Msg: "bench: --recoveries must be positive"}
	case *pgRuns < 1 || *pgRate < 1 || *pgWindow <= 0:
		return cmdline.UsageError{Msg: "bench: --pg-runs, --pg-est-prepare-rate and --pg-storm-window must be positive"}
	case o.certs < 1 || o.clients < 1 || o.windows < 1 || o.window <= 0:
		return cmdline.UsageError{Msg: "bench: --ocsp-certs, --ocsp-clients, --ocsp-windows and --ocsp-window must be positive"}
	case st.estClients < 1 || st.enrollClients < 1 || st.windows < 1 || st.window <= 0 || st.estRate < 1 || st.enrollRate < 1:
		return cmdline.UsageError{Msg: "bench: --est-clients, --enroll-clients, --storm-windows, --storm-window, --est-prepare-rate and --enroll-prepare-rate must be positive"}
	}
	if st.profileDir != "" {
		if err := os.MkdirAll(st.profileDir, 0o755); err != nil {
			return err
		}
		if st.profileDir, err = filepath.Abs(st.profileDir); err != nil {
			return err
		}
	}
	b := &bench{env: env, dir: dir, raw: *raw, items: *items, keygenItems: *keygenItems, storm: *stormN, runs: *runs, pgRuns: *pgRuns, pgRate: *pgRate, pgWindow: *pgWindow, ocsp: o, storms: st}
	fmt.Printf("keyarc bench: %d CPUs (GOMAXPROCS %d), %s, state in %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), dir)
	fmt.Println("In process (clients in this process): the raw limits, the jobs and the short enrollment storms")
	fmt.Println("of the CA rounds, rows named \"in process\".")
	fmt.Println("Out of process: the peak memory (a `keyarc serve` child), the OCSP round and the EST and archival")
	fmt.Println("storms (a `keyarc loadgen` child against a `keyarc serve` child over TCP, sustained windows, the")
	fmt.Println("server's CPU time read from /proc), rows named \"out of process\".")
	fmt.Println()
	if *only == "" || *only == "ca" {
		for _, alg := range []string{"p256", "rsa3072"} {
			if err := b.caRound(alg); err != nil {
				return fmt.Errorf("bench with a %s CA key: %w", alg, err)
			}
		}
	}
	if *rssItems > 0 && (*only == "" || *only == "rss") {
		if err := b.rssRound(*rssItems); err != nil {
			return fmt.Errorf("bench peak memory: %w", err)
		}
	}
	if *only == "" || *only == "ocsp" {
		if err := b.ocspRound(); err != nil {
			return fmt.Errorf("bench OCSP: %w", err)
		}
	}
	if *only == "" || *only == "est" || *only == "enroll" {
		if err := b.initSelf(); err != nil {
			return err
		}
		if err := b.enrollStormsOutside(*only != "enroll", *only != "est"); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if *only == "pg" || (*only == "" && !*noPG) {
		if err := b.pgRound(); err != nil {
			return fmt.Errorf("bench PostgreSQL: %w", err)
		}
	}
	if *only == "" || *only == "recovery" {
		if err := b.recoveryRound(*recoveries); err != nil {
			return fmt.Errorf("bench recovery: %w", err)
		}
	}
	return nil
}

// ocspShape is the OCSP round's size: certificates, clients, windows.
type ocspShape struct {
	certs, clients, windows int
	window                  time.Duration
	ceiling                 bool
}

type bench struct {
	env                       Env
	dir                       string
	raw                       time.Duration
	items, keygenItems, storm int
	runs                      int
	// pgRuns is the runs of each job on PostgreSQL; pgRate and pgWindow shape the
	// PostgreSQL round's EST storms.
	pgRuns   int
	pgRate   int
	pgWindow time.Duration
	self     string
	rsaGen   float64
	ocsp     ocspShape
	storms   enrollShape
	// enrollCryptoCPU is the archival enrollment's crypto CPU time per item in µs, once
	// measured.
	enrollCryptoCPU float64
	// dbCPU, while the PostgreSQL round runs, returns the CPU time of the database server's
	// processes.
	dbCPU func() time.Duration
}

// initSelf finds this very binary, which the bench runs as its children.
func (b *bench) initSelf() error {
	if b.self != "" {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	b.self = exe
	return nil
}

// initState makes a development state with the given CA key, with this very binary.
func (b *bench) initState(name, alg string) (string, error) {
	if err := b.initSelf(); err != nil {
		return "", err
	}
	state := filepath.Join(b.dir, name)
	out, err := exec.Command(b.self, "init", "--dev", "--state", state, "--ca-key", alg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("init --dev: %w\n%s", err, out)
	}
	return state, nil
}

// rate runs op on n goroutines for d, in three rounds, and returns the best round's operations
// per second: the machine is shared, and a raw limit is what it can do when left alone.
func rate(n int, d time.Duration, op func() error) (float64, error) {
	best := 0.0
	for range 3 {
		r, err := rateOnce(n, d/3, op)
		if err != nil {
			return 0, err
		}
		best = max(best, r)
	}
	return best, nil
}

func rateOnce(n int, d time.Duration, op func() error) (float64, error) {
	var count atomic.Int64
	var firstErr error
	var once sync.Once
	stop := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := op(); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				count.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(count.Load()) / time.Since(start).Seconds(), firstErr
}

// A part is one of a job's per-item crypto costs: an operation, measured alone on n goroutines.
type part struct {
	name string
	n    int
	op   func() error
	// long: measured in one run of three times the duration, not as the best of three short
	// ones. The time to find RSA primes varies widely from key to key, and the best of a few
	// dozen keys overstates the rate a job of hundreds of keys can reach.
	long bool
}

func (p part) rate(d time.Duration) (float64, error) {
	if p.long {
		return rateOnce(p.n, 3*d, p.op)
	}
	return rate(p.n, d, p.op)
}

// repeat makes runs runs of a job or a storm (prepare makes a run's input, outside the measured
// time, and returns the run, which returns its rate) and compares each with its crypto limit,
// 1 / (sum of the parts' per-item costs), measured just before and just after it: the mean of
// the two. One measurement between two runs serves both. Each part is measured for half the raw
// duration.
func (b *bench) repeat(parts []part, runs int, prepare func(run int) (func() (float64, error), error)) ([]result, error) {
	limitNow := func() (float64, error) {
		sum := 0.0
		for _, p := range parts {
			pr, err := p.rate(b.raw / 2)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", p.name, err)
			}
			sum += 1 / pr
		}
		return 1 / sum, nil
	}
	todo := make([]func() (float64, error), runs)
	for i := range todo {
		var err error
		if todo[i], err = prepare(i); err != nil {
			return nil, err
		}
	}
	prev, err := limitNow()
	if err != nil {
		return nil, err
	}
	out := make([]result, 0, runs)
	for _, run := range todo {
		r, err := run()
		if err != nil {
			return nil, err
		}
		next, err := limitNow()
		if err != nil {
			return nil, err
		}
		out = append(out, result{rate: r, limit: (prev + next) / 2})
		prev = next
	}
	return out, nil
}

// A result is one run's rate and the crypto limit measured around it.
type result struct{ rate, limit float64 }

func (r result) ratio() float64 { return r.rate / r.limit }

// report prints the run of median ratio, with the range of the ratios when there are several.
func report(name string, rs []result, of string) {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b result) int { return cmp.Compare(a.ratio(), b.ratio()) })
	m := sorted[len(sorted)/2]
	note := fmt.Sprintf("%3.0f%% of %s (%.0f/s)", 100*m.ratio(), of, m.limit)
	if len(rs) > 1 {
		note += fmt.Sprintf(", median of %d runs: %.0f–%.0f%%", len(rs), 100*sorted[0].ratio(), 100*sorted[len(sorted)-1].ratio())
	}
	row(name, m.rate, "/s", note)
}

func newP256() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return k
}

func mailboxN(prefix string, i int) string { return prefix + strconv.Itoa(i) + "@example.org" }

func benchCSR(k crypto.Signer, mailbox string) []byte {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: mailbox}, EmailAddresses: []string{mailbox}}, k)
	if err != nil {
		panic(err)
	}
	return der
}

// row prints one line of the table.
func row(what string, v float64, unit, note string) {
	fmt.Printf("  %-58s %10.0f %-6s %s\n", what, v, unit, note)
}

// caRound measures everything that depends on the CA key.
func (b *bench) caRound(alg string) error {
	fmt.Printf("== CA key %s in SoftHSM ==\n", alg)
	state, err := b.initState("state-"+alg, alg)
	if err != nil {
		return err
	}
	listen := freeAddr()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	a, err := b.env.Open(state, listen, freeAddr(), log, reg)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx := context.Background()
	svc := a.Service()
	procs := runtime.GOMAXPROCS(0)

	// Raw limits, each measured alone on all cores.
	sub := newP256()
	csrCheck, cmsOpen, parse, seal, sign, err := enrollCryptoParts(ctx, svc, alg, sub)
	if err != nil {
		return err
	}
	caCert := svc.Issuer.Certificate()
	rawCert, err := x509.ParseCertificate(mustIssue(svc, sub.Public()))
	if err != nil {
		return err
	}
	p12 := part{name: "PKCS#12 build (keygen results)", n: procs, op: func() error {
		_, err := pkcs12.Modern2023.WithIterations(bulk.DefaultPFXIterations).Encode(sub, rawCert, []*x509.Certificate{caCert}, "0123456789abcdefghijkl")
		return err
	}}
	foreignCA, foreignKey := foreignCA()
	importParse := func(k crypto.Signer, name string) part { return importParsePart(foreignCA, foreignKey, k, name) }
	rsaSub, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	parseImport, parseImportRSA := importParse(sub, "P-256"), importParse(rsaSub, "RSA-2048")
	importParts := []part{parseImport, seal}
	importRSAParts := []part{parseImportRSA, seal}
	enrollParts := []part{csrCheck, cmsOpen, parse, seal, sign}

	fmt.Println("raw limits (operations per second, all cores):")
	rates := map[string]float64{}
	for _, p := range []part{seal, sign, csrCheck, cmsOpen, parse, parseImport, parseImportRSA, p12} {
		r, err := p.rate(b.raw)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		rates[p.name] = r
		row(p.name, r, "/s", "")
	}
	rsaGen := part{name: "RSA-2048 key generation", n: procs, long: true, op: func() error {
		_, err := rsa.GenerateKey(rand.Reader, 2048)
		return err
	}}
	if alg == "p256" {
		if b.rsaGen, err = rsaGen.rate(b.raw); err != nil {
			return err
		}
		row(rsaGen.name, b.rsaGen, "/s", "")
	}
	limitOf := func(parts []part) float64 {
		sum := 0.0
		for _, p := range parts {
			sum += 1 / rates[p.name]
		}
		return 1 / sum
	}
	fmt.Println("crypto limits (1 / sum of per-item costs):")
	row("import  = parse + seal (P-256 keys)", limitOf(importParts), "/s", "")
	row("import  = parse + seal (RSA-2048 keys)", limitOf(importRSAParts), "/s", "")
	row("enroll  = CSR check + envelope + parse + seal + sign", limitOf(enrollParts), "/s", "")
	if b.rsaGen > 0 {
		limitKeygen := 1 / (1/b.rsaGen + 1/rates[seal.name] + 1/rates[sign.name] + 1/rates[p12.name])
		row("keygen  = RSA-2048 keygen + seal + sign + PKCS#12", limitKeygen, "/s", "")
	}

	// End to end: jobs through the pipeline and the embedded store. The machine is shared and
	// its speed drifts by several percent from minute to minute, so each rate is compared with
	// its crypto limit measured again just before and just after it.
	mgr := &bulk.Manager{Service: svc, Dir: filepath.Join(state, "bench-jobs")}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go mgr.Run(runCtx)
	fmt.Println("end to end (bulk jobs, embedded SQLite, synchronous=FULL), each run against its crypto limit")
	fmt.Println("measured again before and after it:")
	job := func(name string, parts []part, file func(run int) []byte) error {
		rs, err := b.repeat(parts, b.runs, func(run int) (func() (float64, error), error) {
			f := file(run)
			return func() (float64, error) { return b.runJob(mgr, f) }, nil
		})
		if err != nil {
			return fmt.Errorf("%s job: %w", name, err)
		}
		report(name, rs, "its crypto limit")
		return nil
	}
	err = job(fmt.Sprintf("import (P-256 keys) job, %d items", b.items), importParts,
		func(run int) []byte { return importFile(b.items, int64(run), nil) })
	if err != nil {
		return err
	}
	// S/MIME encryption keys are mostly RSA: the same job with RSA-2048 keys (a pool of keys
	// shared by distinct certificates of one mailbox per key: parsing costs the same per item).
	pool := make([]crypto.Signer, 32)
	for i := range pool {
		if pool[i], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return err
		}
	}
	err = job(fmt.Sprintf("import (RSA-2048 keys) job, %d items", b.items), importRSAParts,
		func(run int) []byte { return importFile(b.items, 1<<30+int64(run), pool) })
	if err != nil {
		return err
	}
	err = job(fmt.Sprintf("enroll job, %d items", b.items), enrollParts,
		func(int) []byte { return enrollFile(b.items, svc.Transport.Cert, svc.ShareHash()) })
	if err != nil {
		return err
	}
	if alg == "p256" && b.keygenItems > 0 {
		f := []byte(`{"kind":"keygen","template":"smime-encryption","key":"rsa2048"}` + "\n")
		for i := range b.keygenItems {
			f = append(f, fmt.Sprintf(`{"email":"%s"}`+"\n", mailboxN("kg", i))...)
		}
		rs, err := b.repeat([]part{rsaGen}, 1, func(int) (func() (float64, error), error) {
			return func() (float64, error) { return b.runJob(mgr, f) }, nil
		})
		if err != nil {
			return fmt.Errorf("keygen job: %w", err)
		}
		report(fmt.Sprintf("keygen job (RSA-2048), %d items", b.keygenItems), rs, "the raw RSA-2048 key generation rate")
	}
	stopRun()

	// Storms over HTTPS on loopback.
	srvCtx, stopSrv := context.WithCancel(ctx)
	srvDone := make(chan error, 1)
	go func() { srvDone <- a.Serve(srvCtx, reg) }()
	defer func() { stopSrv(); <-srvDone }()
	if err := waitReady("https://"+listen, caCert); err != nil {
		return err
	}
	fmt.Printf("storms in process (clients in this process, HTTPS on loopback, keep-alive, bursts of %d enrollments;\n", b.storm)
	fmt.Println("measured from outside, over sustained windows: --only est, --only enroll):")
	storms, err := b.repeat(enrollParts, b.runs, func(run int) (func() (float64, error), error) {
		return b.enrollStorm(a, listen, 64, fmt.Sprintf("storm%d-", run))
	})
	if err != nil {
		return fmt.Errorf("enroll storm: %w", err)
	}
	report("in process: /api/v1/enroll with archival, 64 clients", storms, "the enroll crypto limit")
	r, err := b.estStorm(a, listen, 8)
	if err != nil {
		return fmt.Errorf("EST storm: %w", err)
	}
	row("in process: EST simpleenroll (smime-signature), 8 clients", r, "/s", "burst of "+strconv.Itoa(2*b.storm))
	fmt.Println()
	return nil
}

// importParsePart is an imported item's parse: a certificate of k's public key issued by
// foreignCA, and k's PKCS#8; both are parsed, and the key checked against the certificate.
func importParsePart(foreignCA *x509.Certificate, foreignKey crypto.Signer, k crypto.Signer, name string) part {
	certDER := foreignCert(foreignCA, foreignKey, k.Public(), "raw@example.org", big.NewInt(7))
	p8, _ := x509.MarshalPKCS8PrivateKey(k)
	return part{name: "import item parse: certificate + PKCS#8 + pair (" + name + ")", n: runtime.GOMAXPROCS(0), op: func() error {
		c, err := x509.ParseCertificate(certDER)
		if err != nil {
			return err
		}
		return escrow.CheckKeyPair(p8, c.PublicKey)
	}}
}

func mustIssue(svc *escrow.Service, pub crypto.PublicKey) []byte {
	serial, _ := ca.NewSerial()
	c, err := svc.Issuer.Issue(ca.Request{Serial: serial, PublicKey: pub, Subject: pkix.Name{CommonName: "raw@example.org"},
		EmailAddresses: []string{"raw@example.org"}, KeyUsage: x509.KeyUsageKeyAgreement, NotBefore: time.Now(), Validity: 24 * time.Hour})
	if err != nil {
		panic(err)
	}
	return c.Raw
}

// runJob submits a job to mgr and waits for it; it returns items per second from the job's
// start to its end.
func (b *bench) runJob(mgr *bulk.Manager, file []byte) (float64, error) {
	ctx := context.Background()
	st, err := mgr.Submit(ctx, bytes.NewReader(file), "bench")
	if err != nil {
		return 0, err
	}
	start := time.Now()
	for {
		s, err := mgr.Status(ctx, st.ID)
		if err != nil {
			return 0, err
		}
		switch s.State {
		case "done":
			if s.Failed > 0 {
				return 0, fmt.Errorf("%d items failed", s.Failed)
			}
			el := time.Since(start).Seconds()
			if !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() {
				el = s.FinishedAt.Sub(s.StartedAt).Seconds()
			}
			return float64(s.Done) / el, nil
		case "cancelled":
			return 0, errors.New("job cancelled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// parallelLines builds n lines with all cores.
func parallelLines(n int, line func(i int) string) []string {
	out := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				out[i] = line(i)
			}
		})
	}
	wg.Wait()
	return out
}

// importFile makes an import job of n certificates from a foreign CA, with fresh P-256 keys, or
// keys taken in turn from pool when it is not empty (then each pool key has its own mailbox).
func importFile(n int, salt int64, pool []crypto.Signer) []byte {
	var bb bytes.Buffer
	writeImportFile(&bb, n, salt, pool)
	return bb.Bytes()
}

// foreignCA makes the CA of an import: another CA whose certificates are migrated.
func foreignCA() (*x509.Certificate, crypto.Signer) {
	caKey := newP256()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench old CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	return caCert, caKey
}

// foreignCert is a certificate of the foreign CA for pub.
func foreignCert(ca *x509.Certificate, caKey crypto.Signer, pub crypto.PublicKey, mailbox string, serial *big.Int) []byte {
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial,
		Subject: pkix.Name{CommonName: mailbox}, EmailAddresses: []string{mailbox}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageKeyEncipherment}, ca, pub, caKey)
	if err != nil {
		panic(err)
	}
	return der
}

func writeImportFile(w io.Writer, n int, salt int64, pool []crypto.Signer) error {
	caCert, caKey := foreignCA()
	base := time.Now().UnixNano() + salt
	bw := bufio.NewWriter(w)
	bw.WriteString(`{"kind":"import"}` + "\n")
	const chunk = 10_000
	for off := 0; off < n; off += chunk {
		m := min(chunk, n-off)
		lines := parallelLines(m, func(i int) string {
			k, mb := crypto.Signer(nil), mailboxN("old", off+i)
			if len(pool) > 0 {
				// A key is archived for one mailbox only (the store refuses it for another), so
				// each pool key always goes with the same mailbox, in every run.
				j := (off + i) % len(pool)
				k, mb = pool[j], mailboxN("oldpool", j)
			} else {
				k = newP256()
			}
			der := foreignCert(caCert, caKey, k.Public(), mb, big.NewInt(base+int64(off+i)))
			p8, _ := x509.MarshalPKCS8PrivateKey(k)
			j, _ := json.Marshal(map[string]string{"certificate": base64.StdEncoding.EncodeToString(der), "key": base64.StdEncoding.EncodeToString(p8)})
			return string(j)
		})
		for _, l := range lines {
			bw.WriteString(l)
			bw.WriteByte('\n')
		}
	}
	return bw.Flush()
}

// enrollFile makes an enroll job of n P-256 CSRs with their keys in CMS envelopes.
func enrollFile(n int, tr *x509.Certificate, h crypto.Hash) []byte {
	lines := parallelLines(n, func(i int) string {
		k := newP256()
		mb := mailboxN("en", i)
		p8, _ := x509.MarshalPKCS8PrivateKey(k)
		env, err := cms.Encrypt(p8, tr, cms.EnvelopedAESCBC, h)
		if err != nil {
			panic(err)
		}
		j, _ := json.Marshal(map[string]string{"email": mb, "csr": base64.StdEncoding.EncodeToString(benchCSR(k, mb)),
			"encrypted_key": base64.StdEncoding.EncodeToString(env)})
		return string(j)
	})
	return []byte(`{"kind":"enroll","template":"smime-encryption"}` + "\n" + strings.Join(lines, "\n") + "\n")
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitReady(base string, caCert *x509.Certificate) error {
	c := benchClient(caCert)
	for range 300 {
		resp, err := c.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("appliance not ready")
}

func benchClient(caCert *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 4}}
}

// storm runs n requests made by mk on clients goroutines, each with its own keep-alive
// connection, and returns requests per second (all must succeed).
func storm(clients, n int, caCert *x509.Certificate, mk func(i int) (*http.Request, error)) (float64, error) {
	reqs := make([]*http.Request, n)
	for i := range n {
		r, err := mk(i)
		if err != nil {
			return 0, err
		}
		reqs[i] = r
	}
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		c := benchClient(caCert)
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				resp, err := c.Do(reqs[i])
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), firstErr
}

// codes makes n enrollment codes for mailboxes prefix0..prefixN-1.
func codes(svc *escrow.Service, prefix, template string, n int) ([]*escrow.Code, error) {
	out := make([]*escrow.Code, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i], errs[i] = svc.CreateCode(context.Background(), mailboxN(prefix, i), template, time.Hour)
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// enrollStorm prepares a storm of archival enrollments for mailboxes prefix0, prefix1... (their
// codes, keys, CSRs and envelopes) and returns it, to be run.
func (b *bench) enrollStorm(a Appliance, addr string, clients int, prefix string) (func() (float64, error), error) {
	svc := a.Service()
	cs, err := codes(svc, prefix, policy.TemplateSMIMEEncryption, b.storm)
	if err != nil {
		return nil, err
	}
	bodies := parallelLines(b.storm, func(i int) string {
		k := newP256()
		mb := mailboxN(prefix, i)
		p8, _ := x509.MarshalPKCS8PrivateKey(k)
		env, err := cms.Encrypt(p8, svc.Transport.Cert, cms.EnvelopedAESCBC, svc.ShareHash())
		if err != nil {
			panic(err)
		}
		j, _ := json.Marshal(map[string]string{"template": policy.TemplateSMIMEEncryption,
			"csr": base64.StdEncoding.EncodeToString(benchCSR(k, mb)), "encrypted_key": base64.StdEncoding.EncodeToString(env)})
		return string(j)
	})
	return func() (float64, error) {
		return storm(clients, b.storm, a.CACert(), func(i int) (*http.Request, error) {
			r, err := http.NewRequest(http.MethodPost, "https://"+addr+"/api/v1/enroll", strings.NewReader(bodies[i]))
			if err != nil {
				return nil, err
			}
			r.Header.Set("Content-Type", "application/json")
			r.SetBasicAuth(mailboxN(prefix, i), cs[i].Secret)
			return r, nil
		})
	}, nil
}

func (b *bench) estStorm(a Appliance, addr string, clients int) (float64, error) {
	n := 2 * b.storm
	cs, err := codes(a.Service(), "est", policy.TemplateSMIMESignature, n)
	if err != nil {
		return 0, err
	}
	bodies := parallelLines(n, func(i int) string {
		return base64.StdEncoding.EncodeToString(benchCSR(newP256(), mailboxN("est", i)))
	})
	return storm(clients, n, a.CACert(), func(i int) (*http.Request, error) {
		r, err := http.NewRequest(http.MethodPost, "https://"+addr+"/.well-known/est/"+policy.TemplateSMIMESignature+"/simpleenroll", strings.NewReader(bodies[i]))
		if err != nil {
			return nil, err
		}
		r.Header.Set("Content-Type", "application/pkcs10")
		r.SetBasicAuth(mailboxN("est", i), cs[i].Secret)
		return r, nil
	})
}

// rssRound runs an import job of n items in a child `keyarc serve` and reports its peak
// resident memory (VmHWM).
func (b *bench) rssRound(n int) error {
	fmt.Printf("== peak memory: %d-item import job in a child `keyarc serve` ==\n", n)
	state, err := b.initState("state-rss", "p256")
	if err != nil {
		return err
	}
	file := filepath.Join(b.dir, "import-rss.jsonl")
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := writeImportFile(f, n, 1<<40, nil); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	addr, maddr := freeAddr(), freeAddr()
	cmd := exec.Command(b.self, "serve", "--state", state, "--addr", addr, "--metrics-addr", maddr)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	caCert, err := b.env.CACert(state)
	if err != nil {
		return err
	}
	if err := waitReady("https://"+addr, caCert); err != nil {
		return fmt.Errorf("%w\n%s", err, logs.String())
	}
	before := vmHWM(cmd.Process.Pid)
	base := "https://" + addr
	hc, err := b.env.AdminClient(state, base)
	if err != nil {
		return err
	}
	hc.Timeout = 0
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/bulk", in)
	req.Header.Set("Content-Type", "application/jsonl")
	var st bulk.Status
	if err := doJSON(hc, req, &st); err != nil {
		return err
	}
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/bulk/"+st.ID, nil)
		if err := doJSON(hc, req, &st); err != nil {
			return err
		}
		if st.State == "done" || st.State == "cancelled" {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	peak := vmHWM(cmd.Process.Pid)
	fi, _ := os.Stat(file)
	row(fmt.Sprintf("import job of %d items (%d MiB file): done / failed", n, fi.Size()>>20), float64(st.Done), "items", fmt.Sprintf("%d failed", st.Failed))
	row("  its rate", st.Rate, "/s", "")
	row("  peak resident memory of the appliance (VmHWM)", float64(peak)/1024, "MiB", fmt.Sprintf("(%.0f MiB after start-up; target < 256 MiB)", float64(before)/1024))
	return nil
}

// vmHWM reads a process's peak resident set size in KiB from /proc.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return v
		}
	}
	return 0
}

// doJSON sends req and decodes the JSON answer into out; a status other than 2xx is an error
// that carries the appliance's message.
func doJSON(hc *http.Client, req *http.Request, out any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("bench: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("bench: %s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("bench: %s %s: HTTP %d: %s", req.Method, req.URL.Path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, out)
}
