package api

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/prometheus/client_golang/prometheus"
)

// registerStoreMetrics exports the store writer's counters. Updates over commits is how many
// callers each group commit made durable: the fewer commits per update, the less each one
// costs in fsyncs and log pages.
func registerStoreMetrics(reg prometheus.Registerer, db store.Store) {
	if db == nil {
		return
	}
	counter := func(name, help string, v func(store.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v(db.Stats())) })
	}
	reg.MustRegister(
		counter("keyarc_store_updates_total", "Update functions the store's writer ran (committed or not).",
			func(s store.Stats) uint64 { return s.Updates }),
		counter("keyarc_store_commits_total", "Transactions the store's writer committed (each made its group of updates durable).",
			func(s store.Stats) uint64 { return s.Commits }),
		counter("keyarc_store_commit_errors_total", "Transactions of the store's writer that failed to commit or were aborted by a fault of the storage.",
			func(s store.Stats) uint64 { return s.CommitErrors }),
	)
}
