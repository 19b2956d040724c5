package storetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// The hot paths of the transaction, measured the same way on every backend: a backend's
// bench_test.go calls these with a fresh store.

// BenchUpdateParallel inserts one certificate row per Update from many goroutines, spread over
// the stores (handles on one database, as several processes or nodes would hold); group
// commit turns them into few COMMITs. It reports rows/s, the COMMITs and, for one store, the
// rows per COMMIT.
func BenchUpdateParallel(b *testing.B, stores ...store.Store) {
	der := make([]byte, 1200) // about the size of an RSA-2048 certificate
	var next, handle atomic.Uint64
	b.SetParallelism(32) // 32 goroutines per GOMAXPROCS: callers that wait on a COMMIT
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		s := stores[handle.Add(1)%uint64(len(stores))]
		for pb.Next() {
			c := benchCert(next.Add(1), der)
			if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.InsertCertificate(c) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	var st store.Stats
	for _, s := range stores {
		st.Updates += s.Stats().Updates
		st.Commits += s.Stats().Commits
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(st.Commits), "commits")
	if st.Commits > 0 && len(stores) == 1 {
		b.ReportMetric(float64(st.Updates)/float64(st.Commits), "rows/commit")
	}
}

// BenchUpdateSerial is the same insert from one goroutine: one COMMIT per row, the cost group
// commit avoids.
func BenchUpdateSerial(b *testing.B, s store.Store) {
	der := make([]byte, 1200)
	b.ResetTimer()
	for i := range b.N {
		c := benchCert(uint64(i+1), der)
		if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.InsertCertificate(c) }); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(s.Stats().Commits), "commits")
}

// benchCert is an issued certificate of serial n (hex).
func benchCert(n uint64, der []byte) store.Certificate {
	return store.Certificate{Serial: fmt.Sprintf("%x", n), Template: "smime-encryption", Email: "alice@example.com",
		Subject: "CN=Alice", State: store.StateIssued, DER: der, NotBefore: bench0, NotAfter: bench0.AddDate(1, 0, 0),
		CreatedAt: bench0}
}

var bench0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// benchCerts is how many issued certificates the OCSP benchmarks keep responses for.
const benchCerts = 4096

// benchIssued stores n issued certificates with serials 1..n (hex).
func benchIssued(b *testing.B, s store.Store, n int) {
	b.Helper()
	der := make([]byte, 1200) // about the size of an RSA-2048 certificate
	for from := 1; from <= n; from += 256 {
		cs := make([]store.Certificate, 0, 256)
		for i := from; i < from+256 && i <= n; i++ {
			cs = append(cs, benchCert(uint64(i), der))
		}
		if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.InsertCertificates(cs) }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchUpsertOCSP stores pre-signed OCSP responses 64 to an Update, as a signing pass does,
// each replacing the previous response of its certificate. It reports responses/s.
func BenchUpsertOCSP(b *testing.B, s store.Store) {
	const perUpdate = 64
	benchIssued(b, s, benchCerts)
	der := make([]byte, 1500) // about the size of a signed OCSP response
	b.ResetTimer()
	n := 0
	for i := range b.N {
		at := bench0.Add(time.Duration(i+1) * time.Minute)
		rs := make([]store.OCSPResponse, perUpdate)
		for j := range rs {
			rs[j] = store.OCSPResponse{Serial: fmt.Sprintf("%x", (i*perUpdate+j)%benchCerts+1), DER: der,
				ThisUpdate: at, NextUpdate: at.Add(24 * time.Hour)}
		}
		if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) }); err != nil {
			b.Fatal(err)
		}
		n += perUpdate
	}
	b.StopTimer()
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "responses/s")
}

// BenchOCSPDue reads the due certificates in pages of 256, as a signing pass does: each
// iteration is one whole pass over benchCerts certificates, half of them due. It reports
// passes/s.
func BenchOCSPDue(b *testing.B, s store.Store) {
	benchIssued(b, s, benchCerts)
	der := make([]byte, 1500)
	for from := 1; from <= benchCerts/2; from += 256 {
		rs := make([]store.OCSPResponse, 0, 256)
		for i := from; i < from+256; i++ {
			rs = append(rs, store.OCSPResponse{Serial: fmt.Sprintf("%x", i), DER: der, ThisUpdate: bench0,
				NextUpdate: bench0.Add(24 * time.Hour)})
		}
		if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) }); err != nil {
			b.Fatal(err)
		}
	}
	now, before := bench0.Add(time.Hour), bench0.Add(-time.Hour)
	b.ResetTimer()
	for range b.N {
		due, after := 0, ""
		for {
			var page []store.CertStatus
			err := s.View(context.Background(), func(tx store.Tx) (err error) {
				page, err = tx.OCSPDue(now, before, after, 256)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			due += len(page)
			after = page[len(page)-1].Serial
		}
		if due != benchCerts/2 {
			b.Fatalf("a pass found %d due, want %d", due, benchCerts/2)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "passes/s")
}

// BenchClaimCode claims enrollment codes from many goroutines, one claim per Update, as
// enrollments do. It reports claims/s.
func BenchClaimCode(b *testing.B, s store.Store) {
	ctx := context.Background()
	for from := 0; from < b.N; from += 256 {
		err := s.Update(ctx, func(tx store.Tx) error {
			for i := from; i < from+256 && i < b.N; i++ {
				if err := tx.InsertCode(store.Code{ID: fmt.Sprintf("code-%d", i), Email: "alice@example.com",
					Template: "smime-encryption", Hash: []byte("hash"), CreatedAt: bench0,
					ExpiresAt: bench0.AddDate(1, 0, 0)}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	now := bench0.Add(time.Hour)
	b.SetParallelism(32) // callers that wait on the commit
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("code-%d", next.Add(1)-1)
			if err := s.Update(ctx, func(tx store.Tx) error { return tx.ClaimCode(id, now) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
}
