package api

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow/bulk"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/hsm"
)

// bulkStopWait bounds how long a shutdown waits for the bulk job's batches in flight to commit
// before the store is closed; what is still in flight then is left pending, for the start-up
// sweep and the job's resume.
const bulkStopWait = 20 * time.Second

// bulkFault tells the bulk jobs which errors are faults of the appliance's token: an item
// never fails for them, its job pauses instead. Storage faults the bulk package knows itself.
func bulkFault(err error) string {
	switch {
	case errors.Is(err, hsm.ErrTokenGone), errors.Is(err, hsm.ErrPoolExhausted), errors.Is(err, hsm.ErrTokenFault):
		return bulk.CauseToken
	case errors.Is(err, hsm.ErrMechanism) && !errors.Is(err, cms.ErrDecrypt):
		// A mechanism the appliance's own keys lack; only an item's envelope chooses one.
		return bulk.CauseToken
	}
	return ""
}

// bulkFaultCleared tells a job paused for the token whether the token works again: the
// readiness check (hsm.Token.Ping, which repeats an operation the token failed), which also
// updates /readyz and the token metrics. Other causes are retried after each back-off.
func (a *Server) bulkFaultCleared(cause string) error {
	if cause != bulk.CauseToken || a.tok == nil {
		return nil
	}
	return a.tokenStatus()
}

// bulkPausedDesc is keyarc_bulk_job_paused{cause}.
var bulkPausedDesc = prometheus.NewDesc("keyarc_bulk_job_paused",
	"1 while the running bulk job is paused by a fault of the appliance of this cause (storage, token, stuck); it resumes by itself when the fault clears.",
	[]string{"cause"}, nil)

// bulkPausedCollector reports keyarc_bulk_job_paused from the job manager at each scrape.
type bulkPausedCollector struct{ a *Server }

func (c *bulkPausedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- bulkPausedDesc }

func (c *bulkPausedCollector) Collect(ch chan<- prometheus.Metric) {
	cause := c.a.bulk().mgr.Paused()
	for _, k := range []string{bulk.CauseStorage, bulk.CauseToken, bulk.CauseStuck} {
		v := 0.0
		if cause == k {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(bulkPausedDesc, prometheus.GaugeValue, v, k)
	}
}

// waitBulkStopped waits, after stopBulk, until the bulk job's batches in flight have committed or been
// undone, at most bulkStopWait: the store must not close under them.
func (a *Server) waitBulkStopped() {
	if a.bulkSt == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), bulkStopWait)
	defer cancel()
	if err := a.bulkSt.mgr.Wait(ctx); err != nil {
		a.log.Error("bulk job still running at shutdown; what is in flight is resumed at the next start", "err", err)
	}
}
