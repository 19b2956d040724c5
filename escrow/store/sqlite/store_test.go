package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var ctx = context.Background()

// t0 is a fixed clock for tests.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func openTest(t testing.TB) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyarc.db")
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db, path
}

func mustUpdate(t testing.TB, db *DB, fn func(store.Tx) error) {
	t.Helper()
	if err := db.Update(ctx, fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func cert(serial string) store.Certificate {
	return store.Certificate{Serial: serial, Template: "smime-encryption", Email: "alice@example.com",
		Subject: "CN=Alice", CreatedAt: t0}
}

// hold occupies the writer until release is closed, so that the Updates
// started meanwhile queue up and land in one batch. It returns once the
// writer is inside the holding function.
func hold(t *testing.T, db *DB) (release func(), wait func() error) {
	t.Helper()
	inside := make(chan struct{})
	rel := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- db.Update(ctx, func(store.Tx) error {
			close(inside)
			<-rel
			return nil
		})
	}()
	<-inside
	var once sync.Once
	return func() { once.Do(func() { close(rel) }) }, func() error { return <-errc }
}

func waitQueue(t *testing.T, db *DB, n int) {
	t.Helper()
	for db.queueLen() < n {
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

func TestOpenSettings(t *testing.T) {
	db, path := openTest(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("file mode %o, want 600", m)
	}
	for _, name := range []string{"-wal", "-shm"} {
		if fi, err := os.Stat(path + name); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 600", name, fi.Mode().Perm())
		}
	}
	check := func(who string, q func(string) (string, error)) {
		for pragma, want := range map[string]string{
			"journal_mode": "wal", "synchronous": "2", "foreign_keys": "1", "busy_timeout": "5000",
			"user_version": fmt.Sprint(len(migrations)),
		} {
			got, err := q("PRAGMA " + pragma)
			if err != nil {
				t.Fatalf("%s %s: %v", who, pragma, err)
			}
			if got != want {
				t.Errorf("%s: %s = %s, want %s", who, pragma, got, want)
			}
		}
	}
	check("writer", func(s string) (v string, err error) {
		err = db.wconn.QueryRowContext(ctx, s).Scan(&v)
		return
	})
	check("reader", func(s string) (v string, err error) {
		err = db.r.QueryRowContext(ctx, s).Scan(&v)
		return
	})
	// The read pool is read-only in SQLite itself.
	if _, err := db.r.ExecContext(ctx, "DELETE FROM codes"); err == nil {
		t.Error("write on the read pool succeeded")
	}
}

func TestOpenMissingDir(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "nope", "x.db"))
	if err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

func TestSchemaTooNew(t *testing.T) {
	db, path := openTest(t)
	if _, err := db.wconn.ExecContext(ctx, "PRAGMA user_version = 999"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); !errors.Is(err, store.ErrSchema) {
		t.Fatalf("Open = %v, want ErrSchema", err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	// A directory name that needs escaping in a file: URI.
	dir := filepath.Join(t.TempDir(), "state dir?x=1#y%20")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keyarc.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx store.Tx) error { return tx.InsertCertificate(cert("0A1B")) })
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path) // migrations must be a no-op the second time
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if entries, _ := os.ReadDir(dir); len(entries) == 0 || entries[0].Name() != "keyarc.db" {
		t.Errorf("files in %s: %v", dir, entries)
	}
	err = db.View(ctx, func(tx store.Tx) error {
		c, err := tx.GetCertificate("a1b")
		if err != nil {
			return err
		}
		if c.Serial != "a1b" || !c.CreatedAt.Equal(t0) || c.State != store.StatePending {
			t.Errorf("after reopen: %+v", c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestGroupCommit checks that concurrent Updates share COMMITs.
func TestGroupCommit(t *testing.T) {
	const n = 200

	t.Run("free-for-all", func(t *testing.T) {
		db, _ := openTest(t)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				errs <- db.Update(ctx, func(tx store.Tx) error {
					return tx.InsertCertificate(cert(fmt.Sprintf("%x", i+1)))
				})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		st := db.Stats()
		t.Logf("%d updates, %d commits, max batch %d", st.Updates, st.Commits, st.MaxBatch)
		if st.Updates != n {
			t.Errorf("Updates = %d, want %d", st.Updates, n)
		}
		if st.Commits >= n/2 {
			t.Errorf("%d commits for %d concurrent updates: not batching", st.Commits, n)
		}
		assertCount(t, db, store.Filter{}, n)
	})

	t.Run("one batch", func(t *testing.T) {
		db, _ := openTest(t)
		release, wait := hold(t, db)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if err := db.Update(ctx, func(tx store.Tx) error {
					return tx.InsertCertificate(cert(fmt.Sprintf("%x", i+1)))
				}); err != nil {
					t.Error(err)
				}
			})
		}
		waitQueue(t, db, n)
		release()
		wg.Wait()
		if err := wait(); err != nil {
			t.Fatal(err)
		}
		st := db.Stats()
		if st.Commits != 1 || st.MaxBatch != n+1 {
			t.Errorf("stats %+v, want 1 commit of %d functions", st, n+1)
		}
		assertCount(t, db, store.Filter{}, n)
	})

	t.Run("bounded batch", func(t *testing.T) {
		db, _ := openTest(t)
		release, wait := hold(t, db)
		const m = MaxBatch + 10
		var wg sync.WaitGroup
		for range m {
			wg.Go(func() {
				if err := db.Update(ctx, func(store.Tx) error { return nil }); err != nil {
					t.Error(err)
				}
			})
		}
		waitQueue(t, db, m)
		release()
		wg.Wait()
		if err := wait(); err != nil {
			t.Fatal(err)
		}
		if st := db.Stats(); st.MaxBatch != MaxBatch || st.Commits != 2 {
			t.Errorf("stats %+v, want 2 commits, max batch %d", st, MaxBatch)
		}
	})
}

func assertCount(t *testing.T, db *DB, f store.Filter, want int) {
	t.Helper()
	err := db.View(ctx, func(tx store.Tx) error {
		l, err := tx.ListCertificates(f)
		if len(l) != want {
			t.Errorf("ListCertificates(%+v): %d rows, want %d", f, len(l), want)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBatchIsolation: in one batch, failing and panicking functions lose their
// own writes only.
func TestBatchIsolation(t *testing.T) {
	db, _ := openTest(t)
	errBoom := errors.New("boom")
	release, wait := hold(t, db)
	type result struct {
		i   int
		err error
	}
	const n = 30
	results := make(chan result, n)
	for i := range n {
		go func() {
			err := db.Update(ctx, func(tx store.Tx) error {
				if err := tx.InsertCertificate(cert(fmt.Sprintf("%x", i+1))); err != nil {
					return err
				}
				switch i % 3 {
				case 1:
					return errBoom
				case 2:
					var m map[string]int
					m["x"] = 1 // nil map write: a runtime panic
				}
				return nil
			})
			results <- result{i, err}
		}()
	}
	waitQueue(t, db, n)
	release()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	for range n {
		r := <-results
		var want error
		switch r.i % 3 {
		case 1:
			want = errBoom
		case 2:
			want = store.ErrPanic
		}
		if !errors.Is(r.err, want) || (want == nil && r.err != nil) {
			t.Errorf("update %d = %v, want %v", r.i, r.err, want)
		}
	}
	st := db.Stats()
	if st.Commits != 1 || st.Failed != 2*n/3 {
		t.Errorf("stats %+v, want 1 commit, %d failed", st, 2*n/3)
	}
	err := db.View(ctx, func(tx store.Tx) error {
		for i := range n {
			_, err := tx.GetCertificate(fmt.Sprintf("%x", i+1))
			if i%3 == 0 && err != nil {
				t.Errorf("row of successful update %d: %v", i, err)
			}
			if i%3 != 0 && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("row of failed update %d: %v, want ErrNotFound", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The writer survived.
	mustUpdate(t, db, func(tx store.Tx) error { return tx.InsertCertificate(cert("ffff")) })
}

// TestPanicAlone: the panic error names only the type of the panic value (the conformance suite
// checks the value is not shown), and a group whose only function failed pays for no COMMIT.
func TestPanicAlone(t *testing.T) {
	db, _ := openTest(t)
	err := db.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("01")); err != nil {
			return err
		}
		panic("secret-looking panic value")
	})
	if !errors.Is(err, store.ErrPanic) {
		t.Fatalf("Update = %v, want ErrPanic", err)
	}
	if got := err.Error(); got != "store: update function panicked: panic value of type string" {
		t.Errorf("panic error %q", got)
	}
	if st := db.Stats(); st.Commits != 0 {
		t.Errorf("a batch with no successful function committed: %+v", st)
	}
}

// TestCommitFailure: a COMMIT that fails (here on a deferred foreign key)
// fails every caller of the batch, and the writer goes on.
func TestCommitFailure(t *testing.T) {
	db, _ := openTest(t)
	release, wait := hold(t, db)
	good := make(chan error, 1)
	go func() {
		good <- db.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	}()
	waitQueue(t, db, 1)
	bad := make(chan error, 1)
	go func() {
		bad <- db.Update(ctx, func(tx store.Tx) error {
			if _, err := rawExec(tx, "PRAGMA defer_foreign_keys = ON"); err != nil {
				return err
			}
			// Epoch 7 does not exist: the violation surfaces at COMMIT.
			return tx.InsertRecord(store.Record{ID: "r1", Email: "a@example.com", Epoch: 7, Blob: []byte{1}})
		})
	}()
	waitQueue(t, db, 2)
	release()
	if err := wait(); err == nil {
		t.Error("holding update of the failed batch succeeded")
	}
	for name, c := range map[string]chan error{"good": good, "bad": bad} {
		if err := <-c; !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s update = %v, want the commit's ErrNotFound", name, err)
		}
	}
	if st := db.Stats(); st.CommitErrors != 1 || st.Commits != 0 {
		t.Errorf("stats %+v", st)
	}
	mustUpdate(t, db, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	assertCount(t, db, store.Filter{}, 1)
}

func TestCancel(t *testing.T) {
	db, _ := openTest(t)

	t.Run("before fn runs", func(t *testing.T) {
		release, wait := hold(t, db)
		defer release()
		cctx, cancel := context.WithCancel(ctx)
		var ran atomic.Bool
		errc := make(chan error, 1)
		go func() {
			errc <- db.Update(cctx, func(tx store.Tx) error {
				ran.Store(true)
				return tx.InsertCertificate(cert("c1"))
			})
		}()
		waitQueue(t, db, 1)
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("Update = %v, want context.Canceled", err)
		}
		release()
		if err := wait(); err != nil {
			t.Fatal(err)
		}
		mustUpdate(t, db, func(store.Tx) error { return nil }) // the writer has passed the cancelled request
		if ran.Load() {
			t.Error("cancelled function ran")
		}
	})

	t.Run("already cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := db.Update(cctx, func(store.Tx) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Errorf("Update = %v, want context.Canceled", err)
		}
	})

	t.Run("after fn ran", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := db.Update(cctx, func(tx store.Tx) error {
			cancel()
			return tx.InsertCertificate(cert("c2"))
		})
		if err != nil {
			t.Fatalf("Update = %v, want nil: fn ran, so it waits for the commit", err)
		}
		assertCount(t, db, store.Filter{Email: "alice@example.com"}, 1)
	})
}

func TestClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyarc.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Updates queued before Close are drained, not dropped.
	release, wait := hold(t, db)
	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- db.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(cert(fmt.Sprintf("%x", i+1))) })
		}()
	}
	waitQueue(t, db, n)
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	for !db.q.Closing() {
		time.Sleep(time.Millisecond)
	}
	if err := db.Update(ctx, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Update while closing = %v, want ErrClosed", err)
	}
	release()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("queued Update = %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := db.Update(ctx, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Update after Close = %v, want ErrClosed", err)
	}
	if err := db.View(ctx, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("View after Close = %v, want ErrClosed", err)
	}
	db, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	assertCount(t, db, store.Filter{}, n)
}

func TestErrorMessages(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	for _, fn := range []func(store.Tx) error{
		func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) },
		func(tx store.Tx) error { _, err := tx.GetCertificate("02"); return err },
		func(tx store.Tx) error { return tx.ClaimCode("c", t0) },
	} {
		err := db.Update(ctx, fn)
		if err == nil || !strings.HasPrefix(err.Error(), "store: ") {
			t.Errorf("error %q lacks the store: prefix", err)
		}
		t.Log(err)
	}
}

// TestPartialIndexes: the lookups of certificates by KRA and of the pending ones (the sweep)
// use their partial indexes, and a certificate that is neither a KRA's nor pending is in
// neither index.
func TestPartialIndexes(t *testing.T) {
	db, _ := openTest(t)
	plan := func(query string, args ...any) string {
		rows, err := db.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			out = append(out, detail)
		}
		return strings.Join(out, "; ")
	}
	if p := plan(`SELECT serial FROM certificates WHERE kra = ? AND kra != '' ORDER BY created_at, serial`, "kra-1"); !strings.Contains(p, "certificates_kra") {
		t.Errorf("listing by KRA: plan %q does not use certificates_kra", p)
	}
	if p := plan(`SELECT serial FROM certificates WHERE state = 'pending' AND created_at < ?`, 1); !strings.Contains(p, "certificates_pending") {
		t.Errorf("pending certificates: plan %q does not use certificates_pending", p)
	}
	err := db.Update(ctx, func(tx store.Tx) error {
		c := cert("0a01")
		c.State, c.DER = store.StateIssued, []byte{0x30}
		if err := tx.InsertCertificate(c); err != nil {
			return err
		}
		k := cert("0a02")
		k.KRA = "kra-1"
		return tx.InsertCertificate(k)
	})
	if err != nil {
		t.Fatal(err)
	}
	for index, want := range map[string]int{"certificates_kra": 1, "certificates_pending": 1} {
		var n int
		if err := db.r.QueryRowContext(ctx, "SELECT count(*) FROM certificates INDEXED BY "+index+
			" WHERE "+map[string]string{"certificates_kra": "kra != ''", "certificates_pending": "state = 'pending'"}[index]).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Errorf("%s holds %d rows, want %d", index, n, want)
		}
	}
	var list []store.Certificate
	err = db.View(ctx, func(tx store.Tx) (err error) {
		list, err = tx.ListCertificates(store.Filter{KRA: "kra-1"})
		return err
	})
	if err != nil || len(list) != 1 || list[0].Serial != "a02" {
		t.Fatalf("ListCertificates by KRA: %v %+v", err, list)
	}
}

// TestMigrateFromVersion4: a database made before the partial indexes is brought up to date
// with its rows, and its KRA certificates are still found through the new index.
func TestMigrateFromVersion4(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	old, err := sql.Open("sqlite", dsn(path, "_pragma=journal_mode(WAL)"))
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range migrations[:4] {
		if _, err := old.Exec(m); err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
	}
	_, err = old.Exec(`PRAGMA user_version = 4;
		INSERT INTO certificates (serial, template, email, subject, state, created_at, role, kra)
		VALUES ('b01', 'kra', '', 'CN=kra', 'pending', 1, '', 'kra-1'), ('b02', 'smime-encryption', 'a@example.org', 'CN=a', 'pending', 2, '', '')`)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 4 database: %v", err)
	}
	defer db.Close()
	var v int
	if err := db.r.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("user_version %d (%v), want %d", v, err, len(migrations))
	}
	var list []store.Certificate
	err = db.View(ctx, func(tx store.Tx) (err error) {
		list, err = tx.ListCertificates(store.Filter{KRA: "kra-1"})
		return err
	})
	if err != nil || len(list) != 1 || list[0].Serial != "b01" {
		t.Fatalf("KRA certificates after the migration: %v %+v", err, list)
	}
}

// oldDatabase makes a database file at schema version v (the first v migrations, as an older
// keyarc left it), for a test of the migrations after it: the test fills it through old,
// closes old and opens path with Open.
func oldDatabase(t *testing.T, v int) (path string, old *sql.DB) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "old.db")
	old, err := sql.Open("sqlite", dsn(path, "_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)"))
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range migrations[:v] {
		if _, err := old.Exec(m); err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
	}
	// PRAGMA takes no bound parameters; v is the test's own integer.
	if _, err := old.Exec(fmt.Sprintf("PRAGMA user_version = %d", v)); err != nil {
		t.Fatal(err)
	}
	return path, old
}
