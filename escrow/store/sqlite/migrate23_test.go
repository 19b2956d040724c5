package sqlite

import (
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion22: the rows of ocsp_due of a version-22 database get their revoked
// certificates' revocation time, from which OCSPDue now reads a page, and a revocation after
// the migration reaches the row too.
func TestMigrateFromVersion22(t *testing.T) {
	path, old := oldDatabase(t, 22)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := created.AddDate(1, 0, 0)
	revokedAt := created.Add(90 * time.Minute)
	if _, err := old.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra,
			revoked_at, revocation_reason) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?2, ?1, '', '', NULL, 0),
			('c02', 'smime-signature', 'b@example.org', 'CN=b', 'revoked', x'30', ?2, ?1, '', '', ?3, 4);
		INSERT INTO ocsp_due (serial, signed, not_after, revoked, reason) VALUES
			('c01', -9223372036854775807 - 1, ?2, 0, 0), ('c02', -9223372036854775807 - 1, ?2, 1, 4);
		UPDATE ocsp_mark SET pos = 2, serial = 'c02';`,
		created.UnixMicro(), notAfter.UnixMicro(), revokedAt.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 22 database: %v", err)
	}
	defer db.Close()

	due := func() map[string]store.CertStatus {
		t.Helper()
		var page []store.CertStatus
		if err := db.View(ctx, func(tx store.Tx) (err error) {
			page, err = tx.OCSPDue(created.Add(time.Hour), created.Add(time.Hour), "", 10)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		m := make(map[string]store.CertStatus)
		for _, st := range page {
			m[st.Serial] = st
		}
		return m
	}
	got := due()
	if st := got["c02"]; !st.Revoked || !st.RevokedAt.Equal(revokedAt) || st.Reason != 4 || !st.NotAfter.Equal(notAfter) {
		t.Errorf("c02 after the migration: %+v, want revoked at %v, reason 4, expiring %v", st, revokedAt, notAfter)
	}
	if st, ok := got["c01"]; !ok || st.Revoked || !st.RevokedAt.IsZero() {
		t.Errorf("c01 after the migration: %+v (listed %v), want good and due", st, ok)
	}

	later := created.Add(2 * time.Hour)
	mustUpdate(t, db, func(tx store.Tx) error { return tx.RevokeCertificate("c01", store.ReasonSuperseded, later) })
	if st := due()["c01"]; !st.Revoked || !st.RevokedAt.Equal(later) || st.Reason != store.ReasonSuperseded {
		t.Errorf("c01 revoked after the migration: %+v, want revoked at %v, reason 4", st, later)
	}
}
