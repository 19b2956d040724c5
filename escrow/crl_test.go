package escrow

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
)

// crlMetrics records what the publisher reports.
type crlMetrics struct {
	mu       sync.Mutex
	numbers  []int64
	failures int
}

func (m *crlMetrics) CRLCurrent(n int64, _, _ time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.numbers = append(m.numbers, n)
}

func (m *crlMetrics) CRLFailed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failures++
}

func (m *crlMetrics) get() ([]int64, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]int64(nil), m.numbers...), m.failures
}

// revokedCert is a revoked certificate as the store keeps it (the DER is not read by CRLs).
func revokedCert(serial string, at time.Time, reason int, notAfter time.Time) store.Certificate {
	return store.Certificate{Serial: serial, Template: "smime", Email: "a@example.com", State: store.StateRevoked,
		DER: []byte{0x30, 0x00}, NotBefore: at.Add(-time.Hour), NotAfter: notAfter, RevokedAt: at, RevocationReason: reason}
}

func insertCerts(t testing.TB, db store.Store, cs ...store.Certificate) {
	t.Helper()
	if err := db.Update(context.Background(), func(tx store.Tx) error { return tx.InsertCertificates(cs) }); err != nil {
		t.Fatalf("InsertCertificates: %v", err)
	}
}

func newPublisher(env *testEnv, m CRLMetrics) *CRLPublisher {
	env.signer.observe = nil
	return &CRLPublisher{Store: env.svc.Store, Issuer: env.svc.Issuer, Now: env.clock.Now, Metrics: m}
}

// parseLatest returns the newest stored CRL, parsed and verified with the CA certificate.
func parseLatest(t testing.TB, p *CRLPublisher) (*store.CRL, *x509.RevocationList) {
	t.Helper()
	c, err := p.Latest(context.Background())
	if err != nil {
		t.Fatalf("Latest: %v", err)
	}
	rl, err := x509.ParseRevocationList(c.DER)
	if err != nil {
		t.Fatalf("ParseRevocationList: %v", err)
	}
	if err := rl.CheckSignatureFrom(p.Issuer.Certificate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if rl.Number.Int64() != c.Number || !rl.ThisUpdate.Equal(c.ThisUpdate) || !rl.NextUpdate.Equal(c.NextUpdate) {
		t.Fatalf("stored CRL %d %v %v, signed %v %v %v", c.Number, c.ThisUpdate, c.NextUpdate, rl.Number, rl.ThisUpdate, rl.NextUpdate)
	}
	return c, rl
}

func TestCRLPublish(t *testing.T) {
	env := newBareService(t)
	m := &crlMetrics{}
	p := newPublisher(env, m)
	ctx := context.Background()
	if _, err := p.Latest(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Latest before the first CRL = %v, want ErrNotFound", err)
	}
	// The first CRL of a CA that revoked nothing is empty, and numbered 1.
	c, err := p.Publish(ctx)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	_, rl := parseLatest(t, p)
	if c.Number != 1 || len(rl.RevokedCertificateEntries) != 0 {
		t.Fatalf("first CRL: number %d, %d entries", c.Number, len(rl.RevokedCertificateEntries))
	}
	if got := rl.NextUpdate.Sub(rl.ThisUpdate); got != DefaultCRLValidity {
		t.Fatalf("nextUpdate - thisUpdate = %v, want %v", got, DefaultCRLValidity)
	}

	year := t0.Add(365 * 24 * time.Hour)
	insertCerts(t, env.svc.Store,
		revokedCert("0a01", t0.Add(-3*time.Hour), store.ReasonUnspecified, year),
		revokedCert("0a02", t0.Add(-2*time.Hour), store.ReasonKeyCompromise, year),
		revokedCert("0a03", t0.Add(-time.Hour), store.ReasonSuperseded, year),
		revokedCert("0a04", t0.Add(-48*time.Hour), store.ReasonKeyCompromise, t0.Add(-time.Hour)), // expired: off the CRL
		revokedCert("0a05", t0.Add(-time.Hour), 6, year),                                          // migrated certificateHold
		store.Certificate{Serial: "0a06", Template: "smime", Email: "a@example.com", State: store.StateIssued,
			DER: []byte{0x30, 0x00}, NotBefore: t0, NotAfter: year},
	)
	env.clock.Set(t0.Add(time.Minute))
	if c, err = p.Publish(ctx); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	_, rl = parseLatest(t, p)
	if c.Number != 2 {
		t.Fatalf("second CRL numbered %d, want 2", c.Number)
	}
	want := map[string]int{"a01": 0, "a02": 1, "a03": 4, "a05": 0}
	if len(rl.RevokedCertificateEntries) != len(want) {
		t.Fatalf("%d entries, want %d", len(rl.RevokedCertificateEntries), len(want))
	}
	for _, e := range rl.RevokedCertificateEntries {
		r, ok := want[e.SerialNumber.Text(16)]
		if !ok || e.ReasonCode != r {
			t.Errorf("entry %x reason %d, want listed=%v reason %d", e.SerialNumber, e.ReasonCode, ok, r)
		}
		for _, x := range e.Extensions {
			if x.Critical {
				t.Errorf("entry %x has a critical extension %v", e.SerialNumber, x.Id)
			}
		}
	}
	if nums, fails := m.get(); fmt.Sprint(nums) != "[1 2]" || fails != 0 {
		t.Fatalf("metrics saw CRLs %v and %d failures", nums, fails)
	}
}

func TestCRLPublishConflict(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	ctx := context.Background()
	if _, err := p.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	// Another signer stores number 2 while this one signs its number 2: it builds number 3.
	var once atomic.Bool
	env.signer.set(func() error {
		if once.CompareAndSwap(false, true) {
			return env.svc.Store.Update(ctx, func(tx store.Tx) error {
				return tx.InsertCRL(store.CRL{Number: 2, ThisUpdate: t0, NextUpdate: t0.Add(time.Hour), DER: []byte{0x30, 0x00}})
			})
		}
		return nil
	}, false)
	c, err := p.Publish(ctx)
	if err != nil {
		t.Fatalf("Publish after a conflict: %v", err)
	}
	if c.Number != 3 {
		t.Fatalf("CRL numbered %d, want 3 (rebuilt after the conflict)", c.Number)
	}
	parseLatest(t, p)
}

func TestCRLPublishTokenFault(t *testing.T) {
	env := newBareService(t)
	m := &crlMetrics{}
	p := newPublisher(env, m)
	ctx := context.Background()
	errToken := errors.New("hsm: token unreachable")
	env.signer.set(func() error { return errToken }, false)
	if _, err := p.Publish(ctx); !errors.Is(err, errToken) {
		t.Fatalf("Publish with the token away = %v, want the token's error", err)
	}
	if _, err := p.Latest(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a CRL was stored although signing failed: %v", err)
	}
	env.signer.set(nil, true) // a signature that does not verify
	if _, err := p.Publish(ctx); !errors.Is(err, ca.ErrSelfCheck) {
		t.Fatalf("Publish with a bad signature = %v, want ErrSelfCheck", err)
	}
	if _, err := p.Latest(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a CRL with a bad signature was stored: %v", err)
	}
	if _, fails := m.get(); fails != 2 {
		t.Fatalf("%d failures counted, want 2", fails)
	}
}

// runPublisher starts Run on a publisher on the real clock and returns a function that stops
// it and waits.
func runPublisher(t *testing.T, p *CRLPublisher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitNumber(t *testing.T, p *CRLPublisher, want int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := p.Latest(context.Background())
		if err == nil && c.Number >= want {
			if c.Number != want {
				t.Fatalf("CRL number %d, want %d", c.Number, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CRL %d within %v (latest: %v, %v)", want, within, c, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCRLRun runs the publisher on the real clock: a CRL at start when there is none, one
// CRL for a burst of revocations, none without a trigger, and a token fault retried until the
// CRL is out.
func TestCRLRun(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	p.Issuer = p.Issuer.WithClock(time.Now)
	p.Now = nil
	p.Delay = 200 * time.Millisecond
	runPublisher(t, p)
	waitNumber(t, p, 1, 5*time.Second) // none stored: one at start

	now := time.Now()
	for i := range 10 {
		insertCerts(t, env.svc.Store, revokedCert(fmt.Sprintf("b%02x", i), now, store.ReasonKeyCompromise, now.Add(24*time.Hour)))
		p.Revoked([]string{fmt.Sprintf("b%02x", i)})
	}
	waitNumber(t, p, 2, 5*time.Second)
	time.Sleep(4 * p.Delay)
	waitNumber(t, p, 2, 0) // the burst made one CRL
	_, rl := parseLatest(t, p)
	if len(rl.RevokedCertificateEntries) != 10 {
		t.Fatalf("%d entries, want the burst's 10", len(rl.RevokedCertificateEntries))
	}

	// The token goes away: the trigger is kept and retried until the token is back.
	var fails atomic.Int32
	env.signer.set(func() error {
		if fails.Add(1) <= 2 {
			return errors.New("hsm: token unreachable")
		}
		return nil
	}, false)
	insertCerts(t, env.svc.Store, revokedCert("c1", time.Now(), store.ReasonSuperseded, now.Add(24*time.Hour)))
	p.Trigger()
	waitNumber(t, p, 3, 10*time.Second) // retried after 1 s, then 2 s
	if fails.Load() < 3 {
		t.Fatalf("the signer was asked %d times, want 2 failures and a success", fails.Load())
	}
	_, rl = parseLatest(t, p)
	if len(rl.RevokedCertificateEntries) != 11 {
		t.Fatalf("%d entries after the fault, want 11", len(rl.RevokedCertificateEntries))
	}
}

// TestCRLRunCatchUp: a revocation whose node stopped before it published (no Trigger here)
// is put on a CRL by the leader's next look, not a day later; a revocation dated after the CRL
// that lists it (another node's clock ahead) makes one CRL, not one at every look.
func TestCRLRunCatchUp(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	p.Issuer = p.Issuer.WithClock(time.Now)
	p.Now = nil
	p.Delay, p.CatchUp = time.Hour, 100*time.Millisecond
	runPublisher(t, p)
	waitNumber(t, p, 1, 5*time.Second) // at start

	time.Sleep(1100 * time.Millisecond) // thisUpdate is in seconds
	now := time.Now()
	insertCerts(t, env.svc.Store, revokedCert("e1", now, store.ReasonKeyCompromise, now.Add(24*time.Hour)))
	waitNumber(t, p, 2, 5*time.Second)
	_, rl := parseLatest(t, p)
	if len(rl.RevokedCertificateEntries) != 1 || rl.RevokedCertificateEntries[0].SerialNumber.Text(16) != "e1" {
		t.Fatalf("CRL 2 lists %v, want e1", rl.RevokedCertificateEntries)
	}

	insertCerts(t, env.svc.Store, revokedCert("e2", now.Add(time.Hour), store.ReasonKeyCompromise, now.Add(24*time.Hour)))
	waitNumber(t, p, 3, 5*time.Second)
	time.Sleep(10 * p.CatchUp)
	waitNumber(t, p, 3, 0)
}

// TestCRLRunAtStart: a CRL is published at every start, also when the newest is fresh: a
// revocation that committed before a stop, while its CRL waited for the delay, or one written
// while serve was stopped, is on the CRL at once. The stored CRL is reported meanwhile.
func TestCRLRunAtStart(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	p.Issuer = p.Issuer.WithClock(time.Now)
	p.Now = nil
	if _, err := p.Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	insertCerts(t, env.svc.Store, revokedCert("d1", now, store.ReasonKeyCompromise, now.Add(time.Hour)))
	m := &crlMetrics{}
	p.Metrics = m
	runPublisher(t, p)
	waitNumber(t, p, 2, 5*time.Second)
	time.Sleep(200 * time.Millisecond)
	waitNumber(t, p, 2, 0) // one at start, not more
	if nums, _ := m.get(); fmt.Sprint(nums) != "[1 2]" {
		t.Fatalf("metrics saw %v, want the stored CRL 1, then 2", nums)
	}
	_, rl := parseLatest(t, p)
	if len(rl.RevokedCertificateEntries) != 1 {
		t.Fatalf("%d entries, want the revocation made while stopped", len(rl.RevokedCertificateEntries))
	}
}

// TestCRLMillion builds, signs and stores a CRL of 1,000,000 entries from a real SQLite store
// and logs how long it took (issue 13 asks for under 15 s on the 2-core machine). It does not
// assert the time. Its store takes minutes to fill under the race detector, so it runs only
// with KEYARC_CRL_MILLION=1, as make bench does.
func TestCRLMillion(t *testing.T) {
	if os.Getenv("KEYARC_CRL_MILLION") == "" {
		t.Skip("set KEYARC_CRL_MILLION=1 to build a CRL of 1,000,000 entries")
	}
	env := newBareService(t)
	p := newPublisher(env, nil)
	const n, batch = 1_000_000, 20_000
	year := t0.Add(365 * 24 * time.Hour)
	fill := time.Now()
	for i := 0; i < n; i += batch {
		cs := make([]store.Certificate, 0, batch)
		for j := i; j < i+batch; j++ {
			s := new(big.Int).Lsh(big.NewInt(int64(j)+1), 96)
			cs = append(cs, revokedCert(s.Text(16), t0.Add(-time.Duration(j)*time.Second), []int{0, 1, 4, 5}[j%4], year))
		}
		insertCerts(t, env.svc.Store, cs...)
	}
	t.Logf("filled the store with %d revoked certificates in %v", n, time.Since(fill).Round(time.Millisecond))
	start := time.Now()
	c, err := p.Publish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	rl, err := x509.ParseRevocationList(c.DER)
	if err != nil {
		t.Fatal(err)
	}
	if len(rl.RevokedCertificateEntries) != n {
		t.Fatalf("%d entries, want %d", len(rl.RevokedCertificateEntries), n)
	}
	t.Logf("CRL of %d entries (%.1f MB) built, linted, signed, self-checked and stored in %v", n, float64(len(c.DER))/1e6, took.Round(time.Millisecond))
}

// TestCRLThisUpdateIncreases: two CRLs within one second get distinct thisUpdates (the public
// listener's Last-Modified), the newer one a second later.
func TestCRLThisUpdateIncreases(t *testing.T) {
	env := newBareService(t)
	p := newPublisher(env, nil)
	a, err := p.Publish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Publish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !b.ThisUpdate.Equal(a.ThisUpdate.Add(time.Second)) || !b.NextUpdate.Equal(b.ThisUpdate.Add(DefaultCRLValidity)) {
		t.Fatalf("CRL 1 thisUpdate %v, CRL 2 %v (nextUpdate %v)", a.ThisUpdate, b.ThisUpdate, b.NextUpdate)
	}
	parseLatest(t, p)
}
