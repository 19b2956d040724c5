package notice

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stepBack renames the files of the queued batch id as if it had been queued an hour later
// than it was: the clock was an hour ahead, and NTP has stepped it back since.
func stepBack(t *testing.T, q *Queue, id string) string {
	t.Helper()
	stepped := fmt.Sprintf("%020d", queuedAt(id).Add(time.Hour).UnixNano()) + id[20:]
	ents, err := os.ReadDir(q.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if rest, ok := strings.CutPrefix(e.Name(), id); ok {
			if err := os.Rename(filepath.Join(q.Dir(), e.Name()), filepath.Join(q.Dir(), stepped+rest)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return stepped
}

// TestBatchClockStepBack: batches queued before the clock was stepped back an hour are sent
// after the quiet period, and by a Flush, not an hour late; a batch queued after the step
// sorts after them. Before, their age was negative: the quiet period and the hold lasted until
// the clock caught up, and Flush, comparing clock readings, left them queued.
func TestBatchClockStepBack(t *testing.T) {
	for _, flush := range []bool{false, true} {
		q, err := OpenQueue(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		id, err := q.PutBatch(escrowedBatch(map[string][]string{"a@example.org": {"01"}}, "a@example.org"))
		if err != nil {
			t.Fatal(err)
		}
		stepped := stepBack(t, q, id)
		// Reopened, as after a restart, and as it is: the next ID follows the stepped one.
		if q, err = OpenQueue(q.Dir()); err != nil {
			t.Fatal(err)
		}
		later, err := q.PutBatch(escrowedBatch(map[string][]string{"b@example.org": {"02"}}, "b@example.org"))
		if err != nil {
			t.Fatal(err)
		}
		if later <= stepped {
			t.Errorf("flush %v: batch queued after the step %s sorts before the one queued before it, %s", flush, later, stepped)
		}
		f := &fakeSender{accepted: make(chan struct{}, 8)}
		n := &Notifier{Queue: q, Sender: f, From: "pki@example.org", BatchQuiet: 100 * time.Millisecond}
		if flush {
			n.BatchQuiet = time.Hour
		}
		run(t, n)
		if flush {
			time.Sleep(50 * time.Millisecond)
			n.Flush()
		}
		for range 2 {
			select {
			case <-f.accepted:
			case <-time.After(10 * time.Second):
				t.Fatalf("flush %v: batches queued before the clock stepped back are not sent", flush)
			}
		}
		waitQueue(t, q, n, 0, 2)
	}
}
