package hsm

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Prometheus collectors of one Registerer; nil records nothing.
type metrics struct {
	ops      *prometheus.CounterVec
	duration *prometheus.HistogramVec
	sessions prometheus.Gauge
	inUse    prometheus.Gauge
	waiting  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_hsm_operations_total",
			Help: "PKCS#11 operations by op (sign, decrypt, generate, find, login) and result.",
		}, []string{"op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyarc_hsm_operation_duration_seconds",
			Help:    "Duration of PKCS#11 operations, including the wait for a session.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"op"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_hsm_sessions_max",
			Help: "Sum of the session bounds (MaxSessions) of the open tokens.",
		}),
		inUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_hsm_sessions_in_use",
			Help: "Token operations running now (sessions taken from the pool).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_hsm_sessions_waiting",
			Help: "Token operations waiting for a free session.",
		}),
	}
	var err error
	if m.ops, err = register(reg, m.ops); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.sessions, err = register(reg, m.sessions); err != nil {
		return nil, err
	}
	if m.inUse, err = register(reg, m.inUse); err != nil {
		return nil, err
	}
	if m.waiting, err = register(reg, m.waiting); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under its name
// (so several Tokens can share one Registerer).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("hsm: register metrics: %w", err)
	}
	return c, nil
}

// observe counts op with the result of err and records its duration since start.
func (m *metrics) observe(op string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, result(err)).Inc()
	m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// pool tracks the session pool: in-use and waiting operations.
func (m *metrics) pool(inUse, waiting float64) {
	if m == nil {
		return
	}
	m.inUse.Add(inUse)
	m.waiting.Add(waiting)
}

func (m *metrics) sessionsMax(delta float64) {
	if m == nil {
		return
	}
	m.sessions.Add(delta)
}

// result is the bounded "result" label for err.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrPoolExhausted):
		return "pool_exhausted"
	case errors.Is(err, ErrTokenGone):
		return "token_gone"
	case errors.Is(err, ErrTokenFault):
		return "token_fault"
	case errors.Is(err, ErrPINIncorrect):
		return "pin_incorrect"
	case errors.Is(err, ErrKeyNotFound):
		return "not_found"
	case errors.Is(err, ErrKeyExists):
		return "exists" // a key kept, never overwritten: the token is sound
	case errors.Is(err, ErrMechanism):
		return "mechanism"
	case errors.Is(err, ErrDecrypt):
		return "decrypt_failed"
	default:
		return "error"
	}
}
