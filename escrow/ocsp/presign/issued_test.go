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

// runSigner runs s until the test ends.
func runSigner(t *testing.T, s *Signer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
}

// TestIssuedBatched: certificates given to Issued one by one are signed together, in one
// transaction, once IssuedDelay has passed since the first; nothing is signed before.
func TestIssuedBatched(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	s := e.signer(e.responder)
	cs := &countingStore{Store: e.db}
	s.Store = cs
	s.Interval = time.Hour
	s.IssuedDelay = 2 * time.Second
	runSigner(t, s)
	waitFor(t, func() bool { return e.due(t) == 0 })
	before := cs.updates.Load()
	fresh := e.addCerts(t, 0xd000, 5)
	for _, sn := range fresh {
		s.Issued([]string{sn})
	}
	if d := e.due(t); d != 5 {
		t.Fatalf("%d of 5 new certificates still without a response right after Issued, want 5 (signed after IssuedDelay)", d)
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

// TestIssuedFullBatchAtOnce: Batch serials waiting start a pass without waiting for
// IssuedDelay; a revocation does not wait for it either, and takes the waiting serials along.
func TestIssuedFullBatchAtOnce(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	s := e.signer(e.responder)
	s.Batch = 4
	s.Interval = time.Hour
	s.IssuedDelay = time.Hour
	runSigner(t, s)
	waitFor(t, func() bool { return e.due(t) == 0 })
	full := e.addCerts(t, 0xe000, 4)
	s.Issued(full)
	waitFor(t, func() bool { return e.due(t) == 0 })

	waiting := e.addCerts(t, 0xe100, 2)
	s.Issued(waiting)
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(full[0], store.ReasonKeyCompromise, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	s.Revoked(full[:1])
	waitFor(t, func() bool { return e.due(t) == 0 })
	if r := e.status(t, full[0]); r.Status != xocsp.Revoked {
		t.Errorf("revoked serial: status %d", r.Status)
	}
	for _, sn := range waiting {
		if r := e.status(t, sn); r.Status != xocsp.Good {
			t.Errorf("serial %s: status %d", sn, r.Status)
		}
	}
}
