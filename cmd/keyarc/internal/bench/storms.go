package bench

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/loadgen"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/ocsp/presign"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// enrollShape is the size of the out-of-process enrollment storms: clients, windows, and the
// rate each storm's one-time requests are prepared for.
type enrollShape struct {
	estClients, enrollClients int
	windows                   int
	window                    time.Duration
	// estRate and enrollRate: enough codes and CSRs are made before the windows for this
	// many requests per second over every window and the warm-up.
	estRate, enrollRate int
	// profileDir, when set, receives the CPU profile of each storm's `keyarc serve` child.
	profileDir string
}

// stormKind is one of the two enrollment storms.
type stormKind struct {
	name     string // est or enroll
	label    string // EST, archival
	title    string
	template string
	clients  int
	rate     int
	// archived: the storm's certificates must have an escrow record.
	archived bool
}

// stormWarmup is the unreported warm-up of each out-of-process enrollment storm.
const stormWarmup = 2 * time.Second

// enrollStormsOutside runs the EST simpleenroll storm and/or the /api/v1/enroll archival
// storm out of process: a `keyarc loadgen` child over HTTPS against a `keyarc serve` child.
func (b *bench) enrollStormsOutside(est, enroll bool) error {
	s := b.storms
	if est {
		k := stormKind{name: "est", label: "EST", title: "EST simpleenroll (smime-signature, no archival)", template: policy.TemplateSMIMESignature,
			clients: s.estClients, rate: s.estRate}
		if err := b.enrollStormOutside(k); err != nil {
			return fmt.Errorf("EST storm: %w", err)
		}
	}
	if enroll {
		k := stormKind{name: "enroll", label: "archival", title: "/api/v1/enroll with archival (smime-encryption)", template: policy.TemplateSMIMEEncryption,
			clients: s.enrollClients, rate: s.enrollRate, archived: true}
		if err := b.enrollStormOutside(k); err != nil {
			return fmt.Errorf("archival storm: %w", err)
		}
	}
	return nil
}

// enrollStormOutside runs one enrollment storm from outside against one node on the embedded
// SQLite archive.
func (b *bench) enrollStormOutside(k stormKind) error {
	_, _, err := b.enrollStormOn(k, "", 1)
	return err
}

// enrollStormOn runs one enrollment storm from outside against nodes `keyarc serve` children
// on a throw-away state whose database is url ("" for the embedded SQLite file; several nodes
// need PostgreSQL). Before the windows, on that state with a P-256 CA key in SoftHSM, it
// makes in this process (not measured) the enrollment codes and the requests: fresh P-256
// keys and CSRs, and for the archival storm the keys encrypted to the transport certificate.
// Each node gets its share of the requests and of the clients, from a `keyarc loadgen` child
// of its own; each request is sent once. After each window every certificate the load
// generators counted as issued is looked up in the database. It returns the median of the
// windows' total rates and of their server CPU per certificate (summed over the nodes), in µs.
func (b *bench) enrollStormOn(k stormKind, url string, nodes int) (rate, cpuPer float64, err error) {
	s := b.storms
	backend := "SQLite"
	if url != "" {
		backend = "PostgreSQL"
	}
	clients := k.clients
	if nodes > 1 {
		clients = (k.clients + nodes - 1) / nodes
		fmt.Printf("== %s storm, out of process: %d `keyarc serve` children on one %s database and one token folder, each with a `keyarc loadgen` child of its own (%d HTTPS keep-alive clients each) ==\n", k.label, nodes, backend, clients)
	} else {
		fmt.Printf("== %s storm, out of process: a `keyarc loadgen` child (%d HTTPS keep-alive clients) against a `keyarc serve` child (%s) ==\n", k.label, clients, backend)
	}
	state, err := b.initStateOn("state-storm-"+k.name, "p256", url)
	if err != nil {
		return 0, 0, err
	}
	cfg, err := config.Load(state)
	if err != nil {
		return 0, 0, err
	}
	if nodes > 1 && !cfg.IsPostgres() {
		return 0, 0, errors.New("bench: several nodes need a PostgreSQL database")
	}
	caCert, err := b.env.CACert(state)
	if err != nil {
		return 0, 0, err
	}
	where := "a real token"
	if cfg.Token.SoftHSMConf != "" {
		where = "SoftHSM"
	}
	fmt.Printf("  CA key: %s in %s (token key %q)\n", keyKind(caCert.PublicKey), where, cfg.Token.CAKey)

	n := int(float64(k.rate) * (float64(s.windows)*s.window.Seconds() + stormWarmup.Seconds()))
	t0 := time.Now()
	p, err := b.prepareStorm(state, k, n)
	if err != nil {
		return 0, 0, err
	}
	fmt.Printf("  prepared %d codes and requests in %.1f s (enough for %d/s over the warm-up and %d windows of %s)\n",
		n, time.Since(t0).Seconds(), k.rate, s.windows, s.window)
	caFile := filepath.Join(b.dir, k.name+"-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}), 0o600); err != nil {
		return 0, 0, err
	}
	// Node i serves requests [lo[i], lo[i+1]).
	lo := make([]int, nodes+1)
	for i := range lo {
		lo[i] = i * n / nodes
	}
	reqFiles := make([]string, nodes)
	for i := range nodes {
		reqFiles[i] = filepath.Join(b.dir, fmt.Sprintf("%s-requests-%d.jsonl", k.name, i+1))
		if err := loadgen.WriteRequests(reqFiles[i], p.reqs[lo[i]:lo[i+1]]); err != nil {
			return 0, 0, err
		}
	}
	p.reqs = nil

	addrs := make([]string, nodes)
	metricsAddrs := make([]string, nodes)
	pids := make([]int, nodes)
	logs := make([]*syncBuffer, nodes)
	cmds := make([]*exec.Cmd, nodes)
	profile := ""
	for i := range nodes {
		addrs[i], metricsAddrs[i] = freeAddr(), freeAddr()
		args := []string{"serve", "--state", state, "--addr", addrs[i], "--metrics-addr", metricsAddrs[i], "--public-addr", freeAddr()}
		if nodes > 1 {
			args = append(args, "--node", fmt.Sprintf("bench%d", i+1))
		}
		if s.profileDir != "" && i == 0 {
			profile = filepath.Join(s.profileDir, "serve-"+k.name+".pprof")
			args = append(args, "--cpuprofile", profile)
		}
		cmds[i] = exec.Command(b.self, args...)
		logs[i] = &syncBuffer{}
		cmds[i].Stderr = logs[i]
		if err := cmds[i].Start(); err != nil {
			return 0, 0, err
		}
		defer stopChild(cmds[i])
		pids[i] = cmds[i].Process.Pid
	}
	allLogs := func() string {
		var sb strings.Builder
		for i, l := range logs {
			fmt.Fprintf(&sb, "node %d:\n%s\n", i+1, lastLines(l.String(), 20))
		}
		return sb.String()
	}
	for _, addr := range addrs {
		if err := waitReady("https://"+addr, caCert); err != nil {
			return 0, 0, fmt.Errorf("%w\n%s", err, allLogs())
		}
	}
	db, err := statedir.OpenDatabase(cfg)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: open the archive to check the storm's certificates: %w", err)
	}
	defer db.Close()

	var issued, exhausted int
	checks := make([]func(loadgen.Result) error, nodes)
	for i := range nodes {
		ids := p.codeIDs[lo[i]:lo[i+1]]
		checks[i] = func(r loadgen.Result) error {
			if r.Exhausted {
				exhausted++
			}
			issued += len(r.OKIndex)
			return checkIssued(db, ids, r.OKIndex, k.archived)
		}
	}
	shape := stormShape{clients: clients, windows: s.windows, window: s.window, warmup: stormWarmup}
	if url != "" {
		shape.dbCPU = b.dbCPU
	}
	m0 := sumMetrics(metricsAddrs)
	var ws []window
	if nodes == 1 {
		shape.check = checks[0]
		ws, err = b.outsideStorm(addrs[0], reqFiles[0], pids[0], shape, "--once", "--record-ok", "--tls-ca", caFile)
	} else {
		ws, err = b.outsideStorms(addrs, reqFiles, pids, shape, checks, "--once", "--record-ok", "--tls-ca", caFile)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%w\n%s", err, allLogs())
	}
	m1 := sumMetrics(metricsAddrs)
	after, err := deferredOCSP(db, pids, shape, metricsAddrs)
	if err != nil {
		return 0, 0, fmt.Errorf("%w\n%s", err, allLogs())
	}
	for _, c := range cmds {
		stopChild(c)
	}
	target := ""
	if k.name == "est" {
		target = "target 1,600/s, ≤ 700 µs server CPU per certificate"
	}
	title := fmt.Sprintf("out of process: %s, %s, %d clients", k.title, backend, k.clients)
	if nodes > 1 {
		title = fmt.Sprintf("out of process: %s, %d %s nodes, %d clients each (total; CPU summed over the nodes)", k.title, nodes, backend, clients)
	}
	reportWindows(title, target, "certificate", ws)
	row("  certificates counted by the load generator, all found issued", float64(issued), "", "in the database after each window (no phantom success)")
	if c := m1.commits - m0.commits; c > 0 {
		fmt.Printf("  %-58s %10.1f        %s\n", "store updates per commit (the writers' group commits)", (m1.updates-m0.updates)/c,
			"over the warm-up and the windows (keyarc_store_updates_total over keyarc_store_commits_total)")
	}
	row("  OCSP responses signed during the warm-up and the windows", m1.ocspSigned-m0.ocspSigned, "",
		"keyarc_ocsp_signed_total: the first responses wait for a pause in issuance")
	if after.signed > 0 {
		note := fmt.Sprintf("%.0f signed in %.1f s after the load stopped", after.signed, after.wall.Seconds())
		if after.dbCPU > 0 {
			note += fmt.Sprintf(", and %.0f µs of the database server's", float64(after.dbCPU.Microseconds())/after.signed)
		}
		row("  its first OCSP responses, after it: CPU per response", float64(after.cpu.Microseconds())/after.signed, "µs", note)
	}
	if k.archived && b.enrollCryptoCPU > 0 {
		row("  its crypto CPU per item (CSR check + envelope + parse + seal + sign)", b.enrollCryptoCPU, "µs", "each measured alone, CPU time: the floor of the line above")
	}
	if exhausted > 0 {
		fmt.Printf("  NOTE: the prepared requests ran out in %d window(s), which ended early: raise --%s-prepare-rate\n", exhausted, strings.SplitN(k.name, "-", 2)[0])
	}
	if profile != "" {
		fmt.Printf("  server CPU profile (start-up, warm-up and windows): %s\n  read it with: go tool pprof -top -cum %s %s\n", profile, b.self, profile)
	}
	fmt.Println()
	rate, _, _ = medianRange(ws, func(w window) float64 { return w.Rate })
	cpuPer, _, _ = medianRange(ws, window.serverCPUPer)
	return rate, cpuPer, nil
}

// preparedStorm is a storm's requests, and the enrollment code each one uses, by index.
type preparedStorm struct {
	reqs    []loadgen.Request
	codeIDs []string
}

// prepareStorm opens the appliance of state in this process and makes n enrollment codes and
// the n requests that use them, on all cores; it closes the appliance before it returns, so
// that a `keyarc serve` child can take the state.
func (b *bench) prepareStorm(state string, k stormKind, n int) (*preparedStorm, error) {
	a, err := b.env.Open(state, freeAddr(), freeAddr(), slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		return nil, err
	}
	defer a.Close()
	svc := a.Service()
	if k.archived && b.enrollCryptoCPU == 0 {
		// The archival storm's crypto cost per item, the floor of its server CPU per
		// certificate: the CPU time of each of the enroll parts, measured alone, summed. CPU
		// time, not a rate: it does not depend on what else runs on the machine.
		csrCheck, cmsOpen, parse, seal, sign, err := enrollCryptoParts(context.Background(), svc, "p256", newP256())
		if err != nil {
			return nil, err
		}
		sum := 0.0
		for _, pt := range []part{csrCheck, cmsOpen, parse, seal, sign} {
			c, err := cpuPerOp(pt, b.raw)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", pt.name, err)
			}
			sum += c
		}
		b.enrollCryptoCPU = sum
	}
	prefix := "storm-" + k.name + "-"
	cs, err := codes(svc, prefix, k.template, n)
	if err != nil {
		return nil, fmt.Errorf("enrollment codes: %w", err)
	}
	p := &preparedStorm{reqs: make([]loadgen.Request, n), codeIDs: make([]string, n)}
	var tr *x509.Certificate
	var h crypto.Hash
	if k.archived {
		tr, h = svc.Transport.Cert, svc.ShareHash()
	}
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				mb := mailboxN(prefix, i)
				key := newP256()
				csr := benchCSR(key, mb)
				auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(mb+":"+cs[i].Secret))
				p.codeIDs[i] = cs[i].ID
				if !k.archived {
					p.reqs[i] = loadgen.Request{Method: "POST", Path: "/.well-known/est/" + k.template + "/simpleenroll",
						Header: map[string]string{"Content-Type": "application/pkcs10", "Authorization": auth},
						Body:   []byte(base64.StdEncoding.EncodeToString(csr))}
					continue
				}
				p8, _ := x509.MarshalPKCS8PrivateKey(key)
				env, err := cms.Encrypt(p8, tr, cms.EnvelopedAESCBC, h)
				clear(p8)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				body, _ := json.Marshal(map[string]string{"template": k.template,
					"csr": base64.StdEncoding.EncodeToString(csr), "encrypted_key": base64.StdEncoding.EncodeToString(env)})
				p.reqs[i] = loadgen.Request{Method: "POST", Path: "/api/v1/enroll",
					Header: map[string]string{"Content-Type": "application/json", "Authorization": auth}, Body: body}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("encrypt a key to the transport certificate: %w", firstErr)
	}
	return p, nil
}

// checkIssued checks in the archive that each request of okIndex, counted as served by the
// load generator, used its enrollment code for a certificate now issued (with an escrow
// record when archived): no success the database does not back.
//
// # Errors
//
// A [*phantomError] when some are not backed; the store's error.
func checkIssued(db store.Store, codeIDs []string, okIndex []int64, archived bool) error {
	var bad int
	var first string
	const perView = 4096 // a View holds a snapshot: keep each short
	for off := 0; off < len(okIndex); off += perView {
		part := okIndex[off:min(off+perView, len(okIndex))]
		err := db.View(context.Background(), func(tx store.Tx) error {
			for _, i := range part {
				if i < 0 || int(i) >= len(codeIDs) {
					if bad == 0 {
						first = fmt.Sprintf("request %d counted, of %d prepared", i, len(codeIDs))
					}
					bad++
					continue
				}
				fault := ""
				c, err := tx.GetCode(codeIDs[i])
				switch {
				case err != nil:
					fault = fmt.Sprintf("code %s: %v", codeIDs[i], err)
				case c.UsedAt == nil || c.Serial == "":
					fault = fmt.Sprintf("code %s is not used for a certificate", c.ID)
				default:
					cert, err := tx.GetCertificate(c.Serial)
					switch {
					case err != nil:
						fault = fmt.Sprintf("certificate %s of code %s: %v", c.Serial, c.ID, err)
					case cert.State != store.StateIssued || len(cert.DER) == 0:
						fault = fmt.Sprintf("certificate %s of code %s is %s", c.Serial, c.ID, cert.State)
					case cert.CodeID != c.ID:
						fault = fmt.Sprintf("certificate %s is not of code %s", c.Serial, c.ID)
					case archived && cert.RecordID == "":
						fault = fmt.Sprintf("certificate %s has no escrow record", c.Serial)
					}
				}
				if fault != "" {
					if bad == 0 {
						first = fault
					}
					bad++
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("bench: check the storm's certificates: %w", err)
		}
	}
	if bad > 0 {
		return &phantomError{Bad: bad, Counted: len(okIndex), First: first}
	}
	return nil
}

// phantomError is a storm's check that failed: Bad of the Counted certificates the load
// generator counted as issued are not issued in the database; First says what is wrong with
// the first of them.
type phantomError struct {
	Bad, Counted int
	First        string
}

func (e *phantomError) Error() string {
	return fmt.Sprintf("bench: %d of %d certificates the load generator counted are not issued in the database; first: %s", e.Bad, e.Counted, e.First)
}

// enrollCryptoParts are the per-item crypto costs of an archived enrollment with a CA key of
// kind alg, measured on sub's key: CSR check, envelope opening, PKCS#8 parse, seal, sign.
func enrollCryptoParts(ctx context.Context, svc *escrow.Service, alg string, sub *ecdsa.PrivateKey) (csrCheck, cmsOpen, parse, seal, sign part, err error) {
	procs := runtime.GOMAXPROCS(0)
	tmpl := svc.Templates[policy.TemplateSMIMEEncryption]
	rs, err := svc.CurrentRecoverySet(ctx)
	if err != nil {
		return
	}
	subPKCS8, _ := x509.MarshalPKCS8PrivateKey(sub)
	csrDER := benchCSR(sub, "raw@example.org")
	env, err := cms.Encrypt(subPKCS8, svc.Transport.Cert, cms.EnvelopedAESCBC, svc.ShareHash())
	if err != nil {
		return
	}
	seal = part{name: "seal an escrow record (n=3 KRAs, m=2)", n: procs, op: func() error {
		serial, _ := ca.NewSerial()
		_, err := svc.SealForIssue(rs, serial, sub.Public(), subPKCS8)
		return err
	}}
	sign = part{name: "CA signs a certificate through the token (" + alg + ")", n: 2 * procs, op: func() error {
		serial, _ := ca.NewSerial()
		_, err := svc.Issuer.Issue(ca.Request{Serial: serial, PublicKey: sub.Public(), Subject: pkix.Name{CommonName: "raw@example.org"},
			EmailAddresses: []string{"raw@example.org"}, KeyUsage: x509.KeyUsageKeyAgreement,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}, NotBefore: time.Now(), Validity: 365 * 24 * time.Hour})
		return err
	}}
	csrCheck = part{name: "CSR parse + template check (P-256 CSR)", n: procs, op: func() error {
		csr, err := x509.ParseCertificateRequest(csrDER)
		if err != nil {
			return err
		}
		return tmpl.CheckCSR(csr, "raw@example.org")
	}}
	cmsOpen = part{name: "CMS envelope opened with the transport key (token RSA-2048)", n: 2 * procs, op: func() error {
		k, err := svc.OpenEnvelope(env)
		clear(k)
		return err
	}}
	parse = part{name: "PKCS#8 parse + pair check (P-256)", n: procs, op: func() error { return escrow.CheckKeyPair(subPKCS8, sub.Public()) }}
	return
}

// cpuPerOp runs p's operation on its goroutines for d and returns the CPU time (user and
// system, of this process and its token library) per operation, in µs.
func cpuPerOp(p part, d time.Duration) (float64, error) {
	cpu0 := selfCPU()
	var count atomic.Int64
	var firstErr error
	var once sync.Once
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range p.n {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := p.op(); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				count.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if count.Load() == 0 {
		return 0, errors.New("bench: no operation done")
	}
	return float64((selfCPU()-cpu0)/time.Nanosecond) / 1e3 / float64(count.Load()), nil
}

// selfCPU returns this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// keyKind names a public key's algorithm and size: "ECDSA P-256", "RSA-3072".
func keyKind(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	default:
		return fmt.Sprintf("%T", pub)
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// nodeMetrics are the counters the storms read from the nodes' metrics listeners, summed.
type nodeMetrics struct{ updates, commits, ocspSigned float64 }

// sumMetrics reads the nodes' counters; a node that does not answer counts nothing.
func sumMetrics(addrs []string) (m nodeMetrics) {
	for _, addr := range addrs {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		resp.Body.Close()
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(body)) {
			name, value, ok := strings.Cut(strings.TrimSpace(line), " ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				continue
			}
			switch name {
			case "keyarc_store_updates_total":
				m.updates += v
			case "keyarc_store_commits_total":
				m.commits += v
			case "keyarc_ocsp_signed_total":
				m.ocspSigned += v
			}
		}
	}
	return m
}

// deferredWork is what the nodes spent after a storm on its certificates' first OCSP
// responses.
type deferredWork struct {
	signed     float64
	wall       time.Duration
	cpu, dbCPU time.Duration
}

// deferredOCSP waits, once the load has stopped, until the store lists no OCSP response as
// due (the pre-signer signs the new certificates' first responses when issuance pauses), and
// returns what that cost the nodes (and the database server, when s reads it).
func deferredOCSP(db store.Store, pids []int, s stormShape, metricsAddrs []string) (deferredWork, error) {
	t0, db0, m0 := time.Now(), s.dbCPUNow(), sumMetrics(metricsAddrs)
	c0, err := procsCPU(pids)
	if err != nil {
		return deferredWork{}, err
	}
	for deadline := t0.Add(10 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		var due []store.CertStatus
		now := time.Now()
		err := db.View(context.Background(), func(tx store.Tx) error {
			var err error
			due, err = tx.OCSPDue(now, now.Add(-presign.DefaultRefreshAge), "", 1)
			return err
		})
		if err != nil {
			return deferredWork{}, fmt.Errorf("bench: read the due OCSP responses: %w", err)
		}
		if len(due) == 0 {
			break
		}
		if now.After(deadline) {
			return deferredWork{}, errors.New("bench: the storm's OCSP responses were still not all signed 10 minutes after it")
		}
	}
	c1, err := procsCPU(pids)
	if err != nil {
		return deferredWork{}, err
	}
	return deferredWork{signed: sumMetrics(metricsAddrs).ocspSigned - m0.ocspSigned, wall: time.Since(t0),
		cpu: c1 - c0, dbCPU: s.dbCPUNow() - db0}, nil
}
