package notice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
)

var t0 = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

func escrowed(mailbox string) Event {
	return Event{Kind: Escrowed, Mailbox: mailbox, Serials: []string{"3f9a01"}, Time: t0}
}

// fakeSender fails while down is set (no answer, as a relay that is down), rejects the
// mailboxes in reject (5xx), and records what it accepted.
type fakeSender struct {
	mu       sync.Mutex
	down     bool
	tempFail map[string]bool
	reject   map[string]bool
	got      []string // messages accepted
	attempts int
	accepted chan struct{}
}

func (f *fakeSender) Send(_ context.Context, from, to string, msg []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	switch {
	case f.down:
		return errors.New("dial tcp 127.0.0.1:25: connection refused")
	case f.reject[to]:
		return fmt.Errorf("%w: %w", ErrRejected, &smtp.SMTPError{Code: 550, Message: "no such user"})
	case f.tempFail[to]:
		return &smtp.SMTPError{Code: 451, Message: "try later"}
	}
	f.got = append(f.got, string(msg))
	if f.accepted != nil {
		f.accepted <- struct{}{}
	}
	return nil
}

func (f *fakeSender) set(fn func(f *fakeSender)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func TestQueueSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		id, err := q.Put(escrowed(m))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// A crash in the middle of a Put leaves a temporary file, never a half notice.
	if err := os.WriteFile(filepath.Join(dir, tmpPrefix+"123"), []byte(`{"kind":"esc`), 0o600); err != nil {
		t.Fatal(err)
	}

	q2, err := OpenQueue(dir) // the restart
	if err != nil {
		t.Fatal(err)
	}
	got, err := q2.List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("after restart the queue holds %v, want %v in queue order", got, ids)
	}
	if _, err := os.Stat(filepath.Join(dir, tmpPrefix+"123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file left by a crash is still there: %v", err)
	}
	e, err := q2.Get(ids[1])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(e, escrowed("b@example.org")) {
		t.Errorf("read back %+v", e)
	}

	// The sender of the restarted process sends them, oldest first, and empties the queue.
	f := &fakeSender{accepted: make(chan struct{}, 3)}
	n := &Notifier{Queue: q2, Sender: f, From: "pki@example.org"}
	stop := run(t, n)
	for range 3 {
		waitFor(t, f.accepted)
	}
	stop()
	if q2.Len() != 0 {
		t.Errorf("queue holds %d after every notice was accepted", q2.Len())
	}
	for i, m := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		if !strings.Contains(f.got[i], "To: "+m+"\r\n") {
			t.Errorf("message %d is not to %s:\n%s", i, m, f.got[i])
		}
	}
}

func TestRetryUntilTheRelayAnswers(t *testing.T) {
	q, err := OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{down: true, accepted: make(chan struct{}, 4)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	stop := run(t, n)
	defer stop()
	n.Notify(escrowed("alice@example.org"))
	n.Notify(escrowed("bob@example.org"))
	// The relay stays down for a few attempts: nothing is lost, every failure counts.
	deadline := time.Now().Add(10 * time.Second)
	for n.Failures() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n.Failures() < 3 {
		t.Fatalf("failures = %d, want the failed attempts counted", n.Failures())
	}
	if q.Len() != 2 {
		t.Fatalf("queue holds %d while the relay is down, want 2", q.Len())
	}
	f.set(func(f *fakeSender) { f.down = false })
	waitFor(t, f.accepted)
	waitFor(t, f.accepted)
	// The relay signals before the sender counts and deletes: wait for both.
	deadline = time.Now().Add(5 * time.Second)
	for (q.Len() != 0 || n.Sent() != 2) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if q.Len() != 0 || n.Sent() != 2 {
		t.Errorf("queue holds %d and sent = %d after the relay accepted everything, want 0 and 2", q.Len(), n.Sent())
	}
}

func TestTemporaryRefusalDoesNotBlockOthers(t *testing.T) {
	q, err := OpenQueue(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSender{tempFail: map[string]bool{"grey@example.org": true},
		reject: map[string]bool{"gone@example.org": true}, accepted: make(chan struct{}, 4)}
	n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", MinBackoff: time.Hour}
	for _, m := range []string{"grey@example.org", "gone@example.org", "ok@example.org"} {
		if _, err := q.Put(escrowed(m)); err != nil {
			t.Fatal(err)
		}
	}
	stop := run(t, n)
	defer stop()
	waitFor(t, f.accepted)
	deadline := time.Now().Add(5 * time.Second)
	for q.Len() != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ids, _ := q.List()
	if len(ids) != 1 {
		t.Fatalf("queue holds %v, want only the greylisted notice", ids)
	}
	if e, _ := q.Get(ids[0]); e.Mailbox != "grey@example.org" {
		t.Errorf("queue holds %s, want the greylisted notice", e.Mailbox)
	}
	rej, _ := os.ReadDir(filepath.Join(q.Dir(), RejectedDir))
	if n.Dropped() != 1 {
		t.Errorf("dropped = %d, want the notice refused for good", n.Dropped())
	}
	if len(rej) != 1 {
		t.Errorf("rejected folder holds %d files, want the notice the relay refused for good", len(rej))
	}
}

// TestNoSecret pins what a notice can hold: an Event has no field for a key, code, password or
// share, the queued file holds just its fields, and the message says what happened.
func TestNoSecret(t *testing.T) {
	var fields []string
	for f := range reflect.TypeFor[Event]().Fields() {
		fields = append(fields, f.Name)
	}
	want := []string{"Kind", "Mailbox", "Serials", "Time", "Request", "RequestedBy", "CancelledBy"}
	if !slices.Equal(fields, want) {
		t.Fatalf("Event fields = %v, want %v: a new field must not carry a secret (check it, then update this test)", fields, want)
	}

	dir := t.TempDir()
	q, _ := OpenQueue(dir)
	e := Event{Kind: RecoveryCompleted, Mailbox: "alice@example.org", Serials: []string{"3f9a01", "77aa"},
		Time: t0, Request: "a1b2c3d4e5f60718", RequestedBy: "officer"}
	id, err := q.Put(e)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, id+fileSuffix))
	wantRaw := `{"kind":"recovery-completed","mailbox":"alice@example.org","serials":["3f9a01","77aa"],"time":"2026-12-04T10:00:00Z","request":"a1b2c3d4e5f60718","requested_by":"officer"}`
	if string(raw) != wantRaw {
		t.Errorf("queued file:\n%s\nwant\n%s", raw, wantRaw)
	}
	msg, err := e.Message("pki@example.org", id, "keyarc CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"To: alice@example.org\r\n", "certificates (serials 3f9a01, 77aa)", "a1b2c3d4e5f60718", "officer", "recovered", "2026-12-04 10:00:00 UTC"} {
		if !bytes.Contains(msg, []byte(s)) {
			t.Errorf("message lacks %q:\n%s", s, msg)
		}
	}
	for _, s := range []string{"-----BEGIN", "password:", "code:", "pin:"} {
		if bytes.Contains(bytes.ToLower(msg), bytes.ToLower([]byte(s))) {
			t.Errorf("message holds %q:\n%s", s, msg)
		}
	}

	// The relay password never prints.
	pw := Password("hunter2-relay")
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "password", pw, "sender", &SMTP{Password: pw})
	for _, s := range []string{fmt.Sprint(pw), fmt.Sprintf("%v %+v %#v %s", pw, pw, pw, pw), logged.String()} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
	}
}

func TestInvalidEvents(t *testing.T) {
	q, _ := OpenQueue(t.TempDir())
	for _, tc := range []struct {
		name    string
		e       Event
		wantErr error
	}{
		{"header injection in mailbox", Event{Kind: Escrowed, Mailbox: "a@example.org\r\nBcc: x@evil.example", Serials: []string{"01"}}, ErrInvalid},
		{"line break in the officer's name", Event{Kind: RecoveryRequested, Mailbox: "a@example.org", Request: "01", RequestedBy: "o\nSubject: x"}, ErrInvalid},
		{"unknown kind", Event{Kind: "other", Mailbox: "a@example.org"}, ErrInvalid},
		{"no mailbox", Event{Kind: Escrowed}, ErrInvalid},
		{"recovery without request", Event{Kind: RecoveryCompleted, Mailbox: "a@example.org"}, ErrInvalid},
		{"valid", escrowed("a@example.org"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := q.Put(tc.e)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Put: %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	q, _ := OpenQueue(t.TempDir())
	n := &Notifier{Queue: q, Sender: &fakeSender{}, From: "pki@example.org"}
	reg := prometheus.NewPedanticRegistry()
	if err := n.Register(reg); err != nil {
		t.Fatal(err)
	}
	n.Notify(escrowed("a@example.org"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	want := map[string]float64{"keyarc_notice_queue": 1, "keyarc_notices_sent_total": 0, "keyarc_notice_failures_total": 0, "keyarc_notices_dropped_total": 0}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("metrics = %v, want %v", got, want)
	}
}

func run(t *testing.T, n *Notifier) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the relay to accept a notice")
	}
}

// TestQueueLeavesForeignFiles: a queue folder set to one that holds other files (notices.queue:
// the state folder, with audit-head.json and serve.json) takes only the files it names itself:
// the others are neither sent, nor counted, nor moved to the rejected folder.
func TestQueueLeavesForeignFiles(t *testing.T) {
	dir := t.TempDir()
	foreign := []string{"audit-head.json", "serve.json", "0123.json"}
	for _, n := range foreign {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(`{"seq":1}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	q, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, err := q.Put(escrowed("a@example.org"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := q.List(); !slices.Equal(got, []string{id}) || q.Len() != 1 {
		t.Fatalf("queue lists %v (%d queued), want only %s", got, q.Len(), id)
	}
	f := &fakeSender{accepted: make(chan struct{}, 1)}
	stop := run(t, &Notifier{Queue: q, Sender: f, From: "pki@example.org"})
	waitFor(t, f.accepted)
	stop()
	for _, n := range foreign {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s is no longer in its folder: %v", n, err)
		}
	}
}
