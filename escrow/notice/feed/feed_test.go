package feed_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/notice"
	"github.com/keyarc/keyarc/escrow/notice/feed"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// recorder is a feed.Queuer that keeps what it is given.
type recorder struct {
	batches, now [][]notice.Event
	flushes      int
	// queued, when set, is called once notices are queued.
	queued func()
}

func (r *recorder) NotifyBatch(es []notice.Event) error {
	if len(es) > 0 {
		r.batches = append(r.batches, es)
		if r.queued != nil {
			r.queued()
		}
	}
	return nil
}

func (r *recorder) NotifyNow(es []notice.Event) error {
	if len(es) > 0 {
		r.now = append(r.now, es)
	}
	return nil
}

func (r *recorder) Flush() { r.flushes++ }

func openDB(t *testing.T) store.Store {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// appendEntry commits one audit entry.
func appendEntry(t *testing.T, db store.Store, kind audit.Kind, actor, subject string, d audit.Details) {
	t.Helper()
	err := db.Update(context.Background(), func(tx store.Tx) error {
		_, err := audit.Append(tx, time.Now(), kind, actor, subject, d)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func cursor(t *testing.T, db store.Store) int64 {
	t.Helper()
	var pos int64
	if err := db.View(context.Background(), func(tx store.Tx) (err error) { pos, err = tx.Cursor(feed.CursorName); return }); err != nil {
		t.Fatal(err)
	}
	return pos
}

func drain(t *testing.T, f *feed.Feed) {
	t.Helper()
	for range 100 {
		more, err := f.Step(context.Background())
		if err != nil {
			t.Fatalf("Step: %v", err)
		}
		if !more {
			return
		}
	}
	t.Fatal("the feed never caught up")
}

// TestFeedStartsAtTheEnd: the first start places the cursor at the end of the trail: what
// happened before notices existed is not mailed; what happens after is.
func TestFeedStartsAtTheEnd(t *testing.T) {
	db := openDB(t)
	appendEntry(t, db, audit.KindArchive, "local", "old@example.org", audit.Details{Mailbox: "old@example.org", Serial: "01"})
	rec := &recorder{}
	f := started(t, &feed.Feed{Store: db, Notifier: rec})
	if got := cursor(t, db); got != 1 {
		t.Fatalf("cursor after the first start = %d, want 1 (the end of the trail)", got)
	}
	appendEntry(t, db, audit.KindArchive, "local", "new@example.org", audit.Details{Mailbox: "new@example.org", Serial: "02"})
	drain(t, f)
	if len(rec.now) != 1 || len(rec.now[0]) != 1 || rec.now[0][0].Mailbox != "new@example.org" || rec.batches != nil {
		t.Fatalf("queued now %+v, batches %+v; want the new key's notice alone", rec.now, rec.batches)
	}
	// A later start leaves a placed cursor where it is.
	appendEntry(t, db, audit.KindArchive, "local", "third@example.org", audit.Details{Mailbox: "third@example.org", Serial: "03"})
	if err := (&feed.Feed{Store: db, Notifier: rec}).Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := cursor(t, db); got != 2 {
		t.Fatalf("cursor after a restart = %d, want 2", got)
	}
}

// TestFeedEvents: an enrollment's entry is due at once; a bulk job's entries are queued as a
// batch, merged per mailbox; an import batch's entry names every mailbox; entries of other
// kinds tell nobody.
func TestFeedEvents(t *testing.T) {
	db := openDB(t)
	rec := &recorder{}
	f := started(t, &feed.Feed{Store: db, Notifier: rec})
	appendEntry(t, db, audit.KindArchive, "enrollee:alice@example.org", "alice@example.org", audit.Details{Mailbox: "alice@example.org", Serial: "0a"})
	appendEntry(t, db, audit.KindEnroll, "enrollee:bob@example.org", "bob@example.org", audit.Details{Mailbox: "bob@example.org", Serial: "0b"})
	appendEntry(t, db, audit.KindCodeCreated, "admin:root", "carol@example.org", audit.Details{Mailbox: "carol@example.org"})
	appendEntry(t, db, audit.KindArchive, "job j1", "dave@example.org", audit.Details{Mailbox: "dave@example.org", Serial: "0d"})
	appendEntry(t, db, audit.KindArchive, "job j1", "job j1", audit.Details{Mailboxes: []string{"erin@example.org", "dave@example.org"}, Serials: []string{"0e", "1d"}})
	drain(t, f)
	if len(rec.now) != 1 || len(rec.now[0]) != 1 {
		t.Fatalf("due at once: %+v, want alice's notice alone", rec.now)
	}
	if e := rec.now[0][0]; e.Kind != notice.Escrowed || e.Mailbox != "alice@example.org" || !slices.Equal(e.Serials, []string{"0a"}) || e.Time.IsZero() {
		t.Errorf("alice's notice %+v", e)
	}
	if len(rec.batches) != 1 {
		t.Fatalf("batches %+v, want the job's as one", rec.batches)
	}
	got := map[string]string{}
	for _, e := range rec.batches[0] {
		got[e.Mailbox] = strings.Join(e.Serials, ",")
	}
	want := map[string]string{"dave@example.org": "0d,1d", "erin@example.org": "0e"}
	if len(got) != len(want) || got["dave@example.org"] != want["dave@example.org"] || got["erin@example.org"] != want["erin@example.org"] {
		t.Errorf("the job's batch by mailbox %v, want %v", got, want)
	}
	if pos := cursor(t, db); pos != 5 {
		t.Errorf("cursor %d, want 5", pos)
	}
	// Caught up: the next step queues nothing and writes nothing.
	rec.now, rec.batches = nil, nil
	drain(t, f)
	if rec.now != nil || rec.batches != nil {
		t.Errorf("a step with nothing new queued %+v %+v", rec.now, rec.batches)
	}
}

// TestFeedPages: a trail longer than a step's batch is read in pages, every notice once.
func TestFeedPages(t *testing.T) {
	db := openDB(t)
	rec := &recorder{}
	f := started(t, &feed.Feed{Store: db, Notifier: rec, Batch: 3})
	for i := range 10 {
		m := string(rune('a'+i)) + "@example.org"
		appendEntry(t, db, audit.KindArchive, "local", m, audit.Details{Mailbox: m, Serial: "0" + string(rune('1'+i))})
		appendEntry(t, db, audit.KindCodeCreated, "admin:root", m, audit.Details{})
	}
	drain(t, f)
	seen := map[string]int{}
	for _, es := range rec.now {
		for _, e := range es {
			seen[e.Mailbox]++
		}
	}
	if len(seen) != 10 {
		t.Errorf("notices for %d mailboxes, want 10: %v", len(seen), seen)
	}
	for m, n := range seen {
		if n != 1 {
			t.Errorf("%s told %d times", m, n)
		}
	}
	if pos := cursor(t, db); pos != 20 {
		t.Errorf("cursor %d, want 20", pos)
	}
}

// TestFeedQueueFails: while the queue cannot be written, the cursor stays and nothing is lost;
// once it can, the notices are queued and sent.
func TestFeedQueueFails(t *testing.T) {
	db := openDB(t)
	dir := filepath.Join(t.TempDir(), "queue")
	q, err := notice.OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := &notice.Notifier{Queue: q, Sender: nopSender{}, From: "pki@example.org"}
	f := started(t, &feed.Feed{Store: db, Notifier: n})
	appendEntry(t, db, audit.KindArchive, "local", "alice@example.org", audit.Details{Mailbox: "alice@example.org", Serial: "0a"})
	// The queue folder is replaced by a file: every write fails, whoever runs the test.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Step(context.Background()); err == nil {
		t.Fatal("Step queued into a folder that is a file")
	}
	if pos := cursor(t, db); pos != 0 {
		t.Fatalf("cursor moved to %d past a notice not queued", pos)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if q, err = notice.OpenQueue(dir); err != nil {
		t.Fatal(err)
	}
	n.Queue = q
	drain(t, f)
	ids, err := q.List()
	if err != nil || len(ids) != 1 {
		t.Fatalf("queue holds %v (%v), want alice's notice", ids, err)
	}
	if e, err := q.Get(ids[0]); err != nil || e.Mailbox != "alice@example.org" {
		t.Errorf("queued %+v (%v)", e, err)
	}
}

// TestFeedWithoutNotifier: a node without notices moves the cursor and queues nothing, so that
// turning notices on later does not mail what happened while they were off.
func TestFeedWithoutNotifier(t *testing.T) {
	db := openDB(t)
	off := started(t, &feed.Feed{Store: db})
	appendEntry(t, db, audit.KindArchive, "local", "alice@example.org", audit.Details{Mailbox: "alice@example.org", Serial: "0a"})
	drain(t, off)
	if pos := cursor(t, db); pos != 1 {
		t.Fatalf("cursor %d, want 1", pos)
	}
	rec := &recorder{}
	on := started(t, &feed.Feed{Store: db, Notifier: rec})
	drain(t, on)
	if rec.now != nil || rec.batches != nil {
		t.Errorf("notices of the time notices were off: %+v %+v", rec.now, rec.batches)
	}
}

// TestFeedFlush: a Flush (a bulk job ended) reaches the notifier once the feed has queued what
// the trail held, not before.
func TestFeedFlush(t *testing.T) {
	db := openDB(t)
	rec := &recorder{}
	f := started(t, &feed.Feed{Store: db, Notifier: rec, Batch: 2})
	for i := range 3 {
		m := string(rune('a'+i)) + "@example.org"
		appendEntry(t, db, audit.KindArchive, "job j", m, audit.Details{Mailbox: m, Serial: "0" + string(rune('1'+i))})
	}
	f.Flush()
	if more, err := f.Step(context.Background()); err != nil || !more {
		t.Fatalf("first step: more %v, %v", more, err)
	}
	if rec.flushes != 0 {
		t.Fatal("flushed before the job's last notices were queued")
	}
	drain(t, f)
	if rec.flushes != 1 || len(rec.batches) != 2 {
		t.Errorf("flushes %d, batches %d; want 1 flush after 2 batches", rec.flushes, len(rec.batches))
	}
}

type nopSender struct{}

func (nopSender) Send(context.Context, string, string, []byte) error { return nil }

// longMailbox is a valid mailbox of n characters (at most 254, RFC 5321) that differs by i.
func longMailbox(i, n int) string {
	local := fmt.Sprintf("u%07d", i)
	domain := "example.org"
	for len(local)+1+len(domain) < n {
		domain = "d" + strings.Repeat("x", min(61, n-len(local)-1-len(domain)-2)) + "." + domain
	}
	return local + "@" + domain
}

// TestFeedLargeImportJob: a bulk import job commits up to 512 items per audit entry, and a
// step reads up to 500 entries; the notices of one step must still fit a batch file (64 MB),
// or the feed retries the same step for ever and no subscriber is told of anything again.
// Every notice is queued once, in batch files of bounded size.
func TestFeedLargeImportJob(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a large trail")
	}
	db := openDB(t)
	dir := filepath.Join(t.TempDir(), "queue")
	q, err := notice.OpenQueue(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := started(t, &feed.Feed{Store: db, Notifier: &notice.Notifier{Queue: q, Sender: nopSender{}, From: "pki@example.org"}})
	const entries, perEntry = 360, 512
	err = db.Update(context.Background(), func(tx store.Tx) error {
		for e := range entries {
			// A mailbox each (people, not one role mailbox): nothing merges.
			d := audit.Details{Template: "import", Mailboxes: make([]string, perEntry), Serials: make([]string, perEntry)}
			for i := range d.Serials {
				d.Mailboxes[i] = longMailbox(e*perEntry+i, 254)
				d.Serials[i] = fmt.Sprintf("%040x", e*perEntry+i)
			}
			if _, err := audit.Append(tx, time.Now(), audit.KindArchive, "job j1", "job j1", d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	drain(t, f)
	ids, err := q.Batches()
	if err != nil {
		t.Fatal(err)
	}
	serials := map[string]int{}
	for _, id := range ids {
		st, err := os.Stat(filepath.Join(dir, id+".batch"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 16<<20 {
			t.Errorf("batch %s is %d bytes: a step's notices are not bounded", id, st.Size())
		}
		es, _, err := q.GetBatch(id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			for _, s := range e.Serials {
				serials[s]++
			}
		}
	}
	if len(serials) != entries*perEntry {
		t.Errorf("%d serials queued, want %d", len(serials), entries*perEntry)
	}
	for s, n := range serials {
		if n != 1 {
			t.Errorf("serial %s queued %d times", s, n)
			break
		}
	}
	if pos := cursor(t, db); pos != entries {
		t.Errorf("cursor %d, want %d", pos, entries)
	}
}

// TestFeedMalformedPage: a page of the trail that holds only entries whose notices cannot be
// known moves the cursor past them, not past the entries after them.
func TestFeedMalformedPage(t *testing.T) {
	db := openDB(t)
	rec := &recorder{}
	f := started(t, &feed.Feed{Store: db, Notifier: rec, Batch: 2})
	for range 2 {
		// Two mailboxes for one serial: which was escrowed cannot be known.
		appendEntry(t, db, audit.KindArchive, "job j1", "job j1", audit.Details{Mailboxes: []string{"a@example.org", "b@example.org"}, Serials: []string{"01"}})
	}
	appendEntry(t, db, audit.KindArchive, "local", "carol@example.org", audit.Details{Mailbox: "carol@example.org", Serial: "0c"})
	drain(t, f)
	if len(rec.now) != 1 || len(rec.now[0]) != 1 || rec.now[0][0].Mailbox != "carol@example.org" {
		t.Errorf("queued %+v; want carol's notice, after the two malformed entries", rec.now)
	}
	if pos := cursor(t, db); pos != 3 {
		t.Errorf("cursor %d, want 3", pos)
	}
}

// TestFeedInvalidNotice: a notice that cannot become a mail (a mailbox with a line break, from
// a trail written before mailboxes were checked, or a restored one) is kept in the rejected
// folder and counted as dropped; it does not hold back the notices queued with it or after
// it, and it never reaches a header.
func TestFeedInvalidNotice(t *testing.T) {
	db := openDB(t)
	q, err := notice.OpenQueue(filepath.Join(t.TempDir(), "queue"))
	if err != nil {
		t.Fatal(err)
	}
	n := &notice.Notifier{Queue: q, Sender: nopSender{}, From: "pki@example.org"}
	f := started(t, &feed.Feed{Store: db, Notifier: n})
	const evil = "alice@example.org\r\nBcc: eve@example.org"
	appendEntry(t, db, audit.KindArchive, "local", "alice", audit.Details{Mailbox: evil, Serial: "0a"})
	appendEntry(t, db, audit.KindArchive, "local", "bob@example.org", audit.Details{Mailbox: "bob@example.org", Serial: "0b"})
	appendEntry(t, db, audit.KindArchive, "job j1", "job j1", audit.Details{Mailboxes: []string{"carol@example.org", evil, "dave@example.org"}, Serials: []string{"0c", "0e", "0d"}})
	for range 3 {
		if _, err := f.Step(context.Background()); err != nil {
			t.Fatalf("Step: %v", err)
		}
	}
	if pos := cursor(t, db); pos != 3 {
		t.Fatalf("cursor %d, want 3: the feed is held back by a notice that can never be sent", pos)
	}
	got := map[string]bool{}
	ids, _ := q.List()
	for _, id := range ids {
		e, err := q.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		got[e.Mailbox] = true
	}
	bids, _ := q.Batches()
	for _, id := range bids {
		es, _, err := q.GetBatch(id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			got[e.Mailbox] = true
		}
	}
	if len(got) != 3 || !got["bob@example.org"] || !got["carol@example.org"] || !got["dave@example.org"] {
		t.Errorf("queued for %v; want bob, carol and dave", got)
	}
	if n.Dropped() != 2 {
		t.Errorf("dropped %d, want 2", n.Dropped())
	}
	rej, err := os.ReadDir(filepath.Join(q.Dir(), notice.RejectedDir))
	if err != nil || len(rej) != 2 {
		t.Errorf("rejected folder holds %d files (%v), want the 2 notices refused", len(rej), err)
	}
}

// TestFeedStopAfterQueueing: the appliance stopping (its context cancelled) after a step queued
// its notices still records them: a graceful stop never makes the next start queue them again.
func TestFeedStopAfterQueueing(t *testing.T) {
	db := openDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &recorder{queued: cancel}
	f := started(t, &feed.Feed{Store: db, Notifier: rec})
	appendEntry(t, db, audit.KindArchive, "job j", "a@example.org", audit.Details{Mailbox: "a@example.org", Serial: "0a"})
	if _, err := f.Step(ctx); err != nil {
		t.Fatalf("Step stopped after queueing: %v", err)
	}
	if pos := cursor(t, db); pos != 1 {
		t.Fatalf("cursor %d after the queued step, want 1: the next start would queue the notice again", pos)
	}
}

// started starts f (its cursor placed), failing the test if it cannot.
func started(t *testing.T, f *feed.Feed) *feed.Feed {
	t.Helper()
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}
