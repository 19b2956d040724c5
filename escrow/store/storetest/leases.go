package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Leases: named leases with fencing tokens (store.Leases), also contended by two handles
// (Harness.OpenSecond) as two nodes would.
var leaseTests = []test{
	{"AcquireRenewRelease", testLeaseAcquireRenewRelease},
	{"Invalid", testLeaseInvalid},
	{"ExpiryHandsOver", testLeaseExpiryHandsOver},
	{"StaleHolderFenced", testLeaseStaleHolderFenced},
	{"FenceUndoesWrites", testLeaseFenceUndoesWrites},
	{"TwoHandlesContend", testLeaseTwoHandlesContend},
	{"Clock", testLeaseClock},
}

const leaseTTL = 10 * time.Second

// acquire runs AcquireLease in its own Update and returns the lease and the error.
func acquire(s store.Store, name, holder string, now time.Time) (store.Lease, error) {
	var l store.Lease
	err := s.Update(ctx, func(tx store.Tx) error {
		var err error
		l, err = tx.AcquireLease(name, holder, now, leaseTTL)
		return err
	})
	return l, err
}

func testLeaseAcquireRenewRelease(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustView(t, s, func(tx store.Tx) error {
		if _, err := tx.GetLease("crl"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetLease before the first acquire: %v, want ErrNotFound", err)
		}
		return nil
	})
	l, err := acquire(s, "crl", "node-a", t0)
	if err != nil {
		t.Fatalf("AcquireLease: %v", err)
	}
	if l.Token != 1 || l.Holder != "node-a" || !l.Expires.Equal(t0.Add(leaseTTL)) || !l.AcquiredAt.Equal(t0) {
		t.Errorf("first lease %+v, want token 1 held by node-a until t0+%v", l, leaseTTL)
	}
	// Acquiring again while holding it renews it with the same token.
	l2, err := acquire(s, "crl", "node-a", t0.Add(time.Second))
	if err != nil || l2.Token != 1 || !l2.Expires.Equal(t0.Add(time.Second+leaseTTL)) {
		t.Errorf("re-acquire by the holder: %+v, %v; want token 1 until t0+1s+ttl", l2, err)
	}
	// Another holder is refused while it is held.
	if _, err := acquire(s, "crl", "node-b", t0.Add(2*time.Second)); !errors.Is(err, store.ErrLeaseHeld) || !errors.Is(err, store.ErrConflict) {
		t.Errorf("acquire by another node while held: %v, want ErrLeaseHeld (a conflict)", err)
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		r, err := tx.RenewLease("crl", "node-a", 1, t0.Add(3*time.Second), leaseTTL)
		if err != nil || r.Token != 1 || !r.Expires.Equal(t0.Add(3*time.Second+leaseTTL)) {
			t.Errorf("RenewLease: %+v, %v", r, err)
		}
		if err := tx.CheckLease("crl", "node-a", 1, t0.Add(4*time.Second)); err != nil {
			t.Errorf("CheckLease by the holder: %v", err)
		}
		// Another lease name is independent.
		if _, err := tx.AcquireLease("ocsp", "node-b", t0, leaseTTL); err != nil {
			t.Errorf("acquire another name: %v", err)
		}
		return tx.ReleaseLease("crl", "node-a", 1)
	})
	mustView(t, s, func(tx store.Tx) error {
		if err := tx.CheckLease("crl", "node-a", 1, t0.Add(4*time.Second)); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("CheckLease after release: %v, want ErrLeaseLost", err)
		}
		return nil
	})
	// Released, it is free at once, with a higher token.
	l3, err := acquire(s, "crl", "node-b", t0.Add(5*time.Second))
	if err != nil || l3.Token != 2 || l3.Holder != "node-b" {
		t.Errorf("acquire after release: %+v, %v; want token 2 held by node-b", l3, err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.ReleaseLease("crl", "node-a", 1) }); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("release by the former holder: %v, want ErrLeaseLost", err)
	}
	if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.AcquireLease("x", "node-a", t0, leaseTTL); return err }); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("AcquireLease in a View: %v, want ErrReadOnly", err)
	}
}

func testLeaseInvalid(t *testing.T, h *Harness) {
	s := h.Open(t)
	for _, tt := range []struct {
		name, lease, holder string
		ttl                 time.Duration
	}{
		{"no name", "", "node-a", leaseTTL},
		{"no holder", "crl", "", leaseTTL},
		{"no ttl", "crl", "node-a", 0},
		{"negative ttl", "crl", "node-a", -time.Second},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { _, err := tx.AcquireLease(tt.lease, tt.holder, t0, tt.ttl); return err })
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: AcquireLease: %v, want ErrInvalid", tt.name, err)
		}
	}
	if err := s.Update(ctx, func(tx store.Tx) error { _, err := tx.RenewLease("never", "node-a", 1, t0, leaseTTL); return err }); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("RenewLease of a lease never acquired: %v, want ErrLeaseLost", err)
	}
	mustView(t, s, func(tx store.Tx) error {
		if err := tx.CheckLease("never", "node-a", 1, t0); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("CheckLease of a lease never acquired: %v, want ErrLeaseLost", err)
		}
		return nil
	})
}

// testLeaseExpiryHandsOver: once it expires, another node acquires the lease with a higher
// token, and a holder that renews before anyone took it keeps its token.
func testLeaseExpiryHandsOver(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	la, err := acquire(a, "job:1", "node-a", t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(b, "job:1", "node-b", la.Expires.Add(-time.Microsecond)); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("acquire a microsecond before expiry: %v, want ErrLeaseHeld", err)
	}
	// Expired but not taken: the holder may still renew, with its token.
	mustUpdate(t, a, func(tx store.Tx) error {
		if err := tx.CheckLease("job:1", "node-a", la.Token, la.Expires); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("CheckLease at expiry: %v, want ErrLeaseLost", err)
		}
		r, err := tx.RenewLease("job:1", "node-a", la.Token, la.Expires.Add(time.Second), leaseTTL)
		if err == nil && r.Token != la.Token {
			t.Errorf("renewed after expiry with token %d, want %d", r.Token, la.Token)
		}
		la = r
		return err
	})
	lb, err := acquire(b, "job:1", "node-b", la.Expires)
	if err != nil {
		t.Fatalf("acquire at expiry: %v", err)
	}
	if lb.Token <= la.Token || lb.Holder != "node-b" {
		t.Errorf("taken over as %+v, want node-b with a token above %d", lb, la.Token)
	}
	mustView(t, a, func(tx store.Tx) error {
		l, err := tx.GetLease("job:1")
		if err == nil && (l.Holder != "node-b" || l.Token != lb.Token) {
			t.Errorf("the first handle reads %+v, want node-b's lease", l)
		}
		return err
	})
	// The former holder, re-acquiring after node-b's lease expires, gets a higher token still.
	la2, err := acquire(a, "job:1", "node-a", lb.Expires)
	if err != nil || la2.Token <= lb.Token {
		t.Errorf("acquire back: %+v, %v; want a token above %d", la2, err, lb.Token)
	}
}

// testLeaseStaleHolderFenced: a holder whose lease another node took (a paused node that
// wakes up) can neither renew, release nor pass the fencing check, even with a clock that
// says its lease is still valid.
func testLeaseStaleHolderFenced(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	la, err := acquire(a, "job:1", "node-a", t0)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := acquire(b, "job:1", "node-b", la.Expires.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	err = a.Update(ctx, func(tx store.Tx) error {
		_, err := tx.RenewLease("job:1", "node-a", la.Token, t0.Add(time.Second), leaseTTL)
		return err
	})
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("stale holder renews: %v, want ErrLeaseLost", err)
	}
	if err := a.Update(ctx, func(tx store.Tx) error { return tx.ReleaseLease("job:1", "node-a", la.Token) }); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("stale holder releases: %v, want ErrLeaseLost", err)
	}
	mustView(t, a, func(tx store.Tx) error {
		if err := tx.CheckLease("job:1", "node-a", la.Token, t0.Add(time.Second)); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("stale holder's fencing check: %v, want ErrLeaseLost", err)
		}
		// The same holder name with an old token is fenced too (a node restarted under its name).
		if err := tx.CheckLease("job:1", "node-b", lb.Token-1, la.Expires.Add(2*time.Second)); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("fencing check with an older token: %v, want ErrLeaseLost", err)
		}
		return tx.CheckLease("job:1", "node-b", lb.Token, la.Expires.Add(2*time.Second))
	})
}

// testLeaseFenceUndoesWrites: a fenced-out writer that checks its lease in the Update of its
// writes stores none of them.
func testLeaseFenceUndoesWrites(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	la, err := acquire(a, "job:1", "node-a", t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(b, "job:1", "node-b", la.Expires); err != nil {
		t.Fatal(err)
	}
	err = a.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("0b")); err != nil {
			return err
		}
		return tx.CheckLease("job:1", "node-a", la.Token, t0.Add(time.Second))
	})
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("fenced Update: %v, want ErrLeaseLost", err)
	}
	mustView(t, b, func(tx store.Tx) error {
		if _, err := tx.GetCertificate("0b"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a fenced Update's write is stored: %v", err)
		}
		return nil
	})
}

// testLeaseTwoHandlesContend: nodes on two handles race for each of several leases at the same
// instant; each lease goes to exactly one, and the tokens handed out for a name increase by
// one at each change of hands.
func testLeaseTwoHandlesContend(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	const names, rounds, racers = 4, 3, 6
	for r := range rounds {
		now := t0.Add(time.Duration(r) * 2 * leaseTTL) // every lease of the last round has expired
		var mu sync.Mutex
		winners := map[string][]store.Lease{}
		var wg sync.WaitGroup
		for g := range racers {
			s := []store.Store{a, b}[g%2]
			wg.Go(func() {
				for n := range names {
					name := fmt.Sprint("lease-", n)
					l, err := acquire(s, name, fmt.Sprint("node-", g), now)
					switch {
					case err == nil:
						mu.Lock()
						winners[name] = append(winners[name], l)
						mu.Unlock()
					case !errors.Is(err, store.ErrLeaseHeld):
						t.Errorf("round %d, %s by node-%d: %v", r, name, g, err)
					}
				}
			})
		}
		wg.Wait()
		for n := range names {
			name := fmt.Sprint("lease-", n)
			w := winners[name]
			if len(w) != 1 {
				t.Fatalf("round %d: %s acquired %d times at one instant, want once: %+v", r, name, len(w), w)
			}
			if w[0].Token != int64(r+1) {
				t.Errorf("round %d: %s has token %d, want %d", r, name, w[0].Token, r+1)
			}
			mustView(t, []store.Store{a, b}[r%2], func(tx store.Tx) error {
				return tx.CheckLease(name, w[0].Holder, w[0].Token, now)
			})
		}
	}
}

// testLeaseClock: the lease clock (LeaseNow) is the server's, the same through every handle
// whatever the callers' clocks say, on a backend with a server clock; the caller's own
// otherwise. On a shared clock, a lease taken by a node is held for a node whose clock is
// minutes ahead (before, that node took it) and is not stored already expired by a node whose
// clock is behind.
func testLeaseClock(t *testing.T, h *Harness) {
	a := h.Open(t)
	const skew = 5 * time.Minute
	read := func(s store.Store, local time.Time) time.Time {
		t.Helper()
		var now time.Time
		mustView(t, s, func(tx store.Tx) (err error) { now, err = tx.LeaseNow(local); return err })
		return now
	}
	var kept store.Tx
	mustUpdate(t, a, func(tx store.Tx) error {
		kept = tx
		_, err := tx.LeaseNow(t0)
		return err
	})
	if _, err := kept.LeaseNow(t0); !errors.Is(err, store.ErrTxDone) {
		t.Errorf("LeaseNow on a Tx kept after its function: %v, want ErrTxDone", err)
	}
	if !h.ServerClock {
		if got := read(a, t0); !got.Equal(t0) {
			t.Errorf("LeaseNow(t0) = %v, want the caller's t0", got)
		}
		return
	}
	b := h.second(t, a)
	// The test's server runs on this machine: its clock is this one's.
	before := time.Now().Add(-time.Second)
	ra := read(a, t0)
	rb := read(b, time.Now().Add(skew))
	after := time.Now().Add(time.Second)
	for _, r := range []time.Time{ra, rb} {
		if r.Before(before) || r.After(after) {
			t.Errorf("LeaseNow = %v, want the server's clock, within [%v, %v]", r, before, after)
		}
	}
	if rb.Before(ra) {
		t.Errorf("the second handle's LeaseNow %v is before the first's %v, read earlier", rb, ra)
	}
	for _, tt := range []struct {
		name          string
		holder, other time.Duration // the holder's and the other node's clocks, off true time
	}{
		{"other ahead", 0, skew},
		{"holder behind", -skew, 0},
	} {
		name := "skew-" + tt.name
		var la store.Lease
		mustUpdate(t, a, func(tx store.Tx) error {
			now, err := tx.LeaseNow(time.Now().Add(tt.holder))
			if err != nil {
				return err
			}
			la, err = tx.AcquireLease(name, "node-a", now, leaseTTL)
			return err
		})
		err := b.Update(ctx, func(tx store.Tx) error {
			now, err := tx.LeaseNow(time.Now().Add(tt.other))
			if err != nil {
				return err
			}
			if err := tx.CheckLease(name, "node-a", la.Token, now); err != nil {
				t.Errorf("%s: the holder's lease is not held on the other node's reading: %v", tt.name, err)
			}
			_, err = tx.AcquireLease(name, "node-b", now, leaseTTL)
			return err
		})
		if !errors.Is(err, store.ErrLeaseHeld) {
			t.Errorf("%s: the other node acquires a lease renewed a moment ago: %v, want ErrLeaseHeld", tt.name, err)
		}
	}
}
