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
	// probe is readiness's write to the store while a fault is held (probeWrites).
	probe writeProbe
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

// since is when the fault held now was seen.
func (h *storageHealth) since() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.faultAt
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
		// A read would not show that writes work again (a full disk still reads); nor does
		// waiting out storageFaultHold, which kept the node out for its whole length after
		// the storage came back when no request or background task happened to commit. A
		// write probe, at most one per storagePingEvery, ends the hold as soon as it commits.
		if err := a.probeWrites(a.storage.since()); err != nil {
			return 0, err
		}
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
		now, err := tx.LeaseNow(time.Now())
		if err != nil {
			return err
		}
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

// readyLease is the lease that readiness's write probe renews: one row per node, written only
// while a storage fault is held.
func readyLease(node string) string { return "ready:" + node }

// writeProbe is readiness's one write to the store at a time. Safe for concurrent use.
type writeProbe struct {
	mu sync.Mutex
	at time.Time // when the last probe started
	// running is closed when the probe in flight ends; nil when none is.
	running chan struct{}
	err     error // the last probe's result
}

// probeWrites reports whether the store commits a write: it renews this node's readyLease in
// an Update, at most once per storagePingEvery (the callers in between share the last answer,
// so a store that is down is not hammered), and waits for it at most storagePingTimeout (a
// write stuck in a server that does not answer is left to finish on its own; the next call
// waits for it again). The commit it makes is what clears the held fault (storageHealth.recent
// sees the store's commits grow). A probe that started before since, the fault it is to
// clear, does not answer for it. The error wraps store.ErrUnavailable.
func (a *Server) probeWrites(since time.Time) error {
	p := &a.storage.probe
	p.mu.Lock()
	if p.running == nil && time.Since(p.at) >= storagePingEvery {
		done := make(chan struct{})
		p.running, p.at = done, time.Now()
		node := a.svc.Node
		if node == "" {
			node = bulk.DefaultNode
		}
		go func() {
			err := a.db.Update(context.Background(), func(tx store.Tx) error {
				now, err := tx.LeaseNow(time.Now()) // leases are on one clock (store.Leases)
				if err != nil {
					return err
				}
				_, err = tx.AcquireLease(readyLease(node), node, now, time.Minute)
				return err
			})
			p.mu.Lock()
			p.running, p.err = nil, err
			p.mu.Unlock()
			close(done)
		}()
	}
	running, err := p.running, p.err
	if running == nil && p.at.Before(since) {
		err = errors.New("no write probed since the fault; the next probe is due within a second")
	}
	p.mu.Unlock()
	if running != nil {
		select {
		case <-running:
			p.mu.Lock()
			err = p.err
			p.mu.Unlock()
		case <-time.After(storagePingTimeout):
			err = fmt.Errorf("the database did not commit a write within %s", storagePingTimeout)
		}
	}
	if err != nil && !errors.Is(err, store.ErrUnavailable) {
		err = fmt.Errorf("%w: readiness write: %w", store.ErrUnavailable, err)
	}
	return err
}
