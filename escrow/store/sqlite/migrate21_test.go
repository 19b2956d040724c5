package sqlite

import (
	"bytes"
	"math"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion20: the triggers on ocsp_responses go, and UpsertOCSPResponses keeps
// the due index itself. A response of the current status moves its certificate's row to its
// thisUpdate (the later one when a serial comes twice), one that an earlier stored one of
// the current status keeps out moves nothing, and one of another status (a good response
// of a revoked certificate) is stored but leaves the certificate due at once; after a
// revocation the revoked response moves the row, and a good one signed later never
// replaces it.
func TestMigrateFromVersion20(t *testing.T) {
	path, old := oldDatabase(t, 20)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := created.AddDate(1, 0, 0)
	at := func(s int) time.Time { return created.Add(time.Duration(s) * time.Second) }
	if _, err := old.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra,
			revoked_at, revocation_reason) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?2, ?1, '', '', NULL, 0),
			('c02', 'smime-signature', 'b@example.org', 'CN=b', 'revoked', x'30', ?2, ?1, '', '', ?1, 1),
			('c03', 'smime-signature', 'c@example.org', 'CN=c', 'issued', x'30', ?2, ?1, '', '', NULL, 0);
		INSERT INTO ocsp_responses (serial, der, this_update, next_update, revoked, reason, updated_at) VALUES
			('c03', x'3003', ?3, ?4, 0, 0, ?3);`,
		created.UnixMicro(), notAfter.UnixMicro(), at(100).UnixMicro(), at(100).Add(time.Hour).UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 20 database: %v", err)
	}
	defer db.Close()
	if n := count(t, db.r, `SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'ocsp_responses'`); n != 0 {
		t.Errorf("%d triggers on ocsp_responses after the migration, want none", n)
	}
	indexAll(t, db)

	signed := func(serial string) int64 {
		t.Helper()
		s, _, _ := dueRow(t, db, serial)
		return s
	}
	stored := func(serial string) (time.Time, bool) {
		t.Helper()
		var r *store.OCSPResponse
		if err := db.View(ctx, func(tx store.Tx) (err error) { r, err = tx.GetOCSPResponse(serial); return err }); err != nil {
			t.Fatal(err)
		}
		return r.ThisUpdate, r.Revoked
	}
	upsert := func(rs ...store.OCSPResponse) {
		t.Helper()
		upsertResponses(t, db, rs...)
	}
	good := func(serial string, s int) store.OCSPResponse {
		return store.OCSPResponse{Serial: serial, DER: []byte{0x30, byte(s)}, ThisUpdate: at(s), NextUpdate: at(s).Add(time.Hour)}
	}
	if got := signed("c03"); got != at(100).UnixMicro() {
		t.Errorf("c03's row holds %d once indexed, want its response's thisUpdate", got)
	}

	upsert(good("c01", 300), good("c02", 300), good("c03", 50), good("c01", 200))
	for _, c := range []struct {
		serial string
		signed int64
		this   time.Time
	}{
		{"c01", at(300).UnixMicro(), at(300)},
		{"c02", math.MinInt64, at(300)},
		{"c03", at(100).UnixMicro(), at(100)},
	} {
		if got := signed(c.serial); got != c.signed {
			t.Errorf("%s's row of ocsp_due holds %d, want %d", c.serial, got, c.signed)
		}
		if this, _ := stored(c.serial); !this.Equal(c.this) {
			t.Errorf("%s's stored response has thisUpdate %v, want %v", c.serial, this, c.this)
		}
	}
	var due []store.CertStatus
	if err := db.View(ctx, func(tx store.Tx) (err error) { due, err = tx.OCSPDue(at(400), at(250), "", 10); return err }); err != nil {
		t.Fatal(err)
	}
	if len(due) != 2 || due[0].Serial != "c02" || !due[0].Revoked || due[1].Serial != "c03" {
		t.Errorf("due at 400 s with a refresh at 250 s: %v, want c02 revoked and c03 (c01 was signed at 300 s)", due)
	}

	mustUpdate(t, db, func(tx store.Tx) error { return tx.RevokeCertificate("c01", store.ReasonKeyCompromise, at(350)) })
	if got := signed("c01"); got != math.MinInt64 {
		t.Errorf("c01's row holds %d after its revocation, want due at once", got)
	}
	revoked := store.OCSPResponse{Serial: "c01", DER: []byte{0x30, 0x01}, ThisUpdate: at(360), NextUpdate: at(360).Add(time.Hour),
		Revoked: true, Reason: store.ReasonKeyCompromise}
	upsert(revoked)
	upsert(good("c01", 500))
	if got := signed("c01"); got != at(360).UnixMicro() {
		t.Errorf("c01's row holds %d, want the revoked response's thisUpdate", got)
	}
	var der []byte
	if err := db.r.QueryRowContext(ctx, `SELECT der FROM ocsp_responses WHERE serial = 'c01'`).Scan(&der); err != nil {
		t.Fatal(err)
	}
	if this, rev := stored("c01"); !rev || !this.Equal(at(360)) || !bytes.Equal(der, revoked.DER) {
		t.Errorf("c01's stored response: revoked %v at %v, want the revoked one of 360 s", rev, this)
	}
}

// dueRow returns serial's row of ocsp_due.
func dueRow(t *testing.T, db *DB, serial string) (signed int64, revoked bool, reason int) {
	t.Helper()
	if err := db.r.QueryRowContext(ctx, `SELECT signed, revoked, reason FROM ocsp_due WHERE serial = ?`, serial).
		Scan(&signed, &revoked, &reason); err != nil {
		t.Fatalf("%s's row of ocsp_due: %v", serial, err)
	}
	return signed, revoked, reason
}

// upsertResponses stores rs in one transaction.
func upsertResponses(t *testing.T, db *DB, rs ...store.OCSPResponse) {
	t.Helper()
	mustUpdate(t, db, func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) })
}
