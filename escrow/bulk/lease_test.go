package bulk

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// Two nodes on one database: the tests below run on a SQLite file opened twice and on a
// PostgreSQL database opened by two pools, as two keyarc nodes would.

// backends runs f on a fresh env of each backend.
func backends(t *testing.T, f func(t *testing.T, env *testEnv)) {
	t.Run("sqlite", func(t *testing.T) { f(t, newEnv(t)) })
	t.Run("postgres", func(t *testing.T) {
		srv := pgtest.Start(t)
		url := srv.NewDatabase(t)
		f(t, newEnvOn(t, func(tb testing.TB) store.Store {
			db, err := postgres.Open(context.Background(), url)
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { db.Close() })
			return db
		}))
	})
}

// gate stands for a process stopped with kill -STOP: once closed, every call through it
// waits until it opens again.
type gate struct {
	mu     sync.Mutex
	closed bool
	open   chan struct{}
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) stop() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func (g *gate) cont() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.closed = false
		close(g.open)
	}
}

func (g *gate) stopped() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

func (g *gate) wait() {
	g.mu.Lock()
	closed, open := g.closed, g.open
	g.mu.Unlock()
	if closed {
		<-open
	}
}

// gatedStore is a node's store handle that stops with its gate.
type gatedStore struct {
	store.Store
	g *gate
}

func (s *gatedStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	s.g.wait()
	return s.Store.Update(ctx, fn)
}

func (s *gatedStore) View(ctx context.Context, fn func(store.Tx) error) error {
	s.g.wait()
	return s.Store.View(ctx, fn)
}

// stoppingSigner is a node's CA key: at its at-th signature it closes the gate (the node is
// stopped in the middle of signing a batch), and it waits while the gate is closed.
type stoppingSigner struct {
	crypto.Signer
	g  *gate
	at int64
	n  atomic.Int64
}

func (s *stoppingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.n.Add(1) == s.at {
		s.g.stop()
	}
	s.g.wait()
	return s.Signer.Sign(r, digest, opts)
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// node makes another node of env's appliance: its own store handle (through g, when set),
// its own issuer over the CA key signer, and a Manager named name.
func (env *testEnv) node(tb testing.TB, name string, signer crypto.Signer, g *gate, ttl time.Duration, log io.Writer) *Manager {
	tb.Helper()
	var db store.Store = env.handle(tb)
	if g != nil {
		db = &gatedStore{Store: db, g: g}
	}
	issuer, err := ca.New(signer, env.svc.Issuer.Certificate())
	if err != nil {
		tb.Fatal(err)
	}
	svc := &escrow.Service{Store: db, Issuer: issuer, Templates: env.svc.Templates, Transport: env.svc.Transport}
	m := &Manager{Service: svc, Dir: filepath.Join(tb.TempDir(), "jobs"), Node: name, LeaseTTL: ttl}
	if log != nil {
		m.Logger = slog.New(slog.NewTextHandler(log, nil))
	}
	return m
}

// runNode runs m until the test ends.
func runNode(tb testing.TB, m *Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	tb.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds, or fails tb after a minute.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
	}
}

// checkNoneTwice checks a finished job: every item done, each certificate in the results
// issued once with its active record, and each item's mailbox holding exactly one issued
// certificate (so no certificate a stopped node signed was stored as issued).
func checkNoneTwice(tb testing.TB, env *testEnv, id string, total int, mailbox func(int) string) {
	tb.Helper()
	st, err := env.mgr.Status(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	if st.State != store.JobDone || st.Done != total || st.Failed != 0 {
		tb.Fatalf("status %+v, want done with %d done", st, total)
	}
	res := env.results(tb, id)
	wantStates(tb, res, total)
	env.checkInvariant(tb, res)
	per := issuedPerMailbox(tb, env)
	for i := 1; i <= total; i++ {
		if per[mailbox(i)] != 1 {
			tb.Errorf("%s: %d issued certificates, want 1", mailbox(i), per[mailbox(i)])
		}
	}
}

func leaseMailbox(i int) string { return fmt.Sprintf("lease%d@example.org", i) }

// TestJobTakeoverAfterPause: node A runs a job and is stopped (kill -STOP) while signing its
// first batch, with every item reserved; its lease expires, node B claims the job, undoes A's
// reservations and finishes it. Then A wakes up (kill -CONT) with certificates signed: its
// renewal and its writes are refused (fenced), it stops the job, and nothing A signed is
// stored as issued. done == total, no serial issued twice.
func TestJobTakeoverAfterPause(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		const total, ttl = 10, time.Second
		var items []any
		for i := 1; i <= total; i++ {
			items = append(items, env.enrollItem(t, leaseMailbox(i)))
		}
		st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))

		g := newGate()
		sigA := &stoppingSigner{Signer: env.caKey, g: g, at: 3}
		var logA syncBuffer
		a := env.node(t, "node-a", sigA, g, ttl, &logA)
		stopA := runNode(t, a)
		waitFor(t, "node A to stop while signing", g.stopped)

		b := env.node(t, "node-b", env.caKey, nil, ttl, nil)
		stopB := runNode(t, b)
		waitFor(t, "node B to finish the job", func() bool {
			s, err := b.Status(context.Background(), st.ID)
			return err == nil && s.State == store.JobDone
		})
		var lease *store.Lease
		mustView := func() {
			if err := env.db.View(context.Background(), func(tx store.Tx) (err error) {
				lease, err = tx.GetLease(store.JobLease(st.ID))
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		mustView()
		taken := lease.Token
		if taken < 2 {
			t.Errorf("job lease token %d after the takeover, want it raised", taken)
		}

		g.cont()
		waitFor(t, "node A to find its lease lost", func() bool {
			return strings.Contains(logA.String(), "taken over by another node")
		})
		stopA()
		stopB()
		if n := sigA.n.Load(); n < 3 {
			t.Errorf("node A signed %d certificates, want at least 3 (stopped at the third)", n)
		}
		mustView()
		if lease.Token != taken || lease.Holder != "" {
			t.Errorf("job lease %+v after both stopped, want released by node B (token %d)", lease, taken)
		}
		checkNoneTwice(t, env, st.ID, total, leaseMailbox)
	})
}

// TestFencedWriterRefused drives node A's run by hand: it issues item 1 under its lease; item
// 3's reservation commits, then node B takes the lease while A signs, so A's finishing
// transaction is refused and the certificate stays unissued; every later write of A (a
// reservation, a failed item, the job's end, a new pass) is refused with ErrLeaseLost and
// stores nothing. Node B then finishes the job: done == total, nothing issued twice.
func TestFencedWriterRefused(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		const total = 5
		var items []any
		for i := 1; i <= total; i++ {
			items = append(items, env.enrollItem(t, leaseMailbox(i)))
		}
		st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
		env.mgr.Node, env.mgr.LeaseTTL = "node-a", time.Minute
		r, lines := crashRun(t, env, st.ID)
		ctx := context.Background()

		w1 := r.prepared(t, lines, 1)
		is1, err := env.svc.IssueReserved(ctx, r.reserved(w1))
		if err != nil {
			t.Fatalf("item 1 under the lease: %v", err)
		}
		var taken store.Lease
		takeOver := func() {
			if err := env.db.Update(ctx, func(tx store.Tx) (err error) {
				taken, err = tx.AcquireLease(store.JobLease(st.ID), "node-b", r.lease.Expires, time.Minute)
				return err
			}); err != nil {
				t.Fatalf("node B takes the lease: %v", err)
			}
		}
		w3 := r.prepared(t, lines, 3)
		req := r.reserved(w3)
		var signed *x509.Certificate
		req.Prepare = func(cert *x509.Certificate) error { signed = cert; takeOver(); return nil }
		if _, err := env.svc.IssueReserved(ctx, req); !errors.Is(err, store.ErrLeaseLost) {
			t.Fatalf("item 3 finished after the takeover: %v, want ErrLeaseLost", err)
		}
		if signed == nil {
			t.Fatal("item 3 was not signed")
		}
		var c3 *store.Certificate
		if err := env.db.View(ctx, func(tx store.Tx) (err error) {
			c3, err = tx.GetCertificate(store.FormatSerial(signed.SerialNumber))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if c3.State == store.StateIssued {
			t.Fatalf("item 3's certificate, signed by the fenced node, is stored as issued")
		}

		w2 := r.prepared(t, lines, 2)
		if _, err := env.svc.IssueReserved(ctx, r.reserved(w2)); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("item 2 reserved after the takeover: %v, want ErrLeaseLost", err)
		}
		if err := env.db.View(ctx, func(tx store.Tx) error {
			_, err := tx.GetCertificate(store.FormatSerial(w2.serial))
			return err
		}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("item 2's serial after a refused reservation: %v, want ErrNotFound", err)
		}
		err = env.db.Update(ctx, func(tx store.Tx) error {
			if err := r.fence(tx); err != nil {
				return err
			}
			return tx.FailJobItem(st.ID, 4, "test")
		})
		if !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("failing item 4 after the takeover: %v, want ErrLeaseLost", err)
		}
		if err := env.mgr.finish(ctx, st.ID, store.JobCancelled, 0, r.fence); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("cancelling the job after the takeover: %v, want ErrLeaseLost", err)
		}
		if _, _, _, err := r.prepare(ctx, 2); !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("a new pass after the takeover: %v, want ErrLeaseLost", err)
		}

		b := env.node(t, "node-b", env.caKey, nil, time.Minute, nil)
		// The takeover above was B's own claim: B knows the lease's token.
		b.tokens.Store(taken.Name, taken.Token)
		stopB := runNode(t, b)
		waitFor(t, "node B to finish the job", func() bool {
			s, err := b.Status(ctx, st.ID)
			return err == nil && s.State == store.JobDone
		})
		stopB()
		checkNoneTwice(t, env, st.ID, total, leaseMailbox)
		if res := env.results(t, st.ID); res[1].Serial != is1.Serial {
			t.Errorf("item 1: serial %s, want %s, issued by node A before the takeover", res[1].Serial, is1.Serial)
		}
	})
}

// TestNodesShareJobs: two nodes claiming jobs at once finish two queued jobs, each item of
// each job issued exactly once.
func TestNodesShareJobs(t *testing.T) {
	env := newEnv(t)
	const each = 4
	var ids []string
	for j := range 2 {
		var items []any
		for i := 1; i <= each; i++ {
			items = append(items, env.enrollItem(t, leaseMailbox(j*each+i)))
		}
		ids = append(ids, submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...)).ID)
	}
	a := env.node(t, "node-a", env.caKey, nil, time.Minute, nil)
	b := env.node(t, "node-b", env.caKey, nil, time.Minute, nil)
	runNode(t, a)
	runNode(t, b)
	for _, id := range ids {
		waitFor(t, "job "+id, func() bool {
			s, err := env.mgr.Status(context.Background(), id)
			return err == nil && s.State == store.JobDone
		})
	}
	per := issuedPerMailbox(t, env)
	for i := 1; i <= 2*each; i++ {
		if per[leaseMailbox(i)] != 1 {
			t.Errorf("%s: %d issued certificates, want 1", leaseMailbox(i), per[leaseMailbox(i)])
		}
	}
}

// leaseChecks is a store that counts the lease checks made in its Update functions.
type leaseChecks struct {
	store.Store
	n *atomic.Int64
}

func (s leaseChecks) Update(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error { return fn(leaseCheckTx{tx, s.n}) })
}

type leaseCheckTx struct {
	store.Tx
	n *atomic.Int64
}

func (tx leaseCheckTx) CheckLease(name, holder string, token int64, now time.Time) error {
	tx.n.Add(1)
	return tx.Tx.CheckLease(name, holder, token, now)
}

// TestFenceOncePerTransaction: the issuance of a batch checks the job's lease once in each of
// its transactions (the reservation, the finish), not once for every item's hook in them.
func TestFenceOncePerTransaction(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		checks := new(atomic.Int64)
		env.svc.Store = leaseChecks{env.db, checks}
		const n = 40
		runEnrollJob(t, env, n)
		// Two per item without the cache; with it, two per batch and one for each of the
		// pass's start and the job's end. The batches are at least a few items each.
		if got := checks.Load(); got >= n {
			t.Errorf("%d lease checks for %d items, want fewer than one per item", got, n)
		}
	})
}

// reserveCounts is a store that counts the job items reserved and finished one by one and by
// batch in its Update functions.
type reserveCounts struct {
	store.Store
	single, batch, finSingle, finBatch *atomic.Int64
}

func (s reserveCounts) Update(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error {
		return fn(reserveCountTx{tx, s.single, s.batch, s.finSingle, s.finBatch})
	})
}

type reserveCountTx struct {
	store.Tx
	single, batch, finSingle, finBatch *atomic.Int64
}

func (tx reserveCountTx) FinishJobItem(jobID string, seq int, pkcs12, password []byte) error {
	tx.finSingle.Add(1)
	return tx.Tx.FinishJobItem(jobID, seq, pkcs12, password)
}

func (tx reserveCountTx) FinishJobItems(jobID string, seqs []int, pkcs12s, passwords [][]byte) error {
	tx.finBatch.Add(int64(len(seqs)))
	return tx.Tx.(itemsFinisher).FinishJobItems(jobID, seqs, pkcs12s, passwords)
}

func (tx reserveCountTx) ReserveJobItem(jobID string, seq int, serial, recordID string) error {
	tx.single.Add(1)
	return tx.Tx.ReserveJobItem(jobID, seq, serial, recordID)
}

func (tx reserveCountTx) ReserveJobItems(jobID string, items []store.DoneItem) error {
	tx.batch.Add(int64(len(items)))
	return tx.Tx.(itemsReserver).ReserveJobItems(jobID, items)
}

// TestBatchReservation: on PostgreSQL, whose writer reserves and finishes many job items in one
// statement each, an enroll job's batches reserve and finish their items together rather than
// one row per item.
func TestBatchReservation(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	env := newEnvOn(t, func(tb testing.TB) store.Store {
		db, err := postgres.Open(context.Background(), url)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { db.Close() })
		return db
	})
	single, batch, finSingle, finBatch := new(atomic.Int64), new(atomic.Int64), new(atomic.Int64), new(atomic.Int64)
	env.svc.Store = reserveCounts{env.db, single, batch, finSingle, finBatch}
	const n = 60
	runEnrollJob(t, env, n)
	if single.Load()+batch.Load() != n || single.Load() >= n/2 {
		t.Errorf("%d items reserved one by one and %d by batch, want %d in all, most by batch", single.Load(), batch.Load(), n)
	}
	if finSingle.Load()+finBatch.Load() != n || finSingle.Load() >= n/2 {
		t.Errorf("%d items finished one by one and %d by batch, want %d in all, most by batch", finSingle.Load(), finBatch.Load(), n)
	}
}

// batchTx is a transaction of a store that reserves and finishes job items by batch, for the
// reservation's logic alone.
type batchTx struct {
	store.Tx // nil: only the methods below are called
	id       int
	refuse   bool // ReserveJobItems fails
}

func (tx *batchTx) CheckLease(name, holder string, token int64, now time.Time) error { return nil }
func (tx *batchTx) CurrentEpoch() (uint32, error)                                    { return 1, nil }
func (tx *batchTx) ReserveJobItems(string, []store.DoneItem) error {
	if tx.refuse {
		return store.ErrConflict
	}
	return nil
}
func (tx *batchTx) FinishJobItems(string, []int, [][]byte, [][]byte) error { return nil }

// TestBatchFallbackOneByOne: when a batch's reservation fails and the pipeline issues its items
// one by one, each in its own transactions, every item reserves and finishes itself: a finish
// is never left to a hook that its transaction does not run. And in the batch's own
// transactions, the first hook reserves for all and the last signed item's hook finishes all.
func TestBatchFallbackOneByOne(t *testing.T) {
	r := &jobRun{m: &Manager{}, job: &store.Job{ID: "j"}}
	items := func() []*work {
		var ws []*work
		for seq := 1; seq <= 3; seq++ {
			ws = append(ws, &work{seq: seq, serial: big.NewInt(int64(seq)), rec: &escrow.SealedRecord{ID: fmt.Sprint("r", seq), Epoch: 1}})
		}
		return ws
	}
	check := func(what string, done bool, err error, want bool) {
		t.Helper()
		if err != nil || done != want {
			t.Errorf("%s: done %v, %v; want %v", what, done, err, want)
		}
	}

	// The batch's way: one reservation and one finish transaction.
	b := &reservation{items: items()}
	t1, t2 := &batchTx{id: 1}, &batchTx{id: 2}
	for i := range b.items {
		done, err := b.reserve(t1, r)
		check(fmt.Sprint("batch reserve ", i), done, err, true)
	}
	for _, w := range b.items {
		b.signed(w)
	}
	for i := range b.items {
		done, err := b.finish(t2, r)
		check(fmt.Sprint("batch finish ", i), done, err, true)
	}

	// One by one, after the batch's reservation failed.
	b = &reservation{items: items()}
	if _, err := b.reserve(&batchTx{id: 1, refuse: true}, r); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the batch's reservation: %v, want its error", err)
	}
	singles := []*batchTx{{id: 2}, {id: 3}, {id: 4}}
	for i, tx := range singles {
		done, err := b.reserve(tx, r)
		check(fmt.Sprint("single reserve ", i), done, err, false)
	}
	for _, w := range b.items {
		b.signed(w)
	}
	for i := range singles {
		done, err := b.finish(&batchTx{id: 10 + i}, r)
		check(fmt.Sprint("single finish ", i), done, err, false)
	}
}

// runEnrollJob runs an enroll job of n items to its end on env and checks that every item was
// done and the job's invariants hold.
func runEnrollJob(t *testing.T, env *testEnv, n int) {
	t.Helper()
	items := make([]any, n)
	for i := range items {
		items[i] = env.enrollItem(t, fmt.Sprintf("user%d@example.org", i))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	st = env.runUntilDone(t, st.ID)
	if st.Done != n {
		t.Fatalf("done %d of %d", st.Done, n)
	}
	env.checkInvariant(t, env.results(t, st.ID))
}

// TestJobFileOnAnotherNode: nodes on machines of their own each keep job files in their own
// state folder. Node B, which lacks a job's file, leaves the job alone (before, it claimed the
// job and cancelled it for want of its file, losing every item); node A, which has the file,
// then runs it to the end.
func TestJobFileOnAnotherNode(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		const total = 4
		var items []any
		for i := 1; i <= total; i++ {
			items = append(items, env.enrollItem(t, leaseMailbox(i)))
		}
		st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
		file := filepath.Join(env.mgr.Dir, st.ID+jobFileExt)
		away := file + ".elsewhere"
		if err := os.Rename(file, away); err != nil {
			t.Fatal(err)
		}
		var logB syncBuffer
		b := env.node(t, "node-b", env.caKey, nil, time.Second, &logB)
		stopB := runNode(t, b)
		time.Sleep(1500 * time.Millisecond) // B looks for jobs at once, then twice a second
		stopB()
		if s, err := env.mgr.Status(context.Background(), st.ID); err != nil || s.State != store.JobQueued {
			t.Fatalf("status %+v, %v after node B, want the job still queued", s, err)
		}
		if !strings.Contains(logB.String(), "not on this node") {
			t.Errorf("node B's log says nothing of the missing file:\n%s", logB.String())
		}

		if err := os.Rename(away, file); err != nil {
			t.Fatal(err)
		}
		a := env.node(t, "node-a", env.caKey, nil, time.Second, nil)
		runNode(t, a)
		waitFor(t, "node A to finish the job", func() bool {
			s, err := a.Status(context.Background(), st.ID)
			return err == nil && s.State == store.JobDone
		})
		checkNoneTwice(t, env, st.ID, total, leaseMailbox)
	})
}

// TestSameNodeNameTwice: two processes started with the same node name (a copied state
// folder). Node A runs a job and waits in the middle of signing, renewing its lease; the
// second process, named alike, must not take the lease as its own and run the job alongside
// (before, it did: each undid the other's reservations and items failed). Once A goes on, it
// finishes the job alone: every item done, none failed, none issued twice.
func TestSameNodeNameTwice(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		const total, ttl = 10, time.Second
		var items []any
		for i := 1; i <= total; i++ {
			items = append(items, env.enrollItem(t, leaseMailbox(i)))
		}
		st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))

		g := newGate()
		sigA := &stoppingSigner{Signer: env.caKey, g: g, at: 3}
		a := env.node(t, "node-a", sigA, nil, ttl, nil)
		runNode(t, a)
		waitFor(t, "node A to wait while signing", g.stopped)

		var logB syncBuffer
		b := env.node(t, "node-a", env.caKey, nil, ttl, &logB)
		runNode(t, b)
		time.Sleep(3 * ttl / 2) // B looks for jobs at once, then twice a second
		// Only what A signed can be done.
		if s, err := env.mgr.Status(context.Background(), st.ID); err != nil || int64(s.Done) > sigA.n.Load() || s.Failed != 0 {
			t.Errorf("status %+v, %v while node A waits: the second process named node-a ran the job", s, err)
		}
		if strings.Contains(logB.String(), "bulk job running") {
			t.Errorf("the second process named node-a ran the job:\n%s", logB.String())
		}
		g.cont()
		waitFor(t, "the job to finish", func() bool {
			s, err := env.mgr.Status(context.Background(), st.ID)
			return err == nil && s.State == store.JobDone
		})
		checkNoneTwice(t, env, st.ID, total, leaseMailbox)
		if !strings.Contains(logB.String(), "held under this node's name") {
			t.Errorf("the second process's log says nothing of the lease held under its name:\n%s", logB.String())
		}
	})
}

// TestJobTemplateOnAnotherNode: node B's configuration lacks the job's template. B leaves the
// job alone (before, it claimed the job and cancelled it, losing every item); node A, which
// has the template, runs it to the end.
func TestJobTemplateOnAnotherNode(t *testing.T) {
	env := newEnv(t)
	const total = 4
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, leaseMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	var logB syncBuffer
	b := env.node(t, "node-b", env.caKey, nil, time.Second, &logB)
	b.Service.Templates = nil
	stopB := runNode(t, b)
	time.Sleep(1500 * time.Millisecond) // B looks for jobs at once, then twice a second
	stopB()
	if s, err := env.mgr.Status(context.Background(), st.ID); err != nil || s.State != store.JobQueued {
		t.Fatalf("status %+v, %v after node B, want the job still queued", s, err)
	}
	if !strings.Contains(logB.String(), "its template is not in this node's configuration") {
		t.Errorf("node B's log says nothing of the missing template:\n%s", logB.String())
	}
	a := env.node(t, "node-a", env.caKey, nil, time.Second, nil)
	runNode(t, a)
	waitFor(t, "node A to finish the job", func() bool {
		s, err := a.Status(context.Background(), st.ID)
		return err == nil && s.State == store.JobDone
	})
	checkNoneTwice(t, env, st.ID, total, leaseMailbox)
}
