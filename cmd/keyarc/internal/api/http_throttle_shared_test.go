package api

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// sharedThrottles are the login throttles of two nodes on one PostgreSQL database (two
// handles, as two processes have), on one clock, reading every node's counts at each check.
func sharedThrottles(t *testing.T, perSource, perMailbox int) (a, b *loginThrottle, clk *fakeClock) {
	t.Helper()
	url := pgtest.Start(t).NewDatabase(t)
	a, clk = testThrottle(perSource, perMailbox)
	b, _ = testThrottle(perSource, perMailbox)
	b.now = clk.now
	for _, l := range []*loginThrottle{a, b} {
		db, err := postgres.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		// The counts' tests run on the throttles' fake clock; TestLoginThrottleSharedClockSkew
		// on the database's.
		l.shared = &sharedLogins{db: db, log: slog.New(slog.DiscardHandler),
			clock: func(_ store.Tx, local time.Time) (time.Time, error) { return local, nil }}
	}
	return a, b, clk
}

// TestLoginThrottleSharedSource: failures of one source spread over two nodes reach the limit
// together, and the source is then refused on both until the shared window ends; another
// source is not.
func TestLoginThrottleSharedSource(t *testing.T) {
	a, b, clk := sharedThrottles(t, 4, 100)
	clk.t = clk.t.Add(10 * time.Second) // windows start on the minute: 50 s of this one left
	for i, l := range []*loginThrottle{a, b, a, b} {
		if w := l.limited("192.0.2.1", ""); w != 0 {
			t.Fatalf("failure %d: throttled (%v) before the limit", i+1, w)
		}
		l.failed("192.0.2.1", "m@example.org")
	}
	// Each node counted two in memory, under its own limit of four: only the shared counts
	// refuse the source.
	for name, l := range map[string]*loginThrottle{"a": a, "b": b} {
		if w := l.limited("192.0.2.1", ""); w != 50*time.Second {
			t.Errorf("node %s: the source after four failures over two nodes waits %v, want the rest of the shared window (50s)", name, w)
		}
		if w := l.limited("192.0.2.2", ""); w != 0 {
			t.Errorf("node %s: another source waits %v", name, w)
		}
	}
	clk.t = clk.t.Add(50 * time.Second)
	for name, l := range map[string]*loginThrottle{"a": a, "b": b} {
		if w := l.limited("192.0.2.1", ""); w != 0 {
			t.Errorf("node %s: the source waits %v in the next window", name, w)
		}
	}
}

// TestLoginThrottleSharedMailbox: a mailbox's failures over two nodes reach its limit together;
// the mailbox limit answers only failed attempts (mailboxLimited is asked after a refusal), so
// a valid code still works, as with one node.
func TestLoginThrottleSharedMailbox(t *testing.T) {
	a, b, clk := sharedThrottles(t, 100, 3)
	for i, l := range []*loginThrottle{a, b, a} {
		if w := l.mailboxLimited("m@example.org"); w != 0 {
			t.Fatalf("failure %d: the mailbox is limited (%v) before its limit", i+1, w)
		}
		l.failed("192.0.2.10", "m@example.org")
	}
	if w := b.mailboxLimited("m@example.org"); w != time.Minute {
		t.Errorf("node b: the mailbox after three failures over two nodes waits %v, want the window (1m)", w)
	}
	if w := b.limited("192.0.2.11", ""); w != 0 {
		t.Errorf("node b: a source that never failed waits %v because of the mailbox", w)
	}
	clk.t = clk.t.Add(time.Minute)
	if w := a.mailboxLimited("m@example.org"); w != 0 {
		t.Errorf("node a: the mailbox waits %v in the next window", w)
	}
}

// TestLoginThrottleSharedOddMailbox: a claimed mailbox PostgreSQL cannot store as text (a NUL
// byte, invalid UTF-8, as a Basic user name may carry) still counts for every node, for its
// source and for itself: it must not be a way around the shared limits.
func TestLoginThrottleSharedOddMailbox(t *testing.T) {
	for _, odd := range []string{"m\x00@example.org", "m\xff@example.org"} {
		a, b, clk := sharedThrottles(t, 4, 3)
		clk.t = clk.t.Add(10 * time.Second)
		for _, l := range []*loginThrottle{a, b, a, b} {
			l.failed("192.0.2.20", odd)
		}
		if w := a.limited("192.0.2.20", ""); w != 50*time.Second {
			t.Errorf("mailbox %q: the source after four failures over two nodes waits %v, want 50s", odd, w)
		}
		if w := b.mailboxLimited(odd); w != 50*time.Second {
			t.Errorf("mailbox %q: the mailbox after four failures over two nodes waits %v, want 50s", odd, w)
		}
	}
}

// TestLoginThrottleSharedClockSkew: two nodes whose clocks are minutes apart (NTP broken on
// one) share their failed logins all the same, and the sweep of ended windows run by either
// deletes none of the counts the other uses. The shared windows are on the database's clock;
// before, each node's windows were on its own clock: failures on the two nodes fell in
// different windows, and a sweep by the node ahead deleted the current counts of the other.
func TestLoginThrottleSharedClockSkew(t *testing.T) {
	for _, skew := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
		// The test's server runs on this machine: its windows are this clock's minutes. A
		// round that straddles the end of one is run again.
		for round := 0; ; round++ {
			start := time.Now().Truncate(time.Minute)
			a, b, _ := sharedThrottles(t, 4, 100)
			a.now = time.Now
			b.now = func() time.Time { return time.Now().Add(skew) }
			for _, l := range []*loginThrottle{a, b} {
				l.shared.clock = nil // the database's
			}
			for i, l := range []*loginThrottle{a, b, a, b} {
				l.limited("192.0.2.1", "")
				l.failed("192.0.2.1", "")
				if i == 1 {
					b.shared.sweep(b.now(), b.window)
					a.shared.sweep(a.now(), a.window)
				}
			}
			waits := map[string]time.Duration{"a": a.limited("192.0.2.1", ""), "b": b.limited("192.0.2.1", "")}
			if !time.Now().Truncate(time.Minute).Equal(start) && round < 3 {
				continue
			}
			for name, w := range waits {
				if w <= 0 || w > time.Minute {
					t.Errorf("skew %v: node %s: the source after four failures over two nodes waits %v, want the rest of the shared window", skew, name, w)
				}
			}
			break
		}
	}
}
