package api

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/keyarc/keyarc/escrow/store"
)

// Several nodes on one PostgreSQL database share their failed logins: each node counts its own
// in memory as one node does (loginThrottle), and also writes each failure to the store
// (store.LoginFailures), per source and per mailbox, in fixed windows of the throttle's length
// that start at the same instants on every node. A node reads which keys are over their limit
// in the current window at most once per sharedLoginsFresh, in one query for all keys, so a
// request costs no read of its own and a failure costs one write. A source refused on one node
// is then refused on all within about that time, and failures spread over the nodes reach the
// limit together. The rules stay those of loginThrottle: a valid client certificate is never
// refused by the source limit, and a valid code always works.
//
// The windows are on the database's clock (store.Leases.LeaseNow: the server's), not on the
// nodes': a node whose clock is minutes off would otherwise count its failures in windows the
// others never read, and its sweep of ended windows, as the leader, would delete the counts
// of the others' current ones. A node reads the database's clock with each read of the counts
// and keeps the difference to its own, so a failure's write and a check cost no more.

// sharedLoginsFresh is how long a node uses the keys over their limit it last read.
const sharedLoginsFresh = time.Second

// sharedLoginsTimeout bounds the store's read and write of shared failures; a store that does
// not answer leaves each node to its own counts.
const sharedLoginsTimeout = 2 * time.Second

// Key prefixes of the shared counts.
const (
	sharedSource  = "source:"
	sharedMailbox = "mailbox:"
)

// sharedKey is the store's key of a source or mailbox. A claimed mailbox comes from a Basic user
// name, which may hold a NUL byte or invalid UTF-8 that a database cannot store as text (the
// write would fail, and with it the source's count): such a value is stored quoted in ASCII.
func sharedKey(prefix, v string) string {
	if strings.IndexByte(v, 0) >= 0 || !utf8.ValidString(v) {
		return prefix + strconv.QuoteToASCII(v)
	}
	return prefix + v
}

// sharedLogins is a node's view of the failed logins of every node. Safe for concurrent use.
type sharedLogins struct {
	db    store.Store
	log   *slog.Logger
	fresh time.Duration
	// clock reads the clock of the shared windows in tx, given this node's reading local;
	// nil: the database's (store.Leases.LeaseNow). Tests of the counts set one that returns
	// local.
	clock func(tx store.Tx, local time.Time) (time.Time, error)

	mu      sync.Mutex
	over    map[string]time.Time // keys over their limit in the window read, and its end
	window  time.Time            // the window over was read for
	offset  time.Duration        // the shared windows' clock less this node's, as last read
	readAt  time.Time
	reading bool
	failing bool // the last read or write failed (logged once until one succeeds)
}

// windowStart is the start of the fixed window of length d that holds now: the same instant
// on every node, now being a reading of the shared clock.
func windowStart(now time.Time, d time.Duration) time.Time { return now.Truncate(d) }

// sharedNow reads the shared windows' clock in tx, given this node's reading local.
func (s *sharedLogins) sharedNow(tx store.Tx, local time.Time) (time.Time, error) {
	if s.clock != nil {
		return s.clock(tx, local)
	}
	return tx.LeaseNow(local)
}

// toShared converts now, a reading of this node's clock, to the shared windows' clock.
func (s *sharedLogins) toShared(now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return now.Add(s.offset)
}

// add writes one failure of source and mailbox (when not empty) to the store, at now (this
// node's clock), in windows of length d.
func (s *sharedLogins) add(source, mailbox string, now time.Time, d time.Duration) {
	window := windowStart(s.toShared(now), d)
	ctx, cancel := context.WithTimeout(context.Background(), sharedLoginsTimeout)
	defer cancel()
	err := s.db.Update(ctx, func(tx store.Tx) error {
		if err := tx.AddLoginFailure(sharedKey(sharedSource, source), window); err != nil {
			return err
		}
		if mailbox != "" {
			return tx.AddLoginFailure(sharedKey(sharedMailbox, mailbox), window)
		}
		return nil
	})
	s.note(err, "count a failed login for every node")
}

func (s *sharedLogins) note(err error, what string) {
	s.mu.Lock()
	was := s.failing
	s.failing = err != nil
	s.mu.Unlock()
	if err != nil && !was {
		s.log.Warn("shared login failures: cannot "+what+"; this node counts its own meanwhile", "err", err)
	}
}

// wait returns how long source (and mailbox, when not empty) must wait by the counts of every
// node, zero if they need not. It reads the store when its last read is older than fresh or
// of another window; while another caller reads, it answers from the last read.
func (l *loginThrottle) sharedWait(source, mailbox string, now time.Time) time.Duration {
	s := l.shared
	if s == nil {
		return 0
	}
	s.mu.Lock()
	window := windowStart(now.Add(s.offset), l.window)
	stale := !s.window.Equal(window) || now.Sub(s.readAt) >= s.fresh || now.Before(s.readAt)
	if stale && !s.reading {
		s.reading = true
		s.mu.Unlock()
		over, window, offset, err := s.read(now, l.perSource, l.perMailbx, l.window)
		s.note(err, "read the failed logins of every node")
		s.mu.Lock()
		s.reading = false
		if err == nil {
			s.over, s.window, s.offset = over, window, offset
		}
		s.readAt = now
	}
	shared := now.Add(s.offset)
	var until time.Time
	for _, k := range []string{sharedKey(sharedSource, source), sharedKey(sharedMailbox, mailbox)} {
		if end, ok := s.over[k]; ok && end.After(until) && !strings.HasSuffix(k, ":") {
			until = end
		}
	}
	s.mu.Unlock()
	if !until.After(shared) {
		return 0
	}
	return until.Sub(shared)
}

// read returns the keys over their limit in the current window of length d, with the
// window's end, the window, and the difference of the shared clock to this node's, whose
// reading is now.
func (s *sharedLogins) read(now time.Time, perSource, perMailbox int, d time.Duration) (over map[string]time.Time, window time.Time, offset time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), sharedLoginsTimeout)
	defer cancel()
	var counts map[string]int
	err = s.db.View(ctx, func(tx store.Tx) error {
		shared, err := s.sharedNow(tx, now)
		if err != nil {
			return err
		}
		window, offset = windowStart(shared, d), shared.Sub(now)
		counts, err = tx.LoginFailuresAtLeast(window, min(perSource, perMailbox))
		return err
	})
	if err != nil {
		return nil, window, offset, err
	}
	over = map[string]time.Time{}
	end := window.Add(d)
	for k, n := range counts {
		if strings.HasPrefix(k, sharedSource) && n >= perSource || strings.HasPrefix(k, sharedMailbox) && n >= perMailbox {
			over[k] = end
		}
	}
	return over, window, offset, nil
}

// sweep deletes the shared counts of the windows (of length d) before the previous one; now
// is this node's clock, the windows are the shared clock's, read in the same transaction.
func (s *sharedLogins) sweep(now time.Time, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), sharedLoginsTimeout)
	defer cancel()
	err := s.db.Update(ctx, func(tx store.Tx) error {
		shared, err := s.sharedNow(tx, now)
		if err != nil {
			return err
		}
		_, err = tx.DeleteLoginFailuresBefore(windowStart(shared, d).Add(-d))
		return err
	})
	s.note(err, "delete the failed logins of ended windows")
}
