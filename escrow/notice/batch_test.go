package notice

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// escrowedBatch is one event per mailbox of mailboxes, each with the serials given.
func escrowedBatch(serials map[string][]string, mailboxes ...string) []Event {
	var es []Event
	for _, m := range mailboxes {
		es = append(es, Event{Kind: Escrowed, Mailbox: m, Serials: serials[m], Time: t0})
	}
	return es
}

// TestBatchOneMessagePerMailbox: two batches queued by one job (as two committed batches) with a
// mailbox in both reach a real SMTP relay as one message per mailbox, listing every serial of
// it, once the batches are quiet; the queue is then empty.
func TestBatchOneMessagePerMailbox(t *testing.T) {
	r := startRelay(t, nil)
	q, err := OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := &Notifier{Queue: q, Sender: &SMTP{Addr: r.addr}, From: "pki@example.org", BatchQuiet: 300 * time.Millisecond}
	stop := run(t, n)
	defer stop()
	var mailboxes []string
	for i := range 30 {
		mailboxes = append(mailboxes, fmt.Sprintf("user%02d@example.org", i))
	}
	// user00 has a key in each batch; the others one key each.
	first := map[string][]string{"user00@example.org": {"a0"}}
	second := map[string][]string{"user00@example.org": {"b0"}}
	for i, m := range mailboxes[1:] {
		if i%2 == 0 {
			first[m] = []string{fmt.Sprintf("a%d", i+1)}
		} else {
			second[m] = []string{fmt.Sprintf("b%d", i+1)}
		}
	}
	pick := func(s map[string][]string) []string {
		var out []string
		for _, m := range mailboxes {
			if s[m] != nil {
				out = append(out, m)
			}
		}
		return out
	}
	n.NotifyBatch(escrowedBatch(first, pick(first)...))
	n.NotifyBatch(escrowedBatch(second, pick(second)...))
	if got := q.Len(); got != 31 {
		t.Errorf("Len = %d with two batches queued, want their 31 notices", got)
	}
	got := map[string]string{}
	for range mailboxes {
		select {
		case msg := <-r.got:
			<-r.authed
			to := header(msg, "To")
			if _, dup := got[to]; dup {
				t.Fatalf("two messages to %s", to)
			}
			got[to] = msg
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d messages reached the relay", len(got), len(mailboxes))
		}
	}
	if !strings.Contains(got["user00@example.org"], "certificates (serials a0, b0)") {
		t.Errorf("the message to the mailbox of both batches does not list both serials:\n%s", got["user00@example.org"])
	}
	if !strings.Contains(got["user01@example.org"], "certificate (serial a1)") {
		t.Errorf("message to user01:\n%s", got["user01@example.org"])
	}
	waitQueue(t, q, n, 0, uint64(len(mailboxes)))
	waitEmpty(t, q.Dir())
	select {
	case extra := <-r.got:
		t.Errorf("an extra message:\n%s", extra)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestBatchHalfSentIsNotSentAgain: the sender stops (a restart) after the relay accepted some
// messages of a batch and not others; the restarted sender sends only those not accepted.
func TestBatchHalfSentIsNotSentAgain(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{tempFail: map[string]bool{"grey@example.org": true}, accepted: make(chan struct{}, 8)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", BatchQuiet: time.Millisecond, MinBackoff: time.Hour}
	serials := map[string][]string{"a@example.org": {"01"}, "grey@example.org": {"02"}, "b@example.org": {"03"}}
	if _, err := q.PutBatch(escrowedBatch(serials, "a@example.org", "grey@example.org", "b@example.org")); err != nil {
		t.Fatal(err)
	}
	stop := run(t, n)
	waitFor(t, f.accepted)
	waitFor(t, f.accepted)
	waitQueue(t, q, n, 1, 2)
	stop()
	if b, _ := q.Batches(); len(b) != 1 {
		t.Fatalf("batches after a half-sent pass: %v, want the one batch kept", b)
	}

	// The restart: a new queue over the folder, a relay that accepts everything.
	q2, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	if q2.Len() != 1 {
		t.Errorf("Len after restart = %d, want the one notice not sent", q2.Len())
	}
	f2 := &fakeSender{accepted: make(chan struct{}, 8)}
	n2 := &Notifier{Queue: q2, Sender: f2, From: "pki@example.org", BatchQuiet: time.Millisecond}
	run(t, n2)
	waitFor(t, f2.accepted)
	waitQueue(t, q2, n2, 0, 1)
	f2.set(func(f *fakeSender) {
		if len(f.got) != 1 || header(f.got[0], "To") != "grey@example.org" {
			t.Errorf("after the restart the relay got %d messages, want only the one to grey@example.org:\n%v", len(f.got), f.got)
		}
	})
	waitEmpty(t, dir)
}

// TestBatchRelayDown: batches wait while the relay is down (each attempt counted), then go
// when it answers.
func TestBatchRelayDown(t *testing.T) {
	q, err := OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{down: true, accepted: make(chan struct{}, 8)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", BatchQuiet: time.Millisecond,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	run(t, n)
	n.NotifyBatch(escrowedBatch(map[string][]string{"a@example.org": {"01"}, "b@example.org": {"02"}}, "a@example.org", "b@example.org"))
	deadline := time.Now().Add(10 * time.Second)
	for n.Failures() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n.Failures() < 3 || q.Len() != 2 || n.Sent() != 0 {
		t.Fatalf("with the relay down: failures %d, queue %d, sent %d; want failures counted and both notices queued", n.Failures(), q.Len(), n.Sent())
	}
	f.set(func(f *fakeSender) { f.down = false })
	waitFor(t, f.accepted)
	waitFor(t, f.accepted)
	waitQueue(t, q, n, 0, 2)
}

// TestBatchRefusals: a mailbox the relay refuses for good is kept in the rejected folder and
// counted as dropped, its batch is removed once the rest is sent; a damaged batch file is
// moved to the rejected folder; an invalid event refuses the whole batch (nothing queued).
func TestBatchRefusals(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.PutBatch([]Event{escrowed("ok@example.org"), {Kind: Escrowed, Mailbox: "x@example.org\r\nBcc: y@evil.example"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutBatch with an invalid event: %v, want %v", err, ErrInvalid)
	}
	if b, _ := q.Batches(); len(b) != 0 {
		t.Fatalf("a refused batch was queued: %v", b)
	}
	if _, err := q.PutBatch([]Event{escrowed("gone@example.org"), escrowed("ok@example.org")}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000001-000001-00000000"+batchSuffix), []byte(`{"events":[{"kind":"esc`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{reject: map[string]bool{"gone@example.org": true}, accepted: make(chan struct{}, 8)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", BatchQuiet: time.Millisecond}
	run(t, n)
	waitFor(t, f.accepted)
	waitQueue(t, q, n, 0, 1)
	if n.Dropped() != 2 {
		t.Errorf("dropped = %d, want the refused message and the damaged batch", n.Dropped())
	}
	rej, _ := os.ReadDir(filepath.Join(dir, RejectedDir))
	var names []string
	for _, e := range rej {
		names = append(names, e.Name())
	}
	if len(names) != 2 || !slices.ContainsFunc(names, func(s string) bool { return strings.HasSuffix(s, batchSuffix) }) {
		t.Errorf("rejected folder holds %v, want the refused notice and the damaged batch", names)
	}
}

func TestRecoveryEndNotices(t *testing.T) {
	for _, tc := range []struct {
		kind  Kind
		wants []string
	}{
		{RecoveryCancelled, []string{"Subject: The recovery of your escrowed key was cancelled", "officer cancelled", "was not recovered"}},
		{RecoveryExpired, []string{"Subject: The recovery of your escrowed key expired", "expired", "was not recovered"}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			e := Event{Kind: tc.kind, Mailbox: "alice@example.org", Serials: []string{"3f9a01"}, Time: t0, Request: "a1b2c3", RequestedBy: "officer"}
			msg, err := e.Message("pki@example.org", "0001", "keyarc CA")
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range append(tc.wants, "a1b2c3", "serial 3f9a01", "To: alice@example.org\r\n") {
				if !strings.Contains(string(msg), w) {
					t.Errorf("message lacks %q:\n%s", w, msg)
				}
			}
			e.Request = ""
			if _, err := e.Message("pki@example.org", "0001", ""); !errors.Is(err, ErrInvalid) {
				t.Errorf("without a request: %v, want %v", err, ErrInvalid)
			}
		})
	}
}

// waitQueue waits until q holds queued notices and n has sent sent.
func waitQueue(t *testing.T, q *Queue, n *Notifier, queued int, sent uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for q.Len() != queued || n.Sent() != sent {
		if time.Now().After(deadline) {
			t.Fatalf("queue holds %d and sent = %d, want %d and %d", q.Len(), n.Sent(), queued, sent)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitEmpty waits until the queue folder dir holds nothing but its rejected folder and its
// sender's lock: every batch and its progress file removed.
func waitEmpty(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(dir)
		var left []string
		for _, e := range ents {
			if e.Name() != RejectedDir && e.Name() != LockFile {
				left = append(left, e.Name())
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue folder still holds %v", left)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// header is the value of the header name in msg.
func header(msg, name string) string {
	for _, l := range strings.Split(msg, "\r\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			return v
		}
		if l == "" {
			break
		}
	}
	return ""
}

// BenchmarkSendBatch queues a batch of b.N notices, one per mailbox, and measures the time until
// a real SMTP server on loopback has accepted them all (one connection per message).
func BenchmarkSendBatch(b *testing.B) {
	r := startRelay(b, nil)
	go func() {
		for range r.authed {
		}
	}()
	q, err := OpenQueue(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	es := make([]Event, b.N)
	for i := range es {
		es[i] = Event{Kind: Escrowed, Mailbox: fmt.Sprintf("user%d@example.org", i), Serials: []string{fmt.Sprintf("%x", i+1)}, Time: t0}
	}
	n := &Notifier{Queue: q, Sender: &SMTP{Addr: r.addr}, From: "pki@example.org", BatchQuiet: time.Nanosecond}
	b.ResetTimer()
	n.NotifyBatch(es)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	for range b.N {
		<-r.got
	}
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "messages/s")
}

// TestBatchFlush: with a quiet period that never ends, batches wait until Flush (the job ended);
// then those queued before it go, merged per mailbox, and a batch queued after it waits for the
// next Flush.
func TestBatchFlush(t *testing.T) {
	q, err := OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{accepted: make(chan struct{}, 8)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", BatchQuiet: time.Hour}
	run(t, n)
	n.NotifyBatch(escrowedBatch(map[string][]string{"a@example.org": {"01"}, "b@example.org": {"02"}}, "a@example.org", "b@example.org"))
	n.NotifyBatch(escrowedBatch(map[string][]string{"a@example.org": {"03"}}, "a@example.org"))
	select {
	case <-f.accepted:
		t.Fatal("a batch was sent before the flush, within the quiet period")
	case <-time.After(200 * time.Millisecond):
	}
	n.Flush()
	waitFor(t, f.accepted)
	waitFor(t, f.accepted)
	waitQueue(t, q, n, 0, 2)
	n.NotifyBatch(escrowedBatch(map[string][]string{"c@example.org": {"04"}}, "c@example.org"))
	select {
	case <-f.accepted:
		t.Fatal("a batch queued after the flush was sent without another")
	case <-time.After(200 * time.Millisecond):
	}
	f.set(func(f *fakeSender) {
		if len(f.got) != 2 || !strings.Contains(f.got[0]+f.got[1], "certificates (serials 01, 03)") {
			t.Errorf("sent %d messages, want a@ with both serials and b@:\n%v", len(f.got), f.got)
		}
	})
	n.Flush()
	waitFor(t, f.accepted)
	waitQueue(t, q, n, 0, 3)
}

// BenchmarkPutBatch queues batches of 128 notices (a bulk job's largest issue batch): the cost a
// committed batch pays for its notices, most of it the file's and the folder's fsync.
func BenchmarkPutBatch(b *testing.B) {
	q, err := OpenQueue(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	es := make([]Event, 128)
	for i := range es {
		es[i] = Event{Kind: Escrowed, Mailbox: fmt.Sprintf("user%d@example.org", i), Serials: []string{fmt.Sprintf("%032x", i+1)}, Time: t0}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := q.PutBatch(es); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(es)), "µs/notice")
}

// TestNotifyNowLeavesJobBatches: notices due at once that come as a batch (a recovery of keys
// of several mailboxes, enrollments read in one step of the feed) go at once, but do not make
// a running bulk job's batches due: the job's mailboxes still get one message each, once the
// job ends.
func TestNotifyNowLeavesJobBatches(t *testing.T) {
	q, err := OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{accepted: make(chan struct{}, 8)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", BatchQuiet: time.Hour}
	run(t, n)
	if err := n.NotifyBatch(escrowedBatch(map[string][]string{"job@example.org": {"01"}}, "job@example.org")); err != nil {
		t.Fatal(err)
	}
	if err := n.NotifyNow([]Event{escrowed("x@example.org"), escrowed("y@example.org")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, f.accepted)
	waitFor(t, f.accepted)
	if err := n.NotifyBatch(escrowedBatch(map[string][]string{"job@example.org": {"02"}}, "job@example.org")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.accepted:
		t.Error("the job's first batch went with the notices due at once, before the job ended")
	case <-time.After(300 * time.Millisecond):
	}
	n.Flush()
	waitQueue(t, q, n, 0, 3)
	f.set(func(f *fakeSender) {
		var job []string
		for _, m := range f.got {
			if strings.Contains(m, "To: job@example.org\r\n") {
				job = append(job, m)
			}
		}
		if len(job) != 1 || !strings.Contains(job[0], "certificates (serials 01, 02)") {
			t.Errorf("the job's mailbox got %d messages, want one listing both serials:\n%v", len(job), job)
		}
	})
}

// TestUrgentMarkedDuringListing: a batch of NotifyNow marked after a pass began to list the
// batches, and so missing from that listing, stays due at once for the next pass; one marked
// before the listing and missing from it is done, and forgotten.
func TestUrgentMarkedDuringListing(t *testing.T) {
	n := &Notifier{}
	n.markUrgent("a")
	mark := n.urgentMark()
	n.markUrgent("b") // written after the listing below began, so not in it
	if got := n.urgentIn([]string{}, mark); len(got) != 0 {
		t.Fatalf("urgent among no batches: %v", got)
	}
	got := n.urgentIn([]string{"b"}, n.urgentMark())
	if !got["b"] {
		t.Error("a batch marked during a listing that missed it is no longer due at once")
	}
	if _, kept := n.urgent["a"]; kept {
		t.Error("a batch marked before the listing and missing from it (sent) is still remembered")
	}
}
