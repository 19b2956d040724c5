package api

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// drillCollector reports, at each scrape, the quorum health of each live recovery-set epoch
// ([escrow.Service.RecoveryHealth]) and each KRA's last drill proof. The epoch label is the
// epoch number; the kra label is the KRA's name, which is not secret.
type drillCollector struct {
	a                                           *Server
	proven, quorum, records, valid, needsReseal *prometheus.Desc
	lastProof, window, scrapeFail               *prometheus.Desc
}

func newDrillCollector(a *Server) *drillCollector {
	epoch := []string{"epoch"}
	return &drillCollector{
		a: a,
		proven: prometheus.NewDesc("keyarc_recovery_epoch_proven_kras",
			"KRAs of a live recovery-set epoch whose drill proof is within the drill window.", epoch, nil),
		quorum: prometheus.NewDesc("keyarc_recovery_epoch_quorum", "The quorum (m) of a live recovery-set epoch.", epoch, nil),
		records: prometheus.NewDesc("keyarc_recovery_epoch_records",
			"Active escrow records sealed under a live recovery-set epoch.", epoch, nil),
		valid: prometheus.NewDesc("keyarc_recovery_epoch_valid_kras",
			"KRAs of a live recovery-set epoch whose unwrap certificate stays valid beyond the margin.", epoch, nil),
		needsReseal: prometheus.NewDesc("keyarc_recovery_epoch_needs_reseal",
			"1 when an older epoch holding records is below its quorum of proven or valid KRAs: reseal it to the current set.", epoch, nil),
		lastProof: prometheus.NewDesc("keyarc_kra_last_proof_timestamp_seconds",
			"When each KRA of a live epoch last proved its token in a drill (Unix seconds; 0: never).", []string{"kra"}, nil),
		window: prometheus.NewDesc("keyarc_recovery_drill_window_seconds",
			"How recent a KRA's drill proof must be to count towards its epoch's quorum.", nil, nil),
		scrapeFail: prometheus.NewDesc("keyarc_recovery_health_scrape_errors", "1 when the quorum health could not be read for this scrape.", nil, nil),
	}
}

func (c *drillCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.proven, c.quorum, c.records, c.valid, c.needsReseal, c.lastProof, c.window, c.scrapeFail} {
		ch <- d
	}
}

func (c *drillCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	window := c.a.cfg.Recovery.DrillWindow.Duration
	ch <- prometheus.MustNewConstMetric(c.window, prometheus.GaugeValue, window.Seconds())
	hs, err := c.a.svc.RecoveryHealth(ctx, window, c.a.cfg.Recovery.CertMargin.Duration)
	if err != nil {
		c.a.log.Warn("quorum health not read for metrics", "err", err)
		ch <- prometheus.MustNewConstMetric(c.scrapeFail, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeFail, prometheus.GaugeValue, 0)
	last := map[string]time.Time{}
	for _, h := range hs {
		e := strconv.FormatUint(uint64(h.Epoch), 10)
		ch <- prometheus.MustNewConstMetric(c.proven, prometheus.GaugeValue, float64(h.Proven), e)
		ch <- prometheus.MustNewConstMetric(c.quorum, prometheus.GaugeValue, float64(h.Quorum), e)
		ch <- prometheus.MustNewConstMetric(c.records, prometheus.GaugeValue, float64(h.Records), e)
		ch <- prometheus.MustNewConstMetric(c.valid, prometheus.GaugeValue, float64(h.Valid), e)
		reseal := 0.0
		if h.NeedsReseal {
			reseal = 1
		}
		ch <- prometheus.MustNewConstMetric(c.needsReseal, prometheus.GaugeValue, reseal, e)
		for _, k := range h.KRAs {
			if t, ok := last[k.Name]; !ok || k.LastProof.After(t) {
				last[k.Name] = k.LastProof
			}
		}
	}
	for name, t := range last {
		v := 0.0
		if !t.IsZero() {
			v = float64(t.Unix())
		}
		ch <- prometheus.MustNewConstMetric(c.lastProof, prometheus.GaugeValue, v, name)
	}
}
