package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/storetest"

	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkUpdateParallel inserts one certificate row per Update from many
// goroutines; group commit turns them into few COMMITs.
func BenchmarkUpdateParallel(b *testing.B) {
	db, _ := openTest(b)
	der := make([]byte, 1200) // about the size of an RSA-2048 certificate
	var next atomic.Uint64
	b.SetParallelism(32) // 32 goroutines per GOMAXPROCS: callers that wait on fsync
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			err := db.Update(ctx, func(tx store.Tx) error {
				c := cert(fmt.Sprintf("%x", n))
				c.State, c.DER, c.NotBefore, c.NotAfter = store.StateIssued, der, t0, t0.AddDate(1, 0, 0)
				return tx.InsertCertificate(c)
			})
			if err != nil {
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

// BenchmarkUpdateSerial is the same insert from one goroutine: one COMMIT
// (one fsync) per row, the cost group commit avoids.
func BenchmarkUpdateSerial(b *testing.B) {
	db, _ := openTest(b)
	der := make([]byte, 1200)
	b.ResetTimer()
	for i := range b.N {
		err := db.Update(ctx, func(tx store.Tx) error {
			c := cert(fmt.Sprintf("%x", i+1))
			c.State, c.DER, c.NotBefore, c.NotAfter = store.StateIssued, der, t0, t0.AddDate(1, 0, 0)
			return tx.InsertCertificate(c)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(db.Stats().Commits), "commits")
}

// The transaction's hot paths, measured as on every backend (see storetest).

func BenchmarkUpsertOCSP(b *testing.B) { db, _ := openTest(b); storetest.BenchUpsertOCSP(b, db) }
func BenchmarkOCSPDue(b *testing.B)    { db, _ := openTest(b); storetest.BenchOCSPDue(b, db) }
func BenchmarkClaimCode(b *testing.B)  { db, _ := openTest(b); storetest.BenchClaimCode(b, db) }
