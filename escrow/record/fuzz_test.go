package record

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts
// encodes back to the same bytes. Seeds: testdata/fuzz/FuzzParse (written by
// -update) plus the golden records and a synthetic record.
func FuzzParse(f *testing.F) {
	for _, v := range goldenVectors {
		if b, err := os.ReadFile(filepath.Join("testdata", v.name+".karc")); err == nil {
			f.Add(b)
		}
	}
	f.Add(validRaw().encode())
	f.Add([]byte("KARC\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Parse(b)
		if err != nil {
			if r != nil {
				t.Fatal("Parse returned a record and an error")
			}
			return
		}
		out, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted record does not marshal: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatal("Parse then MarshalBinary changed the bytes")
		}
		for _, s := range r.Shares {
			if i, _, err := r.ShareFor(s.KeyID); err != nil || !bytes.Equal(r.Shares[i].KeyID, s.KeyID) {
				t.Fatal("ShareFor does not find a present key ID")
			}
		}
		// Opening with junk shares must fail cleanly.
		junk := [][]byte{make([]byte, ShareSize), make([]byte, ShareSize)}
		junk[0][KeySize], junk[1][KeySize] = 1, 2
		if _, err := Open(r, junk); err == nil {
			t.Fatal("junk shares opened a record")
		}
	})
}
