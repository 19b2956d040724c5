package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store/storetest"

	"testing"
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
