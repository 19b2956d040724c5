package presign

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/keyarc/keyarc/escrow/store"
)

// countingStore counts the write transactions.
type countingStore struct {
	store.Store
	updates atomic.Int64
}

func (c *countingStore) Update(ctx context.Context, f func(store.Tx) error) error {
	c.updates.Add(1)
	return c.Store.Update(ctx, f)
}

// passCounter counts the passes reported.
type passCounter struct{ passes atomic.Int64 }

func (p *passCounter) OCSPSigned(int)                {}
func (p *passCounter) OCSPPass(_ time.Time, _ error) { p.passes.Add(1) }

// runSigner runs s until the test ends.
func runSigner(t *testing.T, s *Signer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
}

// TestIssuedSignedWhenIssuancePauses: certificates given to Issued one by one are signed
// together, in one transaction, once no certificate has been issued for Quiet; nothing is
// signed before.
func TestIssuedSignedWhenIssuancePauses(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	s := e.signer(e.responder)
	cs := &countingStore{Store: e.db}
	s.Store = cs
	s.Interval = time.Hour
	s.Quiet = 2 * time.Second
	pc := &passCounter{}
	s.Metrics = pc
	runSigner(t, s)
	// The first pass, over everything due, has ended (its index transaction alone is not
	// enough: the certificates below, stored before its read of the due list, would be
	// signed by it): it found nothing due, and indexing the (no) new certificates was its
	// only transaction.
	waitFor(t, func() bool { return pc.passes.Load() == 1 })
	if n := cs.updates.Load(); n != 1 {
		t.Fatalf("the first pass took %d transactions, want 1 (indexing)", n)
	}
	before := cs.updates.Load()
	fresh := e.addCerts(t, 0xd000, 5)
	for _, sn := range fresh {
		s.Issued([]string{sn})
	}
	if d := e.due(t); d != 5 {
		t.Fatalf("%d of 5 new certificates still without a response right after Issued, want 5 (signed after Quiet)", d)
	}
	waitFor(t, func() bool { return e.due(t) == 0 })
	if n := cs.updates.Load() - before; n != 1 {
		t.Errorf("%d transactions stored the 5 responses, want 1", n)
	}
	for _, sn := range fresh {
		if r := e.status(t, sn); r.Status != xocsp.Good {
			t.Errorf("serial %s: status %d", sn, r.Status)
		}
	}
}

// TestDeferredWhileIssuing: the deferred work waits while calls of Issued keep coming less
// than Quiet apart, up to MaxDefer after the first; a pause of Quiet ends it sooner.
func TestDeferredWhileIssuing(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	now := t0
	s := &Signer{Quiet: 2 * time.Second, MaxDefer: 10 * time.Second, Now: func() time.Time { return now }}
	if open, _ := s.settled(now); !open {
		t.Fatal("deferred before anything was issued")
	}
	s.Issued([]string{"01"})
	for now.Before(t0.Add(10 * time.Second)) {
		open, at := s.settled(now)
		want := now.Add(2 * time.Second)
		if last := t0.Add(10 * time.Second); last.Before(want) {
			want = last
		}
		if open || !at.Equal(want) {
			t.Fatalf("at +%v while issuing: open %v until %v, want closed until +%v", now.Sub(t0), open, at.Sub(t0), want.Sub(t0))
		}
		now = now.Add(1500 * time.Millisecond)
		s.Issued([]string{"02"})
	}
	if open, _ := s.settled(now); !open {
		t.Fatalf("at +%v, past MaxDefer: still deferred", now.Sub(t0))
	}

	// A later burst: a pause of Quiet after its last certificate ends it.
	s = &Signer{Quiet: 2 * time.Second, MaxDefer: 10 * time.Second, Now: func() time.Time { return now }}
	s.Issued([]string{"03"})
	now = now.Add(time.Second)
	s.Issued([]string{"04"})
	if open, _ := s.settled(now.Add(1999 * time.Millisecond)); open {
		t.Fatal("open before a pause of Quiet")
	}
	if open, _ := s.settled(now.Add(2 * time.Second)); !open {
		t.Fatal("still deferred after a pause of Quiet")
	}
}

// TestRevokedDoesNotWaitForIssuance: while new certificates' first responses wait for a pause
// in issuance, a revocation is signed at once, and leaves them waiting.
func TestRevokedDoesNotWaitForIssuance(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	s := e.signer(e.responder)
	s.Interval = time.Hour
	s.Quiet, s.MaxDefer = time.Hour, time.Hour
	old := e.addCerts(t, 0xe000, 4)
	if _, err := s.SignDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	waiting := e.addCerts(t, 0xe100, 2)
	s.Issued(waiting)
	runSigner(t, s)
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(old[0], store.ReasonKeyCompromise, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	s.Revoked(old[:1])
	waitFor(t, func() bool { return e.due(t) == len(waiting) })
	if r := e.status(t, old[0]); r.Status != xocsp.Revoked {
		t.Errorf("revoked serial: status %d", r.Status)
	}
}

// TestFullPassWaitsForIssuance: the leader's passes over everything due wait while
// certificates are being issued, up to MaxDefer, then sign what waited.
func TestFullPassWaitsForIssuance(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	s := e.signer(e.responder)
	s.Interval = 20 * time.Millisecond
	s.Quiet, s.MaxDefer = time.Hour, 4*time.Second
	fresh := e.addCerts(t, 0xf000, 3)
	s.Issued(fresh[:1]) // issuance goes on from here
	runSigner(t, s)
	time.Sleep(25 * s.Interval)
	if d := e.due(t); d != len(fresh) {
		t.Fatalf("%d of %d new certificates without a response after %d intervals, want all (deferred)", d, len(fresh), 25)
	}
	waitFor(t, func() bool { return e.due(t) == 0 })
}
