package bulk

import (
	"context"
	"crypto"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestJobLeaseClockSkew: two nodes on one PostgreSQL database, one of whose clocks is minutes
// ahead of or behind the other's. Node A runs a job and waits in the middle of signing,
// renewing its lease; node B must not take the job over meanwhile (before, a node ahead found
// A's lease expired, and a node A behind stored a lease that had expired for B already: B
// claimed the job from a live node, every poll). Once A goes on, it finishes the job alone:
// every item done, none issued twice.
func TestJobLeaseClockSkew(t *testing.T) {
	srv := pgtest.Start(t)
	const skew, ttl, total = 5 * time.Minute, time.Second, 6
	for _, tt := range []struct {
		name string
		a, b time.Duration // each node's clock, off true time
	}{
		{"other ahead", 0, skew},
		{"holder behind", -skew, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := srv.NewDatabase(t)
			env := newEnvOn(t, func(tb testing.TB) store.Store {
				db, err := postgres.Open(context.Background(), url)
				if err != nil {
					tb.Fatal(err)
				}
				tb.Cleanup(func() { db.Close() })
				return db
			})
			var items []any
			for i := 1; i <= total; i++ {
				items = append(items, env.enrollItem(t, leaseMailbox(i)))
			}
			st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))

			g := newGate()
			sigA := &stoppingSigner{Signer: env.caKey, g: g, at: 2}
			a := env.node(t, "node-a", sigA, nil, ttl, nil)
			a.Service.Now = func() time.Time { return time.Now().Add(tt.a) }
			runNode(t, a)
			waitFor(t, "node A to wait while signing", g.stopped)

			var logB syncBuffer
			b := env.node(t, "node-b", env.caKey, nil, ttl, &logB)
			b.Service.Now = func() time.Time { return time.Now().Add(tt.b) }
			runNode(t, b)
			time.Sleep(3 * ttl / 2) // B looks for jobs at once, then twice a second
			if strings.Contains(logB.String(), "bulk job running") {
				t.Errorf("node B took the job over from node A, which renews its lease:\n%s", logB.String())
			}
			var l *store.Lease
			err := env.db.View(context.Background(), func(tx store.Tx) (err error) { l, err = tx.GetLease(store.JobLease(st.ID)); return err })
			if err != nil || l.Holder != "node-a" || l.Token != 1 {
				t.Errorf("job lease %+v, %v while node A runs the job; want node-a's first", l, err)
			}
			g.cont()
			waitFor(t, "the job to finish", func() bool {
				s, err := env.mgr.Status(context.Background(), st.ID)
				return err == nil && s.State == store.JobDone
			})
			checkNoneTwice(t, env, st.ID, total, leaseMailbox)
		})
	}
}

// jumpingSigner is a CA key whose at-th signature steps the node's clock forward.
type jumpingSigner struct {
	crypto.Signer
	at   int64
	n    atomic.Int64
	jump func()
}

func (s *jumpingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.n.Add(1) == s.at {
		s.jump()
	}
	return s.Signer.Sign(r, digest, opts)
}

// TestJobClockStepForward: one node whose clock steps an hour forward (an NTP correction) in
// the middle of a job finishes the job in the same run, every item done once. Before, the
// fencing checks compared the lease's expiry with the stepped clock: the node found its own
// lease expired, stopped the run as if another node had taken it over, and took it again with
// a new token at its next poll, undoing the items in flight.
func TestJobClockStepForward(t *testing.T) {
	env := newEnv(t)
	log := env.logTo()
	var off atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
	sig := &jumpingSigner{Signer: env.caKey, at: 3, jump: func() { off.Store(int64(time.Hour)) }}
	issuer, err := ca.New(sig, env.svc.Issuer.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	env.svc.Issuer, env.svc.Now = issuer.WithClock(clock), clock
	env.mgr.LeaseTTL = 3 * time.Second
	const total = 8
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, leaseMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	env.runUntilDone(t, st.ID)
	if sig.n.Load() < 3 {
		t.Fatalf("%d signatures: the clock never stepped", sig.n.Load())
	}
	checkNoneTwice(t, env, st.ID, total, leaseMailbox)
	if s := log.String(); strings.Contains(s, "taken over") || strings.Contains(s, "interrupted items") {
		t.Errorf("the run stopped when the clock stepped forward:\n%s", s)
	}
}
