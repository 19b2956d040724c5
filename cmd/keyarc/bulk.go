package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/term"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/escrow/bulk"
	"github.com/keyarc/keyarc/policy"
)

// bulkState is an appliance's bulk-job machinery: the job manager, its item counter and the
// scheduler's stop function.
type bulkState struct {
	mgr    *bulk.Manager
	items  *prometheus.CounterVec
	cancel context.CancelFunc
	once   sync.Once
}

// newBulkState builds the bulk machinery over the appliance's engine; openAppliance calls it
// once the engine exists.
func newBulkState(a *appliance) *bulkState {
	st := &bulkState{
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_bulk_items_total",
			Help: "Bulk job items processed, by job kind and result (done or failed).",
		}, []string{"kind", "result"}),
	}
	st.mgr = &bulk.Manager{
		Service: a.svc,
		Dir:     filepath.Join(a.cfg.Dir(), "jobs"),
		Logger:  a.log,
		Metrics: bulkMetrics{st.items},
		Fault:   bulkFault,
	}
	return st
}

// bulk returns the appliance's bulk machinery.
func (a *appliance) bulk() *bulkState { return a.bulkSt }

type bulkMetrics struct{ items *prometheus.CounterVec }

func (m bulkMetrics) Item(kind bulk.Kind, result string) {
	m.items.WithLabelValues(string(kind), result).Inc()
}

// registerBulkMetrics adds keyarc_bulk_items_total and keyarc_bulk_jobs to the appliance's
// registry.
func (a *appliance) registerBulkMetrics(reg prometheus.Registerer) {
	reg.MustRegister(a.bulkSt.items, &bulkJobsCollector{a: a}, &bulkPausedCollector{a: a})
}

// bulkJobsCollector reports keyarc_bulk_jobs{state} from the store at each scrape.
type bulkJobsCollector struct{ a *appliance }

var bulkJobsDesc = prometheus.NewDesc("keyarc_bulk_jobs", "Bulk jobs, by state.", []string{"state"}, nil)

func (c *bulkJobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- bulkJobsDesc }

func (c *bulkJobsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.a.bulk().mgr.CountByState(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(bulkJobsDesc, err)
		return
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(bulkJobsDesc, prometheus.GaugeValue, float64(n), state)
	}
}

// startBulk runs the job scheduler (resuming jobs a crash interrupted) until stopBulk. The
// issuance sweep has run by then (openAppliance). It is started once, by bulkRoutes.
func (a *appliance) startBulk() {
	st := a.bulk()
	st.once.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		st.cancel = cancel
		go st.mgr.Run(ctx)
	})
}

// stopBulk stops the job scheduler: items in flight finish or are left for the next start.
func (a *appliance) stopBulk() {
	if a.bulkSt != nil && a.bulkSt.cancel != nil {
		a.bulkSt.cancel()
	}
}

// bulkRoutes adds the bulk-job API and starts the scheduler.
func (a *appliance) bulkRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/bulk", a.handleBulkSubmit)
	mux.HandleFunc("GET /api/v1/bulk", a.handleBulkList)
	mux.HandleFunc("GET /api/v1/bulk/{id}", a.handleBulkStatus)
	mux.HandleFunc("GET /api/v1/bulk/{id}/results", a.handleBulkResults)
	mux.HandleFunc("POST /api/v1/bulk/{id}/passwords", a.handleBulkPasswords)
	a.startBulk()
}

// maxBulkBody bounds a job file sent over HTTP (the parser has its own, equal, limit).
const maxBulkBody = 4 << 30

// bulkFail maps the bulk package's errors to statuses, then answers like fail.
func (a *appliance) bulkFail(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), errors.Is(err, bulk.ErrTooLarge):
		err = &httpStatusError{http.StatusRequestEntityTooLarge, err.Error()}
	case errors.Is(err, bulk.ErrFormat), errors.Is(err, bulk.ErrLineTooLong), errors.Is(err, bulk.ErrTooManyItems):
		err = &httpStatusError{http.StatusBadRequest, err.Error()}
	case errors.Is(err, bulk.ErrNotFound):
		err = &httpStatusError{http.StatusNotFound, err.Error()}
	case errors.Is(err, bulk.ErrNotDone), errors.Is(err, bulk.ErrReleased):
		err = &httpStatusError{http.StatusConflict, err.Error()}
	}
	a.fail(w, r, err)
}

func (a *appliance) handleBulkSubmit(w http.ResponseWriter, r *http.Request) {
	admin, err := a.caller(r, policy.ActBulk, policy.Resource{Kind: "bulk jobs"})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// A large file takes longer than the server's read timeout: lift it for this request.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	st, err := a.bulk().mgr.Submit(r.Context(), http.MaxBytesReader(w, r.Body, maxBulkBody), admin.Subject)
	if err != nil {
		a.bulkFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, st)
}

func (a *appliance) handleBulkList(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActBulk, policy.Resource{Kind: "bulk jobs"}); err != nil {
		a.fail(w, r, err)
		return
	}
	list, err := a.bulk().mgr.List(r.Context())
	if err != nil {
		a.bulkFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *appliance) handleBulkStatus(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActBulk, policy.Resource{Kind: "bulk job", ID: r.PathValue("id")}); err != nil {
		a.fail(w, r, err)
		return
	}
	st, err := a.bulk().mgr.Status(r.Context(), r.PathValue("id"))
	if err != nil {
		a.bulkFail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// handleBulkResults streams the results as JSON Lines: the status, then one line per item.
func (a *appliance) handleBulkResults(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActBulk, policy.Resource{Kind: "bulk job", ID: r.PathValue("id")}); err != nil {
		a.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	if _, err := a.bulk().mgr.Status(r.Context(), id); err != nil {
		a.bulkFail(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/jsonl")
	if err := a.bulk().mgr.Results(r.Context(), id, w); err != nil {
		// The status line is sent: the client sees a truncated stream.
		a.log.Error("bulk results", "job", id, "err", err)
	}
}

// handleBulkPasswords releases a finished keygen job's PKCS#12 passwords, once.
func (a *appliance) handleBulkPasswords(w http.ResponseWriter, r *http.Request) {
	admin, err := a.caller(r, policy.ActBulk, policy.Resource{Kind: "bulk job", ID: r.PathValue("id")})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	// Written to a buffer first so that an error can still be an HTTP status, and the key is
	// only forgotten once the whole file is made.
	var buf strings.Builder
	if err := a.bulk().mgr.Passwords(r.Context(), id, &buf); err != nil {
		a.bulkFail(w, r, err)
		return
	}
	a.log.Info("bulk passwords released", "job", id, "to", admin.Subject)
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, buf.String())
}

// ---------------------------------------------------------------------------
// CLI

func bulkClient(name string, args []string, extra func(*flag.FlagSet)) (*client, []string, error) {
	fs := flag.NewFlagSet("bulk "+name, flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if extra != nil {
		extra(fs)
	}
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return nil, nil, err
	}
	if cf.as == "" && cf.cert == "" {
		cf.as = "admin"
	}
	c, err := cf.dial(true)
	if err != nil {
		return nil, nil, err
	}
	// Job files and results can be large: no overall timeout, the transport's own limits apply.
	c.http.Timeout = 0
	return c, pos, nil
}

func runBulkSubmit(args []string) error {
	var wait bool
	c, pos, err := bulkClient("submit", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&wait, "wait", false, "wait for the job to finish, showing its progress")
	})
	if err != nil {
		return err
	}
	defer c.close()
	if err := cmdline.WantArgs("bulk submit", pos, 1, "FILE"); err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, c.base+"/api/v1/bulk", f)
	if err != nil {
		return err
	}
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/jsonl")
	var st bulk.Status
	if err := c.do(req, &st); err != nil {
		return err
	}
	fmt.Println(st.ID)
	if !wait {
		return nil
	}
	return waitBulk(c, st.ID)
}

// waitBulk polls a job until it ends: a progress bar on a terminal, plain lines otherwise
// (on standard error, so that standard output stays the job ID).
func waitBulk(c *client, id string) error {
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	last := time.Time{}
	for {
		var st bulk.Status
		if err := c.call(http.MethodGet, "/api/v1/bulk/"+url.PathEscape(id), nil, &st); err != nil {
			return err
		}
		finished := st.State == "done" || st.State == "cancelled"
		switch {
		case tty:
			width := 40
			if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w > 100 {
				width = w - 60
			}
			fmt.Fprintf(os.Stderr, "\r%s %s", progressBar(st, width), progressText(st))
			if finished {
				fmt.Fprintln(os.Stderr)
			}
		case finished || time.Since(last) >= 5*time.Second:
			fmt.Fprintf(os.Stderr, "job %s %s: %s\n", st.ID, st.State, progressText(st))
			last = time.Now()
		}
		if finished {
			if st.State == "cancelled" {
				return fmt.Errorf("job %s was cancelled (see the appliance log)", id)
			}
			if st.Failed > 0 {
				return cmdline.ExitError{Code: 3, Msg: fmt.Sprintf("job %s: %d of %d items failed; `keyarc bulk results %s --out FILE` gives each one's reason", id, st.Failed, st.Total, id)}
			}
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func progressBar(st bulk.Status, width int) string {
	n := st.Done + st.Failed
	fill := 0
	if st.Total > 0 {
		fill = n * width / st.Total
	}
	return "[" + strings.Repeat("=", fill) + strings.Repeat(" ", width-fill) + "]"
}

func progressText(st bulk.Status) string {
	s := fmt.Sprintf("%d/%d done, %d failed", st.Done, st.Total, st.Failed)
	if st.Rate > 0 {
		s += fmt.Sprintf(", %.0f/s", st.Rate)
	}
	if st.ETASeconds > 0 {
		s += ", ETA " + (time.Duration(st.ETASeconds) * time.Second).String()
	}
	return s
}

func runBulkStatus(args []string) error {
	c, pos, err := bulkClient("status", args, nil)
	if err != nil {
		return err
	}
	defer c.close()
	if err := cmdline.WantArgs("bulk status", pos, 1, "JOB"); err != nil {
		return err
	}
	var st bulk.Status
	if err := c.call(http.MethodGet, "/api/v1/bulk/"+url.PathEscape(pos[0]), nil, &st); err != nil {
		return err
	}
	return printJSON(st)
}

func runBulkList(args []string) error {
	c, pos, err := bulkClient("list", args, nil)
	if err != nil {
		return err
	}
	defer c.close()
	if err := cmdline.WantArgs("bulk list", pos, 0, "no arguments"); err != nil {
		return err
	}
	var list []bulk.Status
	if err := c.call(http.MethodGet, "/api/v1/bulk", nil, &list); err != nil {
		return err
	}
	return printJSON(list)
}

func runBulkResults(args []string) error {
	var out, passwords string
	c, pos, err := bulkClient("results", args, func(fs *flag.FlagSet) {
		fs.StringVar(&out, "out", "", "write the per-item results (JSON Lines) to this file (required)")
		fs.StringVar(&passwords, "passwords", "", "keygen: also fetch, once, the PKCS#12 passwords into this separate file")
	})
	if err != nil {
		return err
	}
	defer c.close()
	if err := cmdline.WantArgs("bulk results", pos, 1, "JOB"); err != nil {
		return err
	}
	if out == "" {
		return cmdline.UsageError{Msg: "bulk results: --out FILE is required"}
	}
	if passwords != "" && filepath.Clean(passwords) == filepath.Clean(out) {
		return cmdline.UsageError{Msg: "bulk results: the passwords go to a file of their own, not --out"}
	}
	id := url.PathEscape(pos[0])
	if err := c.download(http.MethodGet, "/api/v1/bulk/"+id+"/results", out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "results written to %s\n", out)
	if passwords != "" {
		if err := c.download(http.MethodPost, "/api/v1/bulk/"+id+"/passwords", passwords); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "passwords written to %s (released once: keep this file safe, apart from the PKCS#12s)\n", passwords)
	}
	return nil
}

// download streams a response body into a new file (0600).
func (c *client) download(method, path, file string) error {
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("connect to the appliance: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &apiError{resp.StatusCode, e.Error}
		}
		return &apiError{resp.StatusCode, strings.TrimSpace(string(b))}
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	return f.Close()
}
