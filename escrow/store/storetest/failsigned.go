package storetest

import (
	"github.com/keyarc/keyarc/escrow/store"

	"errors"
	"testing"
)

// testFailSignedCertificate: a pending certificate signed but never delivered becomes failed
// with its signed certificate kept, its code released and its record abandoned, like
// FailCertificate; a certificate that is not pending is left as it is.
func testFailSignedCertificate(t *testing.T, h *Harness) {
	s := h.Open(t)
	der := []byte{0x30, 0x03, 0x02, 0x01, 0x05}
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		if err := tx.InsertCode(code("k")); err != nil {
			return err
		}
		if err := tx.ClaimCode("k", t0); err != nil {
			return err
		}
		if err := tx.InsertRecord(record("r", "5")); err != nil {
			return err
		}
		c := cert("5")
		c.CodeID, c.RecordID = "k", "r"
		if err := tx.InsertCertificate(c); err != nil {
			return err
		}
		return tx.FailSignedCertificate("5", der, t0, t0.AddDate(1, 0, 0))
	})
	err := s.View(ctx, func(tx store.Tx) error {
		c, err := tx.GetCertificate("5")
		if err != nil {
			return err
		}
		k, err := tx.GetCode("k")
		if err != nil {
			return err
		}
		r, err := tx.GetRecord("r")
		if err != nil {
			return err
		}
		if c.State != store.StateFailed || string(c.DER) != string(der) || c.NotAfter.IsZero() {
			t.Errorf("certificate after FailSignedCertificate: %s, der %x, notAfter %v; want failed with its der", c.State, c.DER, c.NotAfter)
		}
		if k.UsedAt != nil || k.Serial != "" || r.State != store.StateAbandoned {
			t.Errorf("after FailSignedCertificate: code used %v serial %q, record %s", k.UsedAt, k.Serial, r.State)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		serial  string
		der     []byte
		wantErr error
	}{
		{name: "not pending", serial: "5", der: der, wantErr: store.ErrConflict},
		{name: "unknown", serial: "ff", der: der, wantErr: store.ErrNotFound},
		{name: "no der", serial: "5", wantErr: store.ErrInvalid},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { return tx.FailSignedCertificate(tc.serial, tc.der, t0, t0.AddDate(1, 0, 0)) })
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}
