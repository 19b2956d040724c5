package main

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the appliance's own Prometheus series. Labels carry template names and reasons,
// never a mailbox, name or serial.
type metrics struct {
	enrollments *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	requests    *prometheus.CounterVec
	caExpiry    prometheus.Gauge
	ready       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
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
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "keyarc_build_info",
		Help:        "Build information; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	reg.MustRegister(m.enrollments, m.refusals, m.requests, m.caExpiry, m.ready, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Enrolled implements escrow.Metrics.
func (m *metrics) Enrolled(template string, archived bool) {
	a := "false"
	if archived {
		a = "true"
	}
	m.enrollments.WithLabelValues(template, a).Inc()
}

// Refused implements escrow.Metrics.
func (m *metrics) Refused(template, reason string) {
	m.refusals.WithLabelValues(template, reason).Inc()
}
