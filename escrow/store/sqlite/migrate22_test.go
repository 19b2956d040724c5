package sqlite

import (
	"math"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion21: the rows of ocsp_due of a version-21 database get their
// certificates' status, which storing a response reads there: a good response of a revoked
// certificate stays due at once, its revoked response moves the row, and a reason changed
// afterwards reaches the row too.
func TestMigrateFromVersion21(t *testing.T) {
	path, old := oldDatabase(t, 21)
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := created.AddDate(1, 0, 0)
	at := func(s int) time.Time { return created.Add(time.Duration(s) * time.Second) }
	if _, err := old.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra,
			revoked_at, revocation_reason) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?2, ?1, '', '', NULL, 0),
			('c02', 'smime-signature', 'b@example.org', 'CN=b', 'revoked', x'30', ?2, ?1, '', '', ?1, 1),
			('c03', 'smime-signature', 'c@example.org', 'CN=c', 'revoked', x'30', ?2, ?1, '', '', ?1, 4);
		INSERT INTO ocsp_due (serial, signed, not_after) VALUES
			('c01', -9223372036854775807 - 1, ?2), ('c02', -9223372036854775807 - 1, ?2), ('c03', -9223372036854775807 - 1, ?2);
		UPDATE ocsp_mark SET pos = 3, serial = 'c03';`,
		created.UnixMicro(), notAfter.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 21 database: %v", err)
	}
	defer db.Close()

	row := func(serial string) (int64, bool, int) {
		t.Helper()
		return dueRow(t, db, serial)
	}
	for _, c := range []struct {
		serial  string
		revoked bool
		reason  int
	}{{"c01", false, 0}, {"c02", true, 1}, {"c03", true, 4}} {
		if _, revoked, reason := row(c.serial); revoked != c.revoked || reason != c.reason {
			t.Errorf("%s's row after the migration: revoked %v reason %d, want %v and %d", c.serial, revoked, reason, c.revoked, c.reason)
		}
	}

	upsert := func(r store.OCSPResponse) {
		t.Helper()
		upsertResponses(t, db, r)
	}
	response := func(serial string, s int, revoked bool, reason int) store.OCSPResponse {
		return store.OCSPResponse{Serial: serial, DER: []byte{0x30, byte(s)}, ThisUpdate: at(s), NextUpdate: at(s).Add(time.Hour),
			Revoked: revoked, Reason: reason}
	}
	upsert(response("c02", 100, false, 0))
	if signed, _, _ := row("c02"); signed != math.MinInt64 {
		t.Errorf("c02 (revoked) after a good response: its row holds %d, want due at once", signed)
	}
	upsert(response("c02", 110, true, 1))
	if signed, _, _ := row("c02"); signed != at(110).UnixMicro() {
		t.Errorf("c02 after its revoked response: its row holds %d, want the response's thisUpdate", signed)
	}

	upsert(response("c03", 120, true, 4))
	mustUpdate(t, db, func(tx store.Tx) error { return tx.SetKeyCompromise("c03") })
	if signed, revoked, reason := row("c03"); signed != math.MinInt64 || !revoked || reason != store.ReasonKeyCompromise {
		t.Errorf("c03 after keyCompromise: its row holds %d, revoked %v, reason %d; want due at once, revoked, reason 1", signed, revoked, reason)
	}
	upsert(response("c03", 130, true, 4))
	if signed, _, _ := row("c03"); signed != math.MinInt64 {
		t.Errorf("c03 after a response with its former reason: its row holds %d, want due at once", signed)
	}
	upsert(response("c03", 140, true, store.ReasonKeyCompromise))
	if signed, _, _ := row("c03"); signed != at(140).UnixMicro() {
		t.Errorf("c03 after its keyCompromise response: its row holds %d, want the response's thisUpdate", signed)
	}
}
