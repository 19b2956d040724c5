package storetest

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Harness is what a backend gives the suite.
type Harness struct {
	// Open returns a fresh, empty store. It registers the store's Close with t.Cleanup (the
	// suite may close a store itself first, so Close must be safe to call twice) and fails t
	// if the store cannot be opened. Required.
	Open func(t *testing.T) store.Store

	// OpenSecond returns another handle on the database behind first, one that writes
	// independently of it as another process or node would: for SQLite a second Open of the
	// same file, for a server database another pool. It registers its Close with t.Cleanup.
	// Optional: without it the tests of concurrent handles are skipped.
	OpenSecond func(t *testing.T, first store.Store) store.Store

	// Waiting reports how many Update calls on s are waiting for their function to run.
	// Optional: a backend that queues its writers gives it so that the group-commit tests
	// can line callers up into one group deterministically; without it they rely on the
	// concurrency of many goroutines alone, and still check every outcome.
	Waiting func(s store.Store) int

	// ServerClock tells that the backend measures leases on its server's clock, one for
	// every node, ignoring the callers' ([store.Leases.LeaseNow]): a database that machines
	// share. False: the caller's clock, for a database of one machine.
	ServerClock bool
}

// test is one test of the suite.
type test struct {
	name string
	fn   func(t *testing.T, h *Harness)
}

// Run runs the conformance suite against the backend of h, each test in its own subtest on
// its own store (from h.Open). The subtests run in parallel with each other.
func Run(t *testing.T, h Harness) {
	if h.Open == nil {
		t.Fatal("storetest: Harness.Open is required")
	}
	groups := []struct {
		name  string
		tests []test
	}{
		{"Tx", txTests},
		{"Entities", entityTests},
		{"Revocation", revocationTests},
		{"Recovery", recoveryTests},
		{"Jobs", jobTests},
		{"Leases", leaseTests},
		{"DrillStates", drillTests},
		{"Cursors", cursorTests},
		{"LoginFailures", loginTests},
		{"DirectorySkips", directorySkipTests},
		{"Audit", auditTests},
		{"Consistency", consistencyTests},
		{"GroupCommit", groupCommitTests},
		{"TwoHandles", twoHandleTests},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tt := range g.tests {
				t.Run(tt.name, func(t *testing.T) {
					t.Parallel()
					tt.fn(t, &h)
				})
			}
		})
	}
}

// second opens the second handle of first, or skips t when the backend has none.
func (h *Harness) second(t *testing.T, first store.Store) store.Store {
	t.Helper()
	if h.OpenSecond == nil {
		t.Skip("the backend offers no second handle (Harness.OpenSecond)")
	}
	return h.OpenSecond(t, first)
}

// lineUp waits until n Update calls wait on s, when the backend can tell (Harness.Waiting).
func (h *Harness) lineUp(s store.Store, n int) {
	if h.Waiting == nil {
		return
	}
	// Bounded, in case a caller never queues (an Update that fails at once): the tests
	// check every outcome whether or not the callers ended up in one group.
	for deadline := time.Now().Add(10 * time.Second); h.Waiting(s) < n && time.Now().Before(deadline); {
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

var ctx = context.Background()

// t0 is a fixed clock for tests.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func mustUpdate(t testing.TB, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(ctx, fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func mustView(t testing.TB, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.View(ctx, fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

// is reports whether err is want, nil meaning no error.
func is(err, want error) bool {
	if want == nil {
		return err == nil
	}
	return errors.Is(err, want)
}

func cert(serial string) store.Certificate {
	return store.Certificate{Serial: serial, Template: "smime-encryption", Email: "alice@example.com",
		Subject: "CN=Alice", CreatedAt: t0}
}

func code(id string) store.Code {
	return store.Code{ID: id, Email: "alice@example.com", Template: "smime-encryption", Hash: []byte("h-" + id),
		CreatedAt: t0, ExpiresAt: t0.Add(24 * time.Hour)}
}

func recoverySet(serials ...string) store.RecoverySet {
	return store.RecoverySet{Quorum: 2, KRASerials: serials, CreatedAt: t0, CreatedBy: "admin"}
}

func record(id, serial string) store.Record {
	return store.Record{ID: id, Serial: serial, Email: "alice@example.com", Epoch: 1, Blob: []byte("sealed-" + id), CreatedAt: t0}
}

func assertCount(t *testing.T, s store.Store, f store.Filter, want int) {
	t.Helper()
	err := s.View(ctx, func(tx store.Tx) error {
		l, err := tx.ListCertificates(f)
		if len(l) != want {
			t.Errorf("ListCertificates(%+v): %d rows, want %d", f, len(l), want)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// hold occupies an Update of s until release is called, and returns once its function runs.
// On a backend with one writer, the Updates started meanwhile queue up behind it and then
// run as one group.
func hold(t *testing.T, s store.Store) (release func(), wait func() error) {
	t.Helper()
	inside := make(chan struct{})
	rel := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- s.Update(ctx, func(store.Tx) error {
			close(inside)
			<-rel
			return nil
		})
	}()
	select {
	case <-inside:
	case err := <-errc:
		t.Fatalf("holding Update: %v", err)
	}
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release)
	return release, func() error { return <-errc }
}
