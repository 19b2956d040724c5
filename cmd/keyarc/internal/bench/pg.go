package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/loadgen"
	"github.com/keyarc/keyarc/escrow/bulk"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgserver"
	"github.com/keyarc/keyarc/policy"
)

// The PostgreSQL round: the same jobs and the EST storm as on SQLite, on a PostgreSQL server
// the bench runs itself (initdb in a temporary folder, a unix socket only, fsync and
// synchronous_commit at their defaults: on), and the EST storm against three nodes sharing
// one database and one token beside one node.

// pgServer is a PostgreSQL server of the bench's own, in a folder of its own, reached on a
// unix socket in that folder only.
type pgServer struct {
	*pgserver.Server
}

// startPG runs initdb in dir and starts the server, durable (initdb's files synced, fsync and
// synchronous_commit at their defaults), with role keyarc. As root, PostgreSQL runs as the
// postgres user, which is let through dir's parents.
func startPG(dir string) (*pgServer, error) {
	srv, err := pgserver.Start(pgserver.Options{Dir: dir, Settings: []string{"max_connections = 200"}})
	if errors.Is(err, pgserver.ErrNotInstalled) {
		return nil, fmt.Errorf("bench: %w; make deps installs it", err)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	s := &pgServer{srv}
	if err := s.admin("CREATE ROLE keyarc LOGIN"); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// cpu returns the CPU time (user and system) of the server's processes: the postmaster and
// its children (backends, writers), read from /proc.
func (s *pgServer) cpu() time.Duration {
	root := s.PID()
	if root == 0 {
		return 0
	}
	var sum time.Duration
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if i < 0 || len(f) < 13 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); pid != root && ppid != root {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum += time.Duration(ut+st) * (time.Second / 100)
	}
	return sum
}

// quiesce vacuums and analyzes database name, then waits (up to a minute and a half) until
// the server's processes use less than 5% of a core over a second. The vacuum a job or a storm
// leaves due would otherwise run, by autovacuum, during the next storm, on the same cores.
func (s *pgServer) quiesce(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := s.Admin(ctx, name, "VACUUM ANALYZE"); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); {
		c0 := s.cpu()
		time.Sleep(time.Second)
		if d := s.cpu() - c0; d >= 0 && d < 50*time.Millisecond {
			break
		}
	}
	return nil
}

// admin runs one statement as the superuser.
func (s *pgServer) admin(stmt string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Admin(ctx, "postgres", stmt); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// database makes database name, owned by role keyarc, and returns its URL as keyarc.yaml
// holds it (the unix socket, no password).
func (s *pgServer) database(name string) (string, error) {
	if err := s.admin("CREATE DATABASE " + name + " OWNER keyarc"); err != nil {
		return "", err
	}
	return fmt.Sprintf("postgres:///%s?host=%s&port=%d&user=keyarc", name, s.Dir(), s.Port()), nil
}

// stop shuts the server down (a fast shutdown) and waits for it; its folder stays, with the
// bench's.
func (s *pgServer) stop() { s.Halt() }

// initStateOn makes a development state with the given CA key whose database is url ("" for
// the embedded SQLite file).
func (b *bench) initStateOn(name, alg, url string) (string, error) {
	if url == "" {
		return b.initState(name, alg)
	}
	if err := b.initSelf(); err != nil {
		return "", err
	}
	state := filepath.Join(b.dir, name)
	out, err := exec.Command(b.self, "init", "--dev", "--state", state, "--ca-key", alg, "--database", url).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("init --dev --database %s: %w\n%s", url, err, out)
	}
	return state, nil
}

// pgRound runs the PostgreSQL round: the import and enroll jobs against their crypto limits,
// the EST storm from outside against one node on SQLite and one on PostgreSQL in the same
// run, and against three nodes sharing the PostgreSQL database and the token.
func (b *bench) pgRound() error {
	fmt.Println("== PostgreSQL beside SQLite: a server of the bench's own (initdb in a temporary folder, a unix socket, fsync and synchronous_commit on) ==")
	pg, err := startPG(filepath.Join(b.dir, "postgres"))
	if err != nil {
		return err
	}
	defer pg.stop()
	b.dbCPU = pg.cpu
	defer func() { b.dbCPU = nil }()
	url, err := pg.database("keyarc_jobs")
	if err != nil {
		return err
	}
	if err := b.pgJobs(url); err != nil {
		return fmt.Errorf("jobs on PostgreSQL: %w", err)
	}
	if err := pg.quiesce("keyarc_jobs"); err != nil {
		return err
	}

	// Shorter windows than the other storms', and codes prepared for the rate a PostgreSQL
	// node may reach: its codes are made through the database, at its pace.
	defer func(w time.Duration) { b.storms.window = w }(b.storms.window)
	b.storms.window = b.pgWindow
	est := stormKind{name: "est", label: "EST", title: "EST simpleenroll (smime-signature, no archival)", template: policy.TemplateSMIMESignature,
		clients: b.storms.estClients, rate: b.pgRate}
	// The PostgreSQL node is compared with a SQLite node measured just before it and just
	// after it (the mean of the two), as the jobs are with their crypto limits: the shared
	// machine's speed drifts over minutes by more than the difference looked for. With
	// --pg-runs N, N PostgreSQL storms alternate with N+1 SQLite ones, and the median of the N
	// ratios is reported.
	sqliteStorm := func(run int) (float64, error) {
		k := est
		k.name = fmt.Sprintf("est-sqlite-%d", run)
		rate, _, err := b.enrollStormOn(k, "", 1)
		if err != nil {
			return 0, fmt.Errorf("EST storm on SQLite: %w", err)
		}
		return rate, nil
	}
	sqliteBefore, err := sqliteStorm(0)
	if err != nil {
		return err
	}
	k := est
	k.label = "EST on PostgreSQL"
	var pgRates, pgCPUs, ratios []float64
	var notes []string
	for run := 1; run <= b.pgRuns; run++ {
		db := fmt.Sprintf("keyarc_est_%d", run)
		if url, err = pg.database(db); err != nil {
			return err
		}
		k.name = fmt.Sprintf("est-pg-%d", run)
		rate, cpu, err := b.enrollStormOn(k, url, 1)
		if err != nil {
			return fmt.Errorf("EST storm on PostgreSQL: %w", err)
		}
		if err := pg.quiesce(db); err != nil {
			return err
		}
		sqliteAfter, err := sqliteStorm(run)
		if err != nil {
			return err
		}
		pgRates, pgCPUs = append(pgRates, rate), append(pgCPUs, cpu)
		ratios = append(ratios, 100*rate/((sqliteBefore+sqliteAfter)/2))
		notes = append(notes, fmt.Sprintf("%.0f%% (%.0f/s; SQLite %.0f/s before and %.0f/s after it)", ratios[len(ratios)-1], rate, sqliteBefore, sqliteAfter))
		sqliteBefore = sqliteAfter
	}
	pgRate, pgCPU := median(pgRates), median(pgCPUs)
	url, err = pg.database("keyarc_est3")
	if err != nil {
		return err
	}
	k.name, k.label = "est-pg3", "EST on PostgreSQL, three nodes"
	rate3, cpu3, err := b.enrollStormOn(k, url, 3)
	if err != nil {
		return fmt.Errorf("EST storm on three PostgreSQL nodes: %w", err)
	}
	fmt.Println("EST storm, PostgreSQL against SQLite and three nodes against one (medians of the windows above):")
	note := "target ≥ 70%; " + notes[0]
	if len(ratios) > 1 {
		note = fmt.Sprintf("target ≥ 70%%; the median of %d runs, each against the SQLite storms just before and after it: %s",
			len(ratios), strings.Join(notes, "; "))
	}
	row("  one PostgreSQL node / one SQLite node", median(ratios), "%", note)
	row("  three PostgreSQL nodes / one, total rate", 100*rate3/pgRate, "%", "one machine: no speed-up to expect, and no collapse")
	row("  three PostgreSQL nodes / one, server CPU per certificate (summed over the nodes)", 100*cpu3/pgCPU, "%", "")
	fmt.Println()
	return nil
}

// median returns the median of v (the upper one of an even count), leaving v as it is.
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// pgJobs runs the import (P-256 keys) and enroll jobs on the PostgreSQL database url, each
// against its crypto limit measured before and after it.
func (b *bench) pgJobs(url string) error {
	state, err := b.initStateOn("state-pg-jobs", "p256", url)
	if err != nil {
		return err
	}
	a, err := b.env.Open(state, freeAddr(), freeAddr(), slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		return err
	}
	defer a.Close()
	ctx := context.Background()
	svc := a.Service()
	csrCheck, cmsOpen, parse, seal, sign, err := enrollCryptoParts(ctx, svc, "p256", newP256())
	if err != nil {
		return err
	}
	fca, fkey := foreignCA()
	parseImport := importParsePart(fca, fkey, newP256(), "P-256")
	mgr := &bulk.Manager{Service: svc, Dir: filepath.Join(state, "bench-jobs")}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go mgr.Run(runCtx)
	fmt.Println("end to end (bulk jobs, PostgreSQL), each run against its crypto limit measured again before and after it:")
	for _, j := range []struct {
		name  string
		parts []part
		file  func(run int) []byte
	}{
		{fmt.Sprintf("import (P-256 keys) job on PostgreSQL, %d items", b.items), []part{parseImport, seal},
			func(run int) []byte { return importFile(b.items, 1<<40+int64(run), nil) }},
		{fmt.Sprintf("enroll job on PostgreSQL, %d items", b.items), []part{csrCheck, cmsOpen, parse, seal, sign},
			func(int) []byte { return enrollFile(b.items, svc.Transport.Cert, svc.ShareHash()) }},
	} {
		rs, err := b.repeat(j.parts, b.pgRuns, func(run int) (func() (float64, error), error) {
			f := j.file(run)
			return func() (float64, error) { return b.runJob(mgr, f) }, nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", j.name, err)
		}
		report(j.name, rs, "its crypto limit; target ≥ 60%")
	}
	return nil
}

// outsideStorms is outsideStorm against several nodes at once: a `keyarc loadgen` child per
// node with the requests of reqFiles[i], the windows of all of them started together. A
// window's result is the sum of the nodes' answers, rates, and server and load-generator CPU
// times; its latency quantiles are the largest of the nodes'. checks[i] is called with node
// i's result after each window.
func (b *bench) outsideStorms(addrs, reqFiles []string, pids []int, s stormShape, checks []func(loadgen.Result) error, extra ...string) ([]window, error) {
	type child struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		out    *bufio.Reader
		stderr *bytes.Buffer
	}
	kids := make([]*child, len(addrs))
	defer func() {
		for _, c := range kids {
			if c != nil {
				c.stdin.Close()
				c.cmd.Wait()
			}
		}
	}()
	for i, addr := range addrs {
		args := append([]string{"loadgen", "--addr", addr, "--requests", reqFiles[i], "--clients", strconv.Itoa(s.clients),
			"--duration", s.window.String(), "--windows", strconv.Itoa(s.windows), "--warmup", s.warmup.String(), "--control"}, extra...)
		c := &child{cmd: exec.Command(b.self, args...), stderr: &bytes.Buffer{}}
		c.cmd.Stderr = c.stderr
		var err error
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			return nil, err
		}
		stdout, err := c.cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := c.cmd.Start(); err != nil {
			return nil, err
		}
		c.out = bufio.NewReader(stdout)
		kids[i] = c
	}
	line := func(c *child) ([]byte, error) {
		l, err := c.out.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("keyarc loadgen: %w: %s", err, strings.TrimSpace(c.stderr.String()))
		}
		return l, nil
	}
	for _, c := range kids {
		if _, err := line(c); err != nil { // {"ready":true}
			return nil, err
		}
	}
	var ws []window
	for range s.windows {
		cpu0, err := procsCPU(pids)
		if err != nil {
			return nil, err
		}
		db0 := s.dbCPUNow()
		for _, c := range kids {
			if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
				return nil, err
			}
		}
		results := make([]loadgen.Result, len(kids))
		for i, c := range kids {
			l, err := line(c)
			if err != nil {
				return nil, err
			}
			if err := json.Unmarshal(l, &results[i]); err != nil {
				return nil, fmt.Errorf("keyarc loadgen: result %q: %w", l, err)
			}
		}
		cpu1, err := procsCPU(pids)
		if err != nil {
			return nil, err
		}
		db1 := s.dbCPUNow()
		var w window
		w.serverCPU, w.dbCPU = cpu1-cpu0, db1-db0
		for i, r := range results {
			if err := checks[i](r); err != nil {
				return nil, fmt.Errorf("window %d, node %d: %w", len(ws)+1, i+1, err)
			}
			w.Window = r.Window
			w.OK += r.OK
			w.Errors += r.Errors
			w.Rate += r.Rate
			w.Seconds = max(w.Seconds, r.Seconds)
			w.P50, w.P90, w.P99, w.Max = max(w.P50, r.P50), max(w.P90, r.P90), max(w.P99, r.P99), max(w.Max, r.Max)
			w.ClientCPUSeconds += r.ClientCPUSeconds
			w.Messages = append(w.Messages, r.Messages...)
			w.Exhausted = w.Exhausted || r.Exhausted
		}
		ws = append(ws, w)
	}
	return ws, nil
}
