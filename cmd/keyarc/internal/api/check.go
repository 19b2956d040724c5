package api

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/check"
)

// The consistency check in a running appliance: the most recent rows at start-up, then the
// whole archive periodically.
const (
	// startupCheckRows is how many of the most recent certificates the start-up check reads.
	startupCheckRows = 2000
	// checkInterval is how often a serving appliance checks the whole archive.
	checkInterval = time.Hour
)

// applianceCheck is the running appliance's side of the consistency check.
//
// A certificate that fails the check does not stop the appliance: the other users are still
// served. It is logged at ERROR level with its serial and what is wrong, counted in
// keyarc_consistency_failures, and a recovery of it is refused (escrow refuses to open a record
// whose certificate fails the check).
type applianceCheck struct {
	checker  *check.Checker
	failures prometheus.Gauge
	last     prometheus.Gauge
	mu       sync.Mutex // one check at a time
}

// openCheck registers the check's metrics and checks the most recent certificates.
func (a *Server) openCheck(reg prometheus.Registerer) error {
	c := &applianceCheck{
		checker: &check.Checker{DB: a.db, CA: a.caCert, Foreign: []string{escrow.TemplateImport}},
		failures: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyarc_consistency_failures",
			Help: "Certificates that failed the last consistency check (signature, audited hash, record links); see the log for their serials."}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyarc_consistency_last_check_timestamp_seconds",
			Help: "When the last consistency check finished (Unix time)."}),
	}
	if reg != nil {
		for _, m := range []prometheus.Collector{c.failures, c.last} {
			if err := reg.Register(m); err != nil {
				return fmt.Errorf("consistency metrics: %w", err)
			}
		}
	}
	a.check = c
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return a.runCheck(ctx, startupCheckRows)
}

// runCheck checks the n most recent certificates (all when n is 0), logs each failure and sets
// the metrics. Only an error of the database is returned.
func (a *Server) runCheck(ctx context.Context, n int) error {
	c := a.check
	c.mu.Lock()
	defer c.mu.Unlock()
	var rep *check.Report
	var err error
	if n > 0 {
		rep, err = c.checker.Recent(ctx, n)
	} else {
		rep, err = c.checker.All(ctx)
	}
	if err != nil {
		return fmt.Errorf("consistency check: %w", err)
	}
	for _, p := range rep.Problems {
		a.log.Error("CERTIFICATE FAILS THE CONSISTENCY CHECK; its recovery is refused; run `keyarc check`",
			"serial", p.Serial, "problem", p.Detail)
	}
	c.failures.Set(float64(len(rep.Problems)))
	c.last.Set(float64(time.Now().Unix()))
	a.log.Info("consistency check", "certificates", rep.Certificates, "failures", len(rep.Problems), "full", n == 0)
	return nil
}

// runChecks checks the whole archive every checkInterval until ctx ends.
func (a *Server) runChecks(ctx context.Context) {
	if a.check == nil {
		return
	}
	t := time.NewTicker(checkInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.runCheck(ctx, 0); err != nil && ctx.Err() == nil {
			a.log.Error("periodic consistency check", "err", err)
		}
	}
}
