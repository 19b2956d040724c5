package escrow

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// FuzzDecodeShares feeds stored approval shares (the JSON a KRA's approval was saved as) to
// decodeShares: it must never panic, and what it accepts must encode back to JSON that decodes
// to the same shares.
func FuzzDecodeShares(f *testing.F) {
	f.Add([]byte(`[{"record_id":"0123456789abcdef","share":"AAECAw=="}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[{"record_id":"a","share":"!!"}]`))
	f.Add([]byte(`[{"record_id":1}]`))
	rec := &store.Recovery{ID: "fuzz", Requester: "officer", Records: []string{"0123456789abcdef", "a"}}
	f.Fuzz(func(t *testing.T, b []byte) {
		shares, err := decodeShares(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(shares)
		if err != nil {
			t.Fatalf("accepted shares do not marshal: %v", err)
		}
		again, err := decodeShares(out)
		if err != nil || len(again) != len(shares) {
			t.Fatalf("shares do not round-trip: %v", err)
		}
		for i := range shares {
			if again[i].RecordID != shares[i].RecordID || !bytes.Equal(again[i].Share, shares[i].Share) {
				t.Fatalf("share %d changed in a round trip", i)
			}
		}
		// The digest a KRA signs is defined for whatever was accepted.
		if len(ApprovalDigest(rec, shares)) != 32 {
			t.Fatal("approval digest is not SHA-256")
		}
	})
}
