package sqlite

import (
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion14: a version-14 database with certificates, codes and records is
// brought to version 15 (the indexes no query reads dropped, the pending certificates'
// index added) with its rows: the sweep still fails the old pending certificate and releases
// its code, and leaves the others; the lists by template and state still answer.
func TestMigrateFromVersion14(t *testing.T) {
	path, old := oldDatabase(t, 14)
	_, err := old.Exec(`INSERT INTO codes (id, email, template, hash, created_at, expires_at, used_at, serial) VALUES
			('code-1', 'a@example.org', 'smime-signature', x'00', 1, 999999999999, 5, 'c01'),
			('code-2', 'b@example.org', 'smime-signature', x'00', 1, 999999999999, 5, 'c02');
		INSERT INTO recovery_sets (epoch, quorum, created_at, created_by) VALUES (1, 1, 1, 'admin');
		INSERT INTO certificates (serial, template, email, subject, state, der, created_at, code_id, role, kra) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'pending', NULL, 10, 'code-1', '', ''),
			('c02', 'smime-signature', 'b@example.org', 'CN=b', 'issued', x'30', 10, 'code-2', '', ''),
			('c03', 'smime-encryption', 'b@example.org', 'CN=b', 'pending', NULL, 1000000000000, NULL, '', '');
		INSERT INTO records (id, serial, email, epoch, blob, state, created_at) VALUES
			('r01', 'c03', 'b@example.org', 1, x'00', 'pending', 10);`)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 14 database: %v", err)
	}
	defer db.Close()
	indexes := map[string]bool{}
	rows, err := db.r.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type = 'index'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		rows.Scan(&name)
		indexes[name] = true
	}
	rows.Close()
	for name, want := range map[string]bool{"certificates_template": false, "certificates_code": false, "certificates_state": false,
		"records_epoch": false, "certificates_pending": true, "records_epoch_state": true, "certificates_email": true} {
		if indexes[name] != want {
			t.Errorf("index %s: present %v, want %v", name, indexes[name], want)
		}
	}
	var sw store.Swept
	mustUpdate(t, db, func(tx store.Tx) (err error) {
		sw, err = tx.SweepPending(time.UnixMicro(1000))
		return err
	})
	if sw != (store.Swept{Codes: 1, Certificates: 1, Records: 1}) {
		t.Errorf("swept %+v, want one code, one certificate, one record", sw)
	}
	err = db.View(ctx, func(tx store.Tx) error {
		c1, err := tx.GetCode("code-1")
		if err != nil {
			return err
		}
		c2, err := tx.GetCode("code-2")
		if err != nil {
			return err
		}
		if c1.UsedAt != nil || c1.Serial != "" || c2.UsedAt == nil || c2.Serial != "c02" {
			t.Errorf("codes after the sweep: %+v, %+v; want code-1 released, code-2 kept", c1, c2)
		}
		for _, f := range []store.Filter{{Template: "smime-signature"}, {State: store.StateFailed}, {State: store.StatePending}} {
			list, err := tx.ListCertificates(f)
			if err != nil {
				return err
			}
			want := map[string]string{"smime-signature": "[c01 c02]", "failed": "[c01]", "pending": "[c03]"}[f.Template+f.State]
			var got []string
			for _, c := range list {
				got = append(got, c.Serial)
			}
			if fmtList(got) != want {
				t.Errorf("ListCertificates(%+v): %v, want %s", f, got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func fmtList(s []string) string {
	out := "["
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out + "]"
}
