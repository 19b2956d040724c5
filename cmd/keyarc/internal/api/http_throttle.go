package api

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow/audit"
)

// Failed logins (a refused enrollment code or credential) are counted in fixed windows, per
// source address (an IPv6 address by its /64) and per claimed mailbox. The two limits do
// different jobs:
//
//   - A source that failed its limit within the window is refused with 429 and Retry-After
//     until the window ends, before its credential is checked: that source is the one
//     guessing. A request that authenticates with a valid client certificate (issued by this
//     CA, known, unexpired, not revoked) is never refused by this limit: operators and KRAs
//     behind the same address (a NAT, the appliance host itself) are not locked out by
//     someone else's wrong codes.
//   - A mailbox that failed its limit within the window does not stop its owner: the code is
//     checked first, and a valid code always works. Only a further failed attempt is answered
//     429 (with Retry-After) instead of 401. Enrollment codes carry 120 random bits, so
//     guessing is not what this limit stops; it bounds the work and the log volume of a storm
//     spread over many sources, and the 429s and the audit summaries signal the attack. A
//     limit that refused the right code would let anyone lock a mailbox out with a few wrong
//     codes a minute.
//
// Audit: the first failure of a source in a window is recorded at once, as before; every
// further failure or throttled request of that source in the window is counted, and one
// summary entry with the count is written when the window ends (or at shutdown). The trail
// grows by at most two entries per source and window, however hard a source pushes. When more
// sources than maxThrottleKeys fail in one window, the surplus shares one overflow bucket.

const maxThrottleKeys = 10000

// overflowKey is the shared bucket of sources or mailboxes beyond maxThrottleKeys.
const overflowKey = "(many)"

// loginWindow counts the failures of one source or mailbox in the current window.
type loginWindow struct {
	start    time.Time
	failures int
	// For sources only: what the audit trail has not seen yet.
	audited   bool // the window's first failure has its own entry
	unaudited int  // failures and throttled requests since, for the summary
	last      string
}

// loginThrottle is safe for concurrent use.
type loginThrottle struct {
	window               time.Duration
	perSource, perMailbx int
	now                  func() time.Time

	// outcomes counts failed logins ("refused") and throttled requests ("throttled").
	outcomes *prometheus.CounterVec

	// shared, with several nodes on one database, holds every node's failures (see
	// sharedLogins); nil with one node.
	shared *sharedLogins

	mu        sync.Mutex
	sources   map[string]*loginWindow
	mailboxes map[string]*loginWindow
	pending   []loginSummary // summaries of windows ended by a new one, for expire
}

// newLoginThrottle makes a throttle with the limits of cfg and registers its counter,
// keyarc_login_failures_total{outcome}, with reg (when not nil).
func newLoginThrottle(cfg config.HTTPConfig, reg prometheus.Registerer) *loginThrottle {
	l := &loginThrottle{
		window: cfg.LoginFailureWindow.Duration, perSource: cfg.LoginFailuresPerSource, perMailbx: cfg.LoginFailuresPerMailbox,
		now: time.Now, sources: map[string]*loginWindow{}, mailboxes: map[string]*loginWindow{},
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyarc_login_failures_total",
			Help: "Failed logins (a refused enrollment code or credential, outcome refused) and requests refused with 429 after too many (outcome throttled).",
		}, []string{"outcome"}),
	}
	l.outcomes.WithLabelValues("refused")
	l.outcomes.WithLabelValues("throttled")
	if reg != nil {
		reg.MustRegister(l.outcomes)
	}
	return l
}

// sourceKey is the throttling key of a remote address: the IP, or an IPv6 address's /64.
func sourceKey(remote string) string {
	ip := net.ParseIP(remote)
	if ip == nil {
		return remote
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// entry returns the current window of key in m, starting a new one when there is none or the
// last has ended (its summary is kept for the next expire). The caller holds mu.
func (l *loginThrottle) entry(m map[string]*loginWindow, key string, now time.Time) *loginWindow {
	w, ok := m[key]
	if !ok && len(m) >= maxThrottleKeys {
		key = overflowKey
		w, ok = m[key]
	}
	if ok && now.Sub(w.start) < l.window {
		return w
	}
	if ok && w.unaudited > 0 {
		l.pending = append(l.pending, loginSummary{source: key, mailbox: w.last, count: w.unaudited, from: w.start, to: now})
	}
	w = &loginWindow{start: now}
	m[key] = w
	return w
}

// limited returns how long source (and mailbox, when not empty) must wait before trying
// again, zero if it need not. It counts nothing.
func (l *loginThrottle) limited(source, mailbox string) time.Duration {
	if l == nil {
		return 0
	}
	now := l.now()
	shared := l.sharedWait(source, mailbox, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(shared, l.limitedLocked(source, mailbox, now))
}

func (l *loginThrottle) limitedLocked(source, mailbox string, now time.Time) time.Duration {
	var until time.Time
	if source != "" {
		if w, ok := l.sources[source]; ok && w.failures >= l.perSource && now.Sub(w.start) < l.window {
			until = w.start.Add(l.window)
		}
	}
	if mailbox != "" {
		if w, ok := l.mailboxes[mailbox]; ok && w.failures >= l.perMailbx && now.Sub(w.start) < l.window {
			if end := w.start.Add(l.window); end.After(until) {
				until = end
			}
		}
	}
	if until.IsZero() {
		return 0
	}
	return until.Sub(now)
}

// wait is limited, and counts a throttled request for the source's summary and the metric
// when the answer is not zero.
func (l *loginThrottle) wait(source, mailbox string) time.Duration {
	if l == nil {
		return 0
	}
	now := l.now()
	shared := l.sharedWait(source, mailbox, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	d := max(shared, l.limitedLocked(source, mailbox, now))
	if d == 0 {
		return 0
	}
	w := l.entry(l.sources, source, now)
	w.unaudited++
	w.last = mailbox
	l.outcomes.WithLabelValues("throttled").Inc()
	return d
}

// mailboxLimited returns how long mailbox must wait when it has failed its limit, zero if it
// has not; a non-zero answer counts one throttled request in the metric only (the failed
// attempt it answers is counted by failed, for the source's summary).
func (l *loginThrottle) mailboxLimited(mailbox string) time.Duration {
	if l == nil || mailbox == "" {
		return 0
	}
	now := l.now()
	shared := l.sharedWait("", mailbox, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	d := max(shared, l.limitedLocked("", mailbox, now))
	if d > 0 {
		l.outcomes.WithLabelValues("throttled").Inc()
	}
	return d
}

// failed counts a failed login and reports whether it is the first of its source's window
// (to be audited on its own).
func (l *loginThrottle) failed(source, mailbox string) (first bool) {
	if l == nil {
		return true
	}
	now := l.now()
	if l.shared != nil {
		// One write per failure, outside the lock: the other nodes see it at their next read.
		l.shared.add(source, mailbox, now, l.window)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if mailbox != "" {
		l.entry(l.mailboxes, mailbox, now).failures++
	}
	l.outcomes.WithLabelValues("refused").Inc()
	w := l.entry(l.sources, source, now)
	w.failures++
	w.last = mailbox
	if !w.audited {
		w.audited = true
		return true
	}
	w.unaudited++
	return false
}

// loginSummary is what one source did in one window, beyond its first audited failure.
type loginSummary struct {
	source, mailbox string
	count           int
	from, to        time.Time
}

// expire ends the windows that are over (all of them when all is set) and returns the
// summaries they owe the audit trail.
func (l *loginThrottle) expire(all bool) []loginSummary {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	out := l.pending
	l.pending = nil
	for k, w := range l.sources {
		if !all && now.Sub(w.start) < l.window {
			continue
		}
		if w.unaudited > 0 {
			out = append(out, loginSummary{source: k, mailbox: w.last, count: w.unaudited, from: w.start, to: now})
		}
		delete(l.sources, k)
	}
	for k, w := range l.mailboxes {
		if all || now.Sub(w.start) >= l.window {
			delete(l.mailboxes, k)
		}
	}
	return out
}

// loginNoteKey carries a *loginNote in a request's context.
type loginNoteKey struct{}

// loginNote lets a handler say that its 401 or 403 is not a failed login.
type loginNote struct{ skip bool }

// notLogin marks the request's refusal as not a failed login (a cross-origin refusal, say).
func notLogin(ctx context.Context) {
	if n, ok := ctx.Value(loginNoteKey{}).(*loginNote); ok {
		n.skip = true
	}
}

// throttled answers 429 for a source or mailbox that failed too often.
func (a *Server) throttled(w http.ResponseWriter, r *http.Request, wait time.Duration) {
	a.tooMany(w, r, wait, "too many failed logins from this address or for this mailbox")
}

// tooMany answers 429 with Retry-After (wait, rounded up to whole seconds) and a message that
// says how long.
func (a *Server) tooMany(w http.ResponseWriter, r *http.Request, wait time.Duration, why string) {
	secs := max(int(math.Ceil(wait.Seconds())), 1)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Del("WWW-Authenticate")
	msg := fmt.Sprintf("%s; retry after %d seconds", why, secs)
	if strings.HasPrefix(r.URL.Path, "/api/") {
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": msg})
		return
	}
	http.Error(w, msg, http.StatusTooManyRequests)
}

// loginWriter remembers the handler's status and, for a request with HTTP Basic, turns the
// handler's 401 into a 429 when the claimed mailbox has failed its limit (mailboxWait says
// how long): the code was checked and refused, and the attempt is answered as throttled.
// The handler's body is then dropped.
type loginWriter struct {
	http.ResponseWriter
	code        int // the handler's status
	throttled   bool
	mailboxWait func() time.Duration
	answer      func(http.ResponseWriter, time.Duration)
}

func (s *loginWriter) WriteHeader(code int) {
	s.code = code
	if code == http.StatusUnauthorized && s.mailboxWait != nil {
		if wait := s.mailboxWait(); wait > 0 {
			s.throttled = true
			s.answer(s.ResponseWriter, wait)
			return
		}
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *loginWriter) Write(b []byte) (int, error) {
	if s.throttled {
		return len(b), nil
	}
	return s.ResponseWriter.Write(b)
}

// flushLoginSummaries writes the summaries of ended windows (of all windows when all is set)
// to the audit trail.
func (a *Server) flushLoginSummaries(ctx context.Context, all bool) {
	for _, s := range a.logins.expire(all) {
		err := a.svc.RecordEvent(ctx, audit.KindLoginFailed, audit.Clip(s.mailbox), audit.Details{
			Remote: s.source, Count: s.count,
			Reason: fmt.Sprintf("%d further failed or throttled logins from this source between %s and %s (summary)",
				s.count, s.from.UTC().Format(time.RFC3339), s.to.UTC().Format(time.RFC3339)),
		})
		if err != nil {
			a.log.Error("audit entry not written", "kind", audit.KindLoginFailed, "err", err)
		}
	}
}

// watchLogins writes the login summaries as their windows end, and the rest when ctx ends.
func (a *Server) watchLogins(ctx context.Context) {
	tick := max(a.logins.window/4, time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var swept time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.flushLoginSummaries(ctx, false)
		}
		// The leader deletes the shared counts of ended windows, once a window.
		if sh := a.logins.shared; sh != nil && (a.svc.Leads == nil || a.svc.Leads()) {
			if now := a.logins.now(); now.Sub(swept) >= a.logins.window {
				sh.sweep(now, a.logins.window)
				swept = now
			}
		}
	}
}
