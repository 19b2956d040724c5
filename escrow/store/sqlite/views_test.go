package sqlite

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"modernc.org/sqlite"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestViewsLeaveNoSnapshot: the Views keep their connections and prepared statements, but no
// read transaction: after many Views (some failing, some reading several rows, some from
// many goroutines at once), the writer can checkpoint the whole WAL and truncate it, which
// a connection holding a snapshot would prevent; and a View sees a commit made after the
// previous View on the same connection.
func TestViewsLeaveNoSnapshot(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	insert := func(i int) {
		t.Helper()
		if err := db.Update(ctx, func(tx store.Tx) error {
			return tx.InsertCode(store.Code{ID: fmt.Sprintf("C%07d", i), Email: "alice@example.com", Template: "t",
				Hash: []byte("hash"), CreatedAt: now, ExpiresAt: now.AddDate(1, 0, 0)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	errStop := errors.New("stop")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				insert(g*1000 + i)
				err := db.View(ctx, func(tx store.Tx) error {
					if _, err := tx.GetCode(fmt.Sprintf("C%07d", g*1000+i)); err != nil {
						return err
					}
					if i%3 == 0 {
						return errStop
					}
					return nil
				})
				if err != nil && !errors.Is(err, errStop) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Every reader connection has served Views by now; a new commit is visible to each: as
	// many Views as the pool has connections, all open at once, so each on its own.
	insert(99999)
	n := cap(db.readers.slots)
	var inside sync.WaitGroup
	inside.Add(n)
	for range n {
		wg.Go(func() {
			if err := db.View(ctx, func(tx store.Tx) error {
				inside.Done()
				inside.Wait()
				_, err := tx.GetCode("C0099999")
				return err
			}); err != nil {
				t.Errorf("a View does not see the last commit: %v", err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var busy, logFrames, done int
	if err := db.wconn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &done); err != nil {
		t.Fatal(err)
	}
	if busy != 0 || logFrames != 0 {
		t.Fatalf("wal_checkpoint(TRUNCATE): busy %d, %d frames left: a View's connection holds a snapshot", busy, logFrames)
	}
}

// TestViewsReuseWarmConnection: a View takes the reader connection used last. SQLite drops a
// connection's page cache when its next read finds that the WAL changed, so after a commit
// the first View reads its pages from the file again and the Views that follow it, before
// the next commit, find them in that connection's cache. A pool that handed out the
// connection idle the longest gave each of them a connection that had missed the commit,
// and a cold cache.
func TestViewsReuseWarmConnection(t *testing.T) {
	db, _ := openTest(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	insert := func(id string) {
		t.Helper()
		mustUpdate(t, db, func(tx store.Tx) error {
			return tx.InsertCode(store.Code{ID: id, Email: "alice@example.com", Template: "t",
				Hash: []byte("hash"), CreatedAt: now, ExpiresAt: now.AddDate(1, 0, 0)})
		})
	}
	get := func(tx store.Tx) error {
		_, err := tx.GetCode("ABCDEFGH")
		return err
	}
	insert("ABCDEFGH")
	// Two connections, each with the code's pages in its cache.
	var both sync.WaitGroup
	both.Add(2)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if err := db.View(ctx, func(tx store.Tx) error {
				both.Done()
				both.Wait()
				return get(tx)
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// misses is, per connection of the pool, the pages it has read from the file so far.
	misses := func() map[*reader]int {
		t.Helper()
		db.readers.mu.Lock()
		defer db.readers.mu.Unlock()
		m := make(map[*reader]int)
		for _, rd := range db.readers.idle {
			if err := rd.conn.Raw(func(dc any) error {
				n, _, err := dc.(sqlite.DBStatus).Status(sqlite.DBStatusCacheMiss, false)
				m[rd] = n
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	before := misses()
	if len(before) != 2 {
		t.Fatalf("%d connections after two Views at once, want 2", len(before))
	}
	insert("IJKLMNOP") // a commit: both caches are stale
	for range 4 {
		if err := db.View(ctx, get); err != nil {
			t.Fatal(err)
		}
	}
	cold := 0
	for rd, n := range misses() {
		if n > before[rd] {
			cold++
		}
	}
	if cold != 1 {
		t.Errorf("four Views after a commit read pages from the file on %d connections, want 1 (the others warm)", cold)
	}
}
