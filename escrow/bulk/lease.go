package bulk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
)

// Job leases. Several nodes may run Managers on one database: a node runs a job only under
// the job's lease ([store.JobLease]), renews it while it works, and gives it up when it stops.
// A node that dies (kill -9) stops renewing: once the lease expires, another node's Manager
// claims the job and resumes it as a restarted node would (reservations left unfinished are
// undone, items with an outcome are skipped). Every write of a job's run checks the lease and
// its fencing token in its own transaction ([jobRun.fence]), so a node that was paused longer
// than the lease and wakes up writes nothing more: its writes fail with [store.ErrLeaseLost]
// and it stops the run. Nothing is issued twice: an item is reserved (serial and record
// committed) before its certificate is signed, and marked done only in the transaction that
// stores the certificate, both fenced; a certificate signed by a fenced-out node is never
// stored as issued (the new holder failed its reservation, and the fenced transaction is
// undone).

// DefaultLeaseTTL is how long a job's lease lasts without renewal: a job whose node died is
// taken over by another node within about this time (plus the scheduler's poll).
const DefaultLeaseTTL = 20 * time.Second

// DefaultNode is the holder name of a Manager whose Node is empty (one node).
const DefaultNode = "local"

func (m *Manager) node() string {
	if m.Node != "" {
		return m.Node
	}
	return DefaultNode
}

func (m *Manager) leaseTTL() time.Duration {
	if m.LeaseTTL > 0 {
		return m.LeaseTTL
	}
	return DefaultLeaseTTL
}

// claimJob takes the lease of the oldest running job that no node holds (its node died or
// stopped), else of the oldest queued one, and returns the job and its lease; nil if every
// job is taken or none waits. Write transactions are serialised across nodes, so of nodes
// claiming at once each gets a different job (or none): the effect of FOR UPDATE SKIP
// LOCKED.
//
// began is this process's monotonic reading from before the claim's transaction began (see
// [leaseClock]).
func (m *Manager) claimJob(ctx context.Context) (job *store.Job, lease store.Lease, began time.Time, err error) {
	// Most polls find nothing to do: a read says so without a write transaction.
	waiting := false
	err = m.Service.Store.View(ctx, func(tx store.Tx) error {
		for _, st := range []string{store.JobRunning, store.JobQueued} {
			jobs, err := tx.ListJobs(st)
			if err != nil || len(jobs) > 0 {
				waiting = len(jobs) > 0
				return err
			}
		}
		return nil
	})
	if err != nil || !waiting {
		return nil, lease, began, err
	}
	began = time.Now()
	err = m.Service.Store.Update(ctx, func(tx store.Tx) error {
		job = nil
		now, err := tx.LeaseNow(m.now())
		if err != nil {
			return err
		}
		for _, st := range []string{store.JobRunning, store.JobQueued} {
			jobs, err := tx.ListJobs(st)
			if err != nil {
				return err
			}
			for i := range jobs {
				if !m.canRun(&jobs[i]) {
					continue
				}
				name := store.JobLease(jobs[i].ID)
				if held, err := m.heldUnderOurName(tx, name, now); err != nil {
					return err
				} else if held {
					continue
				}
				l, err := tx.AcquireLease(name, m.node(), now, m.leaseTTL())
				if errors.Is(err, store.ErrLeaseHeld) {
					continue
				}
				if err != nil {
					return err
				}
				m.tokens.Store(name, l.Token)
				job, lease = &jobs[i], l
				return nil
			}
		}
		return nil
	})
	return job, lease, began, err
}

// heldUnderOurName reports whether another process holds the job lease name under this
// node's name ([escrow.TwinHolds]) at now (a reading of [store.Leases.LeaseNow]): the job is
// left until that lease expires. One node alone (no [Manager.Node]) is one process: its
// leases are its own.
func (m *Manager) heldUnderOurName(tx store.Tx, name string, now time.Time) (bool, error) {
	if m.Node == "" {
		return false, nil
	}
	var mine int64
	if tok, ok := m.tokens.Load(name); ok {
		mine = tok.(int64)
	}
	cur, twin, err := escrow.TwinHolds(tx, name, m.node(), now, mine)
	if err != nil || !twin {
		return false, err
	}
	if _, warned := m.foreign.LoadOrStore(name, cur.Token); !warned {
		m.log().Warn("bulk job: its lease is held under this node's name by another process (a second node with this name, or this node before a restart); waiting for it to expire",
			"lease", name, "token", cur.Token, "expires", cur.Expires)
	}
	return true, nil
}

// canRun reports whether this node can run job: whether it can read the job's file and knows
// its template. With several nodes, each on a machine of its own with its own copy of the
// state folder, a job's file is only on the node it was submitted to, and a node whose
// configuration lacks a template cannot issue for it: a node that claimed such a job would
// cancel it, losing its items. Such a job is left to a node that can run it (the one it was
// submitted to, once it is back). One node alone (no [Manager.Node]) claims every job: its
// file and templates are its own, and a job whose file is gone is cancelled (see
// [Manager.runLeased]).
func (m *Manager) canRun(job *store.Job) bool {
	if m.Node == "" {
		return true
	}
	why := ""
	if _, err := os.Stat(job.Input); errors.Is(err, fs.ErrNotExist) {
		why = "its file is not on this node"
	} else if job.Template != escrow.TemplateImport {
		if _, err := m.Service.Template(job.Template); err != nil {
			why = "its template is not in this node's configuration"
		}
	}
	if why == "" {
		return true
	}
	if _, warned := m.noInput.LoadOrStore(job.ID, true); !warned {
		m.log().Warn("bulk job: "+why+"; left to a node that can run it (the one it was submitted to)",
			"job", job.ID, "file", job.Input, "template", job.Template)
	}
	return false
}

// fence is the fencing check every write of the run makes in its transaction: it fails with
// [store.ErrLeaseLost] once this node no longer holds the job's lease with its token.
//
// It reads the lease once per store function: the hooks of a batch's issuance (a reservation
// and a finish for each item) call it with the same tx, and the first call checks for all of
// them. Checking again within one function would find the same lease: the function's
// transaction holds the store's writer (across nodes), so no other node can take the lease
// over before it commits, and a lease that expires meanwhile is taken over only after it.
// On PostgreSQL that is two round trips per enroll item fewer.
//
// The check's time is the run's [leaseClock], not a reading of the database's clock: one round
// trip fewer on PostgreSQL, per store function.
func (r *jobRun) fence(tx store.Tx) error {
	if r.fenced.has(tx) {
		return nil
	}
	l := r.lease
	if err := tx.CheckLease(l.Name, l.Holder, l.Token, r.clock.now()); err != nil {
		return fmt.Errorf("bulk: job %s: %w", r.job.ID, err)
	}
	r.fenced.set(tx)
	return nil
}

// fencedTx remembers the last store function (its Tx) whose lease check passed. Holding the Tx
// keeps it alive, so no later Tx can take its address and pass for it.
type fencedTx struct {
	mu sync.Mutex
	tx store.Tx
}

func (f *fencedTx) has(tx store.Tx) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tx != nil && f.tx == tx
}

// set remembers tx, if its type can be compared (a Tx of a backend is a pointer; a wrapper
// that cannot be compared is checked every time).
func (f *fencedTx) set(tx store.Tx) {
	if !reflect.TypeOf(tx).Comparable() {
		return
	}
	f.mu.Lock()
	f.tx = tx
	f.mu.Unlock()
}

// keepLease renews the run's lease every third of its TTL until ctx ends. When the lease is
// lost (another node took the job over, after this node was paused or cut from the database
// longer than the lease), it calls lost; a renewal the storage refuses is tried again at the
// next tick (meanwhile the lease may expire, and the fencing checks then stop the writes).
func (r *jobRun) keepLease(ctx context.Context, lost func(error)) {
	ttl := r.m.leaseTTL()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l := r.lease
		var renewed store.Lease
		began := time.Now()
		err := r.m.Service.Store.Update(ctx, func(tx store.Tx) error {
			now, err := tx.LeaseNow(r.m.now())
			if err != nil {
				return err
			}
			renewed, err = tx.RenewLease(l.Name, l.Holder, l.Token, now, ttl)
			return err
		})
		switch {
		case err == nil:
			r.clock.set(renewed, ttl, began)
		case errors.Is(err, store.ErrLeaseLost):
			lost(err)
			return
		case ctx.Err() == nil:
			r.m.log().Warn("bulk job: renew the job's lease", "job", r.job.ID, "err", err)
		}
	}
}

// leaseClock is a run's reading of the clock its lease is measured on ([store.Leases.LeaseNow],
// the database's on PostgreSQL) without asking the database: the reading taken in the last
// transaction that acquired or renewed the lease (its Expires less the TTL), advanced by this
// process's monotonic clock since just before that transaction began. It runs ahead of the
// database's clock by at most that transaction's length, never behind it (clock rates aside),
// so a fencing check never finds the lease held after it expired; and a step of this machine's
// wall clock (an NTP correction) does not move it, so a step forward does not fence the run
// out of its own lease until the next renewal. Safe for concurrent use.
type leaseClock struct {
	mu    sync.Mutex
	at    time.Time // the lease clock's reading in that transaction
	began time.Time // monotonic: just before that transaction began
}

// set records lease, acquired or renewed for ttl in a transaction that began at began.
func (c *leaseClock) set(lease store.Lease, ttl time.Duration, began time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at, c.began = lease.Expires.Add(-ttl), began
}

func (c *leaseClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at.Add(time.Since(c.began))
}

// releaseLease gives up the run's lease, so that another node may take the job at once (a
// job stopped at shutdown); a lease that cannot be released simply expires.
func (m *Manager) releaseLease(l store.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.Service.Store.Update(ctx, func(tx store.Tx) error { return tx.ReleaseLease(l.Name, l.Holder, l.Token) })
	if err != nil && !errors.Is(err, store.ErrLeaseLost) {
		m.log().Warn("bulk job: release the job's lease; it expires by itself", "lease", l.Name, "err", err)
	}
}
