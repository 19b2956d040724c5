package postgres

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestMigrationDueByStatements: a version-7 database, whose ocsp_due rows its triggers made,
// is brought to version 8 (no triggers; the statements keep ocsp_due; the indexes no query
// reads dropped) with its rows, and the due index stays right: what was due stays due, a
// response stored stops it, a certificate issued, stored issued or revoked is due at once,
// and the sweep fails an old pending certificate and releases its code.
func TestMigrationDueByStatements(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(t time.Time) int64 { return t.UnixMicro() }
	year := t0.AddDate(1, 0, 0)
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	script := strings.Join(migrations[:7], ";\n") + `;
		CREATE TABLE keyarc_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
		INSERT INTO keyarc_schema (version) VALUES (7);
		INSERT INTO codes (id, email, template, hash, created_at, expires_at, used_at) VALUES
			('code-1', 'a@example.com', 't', '\x00', 1, ` + fmt.Sprint(at(year)) + `, 5);`
	cert := func(serial, state string, codeID string) string {
		der, code := `'\x30'`, "NULL"
		if state == "pending" {
			der = "NULL"
		}
		if codeID != "" {
			code = "'" + codeID + "'"
		}
		return fmt.Sprintf(`INSERT INTO certificates (serial, template, email, subject, state, der, not_before, not_after,
			created_at, code_id, role, kra) VALUES ('%s', 't', 'a@example.com', '', '%s', %s, %d, %d, %d, %s, '', '');`,
			serial, state, der, at(t0), at(year), at(t0), code)
	}
	script += cert("a1", "issued", "") + cert("a2", "issued", "") + cert("a3", "issued", "") + cert("a4", "pending", "") +
		cert("a5", "pending", "code-1") + `UPDATE codes SET serial = 'a5' WHERE id = 'code-1';` +
		fmt.Sprintf(`INSERT INTO ocsp_responses VALUES ('a2', '\x30', %d, %d, false, 0, %d), ('a3', '\x30', %d, %d, false, 0, %d);`,
			at(t0), at(t0.Add(96*time.Hour)), at(t0), at(t0), at(t0.Add(96*time.Hour)), at(t0))
	_, err = c.Exec(ctx, script).ReadAll()
	c.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}

	db := openURL(t, url)
	var left int
	if err := db.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal`).Scan(&left); err != nil || left != 0 {
		t.Errorf("triggers left after the migration: %d (%v)", left, err)
	}
	for name, want := range map[string]bool{"certificates_template": false, "certificates_code": false, "certificates_record": false,
		"certificates_state": false, "codes_serial": false, "records_epoch": false, "certificates_pending": true, "ocsp_due_signed": true} {
		var n int
		if err := db.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_indexes WHERE indexname = $1`, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (n == 1) != want {
			t.Errorf("index %s: present %v, want %v", name, n == 1, want)
		}
	}

	now := t0.Add(2 * time.Hour)
	due := func(step string, want ...string) {
		t.Helper()
		var got []string
		err := db.View(ctx, func(tx store.Tx) error {
			d, err := tx.OCSPDue(now, t0, "", 100)
			for _, s := range d {
				got = append(got, s.Serial)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: due %v, want %v", step, got, want)
		}
	}
	update := func(fn func(tx store.Tx) error) {
		t.Helper()
		if err := db.Update(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	due("migrated", "a1")
	update(func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{{Serial: "a1", DER: []byte{0x30}, ThisUpdate: t0, NextUpdate: year}})
	})
	due("a1's response stored")
	update(func(tx store.Tx) error { return tx.RevokeCertificate("a2", store.ReasonSuperseded, now) })
	due("a2 revoked", "a2")
	update(func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{{Serial: "a2", DER: []byte{0x30}, ThisUpdate: t0, NextUpdate: year,
			Revoked: true, Reason: store.ReasonSuperseded}})
	})
	due("a2's revoked response stored")
	update(func(tx store.Tx) error { return tx.SetKeyCompromise("a2") })
	due("a2's reason now keyCompromise", "a2")
	update(func(tx store.Tx) error { return tx.SetCertificateIssued("a4", []byte{0x30}, t0, year) })
	update(func(tx store.Tx) error {
		return tx.InsertCertificates([]store.Certificate{
			{Serial: "b1", Template: "t", Email: "a@example.com", State: store.StateIssued, DER: []byte{0x30}, NotBefore: t0, NotAfter: year, CreatedAt: t0},
			{Serial: "b2", Template: "t", Email: "a@example.com", State: store.StatePending, CreatedAt: now}})
	})
	due("a4 issued, b1 stored issued", "a2", "a4", "b1")

	var sw store.Swept
	update(func(tx store.Tx) (err error) { sw, err = tx.SweepPending(t0.Add(time.Hour)); return err })
	if sw.Codes != 1 || sw.Certificates != 1 {
		t.Errorf("swept %+v, want a5 and its code", sw)
	}
	err = db.View(ctx, func(tx store.Tx) error {
		code, err := tx.GetCode("code-1")
		if err != nil {
			return err
		}
		if code.UsedAt != nil || code.Serial != "" {
			t.Errorf("code-1 after the sweep: %+v, want it released", code)
		}
		b2, err := tx.GetCertificate("b2")
		if err == nil && b2.State != store.StatePending {
			t.Errorf("b2, pending since after the sweep's limit: %s", b2.State)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
