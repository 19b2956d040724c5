package notice

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuf is a log destination safe for the sender's goroutine and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// blockFolder puts a file in the place of the folder dir: every read and write of it fails,
// whoever runs the test.
func blockFolder(t *testing.T, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestQueueFolderBlocked: a queue folder that cannot be read (a file in its place) is logged
// once, not at every retry of the sender (twice a second, for as long as it lasts); notices
// cannot be queued meanwhile; once the file is gone the folder is made again, and the notice
// queued then is sent.
func TestQueueFolderBlocked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "queue")
	q, err := OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	s := &fakeSender{accepted: make(chan struct{}, 4)}
	n := &Notifier{Queue: q, Sender: s, From: "pki@example.org", MinBackoff: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	blockFolder(t, dir)
	run(t, n)
	if err := n.Notify(escrowed("alice@example.org")); err == nil {
		t.Fatal("Notify queued into a folder that is a file")
	}
	time.Sleep(1500 * time.Millisecond) // some 15 passes of the sender
	if c := strings.Count(logs.String(), "cannot read the queue"); c != 1 {
		t.Errorf("the log says %d times that the queue cannot be read, want once:\n%s", c, logs.String())
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(escrowed("alice@example.org")); err != nil {
		t.Fatalf("Notify once the folder can be made again: %v", err)
	}
	waitFor(t, s.accepted)
	if !strings.Contains(logs.String(), "queue folder can be read again") {
		t.Errorf("the log does not say the queue works again:\n%s", logs.String())
	}
}

// TestNewQueueUnopened: a queue whose folder could not be opened at start (NewQueue) takes
// notices once the folder can be made.
func TestNewQueueUnopened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "queue")
	blockFolder(t, dir)
	if _, err := OpenQueue(dir); err == nil {
		t.Fatal("OpenQueue opened a folder that is a file")
	}
	q := NewQueue(dir)
	if _, err := q.Put(escrowed("alice@example.org")); err == nil {
		t.Fatal("Put queued into a folder that is a file")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	id, err := q.Put(escrowed("alice@example.org"))
	if err != nil {
		t.Fatalf("Put once the folder can be made: %v", err)
	}
	if e, err := q.Get(id); err != nil || e.Mailbox != "alice@example.org" {
		t.Errorf("Get = %+v, %v", e, err)
	}
	if st, err := os.Stat(filepath.Join(dir, RejectedDir)); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Errorf("rejected folder: %v, %v", st, err)
	}
}
