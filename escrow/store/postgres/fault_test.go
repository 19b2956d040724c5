package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

var ctx = context.Background()

// rawTx is a Tx of the store (sqltx's, or the writer's, which embeds it).
type rawTx interface {
	Raw() (context.Context, sqltx.Querier)
}

// rawExec runs a statement that no method of the Tx runs, on the Tx's connection.
func rawExec(tx store.Tx, query string) (sql.Result, error) {
	ctx, q := tx.(rawTx).Raw()
	return q.ExecContext(ctx, query)
}

// rawQuery is rawExec for a query.
func rawQuery(tx store.Tx, query string) (*sql.Rows, error) {
	ctx, q := tx.(rawTx).Raw()
	return q.QueryContext(ctx, query)
}

func TestMain(m *testing.M) {
	release := pgtest.Keep()
	code := m.Run()
	release()
	os.Exit(code)
}

func insertCode(id, email string) func(store.Tx) error {
	return func(tx store.Tx) error {
		return tx.InsertCode(store.Code{ID: id, Email: email, Template: "t", Hash: []byte("h"),
			ExpiresAt: time.Now().Add(time.Hour)})
	}
}

// TestOpenNoServer: a server that cannot be reached is a fault of the storage.
func TestOpenNoServer(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=none connect_timeout=5", dir))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Open without a server: %v, want ErrUnavailable", err)
	}
	if _, err := Open(ctx, "postgres://[::1"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Open with a malformed URL: %v, want ErrInvalid", err)
	}
}

// TestStatementFaults: a failed statement is undone alone, as the contract asks (PostgreSQL
// would abort the whole transaction), and the Tx goes on; a bad statement is no storage fault.
func TestStatementFaults(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	err := db.Update(ctx, func(tx store.Tx) error {
		if err := insertCode("c1", "a@example.com")(tx); err != nil {
			return err
		}
		if err := insertCode("c1", "a@example.com")(tx); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("a duplicate code: %v, want ErrConflict", err)
		}
		if err := insertCode("c2", "a\x00b@example.com")(tx); !errors.Is(err, store.ErrInvalid) {
			return fmt.Errorf("an address with a NUL byte: %v, want ErrInvalid", err)
		}
		if err := insertCode("c3", "a\xffb@example.com")(tx); !errors.Is(err, store.ErrInvalid) {
			return fmt.Errorf("an address that is not UTF-8: %v, want ErrInvalid", err)
		}
		return insertCode("c4", "a@example.com")(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(ctx, func(tx store.Tx) error {
		for _, id := range []string{"c1", "c4"} {
			if _, err := tx.GetCode(id); err != nil {
				t.Errorf("code %s: %v", id, err)
			}
		}
		return nil
	})

	err = db.Update(ctx, func(tx store.Tx) error {
		_, err := rawExec(tx, "INSERT INTO no_such_table VALUES (1)")
		return err
	})
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("a bad statement: got %v, want an error that is not ErrUnavailable", err)
	}
	// A read that fails outside a savepoint aborts the transaction: the function that ignores
	// it loses its writes, the other functions of its group keep theirs.
	release, wait := holdWriter(t, db)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Go(func() {
		errs[0] = db.Update(ctx, func(tx store.Tx) error {
			if err := insertCode("c5", "a@example.com")(tx); err != nil {
				return err
			}
			rawQuery(tx, "SELECT * FROM no_such_table")
			return nil
		})
	})
	for db.queueLen() < 1 {
		time.Sleep(time.Millisecond)
	}
	wg.Go(func() { errs[1] = db.Update(ctx, insertCode("c6", "a@example.com")) })
	for db.queueLen() < 2 {
		time.Sleep(time.Millisecond)
	}
	release()
	wg.Wait()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if errs[0] == nil || errs[1] != nil {
		t.Errorf("a function whose read failed: %v, want an error; the other of the group: %v, want nil", errs[0], errs[1])
	}
	db.View(ctx, func(tx store.Tx) error {
		if _, err := tx.GetCode("c5"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("code c5 of the aborted function: %v, want ErrNotFound", err)
		}
		if _, err := tx.GetCode("c6"); err != nil {
			t.Errorf("code c6: %v", err)
		}
		return nil
	})
}

// holdWriter occupies the writer with an Update until release, so that the Updates started
// meanwhile run as one group after it.
func holdWriter(t *testing.T, db *DB) (release func(), wait func() error) {
	inside, rel, errc := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		errc <- db.Update(ctx, func(store.Tx) error { close(inside); <-rel; return nil })
	}()
	<-inside
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release)
	return release, func() error { return <-errc }
}

// TestConnectionsKilled: when the server ends the store's connections (an administrator, a
// restart), the calls that meet the dead connections fail with ErrUnavailable, and the store
// goes on with new ones.
func TestConnectionsKilled(t *testing.T) {
	srv := pgtest.Start(t)
	db, url := openTest(t, srv)
	if err := db.Update(ctx, insertCode("before", "a@example.com")); err != nil {
		t.Fatal(err)
	}
	if err := db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("before"); return err }); err != nil {
		t.Fatal(err)
	}
	name := dbName(t, url)
	srv.Admin(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '"+name+"'")
	// The writer finds its connection dead when it begins, before any function ran: it takes
	// another at once, and the caller sees nothing of it; so does a View.
	if err := db.Update(ctx, insertCode("first-after", "a@example.com")); err != nil {
		t.Errorf("the first Update after the connections were killed: %v", err)
	}
	if err := db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("first-after"); return err }); err != nil {
		t.Errorf("the first View after the connections were killed: %v", err)
	}

	for i, call := range []struct {
		name string
		fn   func() error
	}{
		{"update", func() error { return db.Update(ctx, insertCode("after", "a@example.com")) }},
		{"view", func() error {
			return db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("before"); return err })
		}},
	} {
		var err error
		for try := 0; try < 5; try++ {
			if err = call.fn(); err == nil {
				break
			}
			if !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("%s after the connections were killed: %v, want ErrUnavailable", call.name, err)
			}
		}
		if err != nil {
			t.Errorf("%d: %s still fails after 5 tries: %v", i, call.name, err)
		}
	}
	if err := db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("after"); return err }); err != nil {
		t.Errorf("the code stored after the reconnection: %v", err)
	}
}

func dbName(t *testing.T, url string) string {
	for _, f := range strings.Fields(url) {
		if name, ok := strings.CutPrefix(f, "dbname="); ok {
			return name
		}
	}
	t.Fatalf("no dbname in %q", url)
	return ""
}

// TestMigrateConcurrently: nodes that start at once on an empty database apply the schema
// once between them, and all open.
func TestMigrateConcurrently(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	const nodes = 4
	var wg sync.WaitGroup
	dbs := make([]*DB, nodes)
	errs := make([]error, nodes)
	for i := range nodes {
		wg.Go(func() { dbs[i], errs[i] = Open(ctx, url) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
			continue
		}
		t.Cleanup(func() { dbs[i].Close() })
	}
	if t.Failed() {
		return
	}
	var v int
	if err := dbs[0].db.QueryRowContext(ctx, "SELECT version FROM keyarc_schema").Scan(&v); err != nil || v != len(migrations) {
		t.Errorf("schema version %d (%v), want %d", v, err, len(migrations))
	}
}

// TestSchemaNewer: a database migrated by a newer keyarc is refused, not written to.
func TestSchemaNewer(t *testing.T) {
	db, url := openTest(t, pgtest.Start(t))
	if _, err := db.db.ExecContext(ctx, "UPDATE keyarc_schema SET version = version + 1"); err != nil {
		t.Fatal(err)
	}
	if db2, err := Open(ctx, url); !errors.Is(err, store.ErrSchema) {
		if err == nil {
			db2.Close()
		}
		t.Errorf("Open of a newer schema: %v, want ErrSchema", err)
	}
}

// TestClassify: the server's fault codes are storage faults, the statement's are not.
func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		code string
		want error
	}{
		{"08006", store.ErrUnavailable}, // connection_failure
		{"57P01", store.ErrUnavailable}, // admin_shutdown
		{"53100", store.ErrUnavailable}, // disk_full
		{"40001", store.ErrUnavailable}, // serialization_failure
		{"40P01", store.ErrUnavailable}, // deadlock_detected
		{"58030", store.ErrUnavailable}, // io_error
		{"25P03", store.ErrUnavailable}, // idle_in_transaction_session_timeout
		{"55P03", store.ErrUnavailable}, // lock_not_available (lock_timeout)
		{"23505", store.ErrConflict},
		{"23503", store.ErrNotFound},
		{"23514", store.ErrInvalid},
		{"42P01", nil}, // undefined_table: a bug, not a fault
	} {
		err := classify(mapErr(&pgconn.PgError{Code: tt.code, Message: "test"}))
		for _, s := range []error{store.ErrUnavailable, store.ErrConflict, store.ErrNotFound, store.ErrInvalid} {
			if errors.Is(err, s) != (s == tt.want) {
				t.Errorf("SQLSTATE %s: %v, want only %v", tt.code, err, tt.want)
			}
		}
	}
}

// TestServerRestart: PostgreSQL restarted under load. While it is down every Update and View
// fails with ErrUnavailable (a fault of the storage, never the caller's), and once it is back
// the store goes on by itself; every Update that succeeded is kept. (An Update whose COMMIT
// was cut off may have committed all the same: its caller cannot tell, as with any database.)
func TestServerRestart(t *testing.T) {
	srv := pgtest.Start(t)
	db, _ := openTest(t, srv)
	if err := db.Update(ctx, insertCode("before", "a@example.com")); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var kept []string
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("load-%d-%d", g, i)
				err := db.Update(ctx, insertCode(id, "a@example.com"))
				switch {
				case err == nil:
					mu.Lock()
					kept = append(kept, id)
					mu.Unlock()
				case !errors.Is(err, store.ErrUnavailable):
					t.Errorf("Update %s during the restart: %v, want nil or ErrUnavailable", id, err)
					return
				default:
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond) // some load before the restart
	srv.Restart(t, func() {
		if err := db.Update(ctx, insertCode("down", "a@example.com")); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Update while the server is down: %v, want ErrUnavailable", err)
		}
		err := db.View(ctx, func(tx store.Tx) error { _, err := tx.GetCode("before"); return err })
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("View while the server is down: %v, want ErrUnavailable", err)
		}
	})
	// Back: the store reconnects by itself. The first calls may still meet a connection of the
	// pool that died with the server.
	var err error
	for try := 0; try < 10; try++ {
		if err = db.Update(ctx, insertCode("after", "a@example.com")); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Update after the restart still fails: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // some load after it
	close(stop)
	wg.Wait()

	all := func(tx store.Tx) error {
		for _, id := range append([]string{"before", "after"}, kept...) {
			if _, err := tx.GetCode(id); err != nil {
				return fmt.Errorf("code %s: %w", id, err)
			}
		}
		return nil
	}
	err = db.View(ctx, all)
	for try := 0; errors.Is(err, store.ErrUnavailable) && try < 10; try++ {
		err = db.View(ctx, all)
	}
	if err != nil {
		t.Errorf("after the restart: %v", err)
	}
	t.Logf("%d Updates kept under load", len(kept))
}

// TestNodeRole: a node whose role has only the privileges of Grants, on a database another
// role migrated, runs the store's statements, and cannot rewrite the audit trail.
func TestNodeRole(t *testing.T) {
	srv := pgtest.Start(t)
	name := srv.CreateDatabase(t)
	owner := openURL(t, srv.URL(name))
	owner.Close()

	role := name + "_node"
	srv.Admin(t, "CREATE ROLE "+role+" LOGIN")
	t.Cleanup(func() { srv.Admin(t, "DROP ROLE IF EXISTS "+role) })
	for _, g := range Grants(name, role) {
		srv.AdminOn(t, name, g)
	}
	t.Cleanup(func() { srv.AdminOn(t, name, "DROP OWNED BY "+role) }) // before DROP ROLE

	db := openURL(t, strings.Replace(srv.URL(name), "user=postgres", "user="+role, 1))
	now := time.Now()
	der := []byte{0x30, 0x03, 0x02, 0x01, 0x01}
	err := db.Update(ctx, func(tx store.Tx) error {
		steps := []error{
			insertCode("code", "a@example.com")(tx),
			tx.ClaimCode("code", now),
			tx.InsertCertificate(store.Certificate{Serial: "1a", Template: "t", Email: "a@example.com", CodeID: "code"}),
			tx.SetCertificateIssued("1a", der, now, now.Add(time.Hour)),
			tx.UpsertOCSPResponses([]store.OCSPResponse{{Serial: "1a", DER: der, ThisUpdate: now, NextUpdate: now.Add(time.Hour)}}),
			tx.RevokeCertificate("1a", store.ReasonSuperseded, now),
			tx.InsertCRL(store.CRL{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour), DER: der}),
			tx.InsertAudit(store.AuditEntry{Seq: 1, At: now, Kind: "test", Actor: "node", Prev: make([]byte, 32), Hash: []byte("h1")}),
			tx.InsertJob(store.Job{ID: "job", Kind: "import", Template: "t", SubmittedBy: "admin", Input: "in"}),
			tx.ReserveJobItem("job", 1, "1a", ""),
			tx.FailJobItem("job", 2, "bad input"),
			tx.AddApprovalFailure("kra", now, now.Add(-time.Hour)),
			tx.SkipDirectory("1a"),
			tx.UnskipDirectory("1a"),
		}
		if _, err := tx.DirectorySkipped("", 10); err != nil {
			steps = append(steps, err)
		}
		if _, err := tx.ReleaseReservedItems("job"); err != nil {
			steps = append(steps, err)
		}
		return errors.Join(steps...)
	})
	if err != nil {
		t.Fatalf("the store's writes as the node's role: %v", err)
	}
	for _, q := range []string{"UPDATE audit SET kind = 'forged'", "DELETE FROM audit", "DROP TABLE audit"} {
		if _, err := db.db.ExecContext(ctx, q); err == nil {
			t.Errorf("the node's role may %s", q)
		}
	}
}

// TestPausedNode: a node paused inside its write transaction (kill -STOP) holds the writer
// lock only until the server ends its idle transaction; the other node then writes, and the
// paused one, once it wakes, fails with ErrUnavailable and stores nothing of its group.
func TestPausedNode(t *testing.T) {
	defer func(d time.Duration) { writerIdleTimeout = d }(writerIdleTimeout)
	writerIdleTimeout = 500 * time.Millisecond
	srv := pgtest.Start(t)
	a, url := openTest(t, srv)
	b := openURL(t, url)

	paused, wake := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- a.Update(ctx, func(tx store.Tx) error {
			if err := insertCode("paused", "a@example.com")(tx); err != nil {
				return err
			}
			close(paused)
			<-wake // the node sleeps with the writer lock
			return insertCode("paused-2", "a@example.com")(tx)
		})
	}()
	<-paused
	if err := b.Update(ctx, insertCode("other", "b@example.com")); err != nil {
		t.Fatalf("the other node's write while the first is paused: %v", err)
	}
	close(wake)
	if err := <-errc; !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("the paused node's write: %v, want ErrUnavailable", err)
	}
	err := b.View(ctx, func(tx store.Tx) error {
		for _, id := range []string{"paused", "paused-2"} {
			if _, err := tx.GetCode(id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("code %s of the paused node: %v, want ErrNotFound", id, err)
			}
		}
		_, err := tx.GetCode("other")
		return err
	})
	if err != nil {
		t.Error(err)
	}
	// The paused node goes on with a new connection.
	if err := a.Update(ctx, insertCode("again", "a@example.com")); err != nil {
		t.Errorf("the first node after it woke: %v", err)
	}
}
