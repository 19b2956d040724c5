package notice

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// LockFile is the lock file in a queue folder. Its sender holds an exclusive flock(2) on it
// for as long as it runs ([Notifier.Run]): a queue has one sender, and a folder whose lock can
// be taken has none running, so an [Adopter] may send what it holds. The queue's listings
// leave it out (its name is not a queue ID).
const LockFile = ".lock"

// errLocked: another sender holds the queue folder's lock.
var errLocked = errors.New("notice: another sender holds the queue folder")

// errNoLocks: the queue folder's file system takes no flock(2) locks (some network file
// systems). Its sender runs without one, and its folder is never adopted.
var errNoLocks = errors.New("notice: the queue folder's file system does not lock files")

// Default timings of the lock: an owner whose folder is held by an adopter tries again every
// second (it takes over as soon as the adopter is done); an [Adopter] looks at the other
// folders once a minute.
const (
	defaultLockPoll    = time.Second
	DefaultAdoptPeriod = time.Minute
)

// lockQueue takes the lock of n's queue folder, waiting while another sender (an [Adopter]
// sending what was left in it while this one was not running) holds it, and retrying while
// the folder cannot be opened (logged once, as any fault of the folder). It returns the lock
// to close at the end (nil when the file system takes no locks), or false when ctx ended
// first.
func (n *Notifier) lockQueue(ctx context.Context) (*os.File, bool) {
	dir := n.Queue.Dir()
	waited := false
	for {
		f, err := tryLock(dir)
		if errors.Is(err, os.ErrNotExist) {
			// Never made ([NewQueue]), or removed: made as a write would make it.
			if os.MkdirAll(filepath.Join(dir, RejectedDir), 0o700) == nil {
				f, err = tryLock(dir)
			}
		}
		wait := n.lockPoll()
		switch {
		case errors.Is(err, errNoLocks):
			// A sender that never ran for want of a lock would leave every notice unsent:
			// it runs, and no other node adopts this folder (they cannot lock it either).
			n.queueOK()
			n.log().Warn("subscriber notices: the queue folder's file system does not lock files; sending without a lock, and no other node can send this folder's notices if this node dies", "folder", dir, "err", err)
			return nil, true
		case err == nil:
			n.queueOK()
			if waited {
				// The adopter sent some of the batches this queue had counted.
				n.Queue.recount()
				n.log().Info("subscriber notices: the queue folder is free again; sending", "folder", dir)
			}
			return f, true
		case errors.Is(err, errLocked):
			if !waited {
				n.log().Info("subscriber notices: another node is sending the notices left in this node's queue folder; waiting for it to finish", "folder", dir)
			}
			waited = true
		default:
			wait = n.queueFault(err)
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(wait):
		}
	}
}

func (n *Notifier) lockPoll() time.Duration {
	if n.lockEvery > 0 {
		return n.lockEvery
	}
	return defaultLockPoll
}

// Adopter sends the notices left in the queue folders of senders that are not running: in a
// cluster whose nodes share a state folder (or keep their queue folders on a shared file
// system), a node that died (kill -9, a machine gone) leaves in its folder the notices its
// relay had not accepted, and another node sends them rather than leave them until it starts
// again. A folder is sent only while its lock ([LockFile]) can be taken, that is while no
// sender runs on it: its owner, which waits for the lock when it starts ([Notifier.Run]), or
// another adopter. Fill the fields, then call [Adopter.Run] once in a goroutine.
type Adopter struct {
	// Notifier is this node's sender: its relay, addresses, timings, log and counters serve
	// the adopted folders too (its metrics count their notices; the keyarc_notice_queue gauge
	// counts its own folder alone). Its folder is never adopted.
	Notifier *Notifier
	// Dir holds the queue folders of the nodes, each named Prefix and its node's name
	// (escaped as a path segment).
	Dir    string
	Prefix string
	// Period is how often the folders are looked at (default [DefaultAdoptPeriod]).
	Period time.Duration

	// faults are the folders whose lock cannot be opened, by error logged: once, not every
	// period. Run's goroutine alone uses it.
	faults map[string]string
}

// Run looks at the other folders at once and then every [Adopter.Period] until ctx ends,
// sending those that hold notices and whose sender is not running (see [Adopter.Scan]).
func (a *Adopter) Run(ctx context.Context) {
	if !canLock {
		return
	}
	period := a.Period
	if period <= 0 {
		period = DefaultAdoptPeriod
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		a.Scan(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Scan looks once, one after the other, at each folder of [Adopter.Dir] whose name starts
// with [Adopter.Prefix], the notifier's own left out: one whose lock cannot be taken has a
// sender; one whose lock can be taken and that holds notices is sent until nothing is left in
// it (or ctx ends), then its lock is released. It returns the number of folders it sent.
func (a *Adopter) Scan(ctx context.Context) int {
	ents, err := os.ReadDir(a.Dir)
	if err != nil {
		// No folder of another node yet, or one the folder fault of the own queue covers.
		return 0
	}
	own := a.Notifier.Queue.Dir()
	adopted := 0
	for _, e := range ents {
		dir := filepath.Join(a.Dir, e.Name())
		if ctx.Err() != nil {
			break
		}
		if !e.IsDir() || !strings.HasPrefix(e.Name(), a.Prefix) || sameFolder(dir, own) {
			continue
		}
		if a.adopt(ctx, dir, strings.TrimPrefix(e.Name(), a.Prefix)) {
			adopted++
		}
	}
	return adopted
}

// adopt sends what the folder dir of node holds if its lock can be taken, and reports whether
// it did.
func (a *Adopter) adopt(ctx context.Context, dir, node string) bool {
	lock, err := tryLock(dir)
	if errors.Is(err, errLocked) {
		return false // its sender runs: its owner, or another adopter
	}
	if err != nil {
		a.fault(dir, err)
		return false
	}
	defer lock.Close()
	delete(a.faults, dir)
	// Not OpenQueue: its owner may be starting, its feed already writing into the folder,
	// and OpenQueue removes the temporary files of writes in progress.
	q := &Queue{dir: dir}
	q.removeOrphans()
	if q.idle() {
		return false
	}
	if name, err := url.PathUnescape(node); err == nil {
		node = name
	}
	n := a.Notifier.adopted(q, node)
	n.log().Info(fmt.Sprintf("sending the queued notices of node %s, which is not running", node), "queued", q.Len(), "folder", dir)
	n.drain(ctx)
	if ctx.Err() == nil {
		n.log().Info(fmt.Sprintf("sent the queued notices of node %s", node), "folder", dir)
	}
	return true
}

// fault logs once that the lock of the folder dir cannot be opened (a folder that cannot be
// written, say): it is tried again at each scan.
func (a *Adopter) fault(dir string, err error) {
	if a.faults == nil {
		a.faults = map[string]string{}
	}
	if msg := err.Error(); a.faults[dir] != msg {
		a.faults[dir] = msg
		a.Notifier.log().Warn("subscriber notices: cannot tell whether the sender of another node's queue folder runs; its notices are not sent from here", "folder", dir, "err", err)
	}
}

// sameFolder reports whether a and b are one folder (by name, or by file: a link).
func sameFolder(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// adopted is a sender over q, the folder of node, with n's relay, settings and counters. It
// is not registered for metrics (its counters are n's).
func (n *Notifier) adopted(q *Queue, node string) *Notifier {
	return &Notifier{Queue: q, Sender: n.Sender, From: n.From, CAName: n.CAName,
		Logger:     n.log().With("adopted_node", node),
		MinBackoff: n.MinBackoff, MaxBackoff: n.MaxBackoff,
		BatchQuiet: n.BatchQuiet, BatchHold: n.BatchHold,
		shared: n.ctr()}
}

// drain sends what the queue holds, as [Notifier.Run] does, until nothing is left or ctx
// ends; the caller holds the folder's lock. The batches queued so far are due at once: the
// bulk job that queued them ran on a node that is gone, no later batch of it will merge.
func (n *Notifier) drain(ctx context.Context) {
	n.Flush()
	n.loop(ctx, true)
}

// idle reports whether the queue holds nothing to send: no notice, no batch, or a folder that
// cannot be read (nothing can be sent from it).
func (q *Queue) idle() bool {
	ids, err := q.List()
	if err != nil || len(ids) > 0 {
		return err != nil
	}
	bs, err := q.Batches()
	return err != nil || len(bs) == 0
}
