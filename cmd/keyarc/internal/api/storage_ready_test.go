package api

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// TestStorageReadyAfterFault: once the storage answers again, readiness says so at its next
// check, by a write of its own, instead of holding the fault for storageFaultHold when nothing
// else happens to commit (an idle node stayed out that long after every outage); while the
// storage still refuses writes, the node stays not ready, and a fault newer than the last probe
// is not answered by that probe.
func TestStorageReadyAfterFault(t *testing.T) {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Server{db: db, svc: &escrow.Service{}}
	ctx := context.Background()
	if _, err := a.storageStatus(ctx); err != nil {
		t.Fatalf("readiness before any fault: %v", err)
	}
	// A request failed for a fault of the storage, which answers again at once.
	a.noteStorageFault(fmt.Errorf("%w: disk I/O error", store.ErrUnavailable))
	before := db.Stats().Commits
	if _, err := a.storageStatus(ctx); err != nil {
		t.Errorf("readiness once the storage answers again: %v, want ready at once (not after %s)", err, storageFaultHold)
	}
	if db.Stats().Commits == before {
		t.Error("readiness ended the fault without a write")
	}

	// The storage refuses writes (closed): not ready, at once and after the next probe.
	db.Close()
	a.noteStorageFault(fmt.Errorf("%w: disk I/O error", store.ErrUnavailable))
	if _, err := a.storageStatus(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("readiness with a fault newer than the last probe: %v, want ErrUnavailable", err)
	}
	time.Sleep(storagePingEvery + 100*time.Millisecond)
	if _, err := a.storageStatus(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("readiness while writes fail: %v, want ErrUnavailable", err)
	}
}
