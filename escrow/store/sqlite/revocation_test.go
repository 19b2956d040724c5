package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/internal/sqltx"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a certificate of a fresh P-256 key and the key's identity, computed from
// what crypto/x509 parses.
func selfSigned(t *testing.T) (der []byte, keyID string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old"}, NotBefore: t0, NotAfter: t0.AddDate(1, 0, 0)}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return der, hex.EncodeToString(sum[:])
}

// TestMigrationKeyIDs: migration 8 gives the certificates of a version-7 database their key
// identities (more of them than one page of the backfill), leaves none to a DER that is not a
// certificate, and keeps the certificates revoked before it on the CRL with reason
// unspecified.
func TestMigrationKeyIDs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", dsn(path, ""))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 7 {
		if _, err := raw.Exec(migrations[i]); err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
	}
	derA, idA := selfSigned(t)
	derB, idB := selfSigned(t)
	const n = 2500 // two and a half pages of backfillKeyIDs
	tx, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	ins := `INSERT INTO certificates (serial, template, email, subject, state, der, not_before, not_after, created_at, role, kra, revoked_at)
		VALUES (?, 'smime-encryption', ?, 'CN=x', ?, ?, ?, ?, ?, '', '', ?)`
	na := t0.AddDate(1, 0, 0).UnixMicro()
	for i := range n {
		der, state, revoked := derA, "issued", any(nil)
		if i%2 == 1 {
			der = derB
		}
		if i == 7 {
			state, revoked = "revoked", t0.Add(time.Hour).UnixMicro()
		}
		if _, err := tx.Exec(ins, fmt.Sprintf("%x", i+16), fmt.Sprintf("u%d@example.com", i), state, der, t0.UnixMicro(), na, t0.UnixMicro()+int64(i), revoked); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec(ins, "1", "x@example.com", "issued", []byte{0x30, 0x03, 0x02, 0x01, 0x05}, t0.UnixMicro(), na, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ins, "2", "x@example.com", "pending", nil, nil, nil, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`PRAGMA user_version = 7`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 7 database: %v", err)
	}
	defer db.Close()
	mustView := func(fn func(store.Tx) error) {
		t.Helper()
		if err := db.View(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	mustView(func(tx store.Tx) error {
		for id, want := range map[string]int{idA: n / 2, idB: n / 2} {
			cs, err := tx.CertificatesByKey(id)
			if err != nil {
				return err
			}
			if len(cs) != want {
				t.Errorf("CertificatesByKey after the migration: %d certificates, want %d", len(cs), want)
			}
		}
		for serial, want := range map[string]string{"1": "", "2": "", fmt.Sprintf("%x", 16): idA, fmt.Sprintf("%x", n+15): idB} {
			c, err := tx.GetCertificate(serial)
			if err != nil {
				return err
			}
			if c.KeyID != want {
				t.Errorf("certificate %s: KeyID %q after the migration, want %q", serial, c.KeyID, want)
			}
		}
		var got []store.CertStatus
		if err := tx.RevokedCertificates(t0, func(c store.CertStatus) error { got = append(got, c); return nil }); err != nil {
			return err
		}
		if len(got) != 1 || got[0].Serial != fmt.Sprintf("%x", 7+16) || got[0].Reason != store.ReasonUnspecified || !got[0].RevokedAt.Equal(t0.Add(time.Hour)) {
			t.Errorf("revoked certificates after the migration: %+v", got)
		}
		return nil
	})
}

// TestRevocationIndexes: a CRL is read from the covering partial index of revoked
// certificates alone, which holds only them, and a key's certificates are found through
// certificates_key.
func TestRevocationIndexes(t *testing.T) {
	db, _ := openTest(t)
	plan := func(query string, args ...any) string {
		rows, err := db.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			out = append(out, detail)
		}
		return strings.Join(out, "; ")
	}
	if p := plan(sqltx.HintedQueries()["revoked"], 0); !strings.Contains(p, "COVERING INDEX certificates_revoked") || strings.Contains(p, "TEMP B-TREE") {
		t.Errorf("revoked certificates: plan %q does not read certificates_revoked alone, in order", p)
	}
	hinted := sqltx.HintedQueries()
	for _, tc := range []struct {
		name, query string
		args        []any
		want        []string
	}{
		{"by key", hinted["by key"], []any{"k"}, []string{"certificate_keys", "SEARCH certificates USING INTEGER PRIMARY KEY (rowid>?)"}},
		{"compromised", hinted["compromised"], []any{"k"}, []string{"certificates_compromised"}},
		{"code checking key", hinted["code checking key"], []any{"k", "c"}, []string{"certificates_compromised"}},
	} {
		p := plan(tc.query, tc.args...)
		for _, w := range tc.want {
			if !strings.Contains(p, w) || strings.Contains(p, "SCAN certificates") {
				t.Errorf("%s: plan %q, want %q and no scan of certificates", tc.name, p, w)
			}
		}
	}
	mustUpdate(t, db, func(tx store.Tx) error {
		for i, state := range []string{store.StatePending, store.StateIssued, store.StateRevoked} {
			c := cert(fmt.Sprint(i + 1))
			c.State = state
			if state != store.StatePending {
				c.DER, c.NotAfter = []byte{1}, t0.AddDate(1, 0, 0)
			}
			if state == store.StateRevoked {
				c.RevokedAt = t0
			}
			if err := tx.InsertCertificate(c); err != nil {
				return err
			}
		}
		return nil
	})
	var in int
	if err := db.r.QueryRowContext(ctx, `SELECT count(*) FROM certificates INDEXED BY certificates_revoked WHERE state = 'revoked'`).Scan(&in); err != nil {
		t.Fatal(err)
	}
	if in != 1 {
		t.Errorf("certificates_revoked holds %d rows, want 1", in)
	}
}

// TestStreamMillionRevoked measures RevokedCertificates over 1,000,000 revoked certificates
// (and as many issued ones beside them), the input of the largest CRL the issue asks for. It
// is slow to set up, so it runs only with KEYARC_CRL_MILLION=1; it logs the time and asserts
// none, only that every entry came, in order.
func TestStreamMillionRevoked(t *testing.T) {
	if os.Getenv("KEYARC_CRL_MILLION") == "" {
		t.Skip("set KEYARC_CRL_MILLION=1 to stream 1,000,000 revoked certificates")
	}
	const n = 1_000_000
	db, _ := openTest(t)
	start := time.Now()
	// Generated in SQL, on the writer connection, outside the contract: only the rows matter.
	// The serials are shaped as the CA makes them: the issuing second (1,000 certificates a
	// second here), then random bits.
	_, err := db.wconn.ExecContext(ctx, `WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < ?)
		INSERT INTO certificates (serial, template, email, subject, state, der, not_before, not_after, created_at, role, kra,
			revoked_at, revocation_reason)
		SELECT printf('%08x', 1796000000 + x / 1000) || lower(hex(randomblob(12))), 'smime-encryption', 'u' || x || '@example.org', 'CN=u', CASE WHEN x % 2 = 0 THEN 'revoked' ELSE 'issued' END,
			randomblob(64), ?, ?, ?, '', '', CASE WHEN x % 2 = 0 THEN ? + x END, CASE WHEN x % 2 = 0 THEN (x / 2) % 2 * 4 ELSE 0 END
		FROM i`, 2*n, t0.UnixMicro(), t0.AddDate(1, 0, 0).UnixMicro(), t0.UnixMicro(), t0.UnixMicro())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generated %d certificates, %d revoked, in %v", 2*n, n, time.Since(start))
	start = time.Now()
	count, last := 0, ""
	err = db.View(ctx, func(tx store.Tx) error {
		return tx.RevokedCertificates(t0.Add(time.Hour), func(c store.CertStatus) error {
			if c.Serial <= last {
				return fmt.Errorf("%s after %s", c.Serial, last)
			}
			count, last = count+1, c.Serial
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Fatalf("streamed %d entries, want %d", count, n)
	}
	t.Logf("streamed %d revoked certificates in %v", count, time.Since(start))
}

// TestMigrationOCSPDue: migration 9 gives every issued or revoked certificate of a version-8
// database its row of the due index: due at once without a response or with one of another
// status, due at its refresh age with one of its status; pending and failed ones none. Later
// writes keep the rows.
func TestMigrationOCSPDue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v8.db")
	raw, err := sql.Open("sqlite", dsn(path, ""))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if _, err := raw.Exec(migrations[i]); err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
	}
	na := t0.AddDate(1, 0, 0).UnixMicro()
	signed := t0.Add(24 * time.Hour)
	for _, c := range []struct {
		serial, state string
		reason        int
		resp          string // "", "good", "revoked:<reason>"
		notAfter      int64
	}{
		{"a1", "issued", 0, "", na},           // no response: due
		{"a2", "issued", 0, "good", na},       // signed: due at its refresh age
		{"a3", "revoked", 1, "good", na},      // signed before its revocation: due
		{"a4", "revoked", 1, "revoked:4", na}, // reason changed since: due
		{"a5", "revoked", 4, "revoked:4", na}, // signed: due at its refresh age
		{"a6", "pending", 0, "", 0},
		{"a7", "failed", 0, "", 0},
		{"a8", "issued", 0, "good", t0.Add(24*time.Hour + 30*time.Minute).UnixMicro()}, // expired at now
	} {
		var der, notAfter, revokedAt any
		if c.state == "issued" || c.state == "revoked" {
			der, notAfter = []byte{0x30, 0x03, 0x02, 0x01, 0x01}, c.notAfter
		}
		if c.state == "revoked" {
			revokedAt = t0.UnixMicro()
		}
		if _, err := raw.Exec(`INSERT INTO certificates (serial, template, email, subject, state, der, not_before, not_after,
			created_at, role, kra, revoked_at, revocation_reason) VALUES (?, 't', 'x@example.com', 'CN=x', ?, ?, ?, ?, ?, '', '', ?, ?)`,
			c.serial, c.state, der, t0.UnixMicro(), notAfter, t0.UnixMicro(), revokedAt, c.reason); err != nil {
			t.Fatal(err)
		}
		if c.resp == "" {
			continue
		}
		revoked, reason := 0, 0
		if c.resp != "good" {
			revoked, reason = 1, int(c.resp[len(c.resp)-1]-'0')
		}
		if _, err := raw.Exec(`INSERT INTO ocsp_responses (serial, der, this_update, next_update, revoked, reason, updated_at)
			VALUES (?, X'30', ?, ?, ?, ?, ?)`, c.serial, signed.UnixMicro(), signed.AddDate(0, 0, 7).UnixMicro(), revoked, reason,
			signed.UnixMicro()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.Exec(`PRAGMA user_version = 8`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open a version 8 database: %v", err)
	}
	defer db.Close()
	due := func(now, signedBefore time.Time) string {
		t.Helper()
		var got []store.CertStatus
		if err := db.View(ctx, func(tx store.Tx) (err error) { got, err = tx.OCSPDue(now, signedBefore, "", 100); return err }); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range got {
			out = append(out, fmt.Sprintf("%s:%v:%d", c.Serial, c.Revoked, c.Reason))
		}
		return strings.Join(out, " ")
	}
	now := signed.Add(time.Hour)
	if got, want := due(now, signed), "a1:false:0 a3:true:1 a4:true:1"; got != want {
		t.Errorf("due after the migration: %q, want %q", got, want)
	}
	if got, want := due(signed, signed.Add(time.Microsecond)), "a1:false:0 a2:false:0 a3:true:1 a4:true:1 a5:true:4 a8:false:0"; got != want {
		t.Errorf("due after the migration, before a8 expires: %q, want %q", got, want)
	}
	if got, want := due(now, signed.Add(time.Microsecond)), "a1:false:0 a2:false:0 a3:true:1 a4:true:1 a5:true:4"; got != want {
		t.Errorf("due after the migration, past the refresh age: %q, want %q", got, want)
	}
	var rows int
	if err := db.r.QueryRowContext(ctx, `SELECT count(*) FROM ocsp_due`).Scan(&rows); err != nil || rows != 6 {
		t.Errorf("ocsp_due holds %d rows (%v), want the 6 issued or revoked certificates", rows, err)
	}
	// The triggers run on the migrated database: a revocation and a response move their rows.
	mustUpdate(t, db, func(tx store.Tx) error {
		if err := tx.RevokeCertificate("a2", store.ReasonSuperseded, now); err != nil {
			return err
		}
		return tx.UpsertOCSPResponses([]store.OCSPResponse{{Serial: "a1", DER: []byte{0x30}, ThisUpdate: now, NextUpdate: now.AddDate(0, 0, 7)}})
	})
	if got, want := due(now, signed), "a2:true:4 a3:true:1 a4:true:1"; got != want {
		t.Errorf("due after a revocation and a response: %q, want %q", got, want)
	}
	// The response stored at now deleted the row of a8, expired since.
	if err := db.r.QueryRowContext(ctx, `SELECT count(*) FROM ocsp_due WHERE serial = 'a8'`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("the expired a8 keeps %d rows of ocsp_due (%v)", rows, err)
	}
}

// TestOCSPDueIndexes: OCSPDue reads ocsp_due through the index its plan names, and the
// certificates not indexed yet through the range of rowids above the mark, never the
// certificates table in full; the expired rows are found through ocsp_due_expiry.
func TestOCSPDueIndexes(t *testing.T) {
	db, _ := openTest(t)
	plan := func(query string, args ...any) string {
		rows, err := db.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			out = append(out, detail)
		}
		return strings.Join(out, "; ")
	}
	hinted := sqltx.HintedQueries()
	for _, tc := range []struct {
		name, query, want string
		args              []any
	}{
		{"count", hinted["due count"], "COVERING INDEX ocsp_due_signed (signed<?)", []any{1, 1, 1}},
		{"by signed", hinted["due by signed"], "COVERING INDEX ocsp_due_signed (signed<?)", []any{"", 1, 1, 1}},
		{"by serial", hinted["due by serial"], "SEARCH ocsp_due USING PRIMARY KEY (serial>?)", []any{"", 1, 1, 1}},
		{"unindexed", hinted["due unindexed"], "SEARCH n USING INTEGER PRIMARY KEY (rowid>?)", []any{"", 1, 1, 1}},
		{"expired", `DELETE FROM ocsp_due WHERE not_after IS NOT NULL AND not_after <= ?`, "ocsp_due_expiry", []any{1}},
		{"signed", hinted["due signed"], "SEARCH ocsp_due USING PRIMARY KEY (serial=?)", []any{1, "a", "b"}},
	} {
		p := plan(tc.query, tc.args...)
		if !strings.Contains(p, tc.want) || strings.Contains(p, "SCAN c") || strings.Contains(p, "SCAN certificates") || strings.Contains(p, "SCAN ocsp_due") {
			t.Errorf("%s: plan %q, want %q and no scan of certificates", tc.name, p, tc.want)
		}
		if tc.name == "by serial" && strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("%s: plan %q sorts", tc.name, p)
		}
	}
}
