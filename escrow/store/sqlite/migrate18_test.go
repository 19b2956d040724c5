package sqlite

import (
	"database/sql"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion17: on a version-17 database an imported certificate (another CA's,
// template import) had a row of ocsp_due and could have a stored OCSP response; both go, this
// CA's own certificate keeps its own, and an imported certificate stored after the migration
// gets none.
func TestMigrateFromVersion17(t *testing.T) {
	path, old := oldDatabase(t, 17)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := created.AddDate(1, 0, 0).UnixMicro()
	if _, err := old.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?2, ?1, '', ''),
			('f01', 'import', 'b@example.org', 'CN=b', 'issued', x'30', ?2, ?1, '', '');
		INSERT INTO ocsp_responses (serial, der, this_update, next_update, revoked, reason, updated_at) VALUES
			('c01', x'01', ?1, ?2, 0, 0, ?1),
			('f01', x'02', ?1, ?2, 0, 0, ?1);`,
		created.UnixMicro(), notAfter); err != nil {
		t.Fatal(err)
	}
	count := func(db *sql.DB, q string) int {
		t.Helper()
		var n int
		if err := db.QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(old, `SELECT count(*) FROM ocsp_due WHERE serial = 'f01'`); n != 1 {
		t.Fatalf("before the migration the imported certificate has %d rows of ocsp_due, want 1 (the defect)", n)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 17 database: %v", err)
	}
	defer db.Close()
	for q, want := range map[string]int{
		`SELECT count(*) FROM ocsp_due WHERE serial = 'f01'`:       0,
		`SELECT count(*) FROM ocsp_responses WHERE serial = 'f01'`: 0,
		`SELECT count(*) FROM ocsp_due WHERE serial = 'c01'`:       1,
		`SELECT count(*) FROM ocsp_responses WHERE serial = 'c01'`: 1,
	} {
		if n := count(db.r, q); n != want {
			t.Errorf("%s: %d, want %d", q, n, want)
		}
	}
	err = db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertCertificates([]store.Certificate{{Serial: "f02", Template: store.TemplateImport, Email: "c@example.org",
			Subject: "CN=c", State: store.StateIssued, DER: []byte{0x30}, NotBefore: time.UnixMicro(0), NotAfter: time.UnixMicro(notAfter),
			CreatedAt: created}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(db.r, `SELECT count(*) FROM ocsp_due WHERE serial = 'f02'`); n != 0 {
		t.Errorf("an imported certificate stored after the migration has %d rows of ocsp_due", n)
	}
}
