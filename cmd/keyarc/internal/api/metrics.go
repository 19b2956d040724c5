package api

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Metrics are the appliance's own Prometheus series. Labels carry template names and reasons,
// never a mailbox, name or serial.
type Metrics struct {
	enrollments *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	requests    *prometheus.CounterVec
	caExpiry    prometheus.Gauge
	ready       prometheus.Gauge
	recoveries  *prometheus.CounterVec
	approvals   *prometheus.CounterVec
	// tokenFault is 1 for the cause that keeps the token from being ready (token_health.go).
	tokenFault *prometheus.GaugeVec
	// revocations counts revocations by reason (escrow's optional Revoked(reason)).
	revocations *prometheus.CounterVec
	// crl is the newest CRL the publisher stored or found at start; crlFailures counts its
	// failed attempts.
	crl         crlState
	crlFailures prometheus.Counter
}

// crlState is the newest CRL as the metrics see it.
type crlState struct {
	mu         sync.Mutex
	number     int64
	thisUpdate time.Time
	nextUpdate time.Time
}

// NewMetrics registers the appliance's series on reg; version labels the build-info series.
func NewMetrics(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_enrollments_total",
			Help: "Certificates issued, by template and whether the private key was archived.",
		}, []string{"template", "archived"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_enrollment_refusals_total",
			Help: "Enrollment requests refused, by template and reason class.",
		}, []string{"template", "reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_http_requests_total",
			Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		caExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_ca_certificate_expiry_timestamp_seconds",
			Help: "When the CA certificate expires (Unix time).",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_token_ready",
			Help: "1 when the appliance token answered its last liveness check, else 0.",
		}),
	}
	m.recoveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyarc_recoveries_total",
		Help: "Recovery events: requested, approved (quorum reached), completed, refused; refusals by reason.",
	}, []string{"event", "reason"})
	m.approvals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyarc_recovery_approvals_total",
		Help: "KRA approvals submitted, by result (accepted or the refusal's reason).",
	}, []string{"result"})
	m.tokenFault = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keyarc_token_fault",
		Help: "1 for the cause keeping the appliance token from being ready (unreachable, pin_refused, key_mismatch, failing), else 0.",
	}, []string{"cause"})
	for _, c := range tokenCauses {
		m.tokenFault.WithLabelValues(c).Set(0)
	}
	m.revocations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyarc_revocations_total",
		Help: "Certificates revoked, by CRLReason name (a reason changed to keyCompromise counts again).",
	}, []string{"reason"})
	for _, r := range revocationReasons {
		m.revocations.WithLabelValues(r).Add(0)
	}
	m.crlFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyarc_crl_build_failures_total",
		Help: "Failed attempts to build, sign or store a CRL (the token away, the storage failing, a lint refusal); each is retried.",
	})
	reg.MustRegister(m.revocations, m.crlFailures, crlCollector{m})
	reg.MustRegister(m.tokenFault)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "keyarc_build_info",
		Help:        "Build information; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	reg.MustRegister(m.enrollments, m.refusals, m.requests, m.caExpiry, m.ready, build, m.recoveries, m.approvals,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Enrolled implements escrow.Metrics.
func (m *Metrics) Enrolled(template string, archived bool) {
	a := "false"
	if archived {
		a = "true"
	}
	m.enrollments.WithLabelValues(template, a).Inc()
}

// Refused implements escrow.Metrics.
func (m *Metrics) Refused(template, reason string) {
	m.refusals.WithLabelValues(template, reason).Inc()
}

// revocationReasons are the label values of keyarc_revocations_total: the S/MIME BR reasons
// (RFC 5280 names), created at zero so that rate() sees the first revocation.
var revocationReasons = []string{"unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "privilegeWithdrawn"}

// Revoked counts a revocation; reason is a CRLReason name (escrow's optional metrics
// interface). A name outside the S/MIME BR set is counted as "other", so that the label stays
// bounded whatever a caller passes.
func (m *Metrics) Revoked(reason string) {
	if !slices.Contains(revocationReasons, reason) {
		reason = "other"
	}
	m.revocations.WithLabelValues(reason).Inc()
}

// CRLCurrent implements escrow.CRLMetrics: the newest CRL stored.
func (m *Metrics) CRLCurrent(number int64, thisUpdate, nextUpdate time.Time) {
	m.crl.mu.Lock()
	defer m.crl.mu.Unlock()
	if number >= m.crl.number {
		m.crl.number, m.crl.thisUpdate, m.crl.nextUpdate = number, thisUpdate, nextUpdate
	}
}

// CRLFailed implements escrow.CRLMetrics.
func (m *Metrics) CRLFailed() { m.crlFailures.Inc() }

var _ escrow.CRLMetrics = (*Metrics)(nil)

// crlCollector reports the newest CRL at each scrape: its number and dates, and its age and
// the time left until its nextUpdate computed at the scrape. Nothing is reported before the
// publisher has found or made a CRL (an alert on absent() catches a publisher that never
// started).
type crlCollector struct{ m *Metrics }

var (
	crlNumberDesc = prometheus.NewDesc("keyarc_crl_number", "cRLNumber of the newest CRL published.", nil, nil)
	crlThisDesc   = prometheus.NewDesc("keyarc_crl_this_update_timestamp_seconds", "thisUpdate of the newest CRL (Unix time).", nil, nil)
	crlNextDesc   = prometheus.NewDesc("keyarc_crl_next_update_timestamp_seconds", "nextUpdate of the newest CRL (Unix time).", nil, nil)
	crlAgeDesc    = prometheus.NewDesc("keyarc_crl_age_seconds", "Time since the thisUpdate of the newest CRL.", nil, nil)
	crlLeftDesc   = prometheus.NewDesc("keyarc_crl_next_update_remaining_seconds", "Time left until the nextUpdate of the newest CRL (negative once past: relying parties then treat the CRL as stale).", nil, nil)
)

func (c crlCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{crlNumberDesc, crlThisDesc, crlNextDesc, crlAgeDesc, crlLeftDesc} {
		ch <- d
	}
}

func (c crlCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.crl.mu.Lock()
	n, this, next := c.m.crl.number, c.m.crl.thisUpdate, c.m.crl.nextUpdate
	c.m.crl.mu.Unlock()
	if n == 0 {
		return
	}
	now := time.Now()
	ch <- prometheus.MustNewConstMetric(crlNumberDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(crlThisDesc, prometheus.GaugeValue, float64(this.Unix()))
	ch <- prometheus.MustNewConstMetric(crlNextDesc, prometheus.GaugeValue, float64(next.Unix()))
	ch <- prometheus.MustNewConstMetric(crlAgeDesc, prometheus.GaugeValue, now.Sub(this).Seconds())
	ch <- prometheus.MustNewConstMetric(crlLeftDesc, prometheus.GaugeValue, next.Sub(now).Seconds())
}

// recoveryReason is the bounded reason label of a refused recovery step.
func recoveryReason(err error) string {
	switch {
	case errors.Is(err, policy.ErrQuorum):
		return "quorum"
	case errors.Is(err, policy.ErrOwnKey):
		return "own-key"
	case errors.Is(err, policy.ErrExpired):
		return "expired"
	case errors.Is(err, policy.ErrConsumed), errors.Is(err, policy.ErrRequestClosed):
		return "closed"
	case errors.Is(err, policy.ErrNotAllowed), errors.Is(err, policy.ErrForbidden), errors.Is(err, escrow.ErrForbidden), errors.Is(err, escrow.ErrUnauthorized):
		return "not-allowed"
	case errors.Is(err, escrow.ErrAlreadyApproved):
		return "duplicate"
	case errors.Is(err, escrow.ErrBadApproval):
		return "bad-approval"
	case errors.Is(err, escrow.ErrTooManyFailures):
		return "rate-limited"
	case errors.Is(err, escrow.ErrRecordMismatch):
		return "record-mismatch"
	case errors.Is(err, escrow.ErrNotFound), errors.Is(err, policy.ErrNothingToRecover):
		return "not-found"
	case errors.Is(err, escrow.ErrInvalidRequest):
		return "invalid"
	}
	return "error"
}

// stateCollector reports, at each scrape, what the database and the recovery set say now:
// pending requests, open recoveries, time left on the CA and KRA certificates.
type stateCollector struct {
	a                               *Server
	pending, recoveries, caLeft     *prometheus.Desc
	kraLeft, kraMinLeft, scrapeFail *prometheus.Desc
}

func newStateCollector(a *Server) *stateCollector {
	return &stateCollector{
		a:          a,
		pending:    prometheus.NewDesc("keyarc_pending_requests", "Requests waiting for an admin's decision.", nil, nil),
		recoveries: prometheus.NewDesc("keyarc_pending_recoveries", "Recovery and reseal requests open (waiting for approvals or for fetch).", nil, nil),
		caLeft:     prometheus.NewDesc("keyarc_ca_certificate_remaining_seconds", "Time left until the CA certificate expires (divide by 86400 for days).", nil, nil),
		kraLeft: prometheus.NewDesc("keyarc_kra_certificate_remaining_seconds",
			"Time left until each KRA unwrap certificate of the current recovery set expires, by its position in the set.", []string{"position"}, nil),
		kraMinLeft: prometheus.NewDesc("keyarc_kra_certificate_min_remaining_seconds", "Time left until the first KRA certificate of the current recovery set expires.", nil, nil),
		scrapeFail: prometheus.NewDesc("keyarc_state_scrape_errors", "1 when the state could not be read for this scrape.", nil, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.recoveries, c.caLeft, c.kraLeft, c.kraMinLeft, c.scrapeFail} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := time.Now()
	left := func(t time.Time) float64 { return t.Sub(now).Seconds() }
	ch <- prometheus.MustNewConstMetric(c.caLeft, prometheus.GaugeValue, left(c.a.caCert.NotAfter))
	failed := 0.0
	var pending []store.Pending
	var open []store.Recovery
	err := c.a.db.View(ctx, func(tx store.Tx) error {
		var err error
		if pending, err = tx.ListPending(store.StatePending); err != nil {
			return err
		}
		open, err = tx.ListRecoveries(store.RecoveryOpen)
		return err
	})
	if err != nil {
		failed = 1
	} else {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(len(pending)))
		ch <- prometheus.MustNewConstMetric(c.recoveries, prometheus.GaugeValue, float64(len(open)))
	}
	if rs, err := c.a.svc.CurrentRecoverySet(ctx); err == nil {
		min := 0.0
		for i, k := range rs.KRAs {
			d := left(k.NotAfter)
			if i == 0 || d < min {
				min = d
			}
			ch <- prometheus.MustNewConstMetric(c.kraLeft, prometheus.GaugeValue, d, strconv.Itoa(i+1))
		}
		ch <- prometheus.MustNewConstMetric(c.kraMinLeft, prometheus.GaugeValue, min)
	} else if !errors.Is(err, escrow.ErrNoRecoverySet) {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeFail, prometheus.GaugeValue, failed)
}
