package postgres

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
	"github.com/keyarc/keyarc/escrow/store/storetest"
)

var b0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func benchCert(n uint64, der []byte) store.Certificate {
	return store.Certificate{Serial: fmt.Sprintf("%x", n), Template: "smime-encryption", Email: "alice@example.com",
		Subject: "CN=Alice", State: store.StateIssued, DER: der, NotBefore: b0, NotAfter: b0.AddDate(1, 0, 0), CreatedAt: b0}
}

// benchStore opens a store on a fresh database of a server that fsyncs its commits, as
// SQLite's benchmarks do with synchronous=FULL.
func benchStore(b *testing.B) *DB {
	srv := pgtest.Start(b)
	srv.Durable(b)
	db, err := Open(ctx, srv.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// BenchmarkUpdateParallel inserts one certificate row per Update from many goroutines; group
// commit turns them into few COMMITs. The same benchmark as SQLite's.
func BenchmarkUpdateParallel(b *testing.B) {
	db := benchStore(b)
	der := make([]byte, 1200) // about the size of an RSA-2048 certificate
	var next atomic.Uint64
	b.SetParallelism(32) // 32 goroutines per GOMAXPROCS: callers that wait on a COMMIT
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			if err := db.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(benchCert(n, der)) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := db.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(st.Commits), "commits")
	if st.Commits > 0 {
		b.ReportMetric(float64(st.Updates)/float64(st.Commits), "rows/commit")
	}
}

// BenchmarkUpdateSerial is the same insert from one goroutine: one COMMIT per row, the cost
// group commit avoids.
func BenchmarkUpdateSerial(b *testing.B) {
	db := benchStore(b)
	der := make([]byte, 1200)
	b.ResetTimer()
	for i := range b.N {
		if err := db.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(benchCert(uint64(i+1), der)) }); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(db.Stats().Commits), "commits")
}

// BenchmarkTwoNodes is BenchmarkUpdateParallel with the callers split between two stores on
// one database, as two keyarc nodes: their write transactions take turns on the writer lock.
func BenchmarkTwoNodes(b *testing.B) {
	srv := pgtest.Start(b)
	srv.Durable(b)
	url := srv.NewDatabase(b)
	var nodes [2]*DB
	for i := range nodes {
		db, err := Open(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		nodes[i] = db
	}
	der := make([]byte, 1200)
	var next, node atomic.Uint64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		db := nodes[node.Add(1)%2]
		for pb.Next() {
			n := next.Add(1)
			if err := db.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(benchCert(n, der)) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(nodes[0].Stats().Commits+nodes[1].Stats().Commits), "commits")
}

// The transaction's hot paths, measured as on every backend (see storetest).

func BenchmarkUpsertOCSP(b *testing.B) { storetest.BenchUpsertOCSP(b, benchStore(b)) }
func BenchmarkOCSPDue(b *testing.B)    { storetest.BenchOCSPDue(b, benchStore(b)) }
func BenchmarkClaimCode(b *testing.B)  { storetest.BenchClaimCode(b, benchStore(b)) }
