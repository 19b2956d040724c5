package sqlite

import (
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// count runs q, a count, on db.
func count(t *testing.T, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// dueSerials returns the serials OCSPDue lists at now, all of them due.
func dueSerials(t *testing.T, db *DB, now time.Time) string {
	t.Helper()
	var got []store.CertStatus
	if err := db.View(ctx, func(tx store.Tx) (err error) { got, err = tx.OCSPDue(now, now, "", 100); return err }); err != nil {
		t.Fatal(err)
	}
	var out string
	for _, c := range got {
		out += c.Serial + " "
	}
	return out
}

// indexAll indexes every new certificate.
func indexAll(t *testing.T, db *DB) {
	t.Helper()
	if err := store.IndexAllNew(ctx, db, 1000); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateFromVersion18: the certificates of a version-18 database keep their rows of
// ocsp_due and the mark stands at the last of them; a certificate stored after the migration
// writes no row in its own transaction, is listed due all the same, and gets its row from
// IndexNewCertificates; a pending certificate from before, issued after, gets its row at once.
func TestMigrateFromVersion18(t *testing.T) {
	path, old := oldDatabase(t, 18)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := created.AddDate(1, 0, 0)
	if _, err := old.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?2, ?1, '', ''),
			('c02', 'smime-signature', 'a@example.org', 'CN=a', 'pending', NULL, NULL, ?1, '', '');`,
		created.UnixMicro(), notAfter.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 18 database: %v", err)
	}
	defer db.Close()
	var pos int64
	var serial string
	if err := db.r.QueryRow(`SELECT pos, serial FROM ocsp_mark`).Scan(&pos, &serial); err != nil || pos != 2 || serial != "c02" {
		t.Fatalf("ocsp_mark after the migration: %d, %q, %v; want 2, c02", pos, serial, err)
	}
	now := created.Add(time.Hour)
	err = db.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificate(store.Certificate{Serial: "c03", Template: "smime-signature", Email: "b@example.org",
			Subject: "CN=b", State: store.StateIssued, DER: []byte{0x30}, NotBefore: created, NotAfter: notAfter}); err != nil {
			return err
		}
		return tx.SetCertificateIssued("c02", []byte{0x30}, created, notAfter)
	})
	if err != nil {
		t.Fatal(err)
	}
	for serial, want := range map[string]int{"c01": 1, "c02": 1, "c03": 0} {
		if n := count(t, db.r, `SELECT count(*) FROM ocsp_due WHERE serial = ?`, serial); n != want {
			t.Errorf("%s has %d rows of ocsp_due, want %d", serial, n, want)
		}
	}
	if got, want := dueSerials(t, db, now), "c01 c02 c03 "; got != want {
		t.Errorf("due: %q, want %q", got, want)
	}
	indexAll(t, db)
	if n := count(t, db.r, `SELECT count(*) FROM ocsp_due WHERE serial = 'c03'`); n != 1 {
		t.Errorf("c03 has %d rows of ocsp_due once indexed, want 1", n)
	}
	if got, want := dueSerials(t, db, now), "c01 c02 c03 "; got != want {
		t.Errorf("due once indexed: %q, want %q", got, want)
	}
}

// TestIndexAfterRenumbering: when the certificates' rowids were renumbered (a dump loaded
// again), IndexNewCertificates indexes every certificate again: one stored afterwards, whose
// rowid falls below the old mark, is indexed all the same.
func TestIndexAfterRenumbering(t *testing.T) {
	db, path := openTest(t)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := created.AddDate(1, 0, 0)
	insert := func(db *DB, serials ...string) {
		t.Helper()
		err := db.Update(ctx, func(tx store.Tx) error {
			for _, s := range serials {
				if err := tx.InsertCertificate(store.Certificate{Serial: s, Template: "smime-signature", Email: "a@example.org",
					Subject: "CN=a", State: store.StateIssued, DER: []byte{0x30}, NotBefore: created, NotAfter: notAfter}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	insert(db, "a1", "a2", "a3", "a4")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Gaps in the rowids, as deleted rows would leave, then the index passes the last.
	raw, err := sql.Open("sqlite", dsn(path, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`UPDATE certificates SET rowid = rowid * 10`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if db, err = Open(path); err != nil {
		t.Fatal(err)
	}
	indexAll(t, db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Loaded again from a dump: the rowids close up, and the mark (40) is past them all.
	if raw, err = sql.Open("sqlite", dsn(path, "")); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`UPDATE certificates SET rowid = rowid / 10; DELETE FROM ocsp_due`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if db, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	insert(db, "a5") // rowid 5, below the mark
	indexAll(t, db)
	if n := count(t, db.r, `SELECT count(*) FROM ocsp_due`); n != 5 {
		t.Errorf("ocsp_due holds %d rows after indexing a renumbered table, want 5", n)
	}
	var pos int64
	var serial string
	if err := db.r.QueryRow(`SELECT pos, serial FROM ocsp_mark`).Scan(&pos, &serial); err != nil || pos != 5 || serial != "a5" {
		t.Errorf("ocsp_mark: %d, %q, %v; want 5, a5", pos, serial, err)
	}
	if got, want := dueSerials(t, db, created), "a1 a2 a3 a4 a5 "; got != want {
		t.Errorf("due: %q, want %q", got, want)
	}
}

// TestIssuingWritesNoIndexRows: an EST enrollment's transaction (the code claimed, the
// certificate stored issued) writes no row of ocsp_due and no entry of certificate_keys; the
// certificate is due at once, and found by its key.
func TestIssuingWritesNoIndexRows(t *testing.T) {
	db, _ := openTest(t)
	now := time.Now()
	der, keyID := selfSigned(t)
	for i := range 3 {
		code, serial := fmt.Sprintf("code%d", i), fmt.Sprintf("%02x", 0x40+i)
		err := db.Update(ctx, func(tx store.Tx) error {
			if err := tx.InsertCode(store.Code{ID: code, Email: "a@example.org", Template: "smime-signature", Hash: []byte{1},
				CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
				return err
			}
			return tx.InsertCertificateClaiming(store.Certificate{Serial: serial, Template: "smime-signature", Email: "a@example.org",
				Subject: "CN=a", State: store.StateIssued, DER: der, NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
				CodeID: code}, now)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, table := range []string{"ocsp_due", "certificate_keys"} {
		if n := count(t, db.r, `SELECT count(*) FROM `+table); n != 0 {
			t.Errorf("the enrollments wrote %d rows of %s, want none", n, table)
		}
	}
	if got, want := dueSerials(t, db, now), "40 41 42 "; got != want {
		t.Errorf("due: %q, want %q", got, want)
	}
	if err := db.View(ctx, func(tx store.Tx) error {
		cs, err := tx.CertificatesByKey(keyID)
		if err == nil && len(cs) != 3 {
			t.Errorf("CertificatesByKey: %d certificates, want 3", len(cs))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
