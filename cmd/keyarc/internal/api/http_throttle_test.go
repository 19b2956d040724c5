package api

import (
	"fmt"
	"testing"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func testThrottle(perSource, perMailbox int) (*loginThrottle, *fakeClock) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := config.DefaultHTTP()
	cfg.LoginFailuresPerSource, cfg.LoginFailuresPerMailbox = perSource, perMailbox
	l := newLoginThrottle(cfg, nil)
	l.now = clk.now
	return l, clk
}

func TestLoginThrottleSource(t *testing.T) {
	l, clk := testThrottle(3, 100)
	for i := range 3 {
		if w := l.wait("192.0.2.1", "a@example.org"); w != 0 {
			t.Fatalf("attempt %d throttled (%v) before the limit", i+1, w)
		}
		if first := l.failed("192.0.2.1", "a@example.org"); first != (i == 0) {
			t.Errorf("failure %d: first = %v", i+1, first)
		}
	}
	clk.t = clk.t.Add(20 * time.Second)
	if w := l.wait("192.0.2.1", "b@example.org"); w != 40*time.Second {
		t.Errorf("after the limit: wait %v, want the rest of the window (40s)", w)
	}
	if w := l.wait("192.0.2.2", "a@example.org"); w != 0 {
		t.Errorf("another source is throttled: %v", w)
	}
	// The window ends: the source may try again, and its summary counts what was not audited
	// on its own (2 failures and 1 throttled request).
	clk.t = clk.t.Add(41 * time.Second)
	if w := l.wait("192.0.2.1", "a@example.org"); w != 0 {
		t.Errorf("after the window: wait %v", w)
	}
	sums := l.expire(false)
	if len(sums) != 1 || sums[0].count != 3 || sums[0].source != "192.0.2.1" {
		t.Fatalf("summaries %+v, want one of 3 for 192.0.2.1", sums)
	}
	if sums := l.expire(true); len(sums) != 0 {
		t.Errorf("summaries twice: %+v", sums)
	}
	if first := l.failed("192.0.2.1", "a@example.org"); !first {
		t.Error("the first failure of a new window is not audited on its own")
	}
}

func TestLoginThrottleMailbox(t *testing.T) {
	l, _ := testThrottle(100, 4)
	for i := range 4 {
		l.failed(fmt.Sprintf("192.0.2.%d", i+1), "victim@example.org")
	}
	if w := l.wait("198.51.100.7", "victim@example.org"); w <= 0 {
		t.Error("the mailbox is not throttled after failures from several sources")
	}
	if w := l.wait("198.51.100.7", "other@example.org"); w != 0 {
		t.Errorf("another mailbox is throttled: %v", w)
	}
}

func TestLoginThrottleBounded(t *testing.T) {
	l, _ := testThrottle(1, 1000000)
	audited := 0
	for i := range maxThrottleKeys + 500 {
		if l.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), "") {
			audited++
		}
	}
	if len(l.sources) > maxThrottleKeys+1 {
		t.Errorf("%d sources tracked, want at most %d", len(l.sources), maxThrottleKeys+1)
	}
	if audited > maxThrottleKeys+1 {
		t.Errorf("%d failures audited on their own, want at most %d", audited, maxThrottleKeys+1)
	}
	sums := l.expire(true)
	total := audited
	for _, s := range sums {
		total += s.count
	}
	if total != maxThrottleKeys+500 {
		t.Errorf("entries and summaries count %d failures, want %d", total, maxThrottleKeys+500)
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"not an address":       "not an address",
		"::ffff:192.0.2.1":     "192.0.2.1",
	} {
		if got := sourceKey(in); got != want {
			t.Errorf("sourceKey(%q) = %q, want %q", in, got, want)
		}
	}
}
