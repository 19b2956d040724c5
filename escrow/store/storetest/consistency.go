package storetest

import (
	"github.com/keyarc/keyarc/escrow/store"

	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"
)

// The reads of the consistency checker (escrow/check).
var consistencyTests = []test{
	{"CertificateHashes", testCertificateHashes},
	{"SignedCertificates", testSignedCertificates},
}

// testCertificateHashes: the hashes come back in the order asked, for any number of serials
// and any spelling of them, with "" for a serial without a DER.
func testCertificateHashes(t *testing.T, h *Harness) {
	s := h.Open(t)
	want := map[string]string{}
	var serials []string
	err := s.Update(ctx, func(tx store.Tx) error {
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
		if err := s.View(ctx, func(tx store.Tx) error { got, err = tx.CertificateHashes(ask); return err }); err != nil {
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
	// Any spelling of a serial, and the same serial twice.
	var got []string
	mustView(t, s, func(tx store.Tx) (err error) {
		got, err = tx.CertificateHashes([]string{"0x1001", "00:10:01", "1001"})
		return err
	})
	if len(got) != 3 || got[0] != want["1001"] || got[1] != want["1001"] || got[2] != want["1001"] {
		t.Errorf("hashes of three spellings of 1001: %q, want %q each", got, want["1001"])
	}
	if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.CertificateHashes([]string{"xyz"}); return err }); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("CertificateHashes(bad serial) = %v, want ErrInvalid", err)
	}
}

// testSignedCertificates: the certificates holding a DER come back in the order they were
// stored (not by serial or time), page by page from a position, and the position of the last
// certificate stored only grows.
func testSignedCertificates(t *testing.T, h *Harness) {
	s := h.Open(t)
	var last0 int64
	mustView(t, s, func(tx store.Tx) (err error) {
		last0, err = tx.LastCertificatePosition()
		if l, after, err := tx.SignedCertificates(last0, 10); err != nil || len(l) != 0 || after != last0 {
			t.Errorf("SignedCertificates of none = %v, %d, %v", l, after, err)
		}
		if _, _, err := tx.SignedCertificates(0, 0); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("SignedCertificates(limit 0) = %v, want ErrInvalid", err)
		}
		return err
	})
	// Stored in this order; serials and creation times in another.
	order := []string{"9", "3", "7", "1", "5", "2"}
	der := func(s string) []byte { return []byte("der-" + s) }
	for i, serial := range order {
		mustUpdate(t, s, func(tx store.Tx) error {
			c := cert(serial)
			c.CreatedAt = t0.Add(-time.Duration(i) * time.Minute)
			switch serial {
			case "2", "7": // never signed
			case "5": // signed, then failed
				if err := tx.InsertCertificate(c); err != nil {
					return err
				}
				return tx.FailSignedCertificate(serial, der(serial), t0, t0.AddDate(1, 0, 0))
			default:
				c.State, c.DER, c.NotBefore, c.NotAfter = store.StateIssued, der(serial), t0, t0.AddDate(1, 0, 0)
			}
			return tx.InsertCertificate(c)
		})
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SetCertificateIssued("7", der("7"), t0, t0.AddDate(1, 0, 0)) })
	var got []string
	mustView(t, s, func(tx store.Tx) error {
		last, err := tx.LastCertificatePosition()
		if err != nil {
			return err
		}
		if last <= last0 {
			t.Errorf("LastCertificatePosition %d after inserts, was %d", last, last0)
		}
		after := last0
		for {
			page, next, err := tx.SignedCertificates(after, 2)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				if next != after {
					t.Errorf("an empty page moved the position from %d to %d", after, next)
				}
				break
			}
			if next <= after || next > last {
				t.Errorf("page after %d ends at %d (last %d)", after, next, last)
			}
			for _, c := range page {
				if string(c.DER) != string(der(c.Serial)) {
					t.Errorf("certificate %s: DER %q", c.Serial, c.DER)
				}
				got = append(got, c.Serial)
			}
			after = next
		}
		return nil
	})
	// 7 was signed after it was stored: its position is where it was stored.
	if want := "[9 3 7 1 5]"; fmt.Sprint(got) != want {
		t.Errorf("signed certificates in order %v, want %s", got, want)
	}
}
