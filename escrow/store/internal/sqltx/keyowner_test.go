package sqltx

import (
	"github.com/keyarc/keyarc/escrow/store/storetest"

	"strings"
	"testing"
)

// TestRecordFingerprint: the store reads a record's key fingerprint where escrow/record puts it,
// whatever the lengths of issuer and serial before it.
func TestRecordFingerprint(t *testing.T) {
	for _, shape := range [][2]int{{1, 1}, {40, 16}, {255, 20}, {256, 64}, {4096, 64}} {
		blob, want := storetest.SealedKey(t, 1, shape[0], shape[1])
		if got := recordFingerprint(blob); got != want {
			t.Errorf("issuer %d, serial %d bytes: fingerprint %q, want %q", shape[0], shape[1], got, want)
		}
	}
	for _, bad := range [][]byte{nil, []byte("sealed-r1"), []byte("KARC\x02" + strings.Repeat("x", 100)), []byte("KARC\x01" + strings.Repeat("\x00", 19))} {
		if got := recordFingerprint(bad); got != "" {
			t.Errorf("fingerprint of %q = %q, want none", bad, got)
		}
	}
}
