package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"
	"github.com/keyarc/keyarc/escrow/store/storetest"

	"context"
	"os"
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

// BenchmarkEnrollPerCert and BenchmarkImportPerCert are the store's work per certificate of
// an EST enrollment and of a bulk import item (see storetest): CPU, statements (those of the
// triggers not counted) and WAL frames, that is pages written, with the WAL checkpoints off
// so that the WAL file's size counts every frame.
func BenchmarkEnrollPerCert(b *testing.B) {
	db, _ := openTest(b)
	storetest.BenchEnrollPerCert(b, db, walCounters(b, db))
}

// BenchmarkESTPerCert is BenchmarkEnrollPerCert with an EST enrollment's reads (see
// storetest), beside PostgreSQL's.
func BenchmarkESTPerCert(b *testing.B) {
	db, _ := openTest(b)
	storetest.BenchESTPerCert(b, db, walCounters(b, db))
}

// BenchmarkCodeView is the View that authenticates an EST enrollee, beside PostgreSQL's.
func BenchmarkCodeView(b *testing.B) {
	db, _ := openTest(b)
	storetest.BenchCodeView(b, db, nil)
}

func BenchmarkImportPerCert(b *testing.B) {
	db, _ := openTest(b)
	storetest.BenchImportPerCert(b, db, walCounters(b, db))
}

func walCounters(b *testing.B, db *DB) storetest.Counters {
	mustUpdate(b, db, func(tx store.Tx) error {
		ctx, q := tx.(*sqltx.Tx).Raw()
		_, err := q.ExecContext(ctx, "PRAGMA wal_autocheckpoint = 0")
		return err
	})
	var pageSize int64
	if err := db.View(context.Background(), func(tx store.Tx) error {
		ctx, q := tx.(*sqltx.Tx).Raw()
		rows, err := q.QueryContext(ctx, "PRAGMA page_size")
		if err != nil {
			return err
		}
		defer rows.Close()
		rows.Next()
		return rows.Scan(&pageSize)
	}); err != nil {
		b.Fatal(err)
	}
	return func() map[string]float64 {
		fi, err := os.Stat(db.Path() + "-wal")
		if err != nil {
			b.Fatal(err)
		}
		return map[string]float64{
			"statements": float64(statements.Load()),
			"wal-pages":  float64((fi.Size() - 32) / (pageSize + 24)),
		}
	}
}
