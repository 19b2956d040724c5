package presign

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// BenchmarkPresignSoftHSM compares the token's raw signing rate (P-256 in SoftHSM, 2
// goroutines, the responder key's) with pre-signing and storing the responses of 20,000
// certificates through SignDue (real SQLite). It reports both rates and their ratio; the
// issue asks for at least 80%.
func BenchmarkPresignSoftHSM(b *testing.B) {
	_, toks := softhsmtest.Tokens(b, "presign")
	tok, err := hsm.Open(toks[0].URI(""), hsm.Options{MaxSessions: 4})
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	if _, err := tok.GenerateKey("ocsp-key", hsm.P256, hsm.UsageSign); err != nil {
		b.Fatal(err)
	}
	key, err := tok.Signer("ocsp-key")
	if err != nil {
		b.Fatal(err)
	}
	const n = 20000
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b, key, 30*24*time.Hour)
		e.addCerts(b, 0x100000, n)
		digest := sha256.Sum256([]byte("x"))
		start := time.Now()
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range n / 2 {
					if _, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		raw := float64(n) / time.Since(start).Seconds()
		s := e.signer(e.responder)
		s.Batch = DefaultBatch
		b.StartTimer()
		start = time.Now()
		got, err := s.SignDue(context.Background())
		el := time.Since(start)
		if err != nil || got != n {
			b.Fatalf("SignDue: %d, %v", got, err)
		}
		rate := float64(n) / el.Seconds()
		b.ReportMetric(raw, "raw-signs/s")
		b.ReportMetric(rate, "presigned/s")
		b.ReportMetric(100*rate/raw, "%-of-raw")
	}
}
