package sqlite

import (
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion19: the certificates below the mark get their entries of
// certificate_keys and certificates_key goes; CertificatesByKey finds those above the mark
// too, before and after IndexNewCertificates, and a compromised key is found through
// certificates_compromised.
func TestMigrateFromVersion19(t *testing.T) {
	path, old := oldDatabase(t, 19)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	der, keyID := selfSigned(t)
	other, otherID := selfSigned(t)
	insert := `INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra, key_id,
		revoked_at, revocation_reason) VALUES (?, 'smime-signature', 'a@example.org', 'CN=a', ?, ?, ?, ?, '', '', ?, ?, ?)`
	notAfter := created.AddDate(1, 0, 0).UnixMicro()
	for _, c := range []struct {
		serial, state string
		der           []byte
		key           any
		reason        int
	}{
		{"c01", "issued", der, keyID, 0},
		{"c02", "revoked", other, otherID, store.ReasonKeyCompromise},
		{"c03", "pending", nil, nil, 0},
	} {
		var revokedAt any
		if c.state == "revoked" {
			revokedAt = created.UnixMicro()
		}
		if _, err := old.Exec(insert, c.serial, c.state, c.der, notAfter, created.UnixMicro(), c.key, revokedAt, c.reason); err != nil {
			t.Fatal(err)
		}
	}
	// The pre-signer's pass has indexed those three; c04 came after it.
	if _, err := old.Exec(`UPDATE ocsp_mark SET pos = 3, serial = 'c03'`); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(insert, "c04", "issued", der, notAfter, created.Add(time.Second).UnixMicro(), keyID, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 19 database: %v", err)
	}
	defer db.Close()
	if n := count(t, db.r, `SELECT count(*) FROM sqlite_schema WHERE name = 'certificates_key'`); n != 0 {
		t.Error("certificates_key is still there")
	}
	if n := count(t, db.r, `SELECT count(*) FROM certificate_keys`); n != 2 {
		t.Errorf("certificate_keys holds %d entries, want 2 (c01 and c02, below the mark)", n)
	}
	byKey := func(when string) {
		t.Helper()
		err := db.View(ctx, func(tx store.Tx) error {
			cs, err := tx.CertificatesByKey(keyID)
			if err != nil {
				return err
			}
			if len(cs) != 2 || cs[0].Serial != "c01" || cs[1].Serial != "c04" {
				t.Errorf("%s: CertificatesByKey: %v, want c01 and c04", when, cs)
			}
			bad, err := tx.CompromisedKeys([]string{keyID, otherID})
			if err != nil {
				return err
			}
			if len(bad) != 1 || bad[otherID] != "c02" {
				t.Errorf("%s: CompromisedKeys: %v, want c02's key alone", when, bad)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	byKey("after the migration")
	indexAll(t, db)
	if n := count(t, db.r, `SELECT count(*) FROM certificate_keys`); n != 3 {
		t.Errorf("certificate_keys holds %d entries once indexed, want 3", n)
	}
	byKey("once indexed")
}
