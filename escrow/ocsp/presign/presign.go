// Package presign is the OCSP pre-signing use case: it keeps a signed, current OCSP response
// in the store for every issued or revoked certificate that has not expired, so that the
// responder (cmd/keyarc/internal/api's OCSP handler) serves stored bytes and never signs per
// request.
//
// # What it must not import
//
// escrow/ocsp, escrow/store and the standard library: no hsm (the responder key is a
// crypto.Signer inside an [ocsp.Responder]), no HTTP, no metrics library ([Metrics] is an
// interface).
//
// # Concurrency
//
// See [Signer].
package presign

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/escrow/store"
)

// Defaults and bounds of [Signer]. The S/MIME BR (§4.9.10) ask for responses valid between
// 8 hours and 10 days, refreshed no later than 4 days after thisUpdate: keyarc signs them for 7
// days and refreshes them after 3, so a response is at most 3 days (plus one pass) old and a
// client that cached one still holds a valid answer for 4 days if the appliance stops signing.
const (
	DefaultValidity   = 7 * 24 * time.Hour
	DefaultRefreshAge = 3 * 24 * time.Hour
	DefaultInterval   = 30 * time.Second
	DefaultBatch      = 512
	// DefaultQuiet and DefaultMaxDefer: the first responses of new certificates, and the
	// passes over everything due, wait until no certificate has been issued for Quiet, and
	// at most MaxDefer (see [Signer.Issued]).
	DefaultQuiet    = 2 * time.Second
	DefaultMaxDefer = 10 * time.Minute
	MinValidity     = 8 * time.Hour
	MaxValidity     = 10 * 24 * time.Hour
	MaxRefreshAge   = 4 * 24 * time.Hour
	// backdate: thisUpdate is a minute before the signing time, for clients whose clock
	// is slightly behind.
	backdate = time.Minute
	// chunk is how many statuses or responses SignDue passes between its goroutines at once.
	chunk = 16
	// maxPriority bounds the serials Revoked and Issued each remember; past it the next
	// pass over everything due finds the rest (the store lists a certificate without a
	// response, or with one of another status, as due at once).
	maxPriority = 100_000
	// indexBatch is how many new certificates a transaction of SignDue's indexing takes.
	indexBatch = 4096
)

// Metrics receives the pre-signer's counts; a nil one is allowed.
type Metrics interface {
	// OCSPSigned counts n responses signed and stored.
	OCSPSigned(n int)
	// OCSPPass reports the end of a pass: err nil when everything due was signed.
	OCSPPass(at time.Time, err error)
}

// Signer pre-signs the OCSP responses of every issued or revoked certificate that has not
// expired, and stores them ([store.OCSPResponses]) for the responder to serve as they are: the
// responder does not sign per request, so OCSP answers while the token is away. It signs
// responses that are missing, older than RefreshAge, or whose status a revocation changed; a
// revocation ([Signer.Revoked], hooked to escrow.Service.Revoked) gets its responses signed at
// once, before the rest.
//
// Issuance comes first: while certificates are being issued ([Signer.Issued]), the first
// responses of the new certificates and the passes over everything due wait for a pause in
// issuance (Quiet), for at most MaxDefer, so that a storm of enrollments does not pay for a
// second token signature and a second write per certificate while it lasts. A relying party
// that asks about such a certificate meanwhile has its response signed on demand (the
// responder's SignMissing). Revocations never wait.
//
// A fault of the token or the storage ends the pass with nothing lost: what was not stored is
// still due in the store, and [Signer.Run] tries again after a backoff.
//
// # Concurrency
//
// Revoked may be called from any goroutine at any time and never blocks. Run, SignDue and
// SignSerials may run concurrently with each other (the store keeps the newest response of a
// serial), but one Run per Signer.
type Signer struct {
	Store store.Store
	// Responder returns the responder to sign with at now. The appliance's renews the
	// responder certificate there when it comes close to expiry; no response is signed to
	// outlive the responder certificate.
	Responder func(now time.Time) (*ocsp.Responder, error)
	// Validity (default [DefaultValidity]) and RefreshAge (default
	// [DefaultRefreshAge]) of responses; Interval (default [DefaultInterval]) between
	// passes; Batch (default [DefaultBatch]) responses per page and per transaction;
	// Workers (default 2) concurrent signatures.
	Validity, RefreshAge, Interval time.Duration
	Batch, Workers                 int
	Now                            func() time.Time
	Logger                         *slog.Logger
	Metrics                        Metrics
	// Leads, when set, reports whether this node runs the passes over everything due: with
	// several nodes on one database only the leader does (escrow.Leader.Leads), and the
	// others sign only the serials given to [Signer.Revoked] on them, at once. A revocation
	// on a node that dies before signing stays due in the store, for the leader's next pass.
	// Nil means always (one node).
	Leads func() bool
	// Quiet (default [DefaultQuiet]) is the pause in issuance that the deferred work waits
	// for, and MaxDefer (default [DefaultMaxDefer]) the longest it waits (plus the pass
	// itself): see [Signer.Issued].
	Quiet, MaxDefer time.Duration

	once    sync.Once
	trigger chan struct{}
	mu      sync.Mutex
	// priority holds the serials given to Revoked, each with the value of gen when it was
	// given (see forget).
	priority map[string]uint64
	gen      uint64
	// fresh holds the serials given to Issued that no pass has taken yet. deferSince is
	// when the first call of Issued since the last deferred work ran came (zero: nothing
	// is deferred), lastIssued when the latest did.
	fresh                  map[string]struct{}
	deferSince, lastIssued time.Time
}

// ErrConfig means an Signer field is out of bounds; nothing was signed.
var ErrConfig = errors.New("presign: configuration")

func (s *Signer) init() {
	s.once.Do(func() {
		s.trigger = make(chan struct{}, 1)
		s.priority = map[string]uint64{}
		s.fresh = map[string]struct{}{}
	})
}

func (s *Signer) settings() (validity, refresh time.Duration, batch, workers int, err error) {
	validity, refresh, batch, workers = s.Validity, s.RefreshAge, s.Batch, s.Workers
	if validity == 0 {
		validity = DefaultValidity
	}
	if refresh == 0 {
		refresh = DefaultRefreshAge
	}
	if batch <= 0 {
		batch = DefaultBatch
	}
	if workers <= 0 {
		workers = 2
	}
	switch {
	case validity < MinValidity || validity > MaxValidity:
		err = fmt.Errorf("%w: validity %v outside 8h..240h (S/MIME BR §4.9.10)", ErrConfig, validity)
	case refresh <= 0 || refresh > MaxRefreshAge || refresh >= validity:
		err = fmt.Errorf("%w: refresh age %v must be positive, at most 96h and below the validity", ErrConfig, refresh)
	case s.Store == nil || s.Responder == nil:
		err = fmt.Errorf("%w: no store or responder", ErrConfig)
	}
	return
}

func (s *Signer) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Signer) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Revoked asks for the responses of serials to be signed again at once. It never blocks and
// may be used as escrow.Service.Revoked; for a certificate just issued, it signs its first
// response at once.
func (s *Signer) Revoked(serials []string) {
	s.init()
	s.mu.Lock()
	s.gen++
	for _, sn := range serials {
		if len(s.priority) >= maxPriority {
			break
		}
		if c, err := store.NormalizeSerial(sn); err == nil {
			s.priority[c] = s.gen
		}
	}
	s.mu.Unlock()
	s.kick()
}

// kick starts a pass, or lets the running one be followed by another.
func (s *Signer) kick() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Issued tells the Signer that serials were just issued, and asks for their first responses.
// It never blocks. The first responses of new certificates, and the passes over everything
// due, are deferred work: it runs once no certificate has been issued for Quiet, or MaxDefer
// after the first call of Issued that deferred it, whichever comes first, and then signs
// everything waiting in few passes (many responses to a read and to a transaction). A storm
// of enrollments thus spends the token and the storage on issuing, and its certificates'
// responses are signed when it pauses. A request for the status of such a certificate in
// the meantime finds no response stored; the responder then has it signed at once
// ([Signer.SignSerials]). A revocation is never deferred.
func (s *Signer) Issued(serials []string) {
	s.init()
	now := s.now()
	s.mu.Lock()
	first := s.deferSince.IsZero()
	if first {
		s.deferSince = now
	}
	s.lastIssued = now
	for _, sn := range serials {
		if len(s.fresh) >= maxPriority {
			break
		}
		if c, err := store.NormalizeSerial(sn); err == nil {
			s.fresh[c] = struct{}{}
		}
	}
	s.mu.Unlock()
	if first {
		// Run learns when the deferred work is due.
		s.kick()
	}
}

// settled reports whether the deferred work may run at now, and when it may: Quiet after the
// last call of Issued, at most MaxDefer after the first one since the deferred work last ran;
// the zero time when no work is deferred.
func (s *Signer) settled(now time.Time) (bool, time.Time) {
	quiet, maxDefer := s.Quiet, s.MaxDefer
	if quiet <= 0 {
		quiet = DefaultQuiet
	}
	if maxDefer <= 0 {
		maxDefer = DefaultMaxDefer
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deferSince.IsZero() {
		return true, time.Time{}
	}
	at := s.lastIssued.Add(quiet)
	if last := s.deferSince.Add(maxDefer); last.Before(at) {
		at = last
	}
	return !now.Before(at), at
}

// Run signs what is due at once and then every Interval, the serials given to
// [Signer.Revoked] at once, and those given to [Signer.Issued] when issuance pauses, until
// ctx ends; while Leads says this node does not lead, only the serials given to Revoked and
// Issued. The passes over everything due, and those of the serials given to Issued, wait
// while certificates are being issued (see Issued). A failed pass is retried after a
// backoff from one second doubling to Interval; the serials of a revocation are kept until
// they are signed.
//
// A call of Revoked starts a pass over its serials only: a pass over everything due at each
// one, under a storm of enrollments each of which calls Revoked for its new certificate,
// read the due list once per certificate, and signed the new certificates it found there a
// second time in the pass of their own Revoked.
func (s *Signer) Run(ctx context.Context) {
	s.init()
	_, _, _, _, err := s.settings()
	if err != nil {
		s.log().Error("ocsp: not signing", "err", err)
		return
	}
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	backoff := time.Second
	var nextFull time.Time // when the next pass over everything due is due
	for {
		wait := interval
		leads := s.Leads == nil || s.Leads()
		start := time.Now()
		open, _ := s.settled(s.now())
		full := leads && open && !start.Before(nextFull)
		if err := s.pass(ctx, open, full, leads); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log().Warn("ocsp: pre-signing postponed", "err", err, "retry_in", backoff)
			wait = backoff
			backoff = min(2*backoff, interval)
		} else {
			backoff = time.Second
			if full {
				nextFull = start.Add(interval)
			}
			if leads {
				wait = time.Until(nextFull)
			}
			now := s.now()
			if _, at := s.settled(now); !at.IsZero() {
				// The deferred work (the pass over everything due among it) runs at the
				// earliest when it may: wake then (at once, if it came during the pass).
				wait = at.Sub(now)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.trigger:
			t.Stop()
		case <-t.C:
		}
	}
}

// pass signs the serials given to Revoked; then, if open (the deferred work may run), those
// given to Issued, and, if all, everything due (which includes them). A pass of the serials
// alone is reported only on a node that does not lead (on the leader the passes over
// everything due are reported), or when it fails.
func (s *Signer) pass(ctx context.Context, open, all, leads bool) error {
	s.mu.Lock()
	var fresh []string
	if open {
		// The deferred work runs now: a call of Issued from here on defers the next.
		s.deferSince = time.Time{}
		if !all {
			for sn := range s.fresh {
				fresh = append(fresh, sn)
			}
		}
		clear(s.fresh) // a pass over everything due signs them: the store lists them due
	}
	var prio []string
	gens := make(map[string]uint64, len(s.priority))
	for sn, g := range s.priority {
		prio = append(prio, sn)
		gens[sn] = g
	}
	s.mu.Unlock()
	if len(prio) > 0 {
		if _, err := s.SignSerials(ctx, prio); err != nil {
			s.report(err)
			return err
		}
		s.mu.Lock()
		for sn, g := range gens {
			// A serial given to Revoked again meanwhile is signed again.
			if s.priority[sn] == g {
				delete(s.priority, sn)
			}
		}
		s.mu.Unlock()
	}
	if len(fresh) > 0 {
		if _, err := s.SignSerials(ctx, fresh); err != nil {
			s.requeue(fresh)
			s.report(err)
			return err
		}
	}
	if !all {
		if !leads {
			s.report(nil)
		}
		return nil
	}
	_, err := s.SignDue(ctx)
	s.report(err)
	return err
}

// requeue gives serials back to the deferred work, after a pass failed to sign them.
func (s *Signer) requeue(serials []string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deferSince.IsZero() {
		s.deferSince, s.lastIssued = now, now
	}
	for _, sn := range serials {
		if len(s.fresh) >= maxPriority {
			break
		}
		s.fresh[sn] = struct{}{}
	}
}

func (s *Signer) report(err error) {
	if s.Metrics != nil {
		s.Metrics.OCSPPass(s.now(), err)
	}
}

// SignSerials signs and stores the responses of serials now, with their current status;
// serials that are unknown, never issued, or expired and not revoked are skipped. An expired
// certificate that is revoked is signed: a revocation by serial is taken after expiry too
// (a compromised S/MIME key matters for the mail it signed while valid), and no CRL lists
// an expired certificate, so its revoked response is where relying parties learn of it. It
// returns how many it stored.
//
// # Errors
//
// [ErrConfig]; the storage's ([store.ErrUnavailable], [store.ErrClosed]); the responder's
// or the token's, wrapped. Responses stored before the error stay stored.
func (s *Signer) SignSerials(ctx context.Context, serials []string) (int, error) {
	_, _, batch, _, err := s.settings()
	if err != nil {
		return 0, err
	}
	now := s.now()
	total := 0
	for len(serials) > 0 {
		page := serials[:min(batch, len(serials))]
		serials = serials[len(page):]
		var sts []store.CertStatus
		err := s.Store.View(ctx, func(tx store.Tx) error {
			all, err := tx.CertificateStatuses(page) // issued or revoked only, in few statements
			sts = sts[:0]
			for _, st := range all {
				if st.NotAfter.IsZero() || st.NotAfter.After(now) || st.Revoked {
					sts = append(sts, st)
				}
			}
			return err
		})
		if err != nil {
			return total, fmt.Errorf("presign: read certificates: %w", err)
		}
		rs, err := s.sign(ctx, now, sts)
		if err != nil {
			return total, err
		}
		if err := s.store(ctx, rs); err != nil {
			return total, err
		}
		total += len(rs)
	}
	return total, nil
}

// SignDue signs and stores the responses the store lists as due now
// ([store.OCSPResponses.OCSPDue]), after indexing the certificates stored since the last pass.
// It streams: one goroutine reads the due certificates a
// page of Batch ahead of the Workers that sign them, and the caller's goroutine stores the
// signed responses Batch to a transaction while the signing goes on, so that neither the
// token nor the storage waits for the other. It returns how many it stored.
//
// # Errors
//
// As [Signer.SignSerials]; the pass stops at the first error (what was signed by then is
// still stored, unless storing failed), and what it had not stored stays due.
func (s *Signer) SignDue(ctx context.Context) (int, error) {
	validity, refresh, batch, workers, err := s.settings()
	if err != nil {
		return 0, err
	}
	// The certificates stored since the last pass go into the store's indexes first, so that
	// the pass reads them there. That needs no token: it keeps up while the responder cannot
	// sign.
	if err := store.IndexAllNew(ctx, s.Store, indexBatch); err != nil {
		return 0, fmt.Errorf("presign: index new certificates: %w", err)
	}
	now := s.now()
	r, this, next, err := s.window(now, validity)
	if err != nil {
		return 0, err
	}
	s.init()
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	run, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu    sync.Mutex
		first error
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		stop()
	}
	// Work goes through the channels in chunks: a channel operation per response cost the
	// scheduler's wake-ups a good part of what storing a response costs.
	todo := make(chan []store.CertStatus, max(1, batch/chunk))
	go func() {
		defer close(todo)
		after := ""
		for {
			var due []store.CertStatus
			err := s.Store.View(run, func(tx store.Tx) error {
				var err error
				due, err = tx.OCSPDue(now, now.Add(-refresh), after, batch)
				return err
			})
			if err != nil {
				fail(fmt.Errorf("presign: list due responses: %w", err))
				return
			}
			for lo := 0; lo < len(due); lo += chunk {
				select {
				case todo <- due[lo:min(lo+chunk, len(due))]:
				case <-run.Done():
					return
				}
			}
			if len(due) < batch {
				return
			}
			after = due[len(due)-1].Serial
		}
	}()
	// The signers may run four batches ahead of the writer, so that a transaction slower than
	// the others (a WAL checkpoint, the inserts and page splits of a first pass) does not
	// leave the token idle: with one batch of room, the first pass of 100,000 certificates ran
	// at 73-77% of the token's raw rate, with four at 80-84% (BenchmarkPresignSoftHSM).
	signed := make(chan []store.OCSPResponse, max(1, 4*batch/chunk))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sts := range todo {
				out := make([]store.OCSPResponse, 0, len(sts))
				for _, st := range sts {
					if run.Err() != nil {
						break // the pass is over: drain
					}
					resp, err := signOne(r, st, this, next)
					if err != nil {
						fail(err)
						break
					}
					out = append(out, resp)
				}
				if len(out) > 0 {
					signed <- out
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(signed)
	}()
	n := 0
	storeFailed := false
	rs := make([]store.OCSPResponse, 0, batch+chunk)
	// flush stores the first k of rs, Batch or fewer, and keeps the rest.
	flush := func(k int) {
		if k > 0 && !storeFailed {
			// With the caller's ctx: after a token fault, what was signed is still stored.
			if err := s.store(ctx, rs[:k]); err != nil {
				storeFailed = true
				fail(err)
			} else {
				n += k
				s.forget(rs[:k], gen)
			}
		}
		rs = append(rs[:0], rs[k:]...)
	}
	for out := range signed {
		rs = append(rs, out...)
		if len(rs) >= batch {
			flush(batch)
		}
	}
	flush(len(rs))
	mu.Lock()
	defer mu.Unlock()
	if first == nil {
		// The caller's cancellation may have left certificates unsigned: say so.
		first = ctx.Err()
	}
	return n, first
}

// forget drops from the priority serials those of rs that were given to Revoked before the
// pass that signed rs began (gen): the pass read their status after the change Revoked was
// called for, so their stored response carries it, and signing them again would only repeat
// it. A serial given again since keeps its place.
func (s *Signer) forget(rs []store.OCSPResponse, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.priority) == 0 {
		return
	}
	for _, r := range rs {
		if g, ok := s.priority[r.Serial]; ok && g <= gen {
			delete(s.priority, r.Serial)
		}
	}
}

// window returns the responder to sign with at now and the thisUpdate and nextUpdate of the
// responses it signs: thisUpdate a minute before now, nextUpdate validity later or at the
// responder certificate's expiry, whichever comes first.
func (s *Signer) window(now time.Time, validity time.Duration) (r *ocsp.Responder, this, next time.Time, err error) {
	r, err = s.Responder(now)
	if err != nil {
		return nil, this, next, fmt.Errorf("presign: responder: %w", err)
	}
	this = now.Add(-backdate).UTC().Truncate(time.Second)
	next = this.Add(validity)
	if na := r.Certificate().NotAfter; next.After(na) {
		next = na.UTC().Truncate(time.Second)
	}
	if next.Sub(this) < MinValidity {
		return nil, this, next, fmt.Errorf("presign: the responder certificate expires at %s, too soon for a response valid 8 hours: renew it", r.Certificate().NotAfter.UTC().Format(time.RFC3339))
	}
	return r, this, next, nil
}

// signOne signs the response of st.
func signOne(r *ocsp.Responder, st store.CertStatus, this, next time.Time) (store.OCSPResponse, error) {
	serial, ok := new(big.Int).SetString(st.Serial, 16)
	if !ok {
		return store.OCSPResponse{}, fmt.Errorf("presign: stored serial %q is not hexadecimal", st.Serial)
	}
	if rev := st.RevokedAt.UTC().Truncate(time.Second); st.Revoked && rev.After(this) {
		// thisUpdate is when the status was known to be right (RFC 6960 2.4): never before
		// the revocation a response reports, which the minute of backdating could put it.
		this = rev
	}
	der, err := r.Sign(ocsp.Status{Serial: serial, Revoked: st.Revoked, RevokedAt: st.RevokedAt,
		Reason: st.Reason, ThisUpdate: this, NextUpdate: next})
	if err != nil {
		return store.OCSPResponse{}, fmt.Errorf("presign: serial %s: %w", st.Serial, err)
	}
	reason := 0
	if st.Revoked {
		reason = st.Reason
	}
	return store.OCSPResponse{Serial: st.Serial, DER: der, ThisUpdate: this, NextUpdate: next,
		Revoked: st.Revoked, Reason: reason}, nil
}

// sign signs the responses of sts with Workers concurrent signatures, each taking the next
// status left.
func (s *Signer) sign(ctx context.Context, now time.Time, sts []store.CertStatus) ([]store.OCSPResponse, error) {
	validity, _, _, workers, err := s.settings()
	if err != nil {
		return nil, err
	}
	r, this, next, err := s.window(now, validity)
	if err != nil {
		return nil, err
	}
	out := make([]store.OCSPResponse, len(sts))
	errs := make([]error, workers)
	var nextIndex atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(nextIndex.Add(1) - 1)
				if i >= len(sts) {
					return
				}
				if ctx.Err() != nil {
					errs[w] = ctx.Err()
					return
				}
				if out[i], errs[w] = signOne(r, sts[i], this, next); errs[w] != nil {
					nextIndex.Store(int64(len(sts)))
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// store writes rs in one transaction; a refusal of the batch for a data reason (a serial
// gone, a field the store rejects) is retried one by one, so that one bad row does not hold
// back the others.
func (s *Signer) store(ctx context.Context, rs []store.OCSPResponse) error {
	if len(rs) == 0 {
		return nil
	}
	err := s.Store.Update(ctx, func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) })
	if err == nil {
		if s.Metrics != nil {
			s.Metrics.OCSPSigned(len(rs))
		}
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("presign: store responses: %w", err)
	}
	n := 0
	for i := range rs {
		err := s.Store.Update(ctx, func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs[i : i+1]) })
		switch {
		case err == nil:
			n++
		case errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) || errors.Is(err, store.ErrConflict):
			s.log().Warn("ocsp: response refused by the store", "serial", rs[i].Serial, "err", err)
		default:
			return fmt.Errorf("presign: store responses: %w", err)
		}
	}
	if s.Metrics != nil {
		s.Metrics.OCSPSigned(n)
	}
	return nil
}
