package hsm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSign measures signatures per second through the Signer wrapper (pool,
// metrics and all) on a SoftHSM token. Run with -cpu 1,2 to see the scaling:
//
//	go test -run '^$' -bench BenchmarkSign -cpu 1,2 ./hsm/
//
// Each algorithm runs twice: with a session copy of the key (what Signer uses when the token
// allows it) and with the token object.
func BenchmarkSign(b *testing.B) {
	_, _, tok := newToken(b, Options{})
	digest := sha256.Sum256([]byte("keyarc"))
	for _, alg := range []Algorithm{P256, RSA2048} {
		label := "bench-" + string(alg)
		if _, err := tok.GenerateKey(label, alg, UsageSign); err != nil {
			b.Fatal(err)
		}
		for _, copies := range []bool{true, false} {
			name := string(alg) + "/session-copy"
			if !copies {
				name = string(alg) + "/token-object"
			}
			sessionCopies = copies
			s, err := tok.Signer(label)
			if err != nil {
				b.Fatal(err)
			}
			benchSign(b, name, s, digest[:])
		}
		sessionCopies = true
	}
}

func benchSign(b *testing.B, name string, s crypto.Signer, digest []byte) {
	b.Helper()
	if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil { // makes the copy
		b.Fatal(err)
	}
	b.Run(name, func(b *testing.B) {
		cpu0 := processCPU(b)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		// CPU time per signature (this process, module included): steadier than the rate
		// on a shared machine.
		b.ReportMetric(float64((processCPU(b)-cpu0)/time.Microsecond)/float64(b.N), "cpu-µs/op")
	})
}

// processCPU is the user and system CPU time of this process so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// BenchmarkDecrypt measures RSA-2048 OAEP (SHA-1) decryptions through the Decrypter wrapper,
// with a session copy of the key and with the token object:
//
//	go test -run '^$' -bench BenchmarkDecrypt -cpu 1 ./hsm/
func BenchmarkDecrypt(b *testing.B) {
	_, _, tok := newToken(b, Options{})
	if _, err := tok.GenerateKey("bench-transport", RSA2048, UsageDecrypt); err != nil {
		b.Fatal(err)
	}
	for _, copies := range []bool{true, false} {
		name := "rsa2048/session-copy"
		if !copies {
			name = "rsa2048/token-object"
		}
		sessionCopies = copies
		d, err := tok.Decrypter("bench-transport")
		if err != nil {
			b.Fatal(err)
		}
		ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, d.Public().(*rsa.PublicKey), make([]byte, 32), nil)
		if err != nil {
			b.Fatal(err)
		}
		opts := &rsa.OAEPOptions{Hash: crypto.SHA1}
		if _, err := d.Decrypt(nil, ct, opts); err != nil { // makes the copy
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			cpu0 := processCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := d.Decrypt(nil, ct, opts); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64((processCPU(b)-cpu0)/time.Microsecond)/float64(b.N), "cpu-µs/op")
		})
	}
	sessionCopies = true
}
