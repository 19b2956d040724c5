package sqlite

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestMigrateFromVersion15: a version-15 database's OCSP responses move to the rowid table of
// migration 16 with their rows, and the due index still follows them: a response stored
// takes its certificate off the due list, a revocation puts it back. Stored responses of
// 1.1 KB then take a part of a page each, not an overflow page each as before.
func TestMigrateFromVersion15(t *testing.T) {
	path, old := oldDatabase(t, 15)
	// Microseconds, as the store keeps times: c01 and c02 expire far ahead; c01 has a
	// response signed at 100 s.
	far := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	der01 := bytes.Repeat([]byte{0x30}, 1100)
	if _, err := old.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_after, created_at, role, kra) VALUES
			('c01', 'smime-signature', 'a@example.org', 'CN=a', 'issued', x'30', ?1, 10, '', ''),
			('c02', 'smime-signature', 'b@example.org', 'CN=b', 'issued', x'30', ?1, 10, '', '');
		INSERT INTO ocsp_responses (serial, der, this_update, next_update, revoked, reason, updated_at) VALUES
			('c01', ?2, 100000000, 200000000, 0, 0, 100000000);`, far, der01); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 15 database: %v", err)
	}
	defer db.Close()

	var table string
	if err := db.r.QueryRowContext(ctx, `SELECT sql FROM sqlite_schema WHERE name = 'ocsp_responses'`).Scan(&table); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToUpper(table), "WITHOUT ROWID") {
		t.Errorf("ocsp_responses is still a WITHOUT ROWID table: %s", table)
	}
	var triggers int
	if err := db.r.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'
		AND name IN ('ocsp_due_status', 'ocsp_due_signed_insert', 'ocsp_due_signed_update')`).Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if triggers != 1 {
		// ocsp_due_status; those on ocsp_responses went with migration 21.
		t.Errorf("%d triggers of the due index after the migrations, want 1", triggers)
	}

	now := time.UnixMicro(300000000)
	due := func(signedBefore time.Time) string {
		t.Helper()
		var got []string
		if err := db.View(ctx, func(tx store.Tx) error {
			cs, err := tx.OCSPDue(now, signedBefore, "", 10)
			for _, c := range cs {
				got = append(got, c.Serial)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return strings.Join(got, ",")
	}
	err = db.View(ctx, func(tx store.Tx) error {
		r, err := tx.GetOCSPResponse("c01")
		if err != nil {
			return err
		}
		if !bytes.Equal(r.DER, der01) || !r.ThisUpdate.Equal(time.UnixMicro(100000000)) {
			return fmt.Errorf("c01's response came through as %d bytes signed at %v", len(r.DER), r.ThisUpdate)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := due(time.UnixMicro(50000000)); got != "c02" {
		t.Fatalf("due after the migration: %q, want c02 (no response) alone", got)
	}
	mustUpdate(t, db, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{{Serial: "c02", DER: der01,
			ThisUpdate: time.UnixMicro(150000000), NextUpdate: time.UnixMicro(250000000)}})
	})
	if got := due(time.UnixMicro(50000000)); got != "" {
		t.Fatalf("due after c02's response: %q, want none", got)
	}
	mustUpdate(t, db, func(tx store.Tx) error { return tx.RevokeCertificate("c01", 1, now) })
	if got := due(time.UnixMicro(50000000)); got != "c01" {
		t.Fatalf("due after c01's revocation: %q, want c01", got)
	}

	// 1,000 responses of 1.1 KB: in the rowid table three or more share a page.
	var pages0 int
	if err := db.r.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages0); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	mustUpdate(t, db, func(tx store.Tx) error {
		cs := make([]store.Certificate, n)
		rs := make([]store.OCSPResponse, n)
		for i := range n {
			serial := fmt.Sprintf("d%05d", i)
			cs[i] = store.Certificate{Serial: serial, Template: "smime-signature", Email: "c@example.org", Subject: "CN=c",
				State: store.StateIssued, DER: []byte{0x30}, NotAfter: time.UnixMicro(far), CreatedAt: now}
			rs[i] = store.OCSPResponse{Serial: serial, DER: der01, ThisUpdate: now, NextUpdate: now.Add(time.Hour)}
		}
		if err := tx.InsertCertificates(cs); err != nil {
			return err
		}
		return tx.UpsertOCSPResponses(rs)
	})
	var pages1 int
	if err := db.r.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages1); err != nil {
		t.Fatal(err)
	}
	if grown := pages1 - pages0; grown > n*6/10 {
		t.Errorf("%d certificates with their responses grew the file by %d pages: more than 0.6 a response", n, grown)
	}
}
