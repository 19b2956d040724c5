package hsm

import (
	"crypto"
	"crypto/sha256"
	"testing"
)

// BenchmarkSign measures signatures per second through the Signer wrapper (pool,
// metrics and all) on a SoftHSM token. Run with -cpu 1,2 to see the scaling:
//
//	go test -run '^$' -bench BenchmarkSign -cpu 1,2 ./hsm/
func BenchmarkSign(b *testing.B) {
	_, _, tok := newToken(b, Options{})
	digest := sha256.Sum256([]byte("keyarc"))
	for _, alg := range []Algorithm{P256, RSA2048} {
		label := "bench-" + string(alg)
		if _, err := tok.GenerateKey(label, alg, UsageSign); err != nil {
			b.Fatal(err)
		}
		s, err := tok.Signer(label)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(alg), func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

// BenchmarkDo measures what Token.do adds around a call into the module (slot, watchdog,
// metrics), with a call that does nothing:
//
//	go test -run '^$' -bench BenchmarkDo -cpu 1,2 ./hsm/
func BenchmarkDo(b *testing.B) {
	_, _, tok := newToken(b, Options{})
	nop := func(*conn) error { return nil }
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := tok.do("sign", nop); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}
