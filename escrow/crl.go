package escrow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
)

// CRL publication defaults (S/MIME BR §4.9.7: a CRL at least every seven days, nextUpdate at
// most ten days after thisUpdate; issue 13: on each revocation within a minute, and daily).
const (
	// DefaultCRLValidity is nextUpdate - thisUpdate.
	DefaultCRLValidity = 7 * 24 * time.Hour
	// DefaultCRLInterval is the longest time between two CRLs when nothing is revoked.
	DefaultCRLInterval = 24 * time.Hour
	// DefaultCRLDelay is how long a revocation waits for others before the CRL is built: the
	// revocations of a burst (a key's every certificate, a mailbox's) make one CRL. A
	// revocation is on a CRL at most this long plus the build after it commits.
	DefaultCRLDelay = 10 * time.Second
	// maxCRLBackoff bounds the wait between attempts while the token or the store fails.
	maxCRLBackoff = 5 * time.Minute
	// crlFollowerPoll is how often a node that does not lead looks whether it leads now.
	crlFollowerPoll = 5 * time.Second
	// DefaultCRLCatchUp is how often the leader looks for a revocation newer than the newest
	// CRL: one whose node stopped before it published (a crash within the delay).
	DefaultCRLCatchUp = 15 * time.Second
	// crlConflictRetries is how often a CRL whose number another signer stored first is
	// built again before Publish gives up.
	crlConflictRetries = 3
)

// CRLMetrics receives what the CRL publisher does. api.Metrics implements it.
type CRLMetrics interface {
	// CRLCurrent reports the newest CRL in the store: at start and after each publication.
	CRLCurrent(number int64, thisUpdate, nextUpdate time.Time)
	// CRLFailed counts a failed attempt to build, sign or store a CRL.
	CRLFailed()
}

// CRLPublisher keeps the CA's CRL in the store current: [CRLPublisher.Run] publishes a new
// CRL a short delay after each revocation ([CRLPublisher.Trigger]), at least every
// [CRLPublisher.Interval], and at every start.
// The CRL lists every revoked certificate that has not expired (BR §4.10.1), read in one
// snapshot of the store, and is numbered one more than the newest stored. The public
// listener serves what the publisher stored: a CRL is never built for a request, and the
// stored ones are served while the token is away.
//
// Fill the exported fields, then call Run once. Trigger and Publish are safe for concurrent
// use; publications are serialised.
type CRLPublisher struct {
	Store  store.Store
	Issuer *ca.Issuer
	Logger *slog.Logger
	// Metrics, when set, learns of each CRL and failure.
	Metrics CRLMetrics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Validity, Interval, Delay and CatchUp: zero means DefaultCRLValidity,
	// DefaultCRLInterval, DefaultCRLDelay and DefaultCRLCatchUp.
	Validity, Interval, Delay, CatchUp time.Duration
	// OnPublish, when set, is called with each CRL stored (the public listener's cache). It
	// must return quickly.
	OnPublish func(store.CRL)
	// Leads, when set, reports whether this node runs the periodic publications (at start,
	// every Interval): with several nodes on one database only the leader does
	// ([Leader.Leads]). Every node publishes after its own revocations (Trigger), so a
	// revocation on any node is on a CRL within Delay. A node that starts leading publishes at
	// once, as at start, and the leader publishes when it finds a revocation newer than the
	// newest CRL (every CatchUp): a node killed between its revocation and its CRL leaves it
	// to the leader. Nil means always (one node).
	Leads func() bool

	once    sync.Once
	trigger chan struct{}
	mu      sync.Mutex // one publication at a time
}

func (p *CRLPublisher) init() { p.once.Do(func() { p.trigger = make(chan struct{}, 1) }) }

func (p *CRLPublisher) now() time.Time {
	if p.Now != nil {
		return p.Now().UTC()
	}
	return time.Now().UTC()
}

func (p *CRLPublisher) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (p *CRLPublisher) leads() bool { return p.Leads == nil || p.Leads() }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Trigger asks for a new CRL after the delay; it never blocks. Triggers that come while one
// is waiting make one CRL; one that comes while a CRL is being built makes another after it,
// so that a revocation committed after the build read the store is never left off.
func (p *CRLPublisher) Trigger() {
	p.init()
	select {
	case p.trigger <- struct{}{}:
	default: // one is pending already: it will read the store after this revocation
	}
}

// Revoked is a [Service.Revoked] hook: it triggers a CRL.
func (p *CRLPublisher) Revoked(serials []string) { p.Trigger() }

// Run publishes CRLs until ctx ends: at start, DefaultCRLDelay (or Delay) after a trigger,
// and an interval after the last CRL; the publications at start and after an interval only
// while Leads says so (see [CRLPublisher.Leads]).
// A failure (the token away, the storage failing) is logged and counted, and retried with a
// backoff from one second to five minutes; a pending trigger is kept until a CRL succeeds.
func (p *CRLPublisher) Run(ctx context.Context) {
	p.init()
	interval, delay := orDefault(p.Interval, DefaultCRLInterval), orDefault(p.Delay, DefaultCRLDelay)
	// At start, always: the store keeps no mark of a CRL still owed, so a revocation that
	// committed just before the last stop or crash, while its CRL waited for the delay, is
	// published now (and so is a revocation written by another tool while serve was
	// stopped). The stored CRL, if any, is reported until then.
	if c, err := p.Latest(ctx); err == nil {
		p.report(c)
	} else if !errors.Is(err, store.ErrNotFound) {
		p.log().Warn("CRL: cannot read the newest CRL", "err", err)
	}
	due := p.now()
	var backoff time.Duration
	var retryAt time.Time  // no attempt before this while backing off
	triggered := false     // a revocation waits for a CRL
	var caughtUp time.Time // the revocation date the leader last published for
	timer := time.NewTimer(time.Until(due))
	defer timer.Stop()
	reset := func(at time.Time) {
		due = at
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timer.Reset(max(0, at.Sub(p.now())))
	}
	reset(due)
	catchUp := time.NewTicker(orDefault(p.CatchUp, DefaultCRLCatchUp))
	defer catchUp.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-catchUp.C:
			if triggered || !p.leads() {
				continue
			}
			// Once per revocation date: one dated after the CRL that lists it (a clock ahead)
			// does not make a CRL at every look.
			last, behind := p.behind(ctx)
			if !behind || last.Equal(caughtUp) {
				continue
			}
			caughtUp = last
			p.log().Warn("CRL: a revocation is newer than the newest CRL (its node stopped before publishing); publishing")
			triggered = true
			at := p.now()
			if at.Before(retryAt) {
				at = retryAt
			}
			if at.Before(due) {
				reset(at)
			}
		case <-p.trigger:
			triggered = true
			at := p.now().Add(delay)
			if at.Before(retryAt) {
				at = retryAt
			}
			if at.Before(due) || !p.leads() {
				reset(at)
			}
		case <-timer.C:
			led := p.leads()
			if !triggered && !led {
				// The periodic CRL is the leader's; once this node leads, it publishes.
				reset(p.now().Add(crlFollowerPoll))
				continue
			}
			c, err := p.Publish(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				backoff = min(max(2*backoff, time.Second), maxCRLBackoff)
				retryAt = p.now().Add(backoff)
				p.log().Error("CRL not published; retrying", "err", err, "retry_in", backoff)
				reset(retryAt)
				continue
			}
			backoff, retryAt, triggered = 0, time.Time{}, false
			if !led || !p.leads() {
				// A follower's own revocation: look again shortly whether this node leads. One
				// that came to lead while publishing it publishes again then, as the leader,
				// rather than wait an interval on the follower's CRL.
				reset(p.now().Add(crlFollowerPoll))
				continue
			}
			reset(c.ThisUpdate.Add(interval))
		}
	}
}

// behind returns the newest revocation date and whether it is after the newest CRL's
// thisUpdate (or before any CRL). A read that fails reports false: the next look tries again.
func (p *CRLPublisher) behind(ctx context.Context) (time.Time, bool) {
	var last time.Time
	var crl *store.CRL
	err := p.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if last, err = tx.LatestRevocation(); err != nil || last.IsZero() {
			return err
		}
		crl, err = tx.LatestCRL()
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil || last.IsZero() {
		return last, false
	}
	return last, crl == nil || last.After(crl.ThisUpdate)
}

// Latest returns the newest stored CRL.
//
// # Errors
//
// [store.ErrNotFound] before the first CRL; the store's errors ([store.ErrUnavailable]...).
func (p *CRLPublisher) Latest(ctx context.Context) (*store.CRL, error) {
	var c *store.CRL
	err := p.Store.View(ctx, func(tx store.Tx) error {
		var err error
		c, err = tx.LatestCRL()
		return err
	})
	return c, err
}

// Publish builds, signs and stores a CRL now, and returns it.
//
// # Errors
//
// The store's errors ([store.ErrUnavailable] for a storage fault); [ca.ErrLint] or a
// *[ca.LintError] when the CRL breaks the profile (nothing was signed); [ca.ErrSelfCheck],
// or the token's error, when signing failed. [store.ErrConflict] when other signers stored
// the CRL number it built three times in a row. Nothing is stored on error.
func (p *CRLPublisher) Publish(ctx context.Context) (*store.CRL, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	for range crlConflictRetries {
		var c *store.CRL
		if c, err = p.publishOnce(ctx); err == nil {
			p.report(c)
			if p.OnPublish != nil {
				p.OnPublish(*c)
			}
			return c, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			break
		}
	}
	if p.Metrics != nil {
		p.Metrics.CRLFailed()
	}
	return nil, err
}

func (p *CRLPublisher) report(c *store.CRL) {
	if p.Metrics != nil {
		p.Metrics.CRLCurrent(c.Number, c.ThisUpdate, c.NextUpdate)
	}
}

// publishOnce reads the newest CRL number and the revoked certificates in one snapshot,
// signs the next CRL outside any transaction and stores it.
func (p *CRLPublisher) publishOnce(ctx context.Context) (*store.CRL, error) {
	clock := time.Now()
	var (
		number   int64
		lastThis time.Time
		entries  []ca.CRLEntry
		mapped   int
		shared   time.Time // the database's clock, read as the snapshot begins
		read     time.Time // monotonic: when it was read
	)
	err := p.Store.View(ctx, func(tx store.Tx) error {
		number, entries, mapped = 0, entries[:0], 0
		var err error
		if shared, err = tx.LeaseNow(p.now()); err != nil {
			return err
		}
		read = time.Now()
		latest, err := tx.LatestCRL()
		switch {
		case err == nil:
			number, lastThis = latest.Number, latest.ThisUpdate
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		return tx.RevokedCertificates(shared, func(st store.CertStatus) error {
			serial, ok := new(big.Int).SetString(st.Serial, 16)
			if !ok {
				return fmt.Errorf("escrow: CRL: stored serial %q is not hexadecimal: %w", st.Serial, ErrIntegrity)
			}
			reason := st.Reason
			if !ca.SMIMECRLReason(reason) {
				// A certificate migrated from another CA with a reason the S/MIME BR leave
				// out (certificateHold, cACompromise...): it is revoked, for a reason this
				// CA does not state.
				reason, mapped = ca.CRLReasonUnspecified, mapped+1
			}
			entries = append(entries, ca.CRLEntry{Serial: serial, RevokedAt: st.RevokedAt, Reason: reason})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("escrow: CRL: read the store: %w", err)
	}
	// thisUpdate is the time the snapshot began, read from the database's clock
	// ([store.Leases.LeaseNow]: the server's with PostgreSQL, this node's with SQLite) by its
	// first statement, so that every revocation it holds is dated before it; a revocation
	// dated later (another host's clock ahead) is listed at thisUpdate rather than refused by
	// the lint. The certificates it lists are those not expired at that time, and the lint's
	// "now" runs on from it. So with several nodes, the CRL of a node whose clock is ahead is
	// not dated in the future (OpenSSL refuses it until then, and the CRLs after it, a second
	// later each, would stay there) nor leaves out a revoked certificate that has not expired,
	// and a node whose clock is behind is not refused by the lint for the thisUpdate a second
	// after the last CRL's.
	this := shared.Truncate(time.Second)
	issuer := p.Issuer.WithClock(func() time.Time { return shared.Add(time.Since(read)) })
	if !this.After(lastThis) {
		// Two CRLs within one second: the newer one gets the next second, so that
		// Last-Modified (thisUpdate, in seconds) tells them apart for If-Modified-Since.
		this = lastThis.Truncate(time.Second).Add(time.Second)
	}
	late := 0
	for n := range entries {
		if entries[n].RevokedAt.After(this) {
			entries[n].RevokedAt, late = this, late+1
		}
	}
	if mapped > 0 || late > 0 {
		p.log().Warn("CRL: entries adjusted", "reason_outside_smime_br", mapped, "revoked_after_this_update", late)
	}
	next := this.Add(orDefault(p.Validity, DefaultCRLValidity))
	signed, err := issuer.IssueCRL(ca.CRLRequest{Number: big.NewInt(number + 1), ThisUpdate: this, NextUpdate: next, Entries: entries})
	if err != nil {
		return nil, fmt.Errorf("escrow: CRL %d: %w", number+1, err)
	}
	c := store.CRL{Number: number + 1, ThisUpdate: signed.ThisUpdate, NextUpdate: signed.NextUpdate, DER: signed.DER}
	if err := p.Store.Update(ctx, func(tx store.Tx) error { return tx.InsertCRL(c) }); err != nil {
		return nil, fmt.Errorf("escrow: CRL %d: store: %w", c.Number, err)
	}
	p.log().Info("CRL published", "number", c.Number, "entries", len(entries),
		"next_update", c.NextUpdate.Format(time.RFC3339), "took", time.Since(clock).Round(time.Millisecond))
	return &c, nil
}
