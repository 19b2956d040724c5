package escrow

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/keyarc/keyarc/escrow/notice"
	"github.com/keyarc/keyarc/escrow/notice/feed"
	"github.com/keyarc/keyarc/escrow/store"
)

// mailSink is a real SMTP server (go-smtp) on loopback; what it accepts goes to mail.
type mailSink struct{ mail chan string }

type sinkSession struct{ sink *mailSink }

func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err == nil {
		s.sink.mail <- string(b)
	}
	return err
}
func (s *sinkSession) Reset()        {}
func (s *sinkSession) Logout() error { return nil }

// noticesToSink runs a notice feed over svc's store with a Notifier (queue in a temporary
// folder) that sends through a real SMTP server, as serve does, and returns that server's mail.
func noticesToSink(t *testing.T, svc *Service) *mailSink {
	t.Helper()
	sink := &mailSink{mail: make(chan string, 64)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: sink}, nil }))
	srv.Domain = "localhost"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	q, err := notice.OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := &notice.Notifier{Queue: q, Sender: &notice.SMTP{Addr: l.Addr().String()}, From: "pki@example.org",
		BatchQuiet: 50 * time.Millisecond}
	f := &feed.Feed{Store: svc.Store, Notifier: n, Interval: 20 * time.Millisecond}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc.NotifyFlush = f.Flush
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.Run(ctx) })
	wg.Go(func() { f.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return sink
}

// next is the next mail, whose Subject must be subject.
func (s *mailSink) next(t *testing.T, subject string) string {
	t.Helper()
	select {
	case m := <-s.mail:
		if !strings.Contains(m, "Subject: "+subject+"\r\n") {
			t.Fatalf("mail with another subject than %q:\n%s", subject, m)
		}
		return m
	case <-time.After(20 * time.Second):
		t.Fatalf("no mail %q reached the SMTP server", subject)
		return ""
	}
}

func (s *mailSink) none(t *testing.T) {
	t.Helper()
	select {
	case m := <-s.mail:
		t.Errorf("an unexpected mail:\n%s", m)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestRecoveryNoticesCancelledExpired: the owner told that a recovery of their key was
// requested is told how it ended without a key: cancelled by its officer, or expired (the
// expiry sweep); a reseal request, of which owners are not told, ends without a mail.
func TestRecoveryNoticesCancelledExpired(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	sink := noticesToSink(t, r.svc)

	cancelled := r.request(t)
	sink.next(t, "A recovery of your escrowed key was requested")
	if err := r.svc.CancelRecovery(ctx, r.officer, cancelled.ID); err != nil {
		t.Fatalf("CancelRecovery: %v", err)
	}
	m := sink.next(t, "The recovery of your escrowed key was cancelled")
	for _, w := range []string{"To: owner@example.org\r\n", cancelled.ID, r.serial, "officer olga cancelled", "not recovered"} {
		if !strings.Contains(m, w) {
			t.Errorf("cancellation mail lacks %q:\n%s", w, m)
		}
	}

	expiring := r.request(t)
	sink.next(t, "A recovery of your escrowed key was requested")
	r.approve(t, 0, expiring.ID)
	r.clock.Set(t0.Add(2 * time.Hour))
	defer r.clock.Set(t0)
	if n, err := r.svc.ExpireRecoveries(ctx); err != nil || n != 1 {
		t.Fatalf("ExpireRecoveries: %d, %v; want 1", n, err)
	}
	m = sink.next(t, "The recovery of your escrowed key expired")
	for _, w := range []string{"To: owner@example.org\r\n", expiring.ID, r.serial, "olga", "not recovered",
		expiring.ExpiresAt.UTC().Format("2006-01-02 15:04:05 UTC")} {
		if !strings.Contains(m, w) {
			t.Errorf("expiry mail lacks %q:\n%s", w, m)
		}
	}
	// Expired once: the next sweep tells nobody again.
	if n, err := r.svc.ExpireRecoveries(ctx); err != nil || n != 0 {
		t.Fatalf("second ExpireRecoveries: %d, %v; want 0", n, err)
	}
	sink.none(t)
}

// batchRecorder is a feed.Queuer that keeps what it is given to queue.
type batchRecorder struct{ batches [][]notice.Event }

func (r *batchRecorder) NotifyBatch(es []notice.Event) error { return r.NotifyNow(es) }
func (r *batchRecorder) Flush()                              {}
func (r *batchRecorder) NotifyNow(es []notice.Event) error {
	if len(es) > 0 {
		r.batches = append(r.batches, es)
	}
	return nil
}

// TestNoticeEscrowedBatches: a batch of imports tells every mailbox once, naming its serials,
// once it committed; a batch that commits nothing tells nobody.
func TestNoticeEscrowedBatches(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rec := &batchRecorder{}
	f := &feed.Feed{Store: env.svc.Store, Notifier: rec}
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	step := func() [][]notice.Event {
		t.Helper()
		rec.batches = nil
		if _, err := f.Step(ctx); err != nil {
			t.Fatal(err)
		}
		return rec.batches
	}
	rs, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	item := func(serial int64, mailbox string) ImportItem {
		key := newP256(t)
		cert := foreignCert(t, serial, mailbox, key.Public())
		rec, err := env.svc.SealForImport(rs, cert, pkcs8Of(t, key))
		if err != nil {
			t.Fatal(err)
		}
		return ImportItem{Cert: cert, Mailbox: mailbox, Record: rec}
	}
	a1, b, a2 := item(7001, "a@example.org"), item(7002, "b@example.org"), item(7003, "a@example.org")
	if err := env.svc.CommitImports(ctx, "job n1", []ImportItem{a1, b, a2}, nil); err != nil {
		t.Fatal(err)
	}
	batches := step()
	if len(batches) != 1 || len(batches[0]) != 2 {
		t.Fatalf("notices of a batch of imports: %+v, want one batch of one event per mailbox", batches)
	}
	got := map[string][]string{}
	for _, e := range batches[0] {
		if e.Kind != notice.Escrowed || e.Time.IsZero() {
			t.Errorf("event %+v", e)
		}
		got[e.Mailbox] = e.Serials
	}
	sa1, sa2, sb := store.FormatSerial(a1.Cert.SerialNumber), store.FormatSerial(a2.Cert.SerialNumber), store.FormatSerial(b.Cert.SerialNumber)
	if strings.Join(got["a@example.org"], ",") != sa1+","+sa2 || strings.Join(got["b@example.org"], ",") != sb {
		t.Errorf("serials by mailbox %v", got)
	}

	// A batch that stores nothing (a serial already archived) tells nobody.
	err = env.svc.CommitImports(ctx, "job n2", []ImportItem{item(7004, "c@example.org"), item(7002, "b@example.org")}, nil)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CommitImports with an archived serial: %v, want a conflict", err)
	}
	if batches := step(); len(batches) != 0 {
		t.Errorf("a refused batch told %+v", batches)
	}
}

// TestNoticeOfACommitNotYetQueued: a key escrowed by a process that stopped before queueing
// its notice (killed between the commit and the queue file) is told after the restart: the
// notice is read from the audit entry that committed with the key.
func TestNoticeOfACommitNotYetQueued(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	// The run before the crash placed the cursor, then stopped once the import committed.
	if err := (&feed.Feed{Store: env.svc.Store}).Start(ctx); err != nil {
		t.Fatal(err)
	}
	rs, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	cert := foreignCert(t, 7101, "late@example.org", key.Public())
	rec, err := env.svc.SealForImport(rs, cert, pkcs8Of(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if err := env.svc.CommitImports(ctx, "job crash", []ImportItem{{Cert: cert, Mailbox: "late@example.org", Record: rec}}, nil); err != nil {
		t.Fatal(err)
	}
	sink := noticesToSink(t, env.svc) // the restart
	m := sink.next(t, "Your encryption key has been escrowed")
	if !strings.Contains(m, "To: late@example.org\r\n") || !strings.Contains(m, store.FormatSerial(cert.SerialNumber)) {
		t.Errorf("the notice of the key escrowed before the crash:\n%s", m)
	}
	sink.none(t)
}

// TestRecoveryNoticeCancelledByReseal: a reseal cancels the open recovery requests on its
// records. The owner is told the request ended without a key, and by whom: the administrator
// whose reseal closed it, not the officer who asked (who did nothing). The reseal itself tells
// nobody.
func TestRecoveryNoticeCancelledByReseal(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	sink := noticesToSink(t, r.svc)
	rid := r.request(t).ID
	sink.next(t, "A recovery of your escrowed key was requested")
	if _, err := r.svc.SetRecoverySet(ctx, 3, []string{r.kras[0].serial, r.kras[1].serial, r.kras[2].serial}, "admin"); err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	reseal := r.requestReseal(t).ID
	r.approve(t, 0, reseal)
	r.approve(t, 1, reseal)
	if n, err := r.svc.CompleteReseal(ctx, r.admin, reseal); err != nil || n != 1 {
		t.Fatalf("CompleteReseal: %d, %v; want 1 record", n, err)
	}
	m := sink.next(t, "The recovery of your escrowed key was cancelled")
	for _, w := range []string{"To: owner@example.org\r\n", rid, r.serial, "olga", "administrator ada", "not recovered"} {
		if !strings.Contains(m, w) {
			t.Errorf("cancellation mail lacks %q:\n%s", w, m)
		}
	}
	if strings.Contains(m, "officer olga cancelled") {
		t.Errorf("the mail says the officer cancelled a request the reseal closed:\n%s", m)
	}
	sink.none(t)
}
