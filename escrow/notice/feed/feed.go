// Package feed turns the audit trail into subscriber notices: a [Feed] follows the trail from
// a cursor kept in the store, finds the entries subscribers must hear about (a key escrowed; a
// recovery of it requested, completed, cancelled or expired) and queues their notices with a
// [notice.Notifier].
//
// # Why the trail
//
// Every change a notice tells of commits with its audit entry, in one transaction. Reading the
// notices from the trail makes that transaction their outbox: a notice cannot be lost between
// the commit and its queue file (a process killed there, a queue folder that cannot be written),
// and queueing never sits on an enrollment's path. The cursor moves past entries only once their
// notices are queued, so delivery is at least once: a process stopped between the two queues
// the same notices again at its next start.
//
// # Several nodes
//
// The cursor is shared by the nodes of one database, and the feed works only on the node that
// leads ([Feed.Leads]), so the queue is the leader's. A node without notices configured keeps
// the cursor moving without queueing anything ([Feed.Notifier] nil): notices are for what
// happens while they are on, and turning them on later does not mail the past.
//
// It imports escrow/audit, escrow/store and escrow/notice, never escrow.
package feed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/notice"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/prometheus/client_golang/prometheus"
)

// CursorName is the feed's cursor in the store ([store.Cursors]).
const CursorName = "notices"

// BulkActorPrefix starts the actor of the audit entries a bulk job writes ("job " and its ID):
// their notices are queued as batches that merge per mailbox ([notice.Notifier.NotifyBatch]).
const BulkActorPrefix = "job "

// Defaults of a [Feed].
const (
	DefaultBatch    = 500
	DefaultInterval = time.Second
	// DefaultSkipInterval is how often a feed without a notifier moves the cursor.
	DefaultSkipInterval = time.Minute
	maxBackoff          = time.Minute
	// maxStepEvents ends a step once its entries hold this many notices (the entry that
	// reaches it is the step's last), so that a step's memory and its batch file (some 3 MB
	// at the longest mailboxes) stay bounded, whatever the entries hold.
	maxStepEvents = 8192
	// pageSize is the most entries read from the store at once within a step.
	pageSize = 32
)

// kinds are the audit entries that make notices.
var kinds = []string{string(audit.KindArchive), string(audit.KindRecoveryRequested), string(audit.KindRecoveryFetched),
	string(audit.KindRecoveryCancelled), string(audit.KindRecoveryExpired)}

// Queuer queues notices durably: a [notice.Notifier].
type Queuer interface {
	// NotifyBatch queues notices of a bulk job, sent once the job is done or quiet.
	NotifyBatch(es []notice.Event) error
	// NotifyNow queues notices that are due at once.
	NotifyNow(es []notice.Event) error
	// Flush makes every batch queued so far due.
	Flush()
}

// Feed follows the audit trail and queues the notices it records (see the package doc). Fill
// the exported fields, call [Feed.Start] before the appliance takes requests, then Run in one
// goroutine.
type Feed struct {
	Store store.Store
	// Notifier queues the notices; nil moves the cursor without queueing anything (notices are
	// off on this node).
	Notifier Queuer
	// Leads tells whether this node runs the singletons; the feed works only while it does.
	// Nil: always.
	Leads  func() bool
	Logger *slog.Logger
	// Batch is the most audit entries read in one step (default [DefaultBatch]); Interval how
	// often the trail is read when caught up (default [DefaultInterval], or
	// [DefaultSkipInterval] without a Notifier).
	Batch    int
	Interval time.Duration

	flush, started atomic.Bool
	wakeOnce       sync.Once
	wake           chan struct{}

	metricsOnce sync.Once
	backlog     prometheus.Gauge
	lastSuccess prometheus.Gauge
}

func (f *Feed) initMetrics() {
	f.metricsOnce.Do(func() {
		f.backlog = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_notice_feed_backlog",
			Help: "Audit entries not yet read for subscriber notices (on the node that leads; 0 elsewhere).",
		})
		f.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_notice_feed_last_success_timestamp_seconds",
			Help: "When the notice feed last caught up with the audit trail or queued a batch of notices (Unix time).",
		})
	})
}

// Register registers the feed's metrics with reg: keyarc_notice_feed_backlog and
// keyarc_notice_feed_last_success_timestamp_seconds.
func (f *Feed) Register(reg prometheus.Registerer) error {
	f.initMetrics()
	for _, c := range []prometheus.Collector{f.backlog, f.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (f *Feed) log() *slog.Logger {
	if f.Logger != nil {
		return f.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (f *Feed) leads() bool { return f.Leads == nil || f.Leads() }

func (f *Feed) interval() time.Duration {
	switch {
	case f.Interval > 0:
		return f.Interval
	case f.Notifier == nil:
		return DefaultSkipInterval
	}
	return DefaultInterval
}

// Start places the cursor at the end of the trail if it was never placed (the first start with
// this feed: what happened before it is not mailed). Call it before the appliance takes
// requests, so that nothing done after the start is missed.
//
// # Errors
//
// The store's, wrapping [store.ErrUnavailable] for a storage fault.
func (f *Feed) Start(ctx context.Context) error {
	err := f.Store.Update(ctx, func(tx store.Tx) error {
		pos, err := tx.Cursor(CursorName)
		if err != nil || pos > 0 {
			return err
		}
		head, _, err := tx.AuditHead()
		if err != nil || head == 0 {
			return err
		}
		return tx.AdvanceCursor(CursorName, head)
	})
	if err != nil {
		return fmt.Errorf("notices: place the cursor: %w", err)
	}
	f.started.Store(true)
	return nil
}

// Flush says a bulk job has ended: once the feed has queued what the trail holds now, the
// queued batches are made due at once rather than after a quiet period. It returns at once.
func (f *Feed) Flush() {
	f.flush.Store(true)
	f.Wake()
}

// Wake makes Run read the trail now rather than at its next interval. It returns at once.
func (f *Feed) Wake() {
	select {
	case f.wakeCh() <- struct{}{}:
	default:
	}
}

// wakeCh is Run's wake-up signal, made on first use.
func (f *Feed) wakeCh() chan struct{} {
	f.wakeOnce.Do(func() { f.wake = make(chan struct{}, 1) })
	return f.wake
}

// Run follows the trail until ctx ends: a step after another while there is a backlog, then
// every Interval or when woken; after a failure (the store, or a queue that cannot be written)
// it waits, doubling up to a minute, and tries the same entries again. It does nothing while
// another node leads. Run must be called once; it calls Start first if Start has not
// succeeded.
func (f *Feed) Run(ctx context.Context) {
	f.initMetrics()
	wake := f.wakeCh()
	var (
		failures int
		lastErr  string
	)
	for {
		wait := f.interval()
		if !f.leads() {
			f.backlog.Set(0)
			failures, lastErr = 0, ""
		} else {
			var more bool
			err := f.startOnce(ctx)
			if err == nil {
				more, err = f.Step(ctx)
			}
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				failures++
				wait = min(f.interval()<<min(failures-1, 6), maxBackoff)
				if msg := err.Error(); msg != lastErr {
					lastErr = msg
					f.log().Error("subscriber notices: cannot queue what the audit trail records; nothing is lost, retrying", "err", err, "retry_in", wait)
				}
			default:
				if lastErr != "" {
					f.log().Info("subscriber notices: queueing works again", "after_failures", failures)
				}
				failures, lastErr = 0, ""
				if more {
					wait = 0
				}
			}
		}
		if wait == 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// Step queues the notices of one batch of entries after the cursor and moves the cursor past
// them; more is true when there may be more. On an error nothing moves: the next Step reads
// the same entries again.
//
// # Errors
//
// The store's (wrapping [store.ErrUnavailable] for a storage fault), or the queue's.
func (f *Feed) Step(ctx context.Context) (more bool, err error) {
	f.initMetrics()
	if f.flush.Swap(false) {
		defer func() {
			switch {
			case err != nil || more:
				f.flush.Store(true) // not caught up yet: a later step flushes
			case f.Notifier != nil:
				f.Notifier.Flush()
			}
		}()
	}
	limit := f.Batch
	if limit <= 0 {
		limit = DefaultBatch
	}
	var (
		pos, head, next int64
		bulk, now       []notice.Event
	)
	err = f.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if pos, err = tx.Cursor(CursorName); err != nil {
			return err
		}
		if head, _, err = tx.AuditHead(); err != nil {
			return err
		}
		next = head
		if f.Notifier == nil {
			return nil
		}
		// more: the step stops before the head, at last (the last entry read). Without it,
		// every entry of a notice's kind up to the head was read, and the cursor goes there.
		// The entries are read a page at a time: an import entry names up to 512 mailboxes,
		// and 500 of them would hold a quarter of a million notices, too many for memory and
		// for one batch file; the step ends at maxStepEvents.
		more = true
		var last int64
		from, events := pos+1, 0
	read:
		for read := 0; read < limit; {
			n := min(pageSize, limit-read)
			entries, err := tx.AuditOfKindsFrom(kinds, from, n)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if e.Seq > head {
					// Committed after the head was read: the next step's.
					more = false
					break read
				}
				last = e.Seq
				es, err := eventsOf(tx, e)
				if errors.Is(err, errMalformed) {
					// Not the feed's to judge: audit verify reports it. Its notices cannot
					// be known, and the notices after it must not wait for it.
					f.log().Error("subscriber notices: an audit entry cannot be read; its subscribers are not told", "seq", e.Seq, "err", err)
					continue
				}
				if err != nil {
					return fmt.Errorf("audit entry %d: %w", e.Seq, err)
				}
				if e.Kind == string(audit.KindArchive) && strings.HasPrefix(e.Actor, BulkActorPrefix) {
					bulk = append(bulk, es...)
				} else {
					now = append(now, es...)
				}
				if events += len(es); events >= maxStepEvents {
					break read
				}
			}
			if len(entries) < n {
				more = false
				break
			}
			read += n
			from = last + 1
		}
		if more {
			next = last
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("notices: read the audit trail: %w", err)
	}
	f.backlog.Set(float64(max(head-pos, 0)))
	if next <= pos {
		f.lastSuccess.SetToCurrentTime()
		return false, nil
	}
	if f.Notifier != nil {
		if err := f.Notifier.NotifyBatch(mergeByMailbox(bulk)); err != nil {
			return false, fmt.Errorf("notices: queue: %w", err)
		}
		if err := f.Notifier.NotifyNow(now); err != nil {
			return false, fmt.Errorf("notices: queue: %w", err)
		}
	}
	// Queued: recorded even when the appliance is stopping meanwhile, or its next start would
	// queue them again.
	err = f.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error { return tx.AdvanceCursor(CursorName, next) })
	if err != nil {
		// Queued, not recorded: the next step queues them again (at least once).
		return false, fmt.Errorf("notices: move the cursor: %w", err)
	}
	f.backlog.Set(float64(max(head-next, 0)))
	f.lastSuccess.SetToCurrentTime()
	if n := len(bulk) + len(now); n > 0 {
		f.log().Debug("subscriber notices queued from the audit trail", "notices", n, "through", next)
	}
	return more, nil
}

func (f *Feed) startOnce(ctx context.Context) error {
	if f.started.Load() {
		return nil
	}
	return f.Start(ctx)
}

// errMalformed: an audit entry whose details cannot be read.
var errMalformed = errors.New("malformed audit entry")

// eventsOf is the notices entry e records: one per mailbox it is about.
//
// # Errors
//
// [errMalformed] for details that cannot be read; otherwise the store's.
func eventsOf(tx store.Tx, e store.AuditEntry) ([]notice.Event, error) {
	var d audit.Details
	if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
		return nil, fmt.Errorf("%w: %w", errMalformed, err)
	}
	at := e.At.UTC()
	if e.Kind == string(audit.KindArchive) {
		if d.Mailbox != "" && d.Serial != "" {
			return []notice.Event{{Kind: notice.Escrowed, Mailbox: d.Mailbox, Serials: []string{d.Serial}, Time: at}}, nil
		}
		if len(d.Mailboxes) != len(d.Serials) {
			return nil, fmt.Errorf("%w: %d mailboxes for %d serials", errMalformed, len(d.Mailboxes), len(d.Serials))
		}
		es := make([]notice.Event, 0, len(d.Serials))
		for i, m := range d.Mailboxes {
			if m != "" {
				es = append(es, notice.Event{Kind: notice.Escrowed, Mailbox: m, Serials: []string{d.Serials[i]}, Time: at})
			}
		}
		return mergeByMailbox(es), nil
	}
	if d.Request == "" {
		return nil, nil
	}
	r, err := tx.GetRecovery(d.Request)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil // a request that is gone (a restore) has nobody left to tell
	}
	if err != nil {
		return nil, err
	}
	if r.Kind != store.KindRecover && r.Kind != "" {
		return nil, nil // a reseal moves records between sets: no key leaves, nobody is told
	}
	ev := notice.Event{Time: at, Request: r.ID, RequestedBy: r.Requester}
	switch audit.Kind(e.Kind) {
	case audit.KindRecoveryRequested:
		ev.Kind = notice.RecoveryRequested
	case audit.KindRecoveryFetched:
		ev.Kind = notice.RecoveryCompleted
	case audit.KindRecoveryCancelled:
		ev.Kind = notice.RecoveryCancelled
		if d.Signer != "" && d.Signer != r.RequesterSerial {
			// Not the officer who asked: an administrator's reseal closed it.
			ev.CancelledBy = cancelledBy(e.Actor)
		}
	case audit.KindRecoveryExpired:
		ev.Kind, ev.Time = notice.RecoveryExpired, r.ExpiresAt.UTC()
	}
	var es []notice.Event
	for _, id := range r.Records {
		rec, err := tx.GetRecord(id)
		if errors.Is(err, store.ErrNotFound) {
			continue // nobody to tell of a record that is gone
		}
		if err != nil {
			return nil, err
		}
		if rec.Email == "" {
			continue
		}
		e := ev
		e.Mailbox, e.Serials = rec.Email, []string{rec.Serial}
		es = append(es, e)
	}
	return mergeByMailbox(es), nil
}

// cancelledBy describes the actor of a cancellation ("role:name") for a subscriber.
func cancelledBy(actor string) string {
	role, name, ok := strings.Cut(actor, ":")
	switch {
	case !ok:
		return actor
	case role == "admin":
		return "administrator " + name
	case role == "officer":
		return "recovery officer " + name
	}
	return role + " " + name
}

// mergeByMailbox merges the events of one kind and request for one mailbox into one listing
// their serials, in the order the mailboxes first appear.
func mergeByMailbox(es []notice.Event) []notice.Event {
	if len(es) < 2 {
		return es
	}
	at := make(map[string]int, len(es))
	out := es[:0:0]
	for _, e := range es {
		k := string(e.Kind) + "\x00" + e.Mailbox + "\x00" + e.Request
		if i, ok := at[k]; ok {
			out[i].Serials = append(out[i].Serials, e.Serials...)
			continue
		}
		at[k] = len(out)
		e.Serials = append([]string(nil), e.Serials...)
		out = append(out, e)
	}
	return out
}
