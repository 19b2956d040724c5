package postgres

import (
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
	"github.com/keyarc/keyarc/escrow/store/storetest"
)

// benchStore opens a store on a fresh database of a server that fsyncs its commits, as
// SQLite's benchmarks do with synchronous=FULL.
func benchStore(b *testing.B) *DB {
	db, _ := benchServerStore(b)
	return db
}

// benchServerStore is benchStore with its server, whose counters the per-certificate
// benchmarks read.
func benchServerStore(b *testing.B) (*DB, *pgtest.Server) {
	srv := pgtest.Start(b)
	srv.Durable(b)
	db, err := Open(ctx, srv.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db, srv
}

// BenchmarkUpdateParallel inserts one certificate row per Update from many goroutines; group
// commit turns them into few COMMITs. The same benchmark as SQLite's.
func BenchmarkUpdateParallel(b *testing.B) { storetest.BenchUpdateParallel(b, benchStore(b)) }

// BenchmarkUpdateSerial is the same insert from one goroutine: one COMMIT per row, the cost
// group commit avoids.
func BenchmarkUpdateSerial(b *testing.B) { storetest.BenchUpdateSerial(b, benchStore(b)) }

// BenchmarkTwoNodes is BenchmarkUpdateParallel with the callers split between two stores on
// one database, as two keyarc nodes: their write transactions take turns on the writer lock.
func BenchmarkTwoNodes(b *testing.B) {
	srv := pgtest.Start(b)
	srv.Durable(b)
	url := srv.NewDatabase(b)
	var nodes [2]store.Store
	for i := range nodes {
		db, err := Open(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		nodes[i] = db
	}
	storetest.BenchUpdateParallel(b, nodes[:]...)
}

// The transaction's hot paths, measured as on every backend (see storetest).

func BenchmarkUpsertOCSP(b *testing.B) { storetest.BenchUpsertOCSP(b, benchStore(b)) }
func BenchmarkOCSPDue(b *testing.B)    { storetest.BenchOCSPDue(b, benchStore(b)) }
func BenchmarkClaimCode(b *testing.B)  { storetest.BenchClaimCode(b, benchStore(b)) }

// BenchmarkEnrollPerCert and BenchmarkImportPerCert are the store's work per certificate of
// an EST enrollment and of a bulk import item (see storetest): this process's CPU, the
// server's (every process of the test server), and the statements and round trips sent.
func BenchmarkEnrollPerCert(b *testing.B) {
	db, srv := benchServerStore(b)
	storetest.BenchEnrollPerCert(b, db, wireCounters(b, srv))
}

// BenchmarkESTPerCert is BenchmarkEnrollPerCert with the code's View before each Update and
// the pre-signer's reads of the new certificates after (see storetest.BenchESTPerCert).
func BenchmarkESTPerCert(b *testing.B) {
	db, srv := benchServerStore(b)
	storetest.BenchESTPerCert(b, db, wireCounters(b, srv))
}

// BenchmarkCodeView is the View that authenticates an EST enrollee (see storetest).
func BenchmarkCodeView(b *testing.B) {
	db, srv := benchServerStore(b)
	storetest.BenchCodeView(b, db, wireCounters(b, srv))
}

func BenchmarkImportPerCert(b *testing.B) {
	db, srv := benchServerStore(b)
	storetest.BenchImportPerCert(b, db, wireCounters(b, srv))
}

func wireCounters(b *testing.B, srv *pgtest.Server) storetest.Counters {
	return func() map[string]float64 {
		return map[string]float64{
			"statements":    float64(wire.statements.Load()),
			"trips":         float64(wire.trips.Load()),
			"server-cpu-µs": srv.CPU().Seconds() * 1e6,
			"wal-bytes":     walBytes(b, srv),
		}
	}
}

// walBytes is the position of the server's write-ahead log: the bytes it wrote so far, a
// measure of the writes less noisy than CPU time.
func walBytes(b *testing.B, srv *pgtest.Server) float64 {
	c, err := pgconn.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(ctx)
	rs, err := c.Exec(ctx, `SELECT (pg_current_wal_lsn() - '0/0')::text`).ReadAll()
	if err != nil {
		b.Fatal(err)
	}
	v, err := strconv.ParseFloat(string(rs[0].Rows[0][0]), 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}
