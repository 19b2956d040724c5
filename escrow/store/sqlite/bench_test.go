package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/storetest"

	"context"
	"testing"
	"time"
)

// BenchmarkUpdateParallel inserts one certificate row per Update from many
// goroutines; group commit turns them into few COMMITs.
func BenchmarkUpdateParallel(b *testing.B) {
	db, _ := openTest(b)
	storetest.BenchUpdateParallel(b, db)
}

// BenchmarkUpdateSerial is the same insert from one goroutine: one COMMIT
// (one fsync) per row, the cost group commit avoids.
func BenchmarkUpdateSerial(b *testing.B) { db, _ := openTest(b); storetest.BenchUpdateSerial(b, db) }

// The transaction's hot paths, measured as on every backend (see storetest).

func BenchmarkUpsertOCSP(b *testing.B) { db, _ := openTest(b); storetest.BenchUpsertOCSP(b, db) }
func BenchmarkOCSPDue(b *testing.B)    { db, _ := openTest(b); storetest.BenchOCSPDue(b, db) }
func BenchmarkClaimCode(b *testing.B)  { db, _ := openTest(b); storetest.BenchClaimCode(b, db) }

// BenchmarkViewGetCode looks an enrollment code up in a View from two goroutines, as
// every enrollment authenticated by a code does.
func BenchmarkViewGetCode(b *testing.B) {
	db, _ := openTest(b)
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertCode(store.Code{ID: "ABCDEFGH", Email: "alice@example.com", Template: "smime-encryption",
			Hash: []byte("hash"), CreatedAt: now, ExpiresAt: now.AddDate(1, 0, 0)})
	}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := db.View(ctx, func(tx store.Tx) error {
				_, err := tx.GetCode("ABCDEFGH")
				return err
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
