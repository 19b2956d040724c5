package api

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/prometheus/client_golang/prometheus"
)

// TestStoreMetrics: the writer's counters of a real SQLite store reach the registry, a failed
// function counts as an update without a commit.
func TestStoreMetrics(t *testing.T) {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := prometheus.NewRegistry()
	registerStoreMetrics(reg, db)
	ctx := context.Background()
	for range 3 {
		if err := db.Update(ctx, func(tx store.Tx) error { return tx.AdvanceCursor("metrics-test", 1) }); err != nil {
			t.Fatal(err)
		}
	}
	errNo := errors.New("no")
	if err := db.Update(ctx, func(store.Tx) error { return errNo }); !errors.Is(err, errNo) {
		t.Fatalf("failing update = %v", err)
	}
	want := db.Stats()
	if want.Updates != 4 || want.Commits != 3 {
		t.Fatalf("store stats %+v, want 4 updates and 3 commits", want)
	}
	for name, v := range map[string]uint64{"keyarc_store_updates_total": want.Updates,
		"keyarc_store_commits_total": want.Commits, "keyarc_store_commit_errors_total": want.CommitErrors} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, mf := range mfs {
			if mf.GetName() == name {
				found = true
				if got := mf.GetMetric()[0].GetCounter().GetValue(); got != float64(v) {
					t.Errorf("%s = %v, want %d", name, got, v)
				}
			}
		}
		if !found {
			t.Errorf("%s not registered", name)
		}
	}
}
