package record

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"testing"
)

// Compare with:
//
//	go test ./escrow/record -run '^$' -bench 'Seal|OAEPEncrypt' -cpu 1,2
//
// BenchmarkSeal seals a PKCS#8 RSA-2048 key (about 1.2 KB) 2-of-3 to three
// RSA-2048 KRAs with OAEP-SHA-1; BenchmarkOAEPEncrypt is one raw RSA-2048
// OAEP-SHA-1 encryption, the floor: a seal costs about three of them.

func benchRecipients(b *testing.B) ([]Recipient, []byte) {
	rcpts, keys := testRecipients(b, 3)
	payload, err := x509.MarshalPKCS8PrivateKey(keys[0])
	if err != nil {
		b.Fatal(err)
	}
	return rcpts, payload
}

func BenchmarkSeal(b *testing.B) {
	rcpts, payload := benchRecipients(b)
	h := testHeader(2, 3, crypto.SHA1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := Seal(h, payload, rcpts); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkOAEPEncrypt(b *testing.B) {
	rcpts, _ := benchRecipients(b)
	msg := make([]byte, ShareSize)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, rcpts[0].Key, msg, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkOpen(b *testing.B) {
	rcpts, payload := benchRecipients(b)
	_, keys := testRecipients(b, 3)
	r, err := Seal(testHeader(2, 3, crypto.SHA1), payload, rcpts)
	if err != nil {
		b.Fatal(err)
	}
	shares := decryptAll(b, r, keys)[:2]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Open(r, shares); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	rcpts, payload := benchRecipients(b)
	r, err := Seal(testHeader(2, 3, crypto.SHA1), payload, rcpts)
	if err != nil {
		b.Fatal(err)
	}
	enc, err := r.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(enc); err != nil {
			b.Fatal(err)
		}
	}
}
