package directory

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// Defaults of a [Publisher].
const (
	DefaultBatch      = 200
	DefaultInterval   = 2 * time.Second
	DefaultMaxBackoff = 5 * time.Minute
	DefaultSweepEvery = time.Hour
)

// kinds are the audit entries the publisher applies.
var kinds = []string{string(audit.KindEnroll), string(audit.KindArchive), string(audit.KindRevoke)}

// Operations and outcomes counted by keyarc_directory_published_total.
const (
	OpPublish  = "publish"
	OpWithdraw = "withdraw"
	OpExpire   = "expire" // values removed by the sweep

	OutcomeOK          = "ok"
	OutcomeNoEntry     = "no_entry"
	OutcomeManyEntries = "many_entries"
	OutcomeRefused     = "refused"
	OutcomeError       = "error"
)

// Publisher follows the audit trail from its [Cursor] and applies each issuance and revocation
// to a [Directory] (see the package doc). Fill the exported fields, call [Publisher.Register]
// once if metrics are wanted, then Run. Run, Step and Sweep are for one goroutine at a time.
type Publisher struct {
	Store  store.Store
	Dir    Directory
	Cursor Cursor
	// CA is the issuing CA's certificate: only what it issued is published or removed.
	CA *x509.Certificate
	// Leads, when set, tells whether this node runs the singletons (the leader lease); the
	// publisher works only while it does. Nil: always.
	Leads  func() bool
	Logger *slog.Logger
	// Batch is the most audit entries applied between two moves of the cursor (default
	// [DefaultBatch]); Interval how often the trail is read when caught up (default
	// [DefaultInterval]); MaxBackoff the longest wait between attempts while the directory
	// fails (default [DefaultMaxBackoff]); SweepEvery how often expired certificates are
	// removed (default [DefaultSweepEvery]).
	Batch      int
	Interval   time.Duration
	MaxBackoff time.Duration
	SweepEvery time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time

	// skips counts the certificates skipped in the current Step, whose first maxSkipLogs
	// are logged one by one (a bulk job to mailboxes without entries must not flood the log).
	skips int

	once        sync.Once
	published   *prometheus.CounterVec
	backlog     prometheus.Gauge
	lastSuccess prometheus.Gauge
}

func (p *Publisher) init() {
	p.once.Do(func() {
		p.published = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_directory_published_total",
			Help: "Certificates applied to the directory, by operation (publish, withdraw, expire) and outcome (ok; no_entry, many_entries: skipped, the mailbox has no single entry; refused: skipped, the directory refused the entry's change; error: retried).",
		}, []string{"op", "outcome"})
		for _, op := range []string{OpPublish, OpWithdraw, OpExpire} {
			for _, o := range []string{OutcomeOK, OutcomeError} {
				p.published.WithLabelValues(op, o)
			}
		}
		p.published.WithLabelValues(OpPublish, OutcomeNoEntry)
		p.published.WithLabelValues(OpPublish, OutcomeManyEntries)
		p.published.WithLabelValues(OpPublish, OutcomeRefused)
		p.backlog = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_directory_backlog",
			Help: "Audit entries not yet applied to the directory (on the node that leads; 0 elsewhere).",
		})
		p.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyarc_directory_last_success_timestamp_seconds",
			Help: "When the directory publisher last caught up with the audit trail or applied a batch (Unix time).",
		})
	})
}

// Register registers the publisher's metrics with reg.
func (p *Publisher) Register(reg prometheus.Registerer) error {
	p.init()
	for _, c := range []prometheus.Collector{p.published, p.backlog, p.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (p *Publisher) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (p *Publisher) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Publisher) leads() bool { return p.Leads == nil || p.Leads() }

func (p *Publisher) batch() int {
	if p.Batch > 0 {
		return p.Batch
	}
	return DefaultBatch
}

// Run applies the trail until ctx ends: a batch after another while there is a backlog, then
// every Interval; after a failure it waits (doubling up to MaxBackoff, with jitter) and tries
// the same batch again. It sweeps expired certificates, then retries the skipped ones
// ([Publisher.Retry]), at its first pass and every SweepEvery. It does nothing while another node leads.
func (p *Publisher) Run(ctx context.Context) {
	p.init()
	interval, maxBackoff, sweepEvery := p.Interval, p.MaxBackoff, p.SweepEvery
	if interval <= 0 {
		interval = DefaultInterval
	}
	if maxBackoff <= 0 {
		maxBackoff = DefaultMaxBackoff
	}
	if sweepEvery <= 0 {
		sweepEvery = DefaultSweepEvery
	}
	var (
		failures  int
		lastErr   string
		nextSweep time.Time
	)
	for {
		wait := interval
		if !p.leads() {
			p.backlog.Set(0)
			failures, lastErr = 0, ""
		} else {
			more, err := p.Step(ctx)
			if err == nil && !more && !time.Now().Before(nextSweep) {
				if _, err = p.Sweep(ctx); err == nil {
					if _, err = p.Retry(ctx); err == nil {
						nextSweep = time.Now().Add(sweepEvery)
					}
				}
			}
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				failures++
				wait = backoff(interval, maxBackoff, failures)
				// The same failure is logged once while it lasts, then when it changes.
				if msg := err.Error(); msg != lastErr {
					lastErr = msg
					p.log().Error("directory: publishing failed; nothing is lost, retrying", "err", err, "retry_in", wait.Round(time.Second))
				}
			default:
				if lastErr != "" {
					p.log().Info("directory: publishing works again", "after_failures", failures)
				}
				failures, lastErr = 0, ""
				if more {
					wait = 0
				}
			}
		}
		if wait == 0 {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is the wait after n consecutive failures: interval doubled n-1 times, at most max,
// less up to a fifth at random so that nodes do not retry in step.
func backoff(interval, max time.Duration, n int) time.Duration {
	d := interval
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// Step applies one batch of the trail after the cursor and moves the cursor past it. more is
// true when a full batch was applied (there may be more). On an error of the directory the
// cursor stays: the batch is applied again by the next Step (idempotently).
//
// # Errors
//
// The store's (wrapping [store.ErrUnavailable] for a storage fault) or the directory's; a
// mailbox without a single entry is not an error (it is counted and logged).
func (p *Publisher) Step(ctx context.Context) (more bool, err error) {
	p.init()
	pos, err := p.Cursor.Position(ctx)
	if err != nil {
		return false, fmt.Errorf("directory: read the cursor: %w", err)
	}
	limit := p.batch()
	var (
		entries []store.AuditEntry
		head    int64
		rows    = map[string]*store.Certificate{}
		order   []string
	)
	err = p.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if head, _, err = tx.AuditHead(); err != nil {
			return err
		}
		if entries, err = tx.AuditOfKindsFrom(kinds, pos+1, limit); err != nil {
			return err
		}
		for _, e := range entries {
			for _, serial := range serialsOf(e) {
				if _, ok := rows[serial]; ok {
					continue
				}
				c, err := tx.GetCertificate(serial)
				if errors.Is(err, store.ErrNotFound) {
					rows[serial] = nil
					continue
				}
				if err != nil {
					return err
				}
				rows[serial] = c
				order = append(order, serial)
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("directory: read the audit trail: %w", err)
	}
	p.backlog.Set(float64(max(head-pos, 0)))
	now := p.now()
	touched := false
	p.skips = 0
	defer func() {
		if p.skips > maxSkipLogs {
			p.log().Warn("directory: more certificates not published in this batch (see keyarc_directory_published_total)",
				"not_logged", p.skips-maxSkipLogs)
		}
	}()
	var skips []string
	for _, serial := range order {
		op, outcome, err := p.apply(ctx, rows[serial], now, false)
		if err != nil {
			return false, err
		}
		touched = touched || op != ""
		if skipped(op, outcome) {
			skips = append(skips, serial)
		}
	}
	if len(skips) > 0 {
		// Recorded before the cursor moves past them: a failure here applies the batch again.
		err := p.Store.Update(ctx, func(tx store.Tx) error {
			for _, serial := range skips {
				if err := tx.SkipDirectory(serial); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return false, fmt.Errorf("directory: record the skipped certificates: %w", err)
		}
	}
	next := head
	if len(entries) == limit {
		next = entries[len(entries)-1].Seq
	}
	if next > pos {
		if err := p.Cursor.Advance(ctx, next); err != nil {
			return false, fmt.Errorf("directory: move the cursor: %w", err)
		}
	}
	p.backlog.Set(float64(max(head-next, 0)))
	if touched || next >= head {
		p.lastSuccess.Set(float64(time.Now().Unix()))
	}
	return len(entries) == limit, nil
}

// maxSkipLogs is how many skipped certificates one Step logs one by one.
const maxSkipLogs = 20

// skip counts a skipped certificate and says whether to log it.
func (p *Publisher) skip() bool {
	p.skips++
	return p.skips <= maxSkipLogs
}

// serialsOf returns the serials an issuance or revocation entry names.
func serialsOf(e store.AuditEntry) []string {
	var d audit.Details
	if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
		return nil
	}
	var out []string
	if d.Serial != "" && e.Kind != string(audit.KindRevoke) {
		out = append(out, d.Serial)
	}
	out = append(out, d.Serials...)
	out = append(out, d.KeyCompromise...)
	for i, s := range out {
		if n, err := store.NormalizeSerial(s); err == nil {
			out[i] = n
		}
	}
	return out
}

// apply publishes or withdraws one certificate by its state now, and returns what it asked
// the directory (op: "" when nothing) and the outcome. Certificates the directory never holds
// (not this CA's, not for encryption, not a subscriber's, pending or failed) are passed over.
// A skip (no single entry, a refused change) is counted and logged unless quiet (a retry of
// a certificate skipped before).
func (p *Publisher) apply(ctx context.Context, row *store.Certificate, now time.Time, quiet bool) (op, outcome string, err error) {
	if row == nil || len(row.DER) == 0 || row.Email == "" || row.Role != "" || row.KRA != "" {
		return "", "", nil
	}
	cert, err := x509.ParseCertificate(row.DER)
	if err != nil || !Issued(cert, p.CA) || !ForEncryption(cert) {
		return "", "", nil
	}
	switch {
	case row.State == store.StateIssued && now.Before(cert.NotAfter):
		op = OpPublish
		err = p.Dir.Publish(ctx, row.Email, cert)
	case row.State == store.StateRevoked || row.State == store.StateIssued:
		op = OpWithdraw
		err = p.Dir.Withdraw(ctx, row.Email, cert)
	default:
		return "", "", nil
	}
	switch {
	case err == nil:
		outcome = OutcomeOK
	case errors.Is(err, ErrNoEntry):
		outcome = OutcomeNoEntry
	case errors.Is(err, ErrManyEntries):
		outcome = OutcomeManyEntries
	case errors.Is(err, ErrEntryRefused):
		outcome = OutcomeRefused
	default:
		p.published.WithLabelValues(op, OutcomeError).Inc()
		return op, OutcomeError, fmt.Errorf("directory: %s %s: %w", op, row.Serial, err)
	}
	if outcome != OutcomeOK && quiet {
		return op, outcome, nil
	}
	p.published.WithLabelValues(op, outcome).Inc()
	switch outcome {
	case OutcomeNoEntry:
		if p.skip() {
			p.log().Warn("directory: certificate not published: no entry has this mail under the search base",
				"serial", row.Serial, "mailbox", row.Email)
		}
	case OutcomeManyEntries:
		if p.skip() {
			p.log().Warn("directory: certificate not published: several entries have this mail under the search base",
				"serial", row.Serial, "mailbox", row.Email)
		}
	case OutcomeRefused:
		if p.skip() {
			p.log().Warn("directory: certificate not published: the directory refused the change of the entry",
				"serial", row.Serial, "mailbox", row.Email, "err", err)
		}
	}
	return op, outcome, nil
}

// skipped reports an outcome that leaves a certificate to be tried again by [Publisher.Retry].
func skipped(op, outcome string) bool {
	return op == OpPublish && (outcome == OutcomeNoEntry || outcome == OutcomeManyEntries || outcome == OutcomeRefused)
}

// Retry tries again the certificates skipped for want of a single entry (or refused by the
// directory), so that a certificate appears once its person's entry does, without a new
// enrollment. Run calls it after each sweep. It reads only the skipped serials (the store
// keeps them apart, [store.DirectorySkips]), a batch at a time, and forgets each one that is
// published or no longer to be published (revoked, expired, gone); the others wait for the
// next sweep. A skip again is not counted or logged again: it was when it first happened.
// It returns how many it published.
//
// # Errors
//
// The store's or the directory's; the serials not yet tried wait for the next call.
func (p *Publisher) Retry(ctx context.Context) (int, error) {
	p.init()
	now := p.now()
	published := 0
	for after := ""; ; {
		var (
			serials []string
			rows    []*store.Certificate
		)
		err := p.Store.View(ctx, func(tx store.Tx) error {
			var err error
			if serials, err = tx.DirectorySkipped(after, p.batch()); err != nil {
				return err
			}
			rows = make([]*store.Certificate, len(serials))
			for i, serial := range serials {
				rows[i], err = tx.GetCertificate(serial)
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return published, fmt.Errorf("directory: read the skipped certificates: %w", err)
		}
		var done []string
		for i, serial := range serials {
			op, outcome, err := p.apply(ctx, rows[i], now, true)
			if err != nil {
				p.forget(ctx, done)
				return published, err
			}
			if skipped(op, outcome) {
				continue
			}
			if op == OpPublish && outcome == OutcomeOK {
				published++
			}
			done = append(done, serial)
		}
		if err := p.forget(ctx, done); err != nil {
			return published, err
		}
		if len(serials) < p.batch() {
			if published > 0 {
				p.log().Info("directory: certificates skipped before are published now", "certificates", published)
			}
			return published, nil
		}
		after = serials[len(serials)-1]
	}
}

// forget removes serials from the skipped certificates.
func (p *Publisher) forget(ctx context.Context, serials []string) error {
	if len(serials) == 0 {
		return nil
	}
	err := p.Store.Update(ctx, func(tx store.Tx) error {
		for _, serial := range serials {
			if err := tx.UnskipDirectory(serial); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("directory: forget the published skipped certificates: %w", err)
	}
	return nil
}

// Sweep removes from the directory the certificates this CA issued that have expired or been
// revoked, and returns how many values it removed. Values of other issuers are never touched.
//
// # Errors
//
// The directory's, or the store's when a revocation state cannot be read.
func (p *Publisher) Sweep(ctx context.Context) (int, error) {
	p.init()
	now := p.now()
	var storeErr error
	n, err := p.Dir.Prune(ctx, func(c *x509.Certificate) bool {
		if !Issued(c, p.CA) {
			return false
		}
		if !now.Before(c.NotAfter) {
			return true
		}
		var row *store.Certificate
		err := p.Store.View(ctx, func(tx store.Tx) error {
			var err error
			row, err = tx.GetCertificate(store.FormatSerial(c.SerialNumber))
			return err
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			storeErr = err
			return false
		}
		return row != nil && row.State == store.StateRevoked
	})
	if n > 0 {
		p.published.WithLabelValues(OpExpire, OutcomeOK).Add(float64(n))
	}
	if err == nil {
		err = storeErr
	}
	if err != nil {
		p.published.WithLabelValues(OpExpire, OutcomeError).Inc()
		return n, fmt.Errorf("directory: sweep: %w", err)
	}
	if n > 0 {
		p.log().Info("directory: expired or revoked certificates removed", "values", n)
	}
	p.lastSuccess.Set(float64(time.Now().Unix()))
	return n, nil
}
