package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// TestCheckIssued: against a real SQLite archive, the storms' check passes only when every
// request counted as served used its code for a certificate now issued; a code unused, a
// certificate still pending, a count beyond the requests, or (archival) a certificate without
// an escrow record is a phantom success and fails the check.
func TestCheckIssued(t *testing.T) {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	ids := []string{"AAAAAAA0", "AAAAAAA1", "AAAAAAA2", "AAAAAAA3"}
	// 0: issued; 1: unused; 2: claimed, certificate pending; 3: issued.
	err = db.Update(context.Background(), func(tx store.Tx) error {
		for i, id := range ids {
			mb := fmt.Sprintf("m%d@example.org", i)
			h := sha256.Sum256([]byte(id))
			if err := tx.InsertCode(store.Code{ID: id, Email: mb, Template: "smime-signature", Hash: h[:], CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
				return err
			}
			if i == 1 {
				continue
			}
			if err := tx.ClaimCode(id, now); err != nil {
				return err
			}
			serial := fmt.Sprintf("7f%02x", i)
			if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "smime-signature", Email: mb, CodeID: id}); err != nil {
				return err
			}
			if i == 2 {
				continue
			}
			if err := tx.SetCertificateIssued(serial, []byte{0x30, 0x03, 0x02, 0x01, byte(i)}, now, now.Add(time.Hour)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		ok       []int64
		archived bool
		wantBad  int // phantom successes found
	}{
		{"all issued", []int64{3, 0}, false, 0},
		{"none counted", nil, false, 0},
		{"code unused", []int64{0, 1, 3}, false, 1},
		{"certificate pending", []int64{2, 0}, false, 1},
		{"beyond the requests", []int64{4, -1, 3}, false, 2},
		{"archival without record", []int64{0, 3}, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkIssued(db, ids, tt.ok, tt.archived)
			if tt.wantBad == 0 {
				if err != nil {
					t.Fatalf("checkIssued: %v", err)
				}
				return
			}
			var pe *phantomError
			if !errors.As(err, &pe) || pe.Bad != tt.wantBad || pe.Counted != len(tt.ok) {
				t.Fatalf("checkIssued: %v, want %d of %d phantom successes", err, tt.wantBad, len(tt.ok))
			}
		})
	}
}
