package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestCertificateHashes: the hashes come back in the order asked, for any number of serials
// (the statement is padded to a few shapes), with "" for a serial without a DER.
func TestCertificateHashes(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	want := map[string]string{}
	var serials []string
	err = db.Update(ctx, func(tx store.Tx) error {
		for i := 1; i <= 70; i++ {
			serial := fmt.Sprintf("%x", 0x1000+i)
			der := []byte(fmt.Sprintf("certificate %d", i))
			c := store.Certificate{Serial: serial, Template: "t", Email: "u@example.org", State: store.StateIssued, DER: der,
				NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
			if i%10 == 0 {
				c.State, c.DER = store.StatePending, nil
			} else {
				sum := sha256.Sum256(der)
				want[serial] = hex.EncodeToString(sum[:])
			}
			if err := tx.InsertCertificate(c); err != nil {
				return err
			}
			serials = append(serials, serial)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 2, 8, 9, 64, 70} {
		ask := append([]string{"ffff"}, serials[len(serials)-n+1:]...) // an unknown serial first
		var got []string
		if err := db.View(ctx, func(tx store.Tx) error { got, err = tx.CertificateHashes(ask); return err }); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(ask) {
			t.Fatalf("%d serials: %d hashes", len(ask), len(got))
		}
		for i, s := range ask {
			if got[i] != want[s] {
				t.Errorf("%d serials: hash of %s is %q, want %q", len(ask), s, got[i], want[s])
			}
		}
	}
}
