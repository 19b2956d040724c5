package bulk

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/keyarc/keyarc/escrow/notice"
	"github.com/keyarc/keyarc/escrow/notice/feed"
	"github.com/keyarc/keyarc/escrow/store"
)

// sink is a real SMTP server (go-smtp) on loopback that keeps the messages it accepts.
type sink struct {
	addr string
	mu   sync.Mutex
	msgs []string
	srv  *smtp.Server
}

type sinkSession struct{ s *sink }

func (ss *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, string(b))
	ss.s.mu.Unlock()
	return nil
}
func (ss *sinkSession) Reset()        {}
func (ss *sinkSession) Logout() error { return nil }

// startSink serves SMTP on addr ("127.0.0.1:0" for any port) until the test ends.
func startSink(tb testing.TB, addr string) *sink {
	tb.Helper()
	s := &sink{}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }))
	s.srv.Domain = "localhost"
	s.srv.ErrorLog = log.New(io.Discard, "", 0)
	var l net.Listener
	var err error
	for range 50 { // a port closed a moment ago may not be free at once
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		tb.Fatal(err)
	}
	s.addr = l.Addr().String()
	go s.srv.Serve(l)
	tb.Cleanup(func() { s.srv.Close() })
	return s
}

// downAddr is a loopback address where nothing listens (a relay that is down).
func downAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func (s *sink) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// waitMessages waits until the sink holds n messages, then a little longer for any extra one.
func (s *sink) waitMessages(tb testing.TB, n int) []string {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(s.messages()) < n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d messages reached the SMTP server", len(s.messages()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return s.messages()
}

// withNotices runs a notice feed over env's store with a Notifier whose queue is in dir and
// whose relay is addr, as serve does, until the test ends (or the returned stop). Its batches are sent only when a
// job ends (Flush), never for a quiet period: whatever the batches and their timing, a job's
// mailbox gets one message.
func withNotices(tb testing.TB, env *testEnv, dir, addr string) (*notice.Notifier, func()) {
	tb.Helper()
	q, err := notice.OpenQueue(dir)
	if err != nil {
		tb.Fatal(err)
	}
	n := &notice.Notifier{Queue: q, Sender: &notice.SMTP{Addr: addr, Timeout: 2 * time.Second}, From: "pki@example.org",
		BatchQuiet: time.Hour, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	f := &feed.Feed{Store: env.db, Notifier: n, Interval: 20 * time.Millisecond}
	if err := f.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	env.svc.NotifyFlush = f.Flush
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.Run(ctx) })
	wg.Go(func() { f.Run(ctx) })
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	tb.Cleanup(stop)
	return n, stop
}

// byMailbox checks that msgs hold one message per mailbox and returns them by mailbox.
func byMailbox(tb testing.TB, msgs []string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	for _, m := range msgs {
		var to string
		for _, l := range strings.Split(m, "\r\n") {
			if v, ok := strings.CutPrefix(l, "To: "); ok {
				to = v
				break
			}
		}
		if _, dup := out[to]; dup {
			tb.Errorf("two messages to %s:\n%s\n%s", to, out[to], m)
		}
		out[to] = m
	}
	return out
}

// checkNotices checks that each mailbox with done items got one escrow message naming exactly
// the serials of its done items, and that nobody else got one.
func checkNotices(tb testing.TB, env *testEnv, res map[int]Result, got map[string]string) {
	tb.Helper()
	want := map[string][]string{}
	for seq, r := range res {
		if r.State != store.ItemDone {
			continue
		}
		var row *store.Certificate
		if err := env.db.View(context.Background(), func(tx store.Tx) (err error) {
			row, err = tx.GetCertificate(r.Serial)
			return err
		}); err != nil {
			tb.Fatalf("item %d: %v", seq, err)
		}
		want[row.Email] = append(want[row.Email], r.Serial)
	}
	if len(got) != len(want) {
		tb.Errorf("%d mailboxes got a message, want %d (those with done items)", len(got), len(want))
	}
	for mailbox, serials := range want {
		m, ok := got[mailbox]
		if !ok {
			tb.Errorf("%s got no message", mailbox)
			continue
		}
		if !strings.Contains(m, "Subject: Your encryption key has been escrowed\r\n") {
			tb.Errorf("message to %s is not an escrow notice:\n%s", mailbox, m)
		}
		for _, s := range serials {
			if !strings.Contains(m, s) {
				tb.Errorf("message to %s lacks serial %s:\n%s", mailbox, s, m)
			}
		}
		if n := len(listedSerials(m)); n != len(serials) {
			tb.Errorf("message to %s lists %d serials, want %d:\n%s", mailbox, n, len(serials), m)
		}
	}
	for _, res := range res {
		if res.State == store.ItemFailed && res.Serial != "" {
			for mb, m := range got {
				if strings.Contains(m, res.Serial) {
					tb.Errorf("message to %s names the serial of a failed item", mb)
				}
			}
		}
	}
}

// listedSerials is the serials an escrow notice lists: "(serial S)" or "(serials S1, S2)".
func listedSerials(msg string) []string {
	for _, p := range []string{"(serials ", "(serial "} {
		if _, rest, ok := strings.Cut(strings.ReplaceAll(msg, "\r\n", " "), p); ok {
			list, _, _ := strings.Cut(rest, ")")
			return strings.Split(list, ", ")
		}
	}
	return nil
}

// TestNoticesEnrollJob: an enroll job of 36 items for 12 mailboxes (3 keys each; 2 items fail)
// sends, through a real SMTP server, exactly one escrow notice per mailbox with a done item,
// naming the serials of its done items, whatever batches the items were committed in.
func TestNoticesEnrollJob(t *testing.T) {
	env := newEnv(t)
	relay := startSink(t, "127.0.0.1:0")
	withNotices(t, env, t.TempDir(), relay.addr)
	var items []any
	for i := range 36 {
		mb := fmt.Sprintf("user%d@example.org", i%12)
		it := env.enrollItem(t, mb)
		switch i {
		case 5: // a CSR for another mailbox than the item's
			it.Email = "someone-else@example.org"
		case 30: // every key of user6 but this one is good
			it.EncryptedKey = "AAAA"
		}
		items = append(items, it)
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	st = env.runUntilDone(t, st.ID)
	if st.Done != 34 || st.Failed != 2 {
		t.Fatalf("status %+v", st)
	}
	res := env.results(t, st.ID)
	checkNotices(t, env, res, byMailbox(t, relay.waitMessages(t, 12)))
}

// TestNoticesImportJob: an import job (keys that were someone's already, migrated) tells each
// subscriber too, one message per mailbox.
func TestNoticesImportJob(t *testing.T) {
	env := newEnv(t)
	relay := startSink(t, "127.0.0.1:0")
	withNotices(t, env, t.TempDir(), relay.addr)
	old := newOtherCA(t)
	var items []any
	for i := range 20 {
		k := p256(t)
		c := old.issue(t, k.Public(), "old"+strconv.Itoa(i%10)+"@example.org")
		items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(t, k))})
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindImport}, items...))
	st = env.runUntilDone(t, st.ID)
	if st.Done != 20 {
		t.Fatalf("status %+v", st)
	}
	checkNotices(t, env, env.results(t, st.ID), byMailbox(t, relay.waitMessages(t, 10)))
}

// TestNoticesCrashResume: items issued before a crash queued their notices (the relay had not
// taken them yet); after the restart (a new notifier over the same queue folder) the job
// resumes, and every mailbox with a done item gets one message: nothing lost, nothing twice.
func TestNoticesCrashResume(t *testing.T) {
	env := newEnv(t)
	qdir := t.TempDir()
	_, stopBefore := withNotices(t, env, qdir, downAddr(t)) // the relay is down before the crash
	const total = 12
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, resumeMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	r, lines := crashRun(t, env, st.ID)
	ctx := context.Background()
	for seq := 1; seq <= 5; seq++ {
		if _, err := env.svc.IssueReserved(ctx, r.reserved(r.prepared(t, lines, seq))); err != nil {
			t.Fatalf("item %d: %v", seq, err)
		}
	}
	if err := env.db.Update(ctx, func(tx store.Tx) error { return tx.FailJobItem(st.ID, 6, "bad CSR") }); err != nil {
		t.Fatal(err)
	}
	stopBefore() // the crash

	relay := startSink(t, "127.0.0.1:0")
	withNotices(t, env, qdir, relay.addr) // the restart
	if _, err := env.svc.Sweep(ctx, env.mgr.now()); err != nil {
		t.Fatal(err)
	}
	st = env.runUntilDone(t, st.ID)
	if st.Done != total-1 || st.Failed != 1 {
		t.Fatalf("status %+v", st)
	}
	checkNotices(t, env, env.results(t, st.ID), byMailbox(t, relay.waitMessages(t, total-1)))
}

// TestNoticesRelayDown: with the relay down the job ends as it would without notices, every
// item done, its notices counted as failed attempts and kept; when the relay comes back they
// arrive, one per mailbox.
func TestNoticesRelayDown(t *testing.T) {
	env := newEnv(t)
	addr := downAddr(t)
	n, _ := withNotices(t, env, t.TempDir(), addr)
	var items []any
	for i := range 16 {
		items = append(items, env.enrollItem(t, fmt.Sprintf("down%d@example.org", i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	st = env.runUntilDone(t, st.ID)
	if st.Done != 16 || st.Failed != 0 {
		t.Fatalf("status with the relay down %+v", st)
	}
	deadline := time.Now().Add(20 * time.Second)
	for n.Failures() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the sender did not try the relay: failures %d", n.Failures())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if q := n.Queue.Len(); q != 16 || n.Sent() != 0 {
		t.Fatalf("with the relay down: %d notices queued, %d sent; want 16 and 0", q, n.Sent())
	}
	relay := startSink(t, addr) // the relay comes back
	checkNotices(t, env, env.results(t, st.ID), byMailbox(t, relay.waitMessages(t, 16)))
}

// BenchmarkEnrollJobNotices is BenchmarkEnrollJob with subscriber notices on: each committed
// batch queues one notice file (fsync'd) for a real SMTP server on loopback. Compare its
// items/s with BenchmarkEnrollJob's in the same run.
func BenchmarkEnrollJobNotices(b *testing.B) {
	env := newEnv(b)
	n, _ := withNotices(b, env, b.TempDir(), startSink(b, "127.0.0.1:0").addr)
	items := make([]any, 0, b.N)
	for i := range b.N {
		items = append(items, env.enrollItem(b, "user"+strconv.Itoa(i)+"@example.org"))
	}
	file := jobFile(b, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...)
	b.ResetTimer()
	st := submit(b, env, file)
	st = env.runUntilDone(b, st.ID)
	b.StopTimer()
	if st.Done != b.N {
		b.Fatalf("done %d of %d", st.Done, b.N)
	}
	if n.Failures() != 0 || n.Dropped() != 0 {
		b.Fatalf("notices: %d failures, %d dropped", n.Failures(), n.Dropped())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// BenchmarkImportJobNotices is BenchmarkImportJob with subscriber notices on (see
// BenchmarkEnrollJobNotices).
func BenchmarkImportJobNotices(b *testing.B) {
	env := newEnv(b)
	n, _ := withNotices(b, env, b.TempDir(), startSink(b, "127.0.0.1:0").addr)
	old := newOtherCA(b)
	items := make([]any, 0, b.N)
	for i := range b.N {
		k := p256(b)
		c := old.issue(b, k.Public(), "user"+strconv.Itoa(i)+"@example.org")
		items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(b, k))})
	}
	file := jobFile(b, Header{Kind: KindImport}, items...)
	b.ResetTimer()
	st := submit(b, env, file)
	st = env.runUntilDone(b, st.ID)
	b.StopTimer()
	if st.Done != b.N {
		b.Fatalf("done %d of %d", st.Done, b.N)
	}
	if n.Failures() != 0 || n.Dropped() != 0 {
		b.Fatalf("notices: %d failures, %d dropped", n.Failures(), n.Dropped())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}
