package notice

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// orphanFolder makes under parent the queue folder of node, as a node that died left it:
// notices files and a batch of batch events, each to its own mailbox. It returns the folder
// and the mailboxes, one message each.
func orphanFolder(t *testing.T, parent, node string, notices, batch int) (string, []string) {
	t.Helper()
	dir := filepath.Join(parent, "node-"+node)
	q, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	var boxes []string
	for i := range notices {
		boxes = append(boxes, fmt.Sprintf("%s-%d@example.org", node, i))
		if _, err := q.Put(escrowed(boxes[i])); err != nil {
			t.Fatal(err)
		}
	}
	var es []Event
	for i := range batch {
		m := fmt.Sprintf("%s-batch-%d@example.org", node, i)
		boxes = append(boxes, m)
		es = append(es, escrowed(m))
	}
	if _, err := q.PutBatch(es); err != nil {
		t.Fatal(err)
	}
	return dir, boxes
}

// node is the sender of a live node's folder under parent, through the relay r, and the
// adopter that runs beside it; its log goes to logs.
func node(t *testing.T, parent, name string, r *relay, logs *syncBuf) (*Notifier, *Adopter) {
	t.Helper()
	q, err := OpenQueue(filepath.Join(parent, "node-"+name))
	if err != nil {
		t.Fatal(err)
	}
	n := &Notifier{Queue: q, Sender: &SMTP{Addr: r.addr}, From: "pki@example.org", MinBackoff: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil)).With("node", name), lockEvery: 20 * time.Millisecond}
	return n, &Adopter{Notifier: n, Dir: parent, Prefix: "node-"}
}

// received collects the recipients of the messages the relay r accepts within settle of the
// last one, and fails on a Message-ID seen twice.
func received(t *testing.T, r *relay, want int, settle time.Duration) []string {
	t.Helper()
	var to []string
	ids := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for {
		wait := settle
		if len(to) < want {
			wait = 20 * time.Second
		}
		select {
		case m := <-r.got:
			<-r.authed
			id := header(m, "Message-ID")
			if ids[id] {
				t.Errorf("message %s (to %s) sent twice", id, header(m, "To"))
			}
			ids[id] = true
			to = append(to, header(m, "To"))
		case <-time.After(wait):
			return to
		case <-deadline:
			t.Fatalf("the relay got %d messages, want %d", len(to), want)
		}
	}
}

// sameSet fails unless got holds each of want once, and nothing else.
func sameSet(t *testing.T, got, want []string) {
	t.Helper()
	count := map[string]int{}
	for _, m := range got {
		count[m]++
	}
	for _, m := range want {
		if count[m] != 1 {
			t.Errorf("%s got %d messages, want 1", m, count[m])
		}
		delete(count, m)
	}
	for m, c := range count {
		t.Errorf("%s got %d messages, want none", m, c)
	}
}

// TestAdoptOnlyUnlockedFolders: a folder whose lock another open file holds (its sender runs)
// is not sent by the adopter, nor is the adopter's own; once the lock is released the adopter
// sends it all, each notice once, then leaves it (and an empty one) unlocked.
func TestAdoptOnlyUnlockedFolders(t *testing.T) {
	parent := t.TempDir()
	r := startRelay(t, nil)
	logs := &syncBuf{}
	own, a := node(t, parent, "b", r, logs)
	if _, err := own.Queue.Put(escrowed("own@example.org")); err != nil {
		t.Fatal(err)
	}
	dir, boxes := orphanFolder(t, parent, "a", 3, 4)
	empty, _ := orphanFolder(t, parent, "c", 0, 0)
	held, err := tryLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Scan(context.Background()); got != 0 {
		t.Errorf("Scan adopted %d folders while their senders ran or held nothing", got)
	}
	if got := received(t, r, 0, 300*time.Millisecond); len(got) != 0 {
		t.Fatalf("the relay got messages while the folder's sender ran: %v", got)
	}
	held.Close()
	if got := a.Scan(context.Background()); got != 1 {
		t.Errorf("Scan adopted %d folders, want 1", got)
	}
	sameSet(t, received(t, r, len(boxes), 300*time.Millisecond), boxes)
	if got := a.Scan(context.Background()); got != 0 {
		t.Errorf("a second Scan adopted %d folders, want none: nothing is left", got)
	}
	if got := received(t, r, 0, 300*time.Millisecond); len(got) != 0 {
		t.Errorf("the second Scan sent %v", got)
	}
	waitEmpty(t, dir)
	if !strings.Contains(logs.String(), "sending the queued notices of node a, which is not running") {
		t.Errorf("the log does not say node a's notices are sent:\n%s", logs.String())
	}
	for _, d := range []string{dir, empty} {
		l, err := tryLock(d)
		if err != nil {
			t.Errorf("%s is still locked after the scan: %v", d, err)
			continue
		}
		l.Close()
	}
	if own.Queue.Len() != 1 || own.Sent() != uint64(len(boxes)) {
		t.Errorf("own queue holds %d (want its 1), sent = %d (want %d, the adopted count in the node's metrics)", own.Queue.Len(), own.Sent(), len(boxes))
	}
}

// TestAdoptRace: adopters of several nodes scanning at once send each notice of the folders
// of dead nodes once.
func TestAdoptRace(t *testing.T) {
	parent := t.TempDir()
	r := startRelay(t, nil)
	logs := &syncBuf{}
	var want []string
	for _, name := range []string{"dead1", "dead2"} {
		_, boxes := orphanFolder(t, parent, name, 15, 10)
		want = append(want, boxes...)
	}
	var adopters []*Adopter
	for _, name := range []string{"x", "y", "z"} {
		_, a := node(t, parent, name, r, logs)
		adopters = append(adopters, a)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, a := range adopters {
		wg.Go(func() {
			<-start
			a.Scan(context.Background())
		})
	}
	close(start)
	got := received(t, r, len(want), 500*time.Millisecond)
	wg.Wait()
	sameSet(t, got, want)
}

// gatedSender holds every Send until open is closed.
type gatedSender struct {
	Sender
	open chan struct{}
}

func (g gatedSender) Send(ctx context.Context, from, to string, msg []byte) error {
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Sender.Send(ctx, from, to, msg)
}

// TestOwnerWaitsForTheAdopter: a node that starts while another sends the notices it had left
// takes notices all the same but sends none until the adopter is done; then it sends its
// own. Every notice goes once.
func TestOwnerWaitsForTheAdopter(t *testing.T) {
	parent := t.TempDir()
	r := startRelay(t, nil)
	logs := &syncBuf{}
	dir, want := orphanFolder(t, parent, "a", 2, 2)
	_, a := node(t, parent, "b", r, logs)
	gate := make(chan struct{})
	a.Notifier.Sender = gatedSender{a.Notifier.Sender, gate}
	adopting := make(chan struct{})
	go func() { defer close(adopting); a.Scan(context.Background()) }()
	// The adopter holds the lock once it waits at the gate.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if l, err := tryLock(dir); err != nil {
			break
		} else {
			l.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("the adopter did not take the folder")
		}
	}

	owner, _ := node(t, parent, "a", r, logs)
	run(t, owner)
	if err := owner.Notify(escrowed("new@example.org")); err != nil {
		t.Fatalf("Notify while the adopter sends: %v", err)
	}
	want = append(want, "new@example.org")
	if got := received(t, r, 0, 300*time.Millisecond); len(got) != 0 {
		t.Fatalf("sent while the adopter held the folder: %v", got)
	}
	if !strings.Contains(logs.String(), "waiting for it to finish") {
		t.Errorf("the owner's log does not say it waits:\n%s", logs.String())
	}
	close(gate)
	<-adopting
	if err := owner.Notify(escrowed("later@example.org")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "later@example.org")
	sameSet(t, received(t, r, len(want), 300*time.Millisecond), want)
	waitQueue(t, owner.Queue, owner, 0, owner.Sent())
	if owner.Sent() == 0 {
		t.Error("the owner sent nothing after the adopter released its folder")
	}
	if !strings.Contains(logs.String(), "queue folder is free again") {
		t.Errorf("the owner's log does not say it took over:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, LockFile)); err != nil {
		t.Errorf("lock file: %v", err)
	}
}
