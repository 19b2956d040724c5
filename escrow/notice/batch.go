package notice

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Batch files. A batch is many events queued together (the keys of one committed batch of a
// bulk job): one file, one fsync, instead of one per event. Its progress file records, one
// index a line, the events whose message the relay accepted (or refused for good), so that a
// batch half sent when the sender stops is not sent again from its start.
const (
	batchSuffix = ".batch"
	sentSuffix  = ".sent"
	// maxBatchFile bounds a batch file read back (26,000 events are about 4 MB).
	maxBatchFile = 64 << 20
)

// batchFile is the format of a batch file.
type batchFile struct {
	Events []Event `json:"events"`
}

// PutBatch queues es durably as one batch file (written to a temporary file, synced, renamed,
// the folder synced: one fsync for all of them) and returns its ID. An empty es queues nothing
// and returns "".
//
// # Errors
//
// [ErrInvalid] if any event cannot become a message (nothing is queued); otherwise the file
// system's.
func (q *Queue) PutBatch(es []Event) (string, error) {
	if len(es) == 0 {
		return "", nil
	}
	for i, e := range es {
		if err := e.Validate(); err != nil {
			return "", fmt.Errorf("event %d of the batch: %w", i, err)
		}
	}
	b, err := json.Marshal(batchFile{Events: es})
	if err != nil {
		return "", err
	}
	if len(b) > maxBatchFile {
		return "", fmt.Errorf("%w: a batch of %d events is too large; queue fewer at once", ErrInvalid, len(es))
	}
	id, err := q.newID()
	if err != nil {
		return "", err
	}
	// Counted before the file appears, so that the sender never marks done events not yet
	// counted.
	q.mu.Lock()
	q.pendingMap()[id] = len(es)
	if q.writing == nil {
		q.writing = map[string]bool{}
	}
	q.writing[id] = true
	q.mu.Unlock()
	err = q.writeFile(id+batchSuffix, b)
	q.mu.Lock()
	delete(q.writing, id)
	if err != nil {
		delete(q.pendingMap(), id)
	}
	q.mu.Unlock()
	if err != nil {
		return "", err
	}
	return id, nil
}

// writeFile writes name in the queue folder durably: a temporary file, synced, renamed into
// place, the folder synced.
func (q *Queue) writeFile(name string, b []byte) error {
	tmp, err := os.CreateTemp(q.dir, tmpPrefix+"*")
	if errors.Is(err, os.ErrNotExist) {
		// Removed while running, or never made ([NewQueue]): made again.
		if err = os.MkdirAll(filepath.Join(q.dir, RejectedDir), 0o700); err == nil {
			tmp, err = os.CreateTemp(q.dir, tmpPrefix+"*")
		}
	}
	if err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(q.dir, name)); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	ok = true
	return syncDir(q.dir)
}

// Batches returns the IDs of the queued batches, oldest first.
func (q *Queue) Batches() ([]string, error) { return q.ids(batchSuffix) }

// GetBatch reads the queued batch id: its events, and which of them are done (sent, or
// refused for good) according to its progress file.
//
// # Errors
//
// [os.ErrNotExist] (wrapped) when it is gone; [ErrInvalid] for a damaged file.
func (q *Queue) GetBatch(id string) (events []Event, done []bool, err error) {
	if !validID(id) {
		return nil, nil, fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	path := filepath.Join(q.dir, id+batchSuffix)
	if st, err := os.Stat(path); err == nil && st.Size() > maxBatchFile {
		return nil, nil, fmt.Errorf("%w: queued batch %s is too large", ErrInvalid, id)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("notice: queue: %w", err)
	}
	var f batchFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("%w: queued batch %s: %v", ErrInvalid, id, err)
	}
	if len(f.Events) == 0 {
		return nil, nil, fmt.Errorf("%w: queued batch %s holds no event", ErrInvalid, id)
	}
	for i, e := range f.Events {
		if err := e.Validate(); err != nil {
			return nil, nil, fmt.Errorf("queued batch %s, event %d: %w", id, i, err)
		}
	}
	done = make([]bool, len(f.Events))
	prog, err := os.ReadFile(filepath.Join(q.dir, id+sentSuffix))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("notice: queue: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(prog))
	for sc.Scan() {
		// A line cut short by a crash is not a number, or names an event that is then sent
		// again: at least once.
		if i, err := strconv.Atoi(sc.Text()); err == nil && i >= 0 && i < len(done) {
			done[i] = true
		}
	}
	return f.Events, done, nil
}

// MarkDone records in the progress file of batch id that its events idx are done (the relay
// accepted their message, or refused it for good). It writes without syncing: the record
// survives a crash of the process; [Queue.SyncBatch] makes it survive a power loss too.
func (q *Queue) MarkDone(id string, idx []int) error {
	if !validID(id) {
		return fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	if len(idx) == 0 {
		return nil
	}
	var b []byte
	for _, i := range idx {
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, '\n')
	}
	f, err := os.OpenFile(filepath.Join(q.dir, id+sentSuffix), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	_, werr := f.Write(b)
	if err := f.Close(); werr == nil && err != nil {
		werr = err
	}
	if werr != nil {
		return fmt.Errorf("notice: queue: %w", werr)
	}
	q.mu.Lock()
	if p := q.pendingMap(); p[id] > 0 {
		p[id] = max(0, p[id]-len(idx))
	}
	q.mu.Unlock()
	return nil
}

// SyncBatch syncs the progress file of batch id, if it has one.
func (q *Queue) SyncBatch(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	f, err := os.OpenFile(filepath.Join(q.dir, id+sentSuffix), os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	return nil
}

// DeleteBatch removes the batch id and then its progress file, once all of it is done. A batch
// already gone is not an error.
func (q *Queue) DeleteBatch(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	// The batch first: a crash in between leaves a progress file alone, which OpenQueue
	// removes, never a batch without its progress (which would be sent again).
	err := os.Remove(filepath.Join(q.dir, id+batchSuffix))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("notice: queue: %w", err)
	}
	if err := syncDir(q.dir); err != nil {
		return err
	}
	q.mu.Lock()
	delete(q.pendingMap(), id)
	q.mu.Unlock()
	if err := os.Remove(filepath.Join(q.dir, id+sentSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("notice: queue: %w", err)
	}
	return nil
}

// RejectBatch moves the batch id, damaged or refused as a whole, to the rejected folder
// ([RejectedDir]) with its progress file.
func (q *Queue) RejectBatch(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	if err := os.Rename(filepath.Join(q.dir, id+batchSuffix), filepath.Join(q.dir, RejectedDir, id+batchSuffix)); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	os.Rename(filepath.Join(q.dir, id+sentSuffix), filepath.Join(q.dir, RejectedDir, id+sentSuffix))
	q.mu.Lock()
	delete(q.pendingMap(), id)
	q.mu.Unlock()
	if err := syncDir(filepath.Join(q.dir, RejectedDir)); err != nil {
		return err
	}
	return syncDir(q.dir)
}

// rejectEvent keeps e, a message the relay refused for good, as a notice file of the rejected
// folder.
func (q *Queue) rejectEvent(e Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	id, err := q.newID()
	if err != nil {
		return err
	}
	return q.writeFile(filepath.Join(RejectedDir, id+fileSuffix), b)
}

// pendingMap is the number of events not yet done of each queued batch, read from the folder
// on first use. Call it with q.mu held.
func (q *Queue) pendingMap() map[string]int {
	if q.pending != nil {
		return q.pending
	}
	q.pending = map[string]int{}
	ids, _ := q.Batches()
	for _, id := range ids {
		es, done, err := q.GetBatch(id)
		if err != nil {
			continue
		}
		n := 0
		for i := range es {
			if !done[i] {
				n++
			}
		}
		q.pending[id] = n
	}
	return q.pending
}

// batchLen is the number of events of the queued batches not yet done.
func (q *Queue) batchLen() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, c := range q.pendingMap() {
		n += c
	}
	return n
}

// removeOrphans removes the progress files whose batch is gone (a crash between the two
// removals of DeleteBatch).
func (q *Queue) removeOrphans() {
	ents, err := os.ReadDir(q.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		if id, ok := strings.CutSuffix(n, sentSuffix); ok && validID(id) {
			if _, err := os.Stat(filepath.Join(q.dir, id+batchSuffix)); errors.Is(err, os.ErrNotExist) {
				os.Remove(filepath.Join(q.dir, n))
			}
		}
	}
}

// merged is the one message of a mailbox (for one kind of notice and request) that stands for
// its events in the queued batches.
type merged struct {
	key   string
	e     Event
	refs  map[string][]int // batch ID -> indices of the events it stands for
	msgID string
}

// passBatches sends the queued batches that are due (see [Notifier.BatchQuiet]): their
// events not yet done are merged into one message per mailbox (and kind and request) listing
// all its serials, oldest first. Each message the relay accepts, or refuses for good (kept in
// the rejected folder), marks its events done in their batches' progress files; a batch whose
// events are all done is removed. A message the relay did not take is retried with back-off
// (state, by merged key). It returns how long to sleep.
//
// A batch's age is the clock's time since its name's, or, for a name in the clock's future
// (queued before the clock was stepped back), the monotonic time since this pass first saw
// it (seen, by batch ID): the quiet period and the hold then last as long as they should,
// not until the clock catches up.
func (n *Notifier) passBatches(ctx context.Context, state map[string]*retry, seen map[string]time.Time) time.Duration {
	mark := n.urgentMark()
	ids, err := n.Queue.Batches()
	if err != nil {
		return n.queueFault(err)
	}
	if len(ids) == 0 {
		clear(state)
		clear(seen)
		return rescan
	}
	now := time.Now()
	for id := range seen {
		if _, ok := slices.BinarySearch(ids, id); !ok {
			delete(seen, id)
		}
	}
	age := func(id string) time.Duration {
		if d := now.Sub(queuedAt(id)); d >= 0 {
			return d
		}
		first, ok := seen[id]
		if !ok {
			first, seen[id] = now, now
		}
		return now.Sub(first)
	}
	quiet, hold := n.batchQuiet(), n.batchHold()
	urgent := n.urgentIn(ids, mark)
	sinceNewest, sinceOldest := age(ids[len(ids)-1]), age(ids[0])
	if sinceNewest < quiet && sinceOldest < hold {
		// Only the batches a Flush made due, and those of NotifyNow, if any.
		flushed := time.Unix(0, n.flushAt.Load())
		var due []string
		for _, id := range ids {
			if !queuedAt(id).After(flushed) || urgent[id] {
				due = append(due, id)
			}
		}
		if len(due) == 0 {
			return min(quiet-sinceNewest, hold-sinceOldest)
		}
		ids = due
	}
	var order []*merged
	byKey := map[string]*merged{}
	remaining := map[string]int{}
	for _, id := range ids {
		es, done, err := n.Queue.GetBatch(id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			n.ctr().failures.Add(1)
			n.ctr().dropped.Add(1)
			n.log().Error("subscriber notices: a damaged batch is kept in the rejected folder, not sent", "batch", id, "err", err)
			if rerr := n.Queue.RejectBatch(id); rerr != nil {
				n.log().Error("subscriber notices: cannot move a batch to the rejected folder", "batch", id, "err", rerr)
			}
			continue
		}
		for i, e := range es {
			if done[i] {
				continue
			}
			remaining[id]++
			k := string(e.Kind) + "\x00" + e.Mailbox + "\x00" + e.Request
			m := byKey[k]
			if m == nil {
				m = &merged{key: k, e: e, refs: map[string][]int{}, msgID: fmt.Sprintf("%s-%d", id, i)}
				m.e.Serials = nil
				byKey[k] = m
				order = append(order, m)
			}
			m.refs[id] = append(m.refs[id], i)
			for _, s := range e.Serials {
				if !slices.Contains(m.e.Serials, s) {
					m.e.Serials = append(m.e.Serials, s)
				}
			}
			if e.Time.Before(m.e.Time) {
				m.e.Time = e.Time
			}
		}
		if remaining[id] == 0 {
			n.deleteBatch(id)
		}
	}
	for k := range state {
		if byKey[k] == nil {
			delete(state, k)
		}
	}
	touched := map[string]bool{}
	markDone := func(m *merged) {
		for id, idx := range m.refs {
			if err := n.Queue.MarkDone(id, idx); err != nil {
				// Sent, but not recorded: it may be sent again (same Message-ID).
				n.log().Error("subscriber notice sent but not recorded in its batch", "batch", id, "err", err)
			}
			touched[id] = true
			remaining[id] -= len(idx)
		}
	}
	wait := rescan
send:
	for _, m := range order {
		if ctx.Err() != nil {
			break
		}
		now := time.Now()
		if r := state[m.key]; r != nil && now.Before(r.next) {
			wait = min(wait, r.next.Sub(now))
			continue
		}
		err := n.sendEvent(ctx, m.e, m.msgID)
		switch {
		case err == nil:
			n.ctr().sent.Add(1)
			delete(state, m.key)
			markDone(m)
			n.log().Info("subscriber notice sent", "id", m.msgID, "kind", m.e.Kind, "serials", len(m.e.Serials))
			continue
		case errors.Is(err, ErrRejected), errors.Is(err, ErrInvalid):
			n.ctr().failures.Add(1)
			n.ctr().dropped.Add(1)
			delete(state, m.key)
			n.log().Error("subscriber notice refused for good: kept in the rejected folder, not retried", "id", m.msgID, "err", err)
			if rerr := n.Queue.rejectEvent(m.e); rerr != nil {
				n.log().Error("subscriber notice: cannot keep it in the rejected folder", "id", m.msgID, "err", rerr)
			}
			markDone(m)
			continue
		}
		if ctx.Err() != nil {
			break
		}
		n.ctr().failures.Add(1)
		r := state[m.key]
		if r == nil {
			r = &retry{}
			state[m.key] = r
		}
		r.attempts++
		d := n.backoff(r.attempts)
		r.next = time.Now().Add(d)
		wait = min(wait, d)
		n.log().Warn("subscriber notice not sent; will retry", "id", m.msgID, "attempts", r.attempts, "retry_in", d, "err", err)
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// No answer from the relay: the messages behind this one would fail the same way.
			break send
		}
	}
	for id := range touched {
		if err := n.Queue.SyncBatch(id); err != nil {
			n.log().Error("subscriber notices: sync a batch's progress", "batch", id, "err", err)
		}
		if remaining[id] <= 0 {
			n.deleteBatch(id)
		}
	}
	return wait
}

func (n *Notifier) deleteBatch(id string) {
	if err := n.Queue.DeleteBatch(id); err != nil {
		n.log().Error("subscriber notices: a batch all sent is still queued", "batch", id, "err", err)
	}
}

func (n *Notifier) batchQuiet() time.Duration {
	if n.BatchQuiet > 0 {
		return n.BatchQuiet
	}
	return DefaultBatchQuiet
}

func (n *Notifier) batchHold() time.Duration {
	if n.BatchHold > 0 {
		return n.BatchHold
	}
	return DefaultBatchHold
}
