package notice

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
)

// Default back-off of a notice the relay did not take: 1 s, doubling, at most 5 minutes.
const (
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute
	// rescan is the longest the sender sleeps when nothing is due.
	rescan = time.Minute
	// DefaultBatchQuiet and DefaultBatchHold: queued batches are sent once no batch was queued
	// for 5 s (a bulk job has ended, or paused), or once the oldest has waited 10 minutes.
	DefaultBatchQuiet = 5 * time.Second
	DefaultBatchHold  = 10 * time.Minute
)

// Notifier queues notices and sends them. Fill the exported fields, then call [Notifier.Run]
// once in a goroutine and [Notifier.Notify] from anywhere.
type Notifier struct {
	Queue  *Queue
	Sender Sender
	// From is the envelope and header sender, e.g. keyarc@example.org.
	From string
	// CAName names the CA in the messages (the CA certificate's subject common name).
	CAName string
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a notice is tried again (defaults
	// [DefaultMinBackoff], [DefaultMaxBackoff]).
	MinBackoff, MaxBackoff time.Duration
	// BatchQuiet and BatchHold say when queued batches ([Notifier.NotifyBatch]) are sent: when
	// [Notifier.Flush] is called (a bulk job has ended), once no batch was queued for
	// BatchQuiet, or once the oldest has waited BatchHold (defaults [DefaultBatchQuiet],
	// [DefaultBatchHold]). Waiting lets the batches of one bulk job merge: a mailbox gets one
	// message listing all its serials, not one per committed batch.
	BatchQuiet, BatchHold time.Duration

	counters
	// shared are the counters of the notifier that adopted this one's folder ([Adopter]): the
	// notices it sends count in that one's metrics. Nil: its own.
	shared *counters
	// lockEvery is how often the sender tries again to take its folder's lock while another
	// holds it (default 1 s; tests shorten it).
	lockEvery time.Duration
	flushAt   atomic.Int64 // batches queued at or before this (Unix ns) are due
	wakeOnce  sync.Once
	wake      chan struct{}
	started   atomic.Bool
	urgentMu  sync.Mutex
	// urgent are the batches of NotifyNow, due at once, each with the value of urgentSeq
	// when it was marked (see urgentIn).
	urgent    map[string]uint64
	urgentSeq uint64
	// queueErr is the last error reading the queue folder, logged once; "" while it reads.
	// Run's goroutine alone uses it.
	queueErr string
}

// counters are a sender's metrics.
type counters struct{ sent, failures, dropped atomic.Uint64 }

// ctr is where n counts: its own counters, or those of the notifier that adopted its folder.
func (n *Notifier) ctr() *counters {
	if n.shared != nil {
		return n.shared
	}
	return &n.counters
}

func (n *Notifier) log() *slog.Logger {
	if n.Logger != nil {
		return n.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// wakeCh is the sender's wake-up signal, made on first use.
func (n *Notifier) wakeCh() chan struct{} {
	n.wakeOnce.Do(func() { n.wake = make(chan struct{}, 1) })
	return n.wake
}

// Notify queues e durably and wakes the sender. It waits for the queue file's fsync, never
// for the relay. A notice that cannot be queued is counted as a failed attempt; the caller
// keeps it and tries again.
//
// # Errors
//
// Those of [Queue.Put], except [ErrInvalid]: an event that can never become a message is not
// queued but kept in the rejected folder and counted as dropped, as one the relay refused.
func (n *Notifier) Notify(e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	if es, err := n.rejectInvalid([]Event{e}); err != nil || len(es) == 0 {
		return err
	}
	id, err := n.Queue.Put(e)
	if err != nil {
		n.ctr().failures.Add(1)
		return err
	}
	n.log().Debug("subscriber notice queued", "id", id, "kind", e.Kind)
	n.wakeSender()
	return nil
}

// NotifyBatch queues es, the notices of keys escrowed together (committed batches of a bulk
// job), as one batch file (one fsync), and wakes the sender; they are sent when due (see
// [Notifier.BatchQuiet]). It waits for the file's fsync, never for the relay. A batch that
// cannot be queued is counted as one failed attempt; the caller keeps it and tries again.
//
// # Errors
//
// Those of [Queue.PutBatch], except [ErrInvalid]: the events that can never become a message
// are kept in the rejected folder and counted as dropped, and the others are queued.
func (n *Notifier) NotifyBatch(es []Event) error {
	_, err := n.notifyBatch(es)
	return err
}

// notifyBatch is NotifyBatch, returning the batch's ID ("" for none queued).
func (n *Notifier) notifyBatch(es []Event) (string, error) {
	if len(es) == 0 {
		return "", nil
	}
	now := time.Now().UTC()
	for i := range es {
		if es[i].Time.IsZero() {
			es[i].Time = now
		}
	}
	es, err := n.rejectInvalid(es)
	if err != nil || len(es) == 0 {
		return "", err
	}
	id, err := n.Queue.PutBatch(es)
	if err != nil {
		n.ctr().failures.Add(1)
		return "", err
	}
	n.log().Debug("subscriber notices queued", "batch", id, "notices", len(es))
	n.wakeSender()
	return id, nil
}

// NotifyNow queues es, notices due at once (an enrollment's, a recovery's), with one fsync:
// one event as a notice file ([Notifier.Notify]), more as a batch due at once. Unlike
// [Notifier.Flush], it leaves the batches of a bulk job that is still running to wait for
// its end, so that their mailboxes still get one message each. (The batch is due at once for
// this process: after a restart it waits like a job's, [Notifier.BatchQuiet].)
//
// # Errors
//
// Those of [Queue.Put] or [Queue.PutBatch].
func (n *Notifier) NotifyNow(es []Event) error {
	switch len(es) {
	case 0:
		return nil
	case 1:
		return n.Notify(es[0])
	}
	id, err := n.notifyBatch(es)
	if err != nil || id == "" {
		return err
	}
	n.markUrgent(id)
	n.wakeSender()
	return nil
}

// markUrgent makes the batch id, queued already, due at once.
func (n *Notifier) markUrgent(id string) {
	n.urgentMu.Lock()
	defer n.urgentMu.Unlock()
	if n.urgent == nil {
		n.urgent = map[string]uint64{}
	}
	n.urgentSeq++
	n.urgent[id] = n.urgentSeq
}

// urgentMark is taken before the queue's batches are listed, for [Notifier.urgentIn].
func (n *Notifier) urgentMark() uint64 {
	n.urgentMu.Lock()
	defer n.urgentMu.Unlock()
	return n.urgentSeq
}

// urgentIn returns which of ids (the batches queued, sorted, listed after [Notifier.urgentMark]
// returned mark) [Notifier.NotifyNow] queued, and forgets those no longer queued. A batch
// marked after mark is kept even when ids lacks it: NotifyNow writes the batch, then marks
// it, so a listing that began before the mark may have missed the file, and forgetting it
// then left the batch waiting as a bulk job's would.
func (n *Notifier) urgentIn(ids []string, mark uint64) map[string]bool {
	n.urgentMu.Lock()
	defer n.urgentMu.Unlock()
	out := map[string]bool{}
	for id, seq := range n.urgent {
		if _, ok := slices.BinarySearch(ids, id); ok {
			out[id] = true
		} else if seq <= mark {
			delete(n.urgent, id)
		}
	}
	return out
}

// rejectInvalid returns the events of es that can become a message ([Event.Validate]). The
// others are kept in the rejected folder, counted as dropped and logged (without their
// fields, which may hold anything): retrying them would never succeed, and would hold back
// every notice queued after them.
//
// # Errors
//
// The file system's, when an invalid event cannot be kept in the rejected folder (nothing is
// queued then; the caller tries again).
func (n *Notifier) rejectInvalid(es []Event) ([]Event, error) {
	var bad []int
	for i, e := range es {
		if e.Validate() != nil {
			bad = append(bad, i)
		}
	}
	if len(bad) == 0 {
		return es, nil
	}
	for _, i := range bad {
		if err := n.Queue.rejectEvent(es[i]); err != nil {
			n.ctr().failures.Add(1)
			return nil, err
		}
	}
	ok := make([]Event, 0, len(es)-len(bad))
	for i, e := range es {
		if len(bad) > 0 && bad[0] == i {
			bad = bad[1:]
			err := e.Validate()
			n.ctr().failures.Add(1)
			n.ctr().dropped.Add(1)
			n.log().Error("subscriber notice cannot become a mail: kept in the rejected folder, not sent", "kind", e.Kind, "err", err)
			continue
		}
		ok = append(ok, e)
	}
	return ok, nil
}

func (n *Notifier) wakeSender() {
	select {
	case n.wakeCh() <- struct{}{}:
	default:
	}
}

// Flush makes the batches queued so far due at once, without waiting for
// [Notifier.BatchQuiet]: the bulk job that queued them has ended, so no later batch of it will
// merge with them. It returns at once.
func (n *Notifier) Flush() {
	// The newest name's time, when the clock was stepped back since it was queued.
	n.flushAt.Store(max(time.Now().UnixNano(), n.Queue.newest()))
	n.wakeSender()
}

// Sent is the number of notices the relay accepted since start.
func (n *Notifier) Sent() uint64 { return n.ctr().sent.Load() }

// Failures is the number of failed attempts (a notice not queued, a send the relay did not
// accept) since start.
func (n *Notifier) Failures() uint64 { return n.ctr().failures.Load() }

// Dropped is the number of notices that will never be sent (refused for good by the relay, or
// a damaged queue file) since start.
func (n *Notifier) Dropped() uint64 { return n.ctr().dropped.Load() }

// Register adds the notifier's series to reg: keyarc_notice_queue (notices waiting),
// keyarc_notices_sent_total, keyarc_notice_failures_total (failed attempts) and
// keyarc_notices_dropped_total (notices given up: refused for good, or a damaged file).
func (n *Notifier) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyarc_notice_queue",
			Help: "Subscriber notices queued and not yet accepted by the SMTP relay."},
			func() float64 { return float64(n.Queue.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyarc_notices_sent_total",
			Help: "Subscriber notices the SMTP relay accepted."},
			func() float64 { return float64(n.ctr().sent.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyarc_notice_failures_total",
			Help: "Failed attempts to queue or send a subscriber notice (each is retried, unless the relay refused it for good)."},
			func() float64 { return float64(n.ctr().failures.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyarc_notices_dropped_total",
			Help: "Subscriber notices given up: refused for good by the relay, or a damaged queue file (both kept in the queue's rejected folder)."},
			func() float64 { return float64(n.ctr().dropped.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// retry is the back-off state of one queued notice (in memory: after a restart every queued
// notice is tried at once).
type retry struct {
	attempts int
	next     time.Time
}

// Run sends the queued notices, oldest first, until ctx ends: at start, when [Notifier.Notify]
// queues one, when a notice's back-off ends, and at least once a minute; and the queued
// batches once due (see [Notifier.BatchQuiet] and the package documentation). A notice the relay
// accepted is deleted; one it refused for good ([ErrRejected]) moves to the rejected folder;
// any other failure is retried with a doubling back-off. A relay that cannot be reached ends
// the pass (the notices behind would fail the same way).
//
// It holds the lock of the queue folder ([LockFile]) while it runs, so that no [Adopter] sends
// the same notices; it first waits for the lock while an adopter holds it (this sender was
// not running, and another node is sending what it had left), meanwhile [Notifier.Notify]
// queues as usual.
func (n *Notifier) Run(ctx context.Context) {
	if !n.started.CompareAndSwap(false, true) {
		panic("notice: Notifier.Run called twice")
	}
	lock, ok := n.lockQueue(ctx)
	if !ok {
		return
	}
	if lock != nil {
		defer lock.Close()
	}
	if q := n.Queue.Len(); q > 0 {
		n.log().Info("subscriber notices waiting from before the start", "queued", q)
	}
	n.loop(ctx, false)
}

// loop sends the queued notices until ctx ends, or, with untilIdle, until the queue holds
// nothing to send ([Notifier.drain]). The caller holds the folder's lock.
func (n *Notifier) loop(ctx context.Context, untilIdle bool) {
	wake := n.wakeCh()
	state := map[string]*retry{}
	groups := map[string]*retry{}
	seen := map[string]time.Time{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := n.pass(ctx, state)
		if ctx.Err() == nil {
			wait = min(wait, n.passBatches(ctx, groups, seen))
		}
		// A connection kept by the sender ([SMTP]) serves one pass, never an idle wait.
		if ci, ok := n.Sender.(interface{ CloseIdle() }); ok {
			ci.CloseIdle()
		}
		if ctx.Err() != nil || untilIdle && n.Queue.idle() {
			return
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

// pass tries every due notice once and returns how long to sleep.
func (n *Notifier) pass(ctx context.Context, state map[string]*retry) time.Duration {
	ids, err := n.Queue.List()
	if err != nil {
		return n.queueFault(err)
	}
	n.queueOK()
	present := make(map[string]bool, len(ids))
	for _, id := range ids {
		present[id] = true
	}
	for id := range state {
		if !present[id] {
			delete(state, id)
		}
	}
	wait := rescan
	for _, id := range ids {
		if ctx.Err() != nil {
			return 0
		}
		now := time.Now()
		if r := state[id]; r != nil && now.Before(r.next) {
			wait = min(wait, r.next.Sub(now))
			continue
		}
		err := n.send(ctx, id)
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist):
			delete(state, id)
			continue
		case errors.Is(err, ErrRejected), errors.Is(err, ErrInvalid):
			n.ctr().failures.Add(1)
			n.ctr().dropped.Add(1)
			delete(state, id)
			n.log().Error("subscriber notice refused for good: kept in the rejected folder, not retried", "id", id, "err", err)
			if rerr := n.Queue.Reject(id); rerr != nil {
				n.log().Error("subscriber notice: cannot move it to the rejected folder", "id", id, "err", rerr)
			}
			continue
		}
		if ctx.Err() != nil {
			return 0
		}
		n.ctr().failures.Add(1)
		r := state[id]
		if r == nil {
			r = &retry{}
			state[id] = r
		}
		r.attempts++
		d := n.backoff(r.attempts)
		r.next = time.Now().Add(d)
		wait = min(wait, d)
		n.log().Warn("subscriber notice not sent; will retry", "id", id, "attempts", r.attempts,
			"queued_for", time.Since(queuedAt(id)).Round(time.Second), "retry_in", d, "err", err)
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// No answer from the relay: the notices behind this one would fail the same way.
			break
		}
	}
	return wait
}

// send sends the queued notice id and deletes it once the relay accepted it.
func (n *Notifier) send(ctx context.Context, id string) error {
	e, err := n.Queue.Get(id)
	if err != nil {
		return err
	}
	if err := n.sendEvent(ctx, e, id); err != nil {
		return err
	}
	n.ctr().sent.Add(1)
	if err := n.Queue.Delete(id); err != nil {
		// Sent, but still queued: it may be sent again (same Message-ID).
		n.log().Error("subscriber notice sent but not removed from the queue", "id", id, "err", err)
	}
	n.log().Info("subscriber notice sent", "id", id, "kind", e.Kind, "serials", e.Serials)
	return nil
}

// sendEvent hands e to the relay as a message with Message-ID id.
func (n *Notifier) sendEvent(ctx context.Context, e Event, id string) error {
	msg, err := e.Message(n.From, id, n.CAName)
	if err != nil {
		return err
	}
	return n.Sender.Send(ctx, n.From, e.Mailbox, msg)
}

// queueFault logs that the queue folder cannot be read, once for as long as the same error
// lasts (the sender retries every [Notifier.MinBackoff]), and returns how long to wait.
func (n *Notifier) queueFault(err error) time.Duration {
	if msg := err.Error(); msg != n.queueErr {
		n.queueErr = msg
		n.log().Error("subscriber notices: cannot read the queue folder; nothing queued is lost, retrying", "folder", n.Queue.Dir(), "err", err)
	}
	return n.minBackoff()
}

// queueOK notes that the queue folder can be read.
func (n *Notifier) queueOK() {
	if n.queueErr != "" {
		n.queueErr = ""
		n.log().Info("subscriber notices: the queue folder can be read again", "folder", n.Queue.Dir())
	}
}

func (n *Notifier) minBackoff() time.Duration {
	if n.MinBackoff > 0 {
		return n.MinBackoff
	}
	return DefaultMinBackoff
}

func (n *Notifier) backoff(attempts int) time.Duration {
	maxB := n.MaxBackoff
	if maxB <= 0 {
		maxB = DefaultMaxBackoff
	}
	d := n.minBackoff()
	for i := 1; i < attempts && d < maxB; i++ {
		d *= 2
	}
	return min(d, maxB)
}
