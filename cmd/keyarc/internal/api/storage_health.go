package api

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// storageFaultHold is how long a storage fault keeps the appliance not ready after it was
// last seen, unless a commit succeeds first.
const storageFaultHold = 10 * time.Second

// storageHealth remembers the last storage fault the server saw: a request that failed with
// store.ErrUnavailable, or a failed commit in the store's counters (a bulk job's or the audit
// trail's). Readiness is refused while the fault is recent and no commit has succeeded since.
// Safe for concurrent use.
type storageHealth struct {
	mu           sync.Mutex
	faultAt      time.Time
	commits      uint64 // the store's successful commits when the fault was seen
	commitErrors uint64 // the store's failed commits last seen
}

// fault records a storage fault seen now; stats are the store's counters then.
func (h *storageHealth) fault(now time.Time, stats store.Stats) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faultAt, h.commits = now, stats.Commits
}

// recent reports whether a storage fault was seen within storageFaultHold of now and no
// commit succeeded since; a failed commit counted by the store since the last look is a fault.
func (h *storageHealth) recent(now time.Time, stats store.Stats) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if stats.CommitErrors > h.commitErrors {
		h.commitErrors = stats.CommitErrors
		h.faultAt, h.commits = now, stats.Commits
	}
	if h.faultAt.IsZero() || now.Sub(h.faultAt) > storageFaultHold || stats.Commits > h.commits {
		return false
	}
	return true
}

// noteStorageFault records err when it is a storage fault, for readiness.
func (a *Server) noteStorageFault(err error) {
	if errors.Is(err, store.ErrUnavailable) && a.db != nil {
		a.storage.fault(time.Now(), a.db.Stats())
	}
}

// storageStatus reports whether the store answers: no recent storage fault (see
// storageHealth) and a cheap read that succeeds within two seconds. The error wraps
// store.ErrUnavailable or the context's error.
func (a *Server) storageStatus(ctx context.Context) error {
	if a.db == nil {
		return nil
	}
	if a.storage.recent(time.Now(), a.db.Stats()) {
		return store.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := a.db.View(ctx, func(tx store.Tx) error {
		_, err := tx.LastAudit()
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		a.noteStorageFault(err)
	}
	return err
}
