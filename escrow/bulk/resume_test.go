package bulk

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
)

// countingSigner counts the CA's signatures.
type countingSigner struct {
	crypto.Signer
	n atomic.Int64
}

func (s *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(r, digest, opts)
}

// countingDecrypter counts the transport key's decryptions (one per enroll item's envelope).
type countingDecrypter struct {
	crypto.Decrypter
	n atomic.Int64
}

func (d *countingDecrypter) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	d.n.Add(1)
	return d.Decrypter.Decrypt(r, msg, opts)
}

// countTokenOps makes the environment's CA key and transport key count their operations.
func countTokenOps(tb testing.TB, env *testEnv) (*countingSigner, *countingDecrypter) {
	tb.Helper()
	sig := &countingSigner{Signer: env.caKey}
	issuer, err := ca.New(sig, env.svc.Issuer.Certificate())
	if err != nil {
		tb.Fatal(err)
	}
	env.svc.Issuer = issuer
	dec := &countingDecrypter{Decrypter: env.svc.Transport.Key}
	env.svc.Transport = &escrow.Transport{Cert: env.svc.Transport.Cert, Key: dec}
	sig.n.Store(0)
	return sig, dec
}

// crashRun is a run of a submitted job whose items a test drives one step at a time, with the
// pipeline's own stages, to build the states a crash leaves.
func crashRun(tb testing.TB, env *testEnv, id string) (*jobRun, map[int][]byte) {
	tb.Helper()
	ctx := context.Background()
	var job *store.Job
	if err := env.db.View(ctx, func(tx store.Tx) (err error) { job, err = tx.GetJob(id); return err }); err != nil {
		tb.Fatal(err)
	}
	// The run holds the job's lease as the Manager's would; a Manager started later on the
	// same node name takes it over, as a restarted node does.
	var lease store.Lease
	began := time.Now()
	if err := env.db.Update(ctx, func(tx store.Tx) error {
		now, err := tx.LeaseNow(env.mgr.now())
		if err != nil {
			return err
		}
		lease, err = tx.AcquireLease(store.JobLease(id), env.mgr.node(), now, env.mgr.leaseTTL())
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	r := env.mgr.newRun(job, lease, began, nil)
	r.prog = &progress{id: id, total: job.Total}
	if err := r.setup(ctx); err != nil {
		tb.Fatal(err)
	}
	rd, f, err := r.open()
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	lines := map[int][]byte{}
	for {
		seq, line, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		lines[seq] = append([]byte(nil), line...)
	}
	if err := env.db.Update(ctx, func(tx store.Tx) error { return tx.StartJob(id, env.mgr.now()) }); err != nil {
		tb.Fatal(err)
	}
	return r, lines
}

// prepared verifies and seals item seq as the pipeline does, ready to issue.
func (r *jobRun) prepared(tb testing.TB, lines map[int][]byte, seq int) *work {
	tb.Helper()
	w := r.seal(r.verify(&work{seq: seq, line: lines[seq]}))
	if w.err != nil {
		tb.Fatalf("item %d: %v", seq, w.err)
	}
	return w
}

// issuedPerMailbox counts the issued certificates of each mailbox of the template.
func issuedPerMailbox(tb testing.TB, env *testEnv) map[string]int {
	tb.Helper()
	out := map[string]int{}
	err := env.db.View(context.Background(), func(tx store.Tx) error {
		certs, err := tx.ListCertificates(store.Filter{})
		for _, c := range certs {
			if c.Template == "smime-encryption" && c.State == store.StateIssued {
				out[c.Email]++
			}
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func resumeMailbox(i int) string { return fmt.Sprintf("resume%d@example.org", i) }

// TestResumeSkipsItemsWithAnOutcome builds, without any timing, the state of a job stopped
// after some of its items were done and one failed, then runs it: the resumed run must not
// touch those items again (no envelope opened, nothing signed for them: the resume bitmap), and
// nothing is issued twice.
func TestResumeSkipsItemsWithAnOutcome(t *testing.T) {
	env := newEnv(t)
	const total = 12
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, resumeMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	r, lines := crashRun(t, env, st.ID)
	ctx := context.Background()
	before := map[int]string{}
	for seq := 1; seq <= 5; seq++ {
		w := r.prepared(t, lines, seq)
		is, err := env.svc.IssueReserved(ctx, r.reserved(w))
		if err != nil {
			t.Fatalf("item %d: %v", seq, err)
		}
		before[seq] = is.Serial
	}
	if err := env.db.Update(ctx, func(tx store.Tx) error { return tx.FailJobItem(st.ID, 6, "bad CSR") }); err != nil {
		t.Fatal(err)
	}

	// The restart: sweep, then the scheduler resumes the job.
	if _, err := env.svc.Sweep(ctx, env.mgr.now()); err != nil {
		t.Fatal(err)
	}
	sig, dec := countTokenOps(t, env)
	st = env.runUntilDone(t, st.ID)
	if st.State != store.JobDone || st.Done != total-1 || st.Failed != 1 {
		t.Fatalf("status %+v", st)
	}
	const rest = total - 6
	if got := dec.n.Load(); got != rest {
		t.Errorf("the resumed run opened %d envelopes, want %d (only the items without an outcome)", got, rest)
	}
	if got := sig.n.Load(); got != rest {
		t.Errorf("the resumed run signed %d certificates, want %d", got, rest)
	}
	res := env.results(t, st.ID)
	wantStates(t, res, total, 6)
	env.checkInvariant(t, res)
	for seq, serial := range before {
		if res[seq].Serial != serial {
			t.Errorf("item %d: serial %s, was %s before the restart", seq, res[seq].Serial, serial)
		}
	}
	for i := 1; i <= total; i++ {
		if got, want := issuedPerMailbox(t, env)[resumeMailbox(i)], map[bool]int{true: 0, false: 1}[i == 6]; got != want {
			t.Errorf("%s: %d issued certificates, want %d", resumeMailbox(i), got, want)
		}
	}
}

// TestResumeReservedItems builds the reservations a crash leaves: item 2 reserved with its
// certificate issued (the issuance committed, the item's own update lost), item 3 reserved with
// a certificate never signed (pending), item 4 reserved with a certificate already marked
// failed. The resumed job issues 3 and 4 again, never 2, and ends with every item done once.
func TestResumeReservedItems(t *testing.T) {
	env := newEnv(t)
	const total = 6
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, resumeMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	r, lines := crashRun(t, env, st.ID)
	ctx := context.Background()

	w1 := r.prepared(t, lines, 1)
	if _, err := env.svc.IssueReserved(ctx, r.reserved(w1)); err != nil {
		t.Fatal(err)
	}
	// Item 2: issued, but the item is still reserved.
	w2 := r.prepared(t, lines, 2)
	req := r.reserved(w2)
	req.Finish = nil
	is2, err := env.svc.IssueReserved(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// Item 3: reserved, never signed; item 4: reserved, its issuance undone.
	for seq, certState := range map[int]string{3: store.StatePending, 4: store.StateFailed} {
		w := r.prepared(t, lines, seq)
		serial := store.FormatSerial(w.serial)
		err := env.db.Update(ctx, func(tx store.Tx) error {
			if err := tx.ReserveJobItem(st.ID, seq, serial, w.rec.ID); err != nil {
				return err
			}
			if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "smime-encryption", Email: w.email, RecordID: w.rec.ID}); err != nil {
				return err
			}
			if err := tx.InsertRecord(store.Record{ID: w.rec.ID, Serial: serial, Email: w.email, Epoch: w.rec.Epoch, Blob: w.rec.Blob}); err != nil {
				return err
			}
			if certState == store.StateFailed {
				return tx.FailCertificate(serial)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	if _, err := env.svc.Sweep(ctx, env.mgr.now()); err != nil {
		t.Fatal(err)
	}
	sig, _ := countTokenOps(t, env)
	st = env.runUntilDone(t, st.ID)
	if st.State != store.JobDone || st.Done != total || st.Failed != 0 {
		t.Fatalf("status %+v", st)
	}
	if got := sig.n.Load(); got != total-2 {
		t.Errorf("the resumed run signed %d certificates, want %d (items 3 to %d)", got, total-2, total)
	}
	res := env.results(t, st.ID)
	wantStates(t, res, total)
	env.checkInvariant(t, res)
	if res[2].Serial != is2.Serial {
		t.Errorf("item 2: serial %s, want %s, the certificate issued before the crash", res[2].Serial, is2.Serial)
	}
	per := issuedPerMailbox(t, env)
	for i := 1; i <= total; i++ {
		if per[resumeMailbox(i)] != 1 {
			t.Errorf("%s: %d issued certificates, want 1", resumeMailbox(i), per[resumeMailbox(i)])
		}
	}
	var reserved int
	if err := env.db.View(ctx, func(tx store.Tx) (err error) { _, _, reserved, err = tx.JobCounts(st.ID); return err }); err != nil {
		t.Fatal(err)
	}
	if reserved != 0 {
		t.Errorf("%d items left reserved", reserved)
	}
}

// errTokenDown stands for a token that stopped answering.
var errTokenDown = errors.New("test: token does not answer")

// flakyDecrypter fails with errTokenDown while down is set.
type flakyDecrypter struct {
	crypto.Decrypter
	down  atomic.Bool
	fails atomic.Int64
}

func (d *flakyDecrypter) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	if d.down.Load() {
		d.fails.Add(1)
		return nil, errTokenDown
	}
	return d.Decrypter.Decrypt(r, msg, opts)
}

// tokenDown gives env's transport key a decrypter whose token is down, its error the
// manager's CauseToken.
func tokenDown(env *testEnv) *flakyDecrypter {
	dec := &flakyDecrypter{Decrypter: env.svc.Transport.Key}
	dec.down.Store(true)
	env.svc.Transport = &escrow.Transport{Cert: env.svc.Transport.Cert, Key: dec}
	env.mgr.Fault = func(err error) string {
		if errors.Is(err, errTokenDown) {
			return CauseToken
		}
		return ""
	}
	return dec
}

// startEnrollJob submits an enroll job of total items and runs the manager in the background
// until the test ends.
func startEnrollJob(t *testing.T, env *testEnv, total int) *Status {
	t.Helper()
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, resumeMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { env.mgr.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return st
}

// waitJobEnd waits until job id is done or cancelled, at the latest until deadline, and
// returns its status.
func waitJobEnd(t *testing.T, env *testEnv, id string, deadline time.Time) *Status {
	t.Helper()
	for {
		s, err := env.mgr.Status(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == store.JobDone || s.State == store.JobCancelled {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %+v, want it ended once the token works again", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTokenFaultPausesJob: while the token does not answer, an enroll job's items do not fail:
// the job reports itself paused with the token as the reason, and once the token answers again
// it ends with every item done.
func TestTokenFaultPausesJob(t *testing.T) {
	env := newEnv(t)
	const total = 10
	dec := tokenDown(env)
	st := startEnrollJob(t, env, total)
	deadline := time.Now().Add(time.Minute)
	for {
		s, err := env.mgr.Status(context.Background(), st.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == StatePaused {
			if !strings.Contains(s.Reason, "token") || env.mgr.Paused() != CauseToken {
				t.Fatalf("paused with reason %q, cause %q; want the token", s.Reason, env.mgr.Paused())
			}
			if s.Done+s.Failed != 0 {
				t.Fatalf("items have an outcome while the token is down: %+v", s)
			}
			break
		}
		if s.State != store.JobRunning && s.State != store.JobQueued || time.Now().After(deadline) {
			t.Fatalf("job %+v, want it paused", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for dec.fails.Load() < 3*total && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // the job keeps trying
	}
	dec.down.Store(false)
	st = waitJobEnd(t, env, st.ID, deadline)
	if st.State != store.JobDone || st.Done != total || st.Failed != 0 {
		t.Fatalf("status %+v after the token came back", st)
	}
	res := env.results(t, st.ID)
	wantStates(t, res, total)
	env.checkInvariant(t, res)
	if env.mgr.Paused() != "" {
		t.Errorf("still paused (%q) after the job", env.mgr.Paused())
	}
}

// TestPausedJobWaitsUntilCleared: a job paused by the token stays paused while
// [Manager.Cleared] says the fault lasts: it neither reads as running nor asks the token
// again (a step that needs no token, such as reading the store, used to resume it, only for
// it to pause at the next item). Once Cleared says the fault is over, it ends with every item
// done.
func TestPausedJobWaitsUntilCleared(t *testing.T) {
	env := newEnv(t)
	dec := tokenDown(env)
	var checks atomic.Int64
	env.mgr.Cleared = func(cause string) error {
		checks.Add(1)
		if cause == CauseToken && dec.down.Load() {
			return errTokenDown
		}
		return nil
	}
	const total = 10
	st := startEnrollJob(t, env, total)
	status := func() *Status {
		s, err := env.mgr.Status(context.Background(), st.ID)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	deadline := time.Now().Add(time.Minute)
	for status().State != StatePaused {
		if time.Now().After(deadline) {
			t.Fatalf("job %+v, want it paused", status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The back-off reaches its longest (2 s) within a few checks: wait for a few of them.
	for checks.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	fails := dec.fails.Load()
	for checks.Load() < 6 && time.Now().Before(deadline) {
		if s := status(); s.State != StatePaused || s.Done+s.Failed != 0 {
			t.Fatalf("status %+v while Cleared says the token fault lasts; want paused, no outcome", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := checks.Load(); n < 6 {
		t.Fatalf("the paused job asked Cleared %d times in a minute, want it asked at each back-off", n)
	}
	if n := dec.fails.Load() - fails; n != 0 {
		t.Errorf("the job asked the token %d more times while Cleared said the fault lasts", n)
	}
	dec.down.Store(false)
	st = waitJobEnd(t, env, st.ID, deadline)
	if st.State != store.JobDone || st.Done != total || st.Failed != 0 {
		t.Fatalf("status %+v after the fault cleared", st)
	}
	env.checkInvariant(t, env.results(t, st.ID))
}
