package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/loadgen"
	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/policy"
)

// stormShape is how an out-of-process storm runs: clients keep-alive connections of a `keyarc
// loadgen` child, windows windows of length window, after a warm-up.
type stormShape struct {
	clients, windows int
	window, warmup   time.Duration
	// check, when set, is called with each window's result just after it, the server idle:
	// its error ends the storm.
	check func(loadgen.Result) error
	// dbCPU, when set, reads the database server's CPU time (all its processes), read at the
	// start and the end of each window like the server's: the checks between windows and the
	// warm-up are not counted.
	dbCPU func() time.Duration
}

// window is what one window measured from outside: the load generator's result and the CPU
// time the server and the load generator used over it.
type window struct {
	loadgen.Result
	serverCPU time.Duration
	dbCPU     time.Duration // the database server's, when the storm reads it
}

// serverCPUPer returns the server's CPU time per answered request, in microseconds.
func (w window) serverCPUPer() float64 {
	if w.OK == 0 {
		return 0
	}
	return float64(w.serverCPU/time.Microsecond) / float64(w.OK)
}

// dbCPUPer returns the database server's CPU time per answered request, in microseconds.
func (w window) dbCPUPer() float64 {
	if w.OK == 0 {
		return 0
	}
	return float64(w.dbCPU/time.Microsecond) / float64(w.OK)
}

// dbCPUNow returns s.dbCPU(), or 0 when the storm does not read it.
func (s stormShape) dbCPUNow() time.Duration {
	if s.dbCPU == nil {
		return 0
	}
	return s.dbCPU()
}

// clientCPUPer returns the load generator's CPU time per request, in microseconds.
func (w window) clientCPUPer() float64 {
	if w.OK+w.Errors == 0 {
		return 0
	}
	return w.ClientCPUSeconds * 1e6 / float64(w.OK+w.Errors)
}

// outsideStorm runs a `keyarc loadgen` child with the requests in reqFile against addr, and
// reads the CPU time of the server process serverPID from /proc just before and just after
// each window (the load generator waits for the bench between windows, so the server is idle
// at both readings).
func (b *bench) outsideStorm(addr, reqFile string, serverPID int, s stormShape, extra ...string) ([]window, error) {
	args := append([]string{"loadgen", "--addr", addr, "--requests", reqFile, "--clients", strconv.Itoa(s.clients),
		"--duration", s.window.String(), "--windows", strconv.Itoa(s.windows), "--warmup", s.warmup.String(), "--control"}, extra...)
	cmd := exec.Command(b.self, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	out := bufio.NewReader(stdout)
	line := func() ([]byte, error) {
		l, err := out.ReadBytes('\n')
		if err != nil {
			cmd.Wait()
			return nil, fmt.Errorf("keyarc loadgen: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return l, nil
	}
	if _, err := line(); err != nil { // {"ready":true}
		return nil, err
	}
	var ws []window
	for range s.windows {
		cpu0, err := procCPU(serverPID)
		if err != nil {
			return nil, err
		}
		db0 := s.dbCPUNow()
		if _, err := io.WriteString(stdin, "go\n"); err != nil {
			return nil, err
		}
		l, err := line()
		if err != nil {
			return nil, err
		}
		cpu1, err := procCPU(serverPID)
		if err != nil {
			return nil, err
		}
		db1 := s.dbCPUNow()
		var w window
		if err := json.Unmarshal(l, &w.Result); err != nil {
			return nil, fmt.Errorf("keyarc loadgen: result %q: %w", l, err)
		}
		w.serverCPU, w.dbCPU = cpu1-cpu0, db1-db0
		if s.check != nil {
			if err := s.check(w.Result); err != nil {
				return nil, fmt.Errorf("window %d: %w", len(ws)+1, err)
			}
		}
		w.OKIndex = nil
		ws = append(ws, w)
	}
	return ws, nil
}

// procsCPU is the sum of procCPU over pids.
func procsCPU(pids []int) (time.Duration, error) {
	var sum time.Duration
	for _, pid := range pids {
		c, err := procCPU(pid)
		if err != nil {
			return 0, err
		}
		sum += c
	}
	return sum, nil
}

// procCPU reads the user and system CPU time of process pid from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: server CPU time: %w", err)
	}
	// pid (comm) state ppid ...: comm may hold spaces; utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("bench: cannot read /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bench: cannot read utime and stime in /proc/%d/stat", pid)
	}
	// USER_HZ, the unit of /proc times, is 100 on Linux whatever the kernel's HZ.
	return time.Duration(ut+st) * (time.Second / 100), nil
}

// medianRange returns the median, the smallest and the largest of f over ws.
func medianRange(ws []window, f func(window) float64) (med, lo, hi float64) {
	v := make([]float64, len(ws))
	for i, w := range ws {
		v[i] = f(w)
	}
	slices.Sort(v)
	return v[len(v)/2], v[0], v[len(v)-1]
}

// reportWindows prints the windows of one out-of-process storm; per names what one answer
// with the expected status is (a response, a certificate).
func reportWindows(name, target, per string, ws []window) {
	med, lo, hi := medianRange(ws, func(w window) float64 { return w.Rate })
	note := fmt.Sprintf("median of %d windows of %.0f s: %.0f–%.0f/s", len(ws), ws[0].Seconds, lo, hi)
	if target != "" {
		note += "; " + target
	}
	row(name, med, "/s", note)
	p50, _, _ := medianRange(ws, func(w window) float64 { return w.P50 })
	p99, p99lo, p99hi := medianRange(ws, func(w window) float64 { return w.P99 })
	row("  latency p50", p50, "µs", fmt.Sprintf("p99 %.0f µs (%.0f–%.0f)", p99, p99lo, p99hi))
	cpu, cpuLo, cpuHi := medianRange(ws, window.serverCPUPer)
	row("  server CPU per "+per+" (utime+stime, /proc)", cpu, "µs", fmt.Sprintf("%.1f–%.1f µs", cpuLo, cpuHi))
	if ws[0].dbCPU > 0 {
		db, dbLo, dbHi := medianRange(ws, window.dbCPUPer)
		row("  PostgreSQL server CPU per "+per+" (all its processes)", db, "µs", fmt.Sprintf("%.1f–%.1f µs", dbLo, dbHi))
	}
	lg, _, _ := medianRange(ws, window.clientCPUPer)
	row("  load generator CPU per request", lg, "µs", "")
	var errs int64
	var msgs []string
	for _, w := range ws {
		errs += w.Errors
		msgs = append(msgs, w.Messages...)
	}
	if errs > 0 {
		row("  ERRORS", float64(errs), "", strings.Join(slices.Compact(msgs), "; "))
	}
}

// ocspRound measures the OCSP responder from outside: certificates issued on a throw-away
// state, a `keyarc serve` child whose pre-signer signs their responses, and a `keyarc
// loadgen` child asking for them over TCP loopback.
func (b *bench) ocspRound() error {
	s := b.ocsp
	fmt.Printf("== OCSP: %d certificates' pre-signed responses, out of process: a `keyarc loadgen` child against a `keyarc serve` child ==\n", s.certs)
	state, err := b.initState("state-ocsp", "p256")
	if err != nil {
		return err
	}
	serials, err := b.issueMany(state, s.certs)
	if err != nil {
		return fmt.Errorf("issue %d certificates: %w", s.certs, err)
	}
	caCert, err := b.env.CACert(state)
	if err != nil {
		return err
	}
	reqs, err := ocspRequests(caCert, serials)
	if err != nil {
		return err
	}
	reqFile := filepath.Join(b.dir, "ocsp-requests.jsonl")
	if err := loadgen.WriteRequests(reqFile, reqs); err != nil {
		return err
	}

	addr, maddr, paddr := freeAddr(), freeAddr(), freeAddr()
	cmd := exec.Command(b.self, "serve", "--state", state, "--addr", addr, "--metrics-addr", maddr, "--public-addr", paddr)
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer stopChild(cmd)
	if err := waitReady("https://"+addr, caCert); err != nil {
		return fmt.Errorf("%w\n%s", err, logs.String())
	}
	// The pre-signer signs every response at start; wait until each request is answered.
	start := time.Now()
	if err := waitAnswered(paddr, reqs, 2*time.Minute); err != nil {
		return fmt.Errorf("%w\n%s", err, logs.String())
	}
	respSize, err := responseSize(paddr, reqs[0])
	if err != nil {
		return err
	}
	fmt.Printf("  every response signed and served %.1f s after the start; requests: GET with SHA-1 and SHA-256 CertIDs, 1 in 10 POST\n", time.Since(start).Seconds())
	shape := stormShape{clients: s.clients, windows: s.windows, window: s.window, warmup: 2 * time.Second}
	ws, err := b.outsideStorm(paddr, reqFile, cmd.Process.Pid, shape)
	if err != nil {
		return fmt.Errorf("OCSP storm: %w\n%s", err, logs.String())
	}
	reportWindows(fmt.Sprintf("OCSP responses, %d keep-alive clients", s.clients), "target 20,000/s", "response", ws)
	stopChild(cmd)

	if s.ceiling {
		// The same load against a trivial net/http handler answering as many bytes: what a Go
		// HTTP server reaches on this machine with this load generator.
		st := exec.Command(b.self, "loadgen", "static", "--addr", "127.0.0.1:0", "--size", strconv.Itoa(respSize))
		stdout, err := st.StdoutPipe()
		if err != nil {
			return err
		}
		if err := st.Start(); err != nil {
			return err
		}
		defer stopChild(st)
		l, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			return fmt.Errorf("keyarc loadgen static: %w", err)
		}
		ws, err := b.outsideStorm(strings.TrimSpace(l), reqFile, st.Process.Pid, shape)
		if err != nil {
			return fmt.Errorf("static storm: %w", err)
		}
		reportWindows(fmt.Sprintf("ceiling: trivial net/http handler, %d-byte body, same load", respSize), "", "response", ws)
	}
	fmt.Println("  (in process, for comparison: go test -run '^$' -bench OCSPLoopback ./cmd/keyarc/internal/api/)")
	fmt.Println()
	return nil
}

// syncBuffer is a bytes.Buffer a child process writes while the bench reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// stopChild interrupts a child process and waits for it, killing it after 20 s. Safe to
// call twice.
func stopChild(cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// issueMany issues n archived smime-encryption certificates on the state in process, then
// closes the appliance; it returns their serials.
func (b *bench) issueMany(state string, n int) ([]string, error) {
	reg := prometheus.NewRegistry()
	a, err := b.env.Open(state, freeAddr(), freeAddr(), slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	svc := a.Service()
	serials := make([]string, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k := newP256()
				p8, _ := x509.MarshalPKCS8PrivateKey(k)
				is, err := svc.IssueArchivedKey(context.Background(), mailboxN("ocsp", i), policy.TemplateSMIMEEncryption, k.Public(), p8)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				serials[i] = is.Serial
			}
		})
	}
	wg.Wait()
	return serials, firstErr
}

// ocspRequests makes the requests of an OCSP storm, one per serial: GET with a SHA-1 CertID
// (as openssl and most clients ask), with a SHA-256 one for 1 in 5, and 1 in 10 by POST.
func ocspRequests(caCert *x509.Certificate, serials []string) ([]loadgen.Request, error) {
	is, err := ocsp.NewIssuer(caCert)
	if err != nil {
		return nil, err
	}
	reqs := make([]loadgen.Request, 0, len(serials))
	for i, s := range serials {
		n, ok := new(big.Int).SetString(s, 16)
		if !ok {
			return nil, fmt.Errorf("bench: serial %q is not hex", s)
		}
		h := crypto.SHA1
		if i%5 == 4 {
			h = crypto.SHA256
		}
		der, err := ocsp.MarshalRequest([]ocsp.CertID{is.CertID(h, n)}, nil)
		if err != nil {
			return nil, err
		}
		if i%10 == 3 {
			reqs = append(reqs, loadgen.Request{Method: "POST", Path: "/ocsp", Header: map[string]string{"Content-Type": "application/ocsp-request"}, Body: der})
			continue
		}
		reqs = append(reqs, loadgen.Request{Method: "GET", Path: "/ocsp/" + url.PathEscape(base64.StdEncoding.EncodeToString(der))})
	}
	return reqs, nil
}

// waitAnswered sends every request once, on two connections, until all are answered with 200
// (the pre-signer has signed them all) or within passes.
func waitAnswered(addr string, reqs []loadgen.Request, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		g, err := loadgen.New(loadgen.Config{Addr: addr, Clients: 2, Requests: reqs, Once: true})
		if err != nil {
			return err
		}
		r := g.Window(context.Background(), within)
		g.Close()
		if r.Errors == 0 && r.OK == int64(len(reqs)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: OCSP responses not all served after %v: %d of %d answered with 200 (%s)", within, r.OK, len(reqs), strings.Join(r.Messages, "; "))
		}
		time.Sleep(time.Second)
	}
}

// responseSize returns the length of the answer to a GET request.
func responseSize(addr string, r loadgen.Request) (int, error) {
	resp, err := http.Get("http://" + addr + r.Path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("bench: GET %s: HTTP %d", r.Path[:20], resp.StatusCode)
	}
	return len(b), nil
}
