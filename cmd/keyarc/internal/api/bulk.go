package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
func newBulkState(a *Server) *bulkState {
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
		Cleared: a.bulkFaultCleared,
		// With several nodes, the node's name holds the leases of the jobs it runs.
		Node: a.svc.Node,
		// Every node of a cluster uses the same length (cluster.job_lease).
		LeaseTTL: a.cfg.Cluster.Job(),
	}
	return st
}

// bulk returns the appliance's bulk machinery.
func (a *Server) bulk() *bulkState { return a.bulkSt }

type bulkMetrics struct{ items *prometheus.CounterVec }

func (m bulkMetrics) Item(kind bulk.Kind, result string) {
	m.items.WithLabelValues(string(kind), result).Inc()
}

// registerBulkMetrics adds keyarc_bulk_items_total and keyarc_bulk_jobs to the appliance's
// registry.
func (a *Server) registerBulkMetrics(reg prometheus.Registerer) {
	reg.MustRegister(a.bulkSt.items, &bulkJobsCollector{a: a}, &bulkPausedCollector{a: a})
}

// bulkJobsCollector reports keyarc_bulk_jobs{state} from the store at each scrape.
type bulkJobsCollector struct{ a *Server }

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
func (a *Server) startBulk() {
	st := a.bulk()
	st.once.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		st.cancel = cancel
		go st.mgr.Run(ctx)
	})
}

// stopBulk stops the job scheduler: items in flight finish or are left for the next start.
func (a *Server) stopBulk() {
	if a.bulkSt != nil && a.bulkSt.cancel != nil {
		a.bulkSt.cancel()
	}
}

// bulkRoutes adds the bulk-job API and starts the scheduler.
func (a *Server) bulkRoutes(mux *http.ServeMux) {
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
func (a *Server) bulkFail(w http.ResponseWriter, r *http.Request, err error) {
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

func (a *Server) handleBulkSubmit(w http.ResponseWriter, r *http.Request) {
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

func (a *Server) handleBulkList(w http.ResponseWriter, r *http.Request) {
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

func (a *Server) handleBulkStatus(w http.ResponseWriter, r *http.Request) {
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
func (a *Server) handleBulkResults(w http.ResponseWriter, r *http.Request) {
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
func (a *Server) handleBulkPasswords(w http.ResponseWriter, r *http.Request) {
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
