package postgres

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestMigrationOCSPDue: a version-1 database gets its due index from migration 2, filled from
// the certificates and responses it holds: a certificate without a response, or whose response
// has another status, is due at once; one with a response of its status is due at that
// response's refresh age; pending, failed and expired ones are not due.
func TestMigrationOCSPDue(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(t time.Time) int64 { return t.UnixMicro() }
	year := t0.AddDate(1, 0, 0)
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	cert := func(serial, state string, notAfter time.Time, revoked bool) string {
		rev, reason := "NULL", 0
		if revoked {
			rev, reason = fmt.Sprint(at(t0)), store.ReasonSuperseded
		}
		return fmt.Sprintf(`INSERT INTO certificates (serial, template, email, subject, state, der, not_before, not_after,
			created_at, role, kra, revoked_at, revocation_reason) VALUES ('%s', 't', 'a@example.com', '', '%s', '\x30', %d, %d, %d, '', '', %s, %d);`,
			serial, state, at(t0), at(notAfter), at(t0), rev, reason)
	}
	resp := func(serial string, revoked bool, reason int) string {
		return fmt.Sprintf(`INSERT INTO ocsp_responses VALUES ('%s', '\x30', %d, %d, %t, %d, %d);`,
			serial, at(t0), at(t0.Add(96*time.Hour)), revoked, reason, at(t0))
	}
	script := migrations[0] + `CREATE TABLE keyarc_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
		INSERT INTO keyarc_schema (version) VALUES (1);` +
		cert("a1", "issued", year, false) + // no response: due
		cert("a2", "issued", year, false) + resp("a2", false, 0) + // fresh good response
		cert("a3", "revoked", year, true) + resp("a3", false, 0) + // revoked since its good response: due
		cert("a4", "revoked", year, true) + resp("a4", true, store.ReasonSuperseded) + // fresh revoked response
		cert("a5", "pending", year, false) +
		cert("a6", "failed", year, false) +
		cert("a7", "issued", t0.Add(time.Hour), false) // expired by the time asked
	_, err = c.Exec(ctx, script).ReadAll()
	c.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}

	db := openURL(t, url)
	now := t0.Add(2 * time.Hour)
	for _, tt := range []struct {
		name         string
		signedBefore time.Time
		want         []string
	}{
		{"fresh", t0, []string{"a1", "a3"}},
		{"refresh age passed", t0.Add(time.Second), []string{"a1", "a2", "a3", "a4"}},
	} {
		var got []string
		err := db.View(ctx, func(tx store.Tx) error {
			due, err := tx.OCSPDue(now, tt.signedBefore, "", 100)
			for _, d := range due {
				got = append(got, d.Serial)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: due %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestClaimsAreHOT: codes written in bulk and claimed later are claimed with HOT updates (no
// new index entries), for which migration 10 leaves room in their pages.
func TestClaimsAreHOT(t *testing.T) {
	srv := pgtest.Start(t)
	name := srv.CreateDatabase(t)
	db := openURL(t, srv.URL(name))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = 2000
	if err := db.Update(ctx, func(tx store.Tx) error {
		for i := range n {
			if err := tx.InsertCode(store.Code{ID: fmt.Sprintf("code-%05d", i), Email: fmt.Sprintf("user%d@example.com", i),
				Template: "t", Hash: []byte("hash"), CreatedAt: at, ExpiresAt: at.Add(time.Hour)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 { // eight callers, group-committed as in a storm
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if err := db.Update(ctx, func(tx store.Tx) error {
					return tx.InsertCertificateClaiming(store.Certificate{Serial: fmt.Sprintf("%x", 0x10000+i), Template: "t",
						Email: fmt.Sprintf("user%d@example.com", i), State: store.StateIssued, DER: []byte{0x30, 0x00},
						NotBefore: at, NotAfter: at.Add(time.Hour), CodeID: fmt.Sprintf("code-%05d", i)}, at)
				}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	c, err := pgconn.Connect(ctx, srv.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// A backend sends its statistics when it ends (or when idle, after seconds): end them all.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	var upd, hot int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		rs, err := c.Exec(ctx, `SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'codes'`).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		row := rs[1].Rows[0]
		fmt.Sscan(string(row[0]), &upd)
		fmt.Sscan(string(row[1]), &hot)
		if upd >= n {
			break
		}
	}
	if upd < n || hot < n*9/10 {
		t.Errorf("%d claims: %d updates of codes, %d of them HOT; want nine in ten HOT at least", n, upd, hot)
	}
}
