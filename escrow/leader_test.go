package escrow

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// TestLeaderOneAtATime: two nodes on one SQLite file (opened twice) elect one leader; when it
// stops, the other takes over, and an audit entry written by a node names it.
func TestLeaderOneAtATime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	open := func() store.Store {
		db, err := sqlite.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	ctx := context.Background()
	a := &Leader{Store: open(), Node: "node-a", TTL: time.Second}
	b := &Leader{Store: open(), Node: "node-b", TTL: time.Second}
	var nilLeader *Leader
	if !nilLeader.Leads() {
		t.Error("a nil Leader (one node) does not lead")
	}
	if err := a.Try(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Try(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.Leads() || b.Leads() {
		t.Fatalf("a leads %v, b leads %v; want a alone", a.Leads(), b.Leads())
	}
	// a stops (its Run ends and releases the lease): b leads at its next try.
	actx, stopA := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { a.Run(actx); close(done) }()
	stopA()
	<-done
	if a.Leads() {
		t.Error("a still leads after its Run ended")
	}
	if err := b.Try(ctx); err != nil {
		t.Fatal(err)
	}
	if !b.Leads() {
		t.Fatal("b does not lead after a released the lease")
	}
	var l *store.Lease
	if err := b.Store.View(ctx, func(tx store.Tx) (err error) { l, err = tx.GetLease(LeaderLease); return err }); err != nil {
		t.Fatal(err)
	}
	if l.Holder != "node-b" || l.Token != 2 {
		t.Errorf("leader lease %+v, want node-b with token 2", l)
	}
	// a, paused past the lease (its renewal stopped), no longer leads by its own clock, and
	// cannot take the lease back while b renews it.
	if err := a.Try(ctx); err != nil || a.Leads() {
		t.Errorf("a tries while b leads: %v, leads %v; want no error and not leading", err, a.Leads())
	}
}

// TestLeaderSameNameTwice: a second process started with the same node name does not take the
// leader lease as its own while the first renews it (before, both led); once the first stops
// renewing and the lease runs out, the second leads.
func TestLeaderSameNameTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	open := func() store.Store {
		db, err := sqlite.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	ctx := context.Background()
	const ttl = 400 * time.Millisecond
	a := &Leader{Store: open(), Node: "node-a", TTL: ttl}
	a2 := &Leader{Store: open(), Node: "node-a", TTL: ttl}
	if err := a.Try(ctx); err != nil || !a.Leads() {
		t.Fatalf("Try: %v, leads %v", err, a.Leads())
	}
	for range 2 {
		if err := a2.Try(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Try(ctx); err != nil {
			t.Fatal(err)
		}
		if !a.Leads() || a2.Leads() {
			t.Fatalf("first leads %v, second leads %v; want the first alone", a.Leads(), a2.Leads())
		}
	}
	time.Sleep(ttl + ttl/4) // the first stops renewing: its lease runs out
	if err := a2.Try(ctx); err != nil || !a2.Leads() || a.Leads() {
		t.Fatalf("after the lease ran out: %v, first leads %v, second %v; want the second alone", err, a.Leads(), a2.Leads())
	}
	if err := a2.Try(ctx); err != nil || !a2.Leads() {
		t.Fatalf("the second's renewal: %v, leads %v", err, a2.Leads())
	}
}

// TestLeaderStopsLeadingWhenRenewalStops: a leader whose renewals stop (a paused node, a lost
// database) stops leading by its own clock (three quarters of the lease after its last
// renewal began, before the lease runs out in the store).
func TestLeaderStopsLeadingWhenRenewalStops(t *testing.T) {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l := &Leader{Store: db, Node: "node-a", TTL: 400 * time.Millisecond}
	if err := l.Try(context.Background()); err != nil || !l.Leads() {
		t.Fatalf("Try: %v, leads %v", err, l.Leads())
	}
	for deadline := time.Now().Add(time.Minute); l.Leads(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still leading a minute after the last renewal")
		}
	}
}

// TestCRLRunFollower: a node that does not lead publishes no CRL at start nor on an interval,
// but does publish after a revocation of its own; once it leads, it publishes at once.
func TestCRLRunFollower(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	p.Issuer = p.Issuer.WithClock(time.Now)
	p.Now = nil
	p.Delay = 200 * time.Millisecond
	var leading atomic.Bool
	p.Leads = leading.Load
	runPublisher(t, p)
	time.Sleep(4 * p.Delay)
	if _, err := p.Latest(context.Background()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a follower published at start: %v", err)
	}
	now := time.Now()
	insertCerts(t, env.svc.Store, revokedCert("e1", now, store.ReasonKeyCompromise, now.Add(24*time.Hour)))
	p.Revoked([]string{"e1"})
	waitNumber(t, p, 1, 5*time.Second)
	_, rl := parseLatest(t, p)
	if len(rl.RevokedCertificateEntries) != 1 {
		t.Fatalf("%d entries, want the follower's revocation", len(rl.RevokedCertificateEntries))
	}
	leading.Store(true)
	waitNumber(t, p, 2, 3*crlFollowerPoll)
}

// TestCRLRunFollowerLeadsWhilePublishing: a follower that comes to lead while it publishes
// the CRL of its own revocation still publishes at once as the leader, at its next look, as
// TestCRLRunFollower expects; it used to take the CRL it had just published for the leader's
// and wait a whole interval. Here it leads from the moment its first CRL is stored.
func TestCRLRunFollowerLeadsWhilePublishing(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	p.Issuer = p.Issuer.WithClock(time.Now)
	p.Now = nil
	p.Delay = 200 * time.Millisecond
	p.Leads = func() bool {
		_, err := p.Latest(context.Background())
		return err == nil
	}
	runPublisher(t, p)
	now := time.Now()
	insertCerts(t, env.svc.Store, revokedCert("e1", now, store.ReasonKeyCompromise, now.Add(24*time.Hour)))
	p.Revoked([]string{"e1"})
	waitNumber(t, p, 1, 5*time.Second)
	waitNumber(t, p, 2, 3*crlFollowerPoll)
}

// TestSweepAge: with SweepAge set (several nodes), a sweep leaves alone the issuances younger
// than it, which another node may be finishing, and marks the older ones failed.
func TestSweepAge(t *testing.T) {
	env := newBareService(t)
	ctx := context.Background()
	now := env.clock.Now()
	for serial, age := range map[string]time.Duration{"a1": 2 * time.Hour, "a2": time.Minute} {
		c := store.Certificate{Serial: serial, Template: "smime-encryption", Email: "x@example.org", Subject: "CN=x",
			State: store.StatePending, CreatedAt: now.Add(-age)}
		if err := env.svc.Store.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(c) }); err != nil {
			t.Fatal(err)
		}
	}
	env.svc.SweepAge = time.Hour
	env.svc.Node = "node-a"
	n, err := env.svc.Sweep(ctx, now)
	if err != nil || n != 1 {
		t.Fatalf("Sweep: %d, %v; want the one older than SweepAge", n, err)
	}
	for serial, want := range map[string]string{"a1": store.StateFailed, "a2": store.StatePending} {
		var c *store.Certificate
		if err := env.svc.Store.View(ctx, func(tx store.Tx) (err error) { c, err = tx.GetCertificate(serial); return err }); err != nil {
			t.Fatal(err)
		}
		if c.State != want {
			t.Errorf("%s: %s, want %s", serial, c.State, want)
		}
	}
	var e *store.AuditEntry
	if err := env.svc.Store.View(ctx, func(tx store.Tx) (err error) { e, err = tx.LastAuditOfKind("sweep"); return err }); err != nil {
		t.Fatal(err)
	}
	if want := `"node":"node-a"`; !strings.Contains(e.Details, want) {
		t.Errorf("sweep entry details %s, want them to name the node (%s)", e.Details, want)
	}
}
