package notice

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RejectedDir is the subfolder of the queue where notices the relay refused for good (a 5xx
// answer) are kept for an operator, instead of being retried without end.
const RejectedDir = "rejected"

const (
	fileSuffix = ".json"
	tmpPrefix  = ".tmp-"
	maxFile    = 64 << 10
)

// Queue is a folder of queued notices, one file per notice ([Queue.Put]) or per batch of
// notices ([Queue.PutBatch]), named so that they sort in the order they were queued. A file is
// complete or absent: it is written to a temporary file, synced, renamed into place, and the
// folder synced, so a notice queued survives a crash or a restart. Use [OpenQueue].
type Queue struct {
	dir string
	mu  sync.Mutex // orders names queued in the same nanosecond; guards pending and last
	seq uint64
	// last is the time (Unix ns) in the newest name, this process's or found at open: a name
	// never goes back from it, so the order of the names stays the order of queueing after
	// the clock is stepped back.
	last int64
	// pending counts the events not yet done of each batch (batch.go), read on first use.
	pending map[string]int
	// writing are the batches being written: counted in pending, their file not yet there.
	writing map[string]bool
}

// OpenQueue opens (making it, mode 0700) the queue folder dir and removes the temporary files
// a crash may have left.
func OpenQueue(dir string) (*Queue, error) {
	if err := os.MkdirAll(filepath.Join(dir, RejectedDir), 0o700); err != nil {
		return nil, fmt.Errorf("notice: queue folder: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("notice: queue folder: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	q := &Queue{dir: dir}
	for _, e := range ents {
		name := e.Name()
		if i := strings.IndexByte(name, '.'); i > 0 && validID(name[:i]) {
			q.last = max(q.last, queuedAt(name[:i]).UnixNano())
		}
	}
	q.removeOrphans()
	return q, nil
}

// NewQueue is the queue of the folder dir, without reading or making it: for a folder that
// [OpenQueue] could not open (a file in its place, a full disk, a permission), so that the
// appliance runs on. Each write makes the folder (mode 0700) if it is missing, and fails, to be
// retried, while it cannot be written; the sender logs that it cannot read the folder.
func NewQueue(dir string) *Queue { return &Queue{dir: dir} }

// Dir is the queue's folder.
func (q *Queue) Dir() string { return q.dir }

// Put queues e durably and returns its ID (the file's name without its suffix).
//
// # Errors
//
// [ErrInvalid] for an event that cannot become a message; otherwise the file system's.
func (q *Queue) Put(e Event) (string, error) {
	if err := e.Validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return "", err
	}
	id, err := q.newID()
	if err != nil {
		return "", err
	}
	if err := q.writeFile(id+fileSuffix, b); err != nil {
		return "", err
	}
	return id, nil
}

// newID is the queue time in nanoseconds (fixed width, so names sort in queue order), a
// sequence number and 4 random bytes. The time never goes back from the newest name's (see
// [Queue.last]): after the clock is stepped back, names go on from there a nanosecond apart
// until the clock catches up.
func (q *Queue) newID() (string, error) {
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	q.mu.Lock()
	q.seq++
	seq := q.seq
	q.last = max(time.Now().UnixNano(), q.last+1)
	at := q.last
	q.mu.Unlock()
	return fmt.Sprintf("%020d-%06d-%s", at, seq%1_000_000, hex.EncodeToString(r[:])), nil
}

// newest is the time (Unix ns) in the newest name queued or found at open, 0 for none.
func (q *Queue) newest() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.last
}

// List returns the IDs of the queued notices, oldest first.
func (q *Queue) List() ([]string, error) { return q.ids(fileSuffix) }

// ids returns the IDs of the queued files whose names end in suffix, oldest first (IDs
// start with their time); files of other names (temporary files, another program's files in
// a shared folder) are left out.
func (q *Queue) ids(suffix string) ([]string, error) {
	ents, err := os.ReadDir(q.dir)
	if err != nil {
		return nil, fmt.Errorf("notice: queue: %w", err)
	}
	var ids []string
	for _, e := range ents {
		n := e.Name()
		if id, ok := strings.CutSuffix(n, suffix); ok && e.Type().IsRegular() && validID(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Len is the number of queued notices, the events of queued batches not yet done included
// (the notices of a folder that cannot be read are not counted).
func (q *Queue) Len() int {
	ids, _ := q.List()
	return len(ids) + q.batchLen()
}

// Get reads the queued notice id.
//
// # Errors
//
// [os.ErrNotExist] (wrapped) when it is gone; [ErrInvalid] for a damaged file.
func (q *Queue) Get(id string) (Event, error) {
	var e Event
	if !validID(id) {
		return e, fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	b, err := os.ReadFile(filepath.Join(q.dir, id+fileSuffix))
	if err != nil {
		return e, fmt.Errorf("notice: queue: %w", err)
	}
	if len(b) > maxFile {
		return e, fmt.Errorf("%w: queued file %s is too large", ErrInvalid, id)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%w: queued file %s: %v", ErrInvalid, id, err)
	}
	return e, e.Validate()
}

// Delete removes the notice id once the relay accepted it. A notice already gone is not an
// error.
func (q *Queue) Delete(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	err := os.Remove(filepath.Join(q.dir, id+fileSuffix))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("notice: queue: %w", err)
	}
	return syncDir(q.dir)
}

// Reject moves the notice id to the rejected folder ([RejectedDir]), where it is no longer
// retried.
func (q *Queue) Reject(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: queue ID %q", ErrInvalid, id)
	}
	if err := os.Rename(filepath.Join(q.dir, id+fileSuffix), filepath.Join(q.dir, RejectedDir, id+fileSuffix)); err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	if err := syncDir(filepath.Join(q.dir, RejectedDir)); err != nil {
		return err
	}
	return syncDir(q.dir)
}

// recount reads again from the folder the events not yet done of each batch: another sender
// (an [Adopter], while this queue's was not running) sent some, or all, of those counted.
// The batches being written keep their count.
func (q *Queue) recount() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == nil {
		return // not read yet: it will be read as it is now
	}
	old := q.pending
	q.pending = nil
	fresh := q.pendingMap()
	for id := range q.writing {
		if c, ok := old[id]; ok {
			fresh[id] = c
		}
	}
}

// validID accepts the names newID makes (20 digits, 6 digits, 8 hex digits, joined by
// dashes), never a path, nor a file of another program that shares the folder.
func validID(id string) bool {
	if len(id) != 20+1+6+1+8 || id[20] != '-' || id[27] != '-' {
		return false
	}
	for i, r := range id {
		switch {
		case i == 20 || i == 27:
		case i < 27 && !(r >= '0' && r <= '9'):
			return false
		case i > 27 && !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f'):
			return false
		}
	}
	return true
}

// queuedAt is when the notice id was queued, from its name.
func queuedAt(id string) time.Time {
	ns, err := strconv.ParseInt(strings.SplitN(id, "-", 2)[0], 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("notice: queue: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("notice: queue: sync folder: %w", err)
	}
	return nil
}
