package storetest

import (
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// LoginFailures: failed logins counted per key and window (store.LoginFailures), the same
// counts through a second handle (another node), none lost to concurrent writers.
var loginTests = []test{
	{"CountAndThreshold", testLoginCount},
	{"Invalid", testLoginInvalid},
	{"SecondHandle", testLoginSecondHandle},
	{"Concurrent", testLoginConcurrent},
}

func addLogin(s store.Store, key string, window time.Time) error {
	return s.Update(ctx, func(tx store.Tx) error { return tx.AddLoginFailure(key, window) })
}

func loginsAtLeast(t *testing.T, s store.Store, window time.Time, min int) map[string]int {
	t.Helper()
	var got map[string]int
	mustView(t, s, func(tx store.Tx) error {
		var err error
		got, err = tx.LoginFailuresAtLeast(window, min)
		return err
	})
	return got
}

func testLoginCount(t *testing.T, h *Harness) {
	s := h.Open(t)
	w1 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	w2 := w1.Add(time.Minute)
	for key, n := range map[string]int{"source:192.0.2.7": 3, "mailbox:a@example.org": 1, "source:2001:db8::/64": 2} {
		for range n {
			if err := addLogin(s, key, w1); err != nil {
				t.Fatalf("AddLoginFailure(%s): %v", key, err)
			}
		}
	}
	if err := addLogin(s, "source:192.0.2.7", w2); err != nil {
		t.Fatal(err)
	}
	if got, want := loginsAtLeast(t, s, w1, 2), map[string]int{"source:192.0.2.7": 3, "source:2001:db8::/64": 2}; !maps.Equal(got, want) {
		t.Fatalf("LoginFailuresAtLeast(w1, 2) = %v, want %v", got, want)
	}
	if got, want := loginsAtLeast(t, s, w1, 0), map[string]int{"source:192.0.2.7": 3, "source:2001:db8::/64": 2, "mailbox:a@example.org": 1}; !maps.Equal(got, want) {
		t.Fatalf("LoginFailuresAtLeast(w1, 0) = %v, want %v", got, want)
	}
	if got, want := loginsAtLeast(t, s, w2, 1), map[string]int{"source:192.0.2.7": 1}; !maps.Equal(got, want) {
		t.Fatalf("LoginFailuresAtLeast(w2, 1) = %v, want %v: windows are counted apart", got, want)
	}
	// A failure counted in an undone Update is not counted.
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.AddLoginFailure("source:192.0.2.7", w2); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	if got := loginsAtLeast(t, s, w2, 1)["source:192.0.2.7"]; got != 1 {
		t.Fatalf("after an undone failure: %d, want 1", got)
	}
	var n int
	mustUpdate(t, s, func(tx store.Tx) error {
		var err error
		n, err = tx.DeleteLoginFailuresBefore(w2)
		return err
	})
	if n != 3 {
		t.Fatalf("DeleteLoginFailuresBefore(w2) deleted %d, want the 3 counts of w1", n)
	}
	if got := loginsAtLeast(t, s, w1, 1); len(got) != 0 {
		t.Fatalf("w1 after its deletion: %v", got)
	}
	if got := loginsAtLeast(t, s, w2, 1); len(got) != 1 {
		t.Fatalf("w2 after w1's deletion: %v, want its count kept", got)
	}
	err = s.View(ctx, func(tx store.Tx) error { return tx.AddLoginFailure("source:192.0.2.7", w2) })
	if !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("AddLoginFailure in a View = %v, want ErrReadOnly", err)
	}
}

func testLoginInvalid(t *testing.T, h *Harness) {
	s := h.Open(t)
	for _, tc := range []struct {
		key    string
		window time.Time
	}{{"", time.Now()}, {"source:192.0.2.7", time.Time{}}} {
		if err := addLogin(s, tc.key, tc.window); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("AddLoginFailure(%q, %v) = %v, want ErrInvalid", tc.key, tc.window, err)
		}
	}
}

func testLoginSecondHandle(t *testing.T, h *Harness) {
	s := h.Open(t)
	other := h.second(t, s)
	w := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	for _, st := range []store.Store{s, other, s, other} {
		if err := addLogin(st, "source:198.51.100.1", w); err != nil {
			t.Fatal(err)
		}
	}
	for name, st := range map[string]store.Store{"first": s, "second": other} {
		if got := loginsAtLeast(t, st, w, 4)["source:198.51.100.1"]; got != 4 {
			t.Fatalf("the %s handle counts %d failures, want the 4 both handles made", name, got)
		}
	}
}

func testLoginConcurrent(t *testing.T, h *Harness) {
	s := h.Open(t)
	w := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	const writers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		wg.Go(func() {
			for range each {
				if err := addLogin(s, "mailbox:b@example.org", w); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := loginsAtLeast(t, s, w, 1)["mailbox:b@example.org"]; got != writers*each {
		t.Fatalf("%d failures counted, want %d", got, writers*each)
	}
}
