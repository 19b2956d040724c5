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

	mu      sync.Mutex
	over    map[string]time.Time // keys over their limit in the window read, and its end
	window  time.Time            // the window over was read for
	readAt  time.Time
	reading bool
	failing bool // the last read or write failed (logged once until one succeeds)
}

// windowStart is the start of the fixed window of length d that holds now: the same instant
// on every node.
func windowStart(now time.Time, d time.Duration) time.Time { return now.Truncate(d) }

// add writes one failure of source and mailbox (when not empty) to the store.
func (s *sharedLogins) add(source, mailbox string, window time.Time) {
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
	window := windowStart(now, l.window)
	s.mu.Lock()
	stale := !s.window.Equal(window) || now.Sub(s.readAt) >= s.fresh || now.Before(s.readAt)
	if stale && !s.reading {
		s.reading = true
		s.mu.Unlock()
		over, err := s.read(window, l.perSource, l.perMailbx, l.window)
		s.note(err, "read the failed logins of every node")
		s.mu.Lock()
		s.reading = false
		if err == nil {
			s.over, s.window = over, window
		}
		s.readAt = now
	}
	var until time.Time
	for _, k := range []string{sharedKey(sharedSource, source), sharedKey(sharedMailbox, mailbox)} {
		if end, ok := s.over[k]; ok && end.After(until) && !strings.HasSuffix(k, ":") {
			until = end
		}
	}
	s.mu.Unlock()
	if !until.After(now) {
		return 0
	}
	return until.Sub(now)
}

// read returns the keys over their limit in window, with the window's end.
func (s *sharedLogins) read(window time.Time, perSource, perMailbox int, d time.Duration) (map[string]time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sharedLoginsTimeout)
	defer cancel()
	var counts map[string]int
	err := s.db.View(ctx, func(tx store.Tx) error {
		var err error
		counts, err = tx.LoginFailuresAtLeast(window, min(perSource, perMailbox))
		return err
	})
	if err != nil {
		return nil, err
	}
	over := map[string]time.Time{}
	end := window.Add(d)
	for k, n := range counts {
		if strings.HasPrefix(k, sharedSource) && n >= perSource || strings.HasPrefix(k, sharedMailbox) && n >= perMailbox {
			over[k] = end
		}
	}
	return over, nil
}

// sweep deletes the shared counts of the windows before the previous one.
func (s *sharedLogins) sweep(now time.Time, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), sharedLoginsTimeout)
	defer cancel()
	err := s.db.Update(ctx, func(tx store.Tx) error {
		_, err := tx.DeleteLoginFailuresBefore(windowStart(now, d).Add(-d))
		return err
	})
	s.note(err, "delete the failed logins of ended windows")
}
