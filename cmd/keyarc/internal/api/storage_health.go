package api

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/bulk"
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
	// ping is readiness's last read of the store (storageStatus).
	ping storagePing
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

// Readiness reads the store at most once per storagePingEvery, and waits for the read at most
// storagePingTimeout: a load balancer polling /readyz of every node often must not load a
// shared PostgreSQL server, and a server that stopped answering must not hold the probe.
const (
	storagePingEvery   = time.Second
	storagePingTimeout = 2 * time.Second
)

// storagePing is the last cheap read of the store made for readiness. Safe for concurrent use:
// one read at a time, the others take its answer.
type storagePing struct {
	mu  sync.Mutex
	at  time.Time
	err error
	// jobs is the number of bulk jobs whose lease this node held at that read.
	jobs int
}

// storageStatus reports whether the store answers: no recent storage fault (see
// storageHealth) and a cheap read (the last audit entry: SQLite's file, or a round trip to
// PostgreSQL in a read transaction) that succeeded within storagePingTimeout, made at most
// once per storagePingEvery. The same read counts the running bulk jobs whose lease this node
// holds (a handful of rows), which it returns. The error wraps store.ErrUnavailable or the
// context's error.
func (a *Server) storageStatus(ctx context.Context) (int, error) {
	if a.db == nil {
		return 0, nil
	}
	if a.storage.recent(time.Now(), a.db.Stats()) {
		return 0, store.ErrUnavailable
	}
	p := &a.storage.ping
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); !p.at.IsZero() && now.Sub(p.at) < storagePingEvery && now.After(p.at) {
		return p.jobs, p.err
	}
	// The answer is shared by every caller: one caller going away does not cut it short.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storagePingTimeout)
	defer cancel()
	node := a.svc.Node
	if node == "" {
		node = bulk.DefaultNode
	}
	jobs := 0
	err := a.db.View(ctx, func(tx store.Tx) error {
		jobs = 0
		if _, err := tx.LastAudit(); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		running, err := tx.ListJobs(store.JobRunning)
		if err != nil {
			return err
		}
		now := time.Now()
		for _, j := range running {
			l, err := tx.GetLease(store.JobLease(j.ID))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if l.Held(node, l.Token, now) {
				jobs++
			}
		}
		return nil
	})
	if err != nil && ctx.Err() != nil {
		// The server did not answer in time: a storage fault, whatever the driver made of
		// the cancelled read.
		err = fmt.Errorf("%w: the database did not answer within %s: %w", store.ErrUnavailable, storagePingTimeout, err)
	}
	if err != nil {
		a.noteStorageFault(err)
		jobs = 0
	}
	p.at, p.err, p.jobs = time.Now(), err, jobs
	return jobs, err
}
