package ocsp

import (
	"bytes"
	"crypto"
	"math/big"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseRequest: ParseRequest never panics, and what it accepts re-encodes (MarshalRequest)
// to a request that parses to the same CertIDs and nonce. Seeds: testdata/*.der, and the
// go test corpus in testdata/fuzz/FuzzParseRequest.
func FuzzParseRequest(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.der")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	id := CertID{Hash: crypto.SHA256, IssuerNameHash: make([]byte, 32), IssuerKeyHash: make([]byte, 32), Serial: big.NewInt(0x1234)}
	b, _ := MarshalRequest([]CertID{id, id}, []byte{1, 2, 3})
	f.Add(b)
	f.Fuzz(func(t *testing.T, der []byte) {
		req, err := ParseRequest(der)
		if err != nil {
			if req != nil && err != ErrUnsupportedHash {
				t.Fatalf("request returned with error %v", err)
			}
			return
		}
		again, err := MarshalRequest(req.CertIDs, req.Nonce)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		req2, err := ParseRequest(again)
		if err != nil {
			t.Fatalf("re-encoded request does not parse: %v", err)
		}
		if len(req2.CertIDs) != len(req.CertIDs) || !bytes.Equal(req2.Nonce, req.Nonce) {
			t.Fatalf("round trip changed the request")
		}
		for i := range req.CertIDs {
			a, b := req.CertIDs[i], req2.CertIDs[i]
			if a.Hash != b.Hash || a.Serial.Cmp(b.Serial) != 0 || !bytes.Equal(a.IssuerNameHash, b.IssuerNameHash) || !bytes.Equal(a.IssuerKeyHash, b.IssuerKeyHash) {
				t.Fatalf("round trip changed CertID %d", i)
			}
		}
	})
}
