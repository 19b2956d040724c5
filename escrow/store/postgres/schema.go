package postgres

import (
	"github.com/keyarc/keyarc/escrow/store"

	"github.com/jackc/pgx/v5"

	"context"
	"database/sql"
	"fmt"
)

// Advisory lock keys (pg_advisory_xact_lock), one database's own: every keyarc node on the
// database takes lockWriter for each write transaction, and lockMigrate while it brings the
// schema up to date.
const (
	lockWriter  int64 = 0x6b65796172630001 // "keyarc" 1
	lockMigrate int64 = 0x6b65796172630002 // "keyarc" 2
)

// migrations[i] brings the schema from version i to version i+1. Append only: never edit a
// migration that has shipped. Version 1 is the schema of SQLite's version 8 (version 2 that of
// its 9), the first the
// PostgreSQL backend shipped with: the same tables and columns, so that the Tx code of both
// backends reads alike. Times are unix microseconds (UTC) in BIGINT columns, NULL for the
// zero time; serials are canonical lower-case hex (NormalizeSerial). Every text column
// collates as "C" (byte order), which is the order the contract gives (certificates in the
// byte order of their serials) and the one SQLite uses, whatever the database's locale.
var migrations = []string{
	// 1: the whole schema.
	`
CREATE TABLE codes (
	id         TEXT COLLATE "C" PRIMARY KEY,
	email      TEXT COLLATE "C" NOT NULL,
	template   TEXT COLLATE "C" NOT NULL,
	hash       BYTEA  NOT NULL,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	used_at    BIGINT,
	serial     TEXT COLLATE "C"
);
CREATE INDEX codes_email ON codes(email);
CREATE INDEX codes_serial ON codes(serial) WHERE serial IS NOT NULL;

CREATE TABLE recovery_sets (
	epoch      BIGINT PRIMARY KEY CHECK (epoch >= 1),
	quorum     BIGINT NOT NULL CHECK (quorum >= 1),
	created_at BIGINT NOT NULL,
	created_by TEXT COLLATE "C" NOT NULL
);

CREATE TABLE recovery_set_kras (
	epoch    BIGINT NOT NULL REFERENCES recovery_sets(epoch),
	position BIGINT NOT NULL,
	serial   TEXT COLLATE "C" NOT NULL,
	PRIMARY KEY (epoch, position),
	UNIQUE (epoch, serial)
);

CREATE TABLE certificates (
	serial     TEXT COLLATE "C" PRIMARY KEY,
	pos        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
	template   TEXT COLLATE "C" NOT NULL,
	email      TEXT COLLATE "C" NOT NULL,
	subject    TEXT COLLATE "C" NOT NULL,
	state      TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'issued', 'failed', 'revoked')),
	der        BYTEA,
	not_before BIGINT,
	not_after  BIGINT,
	created_at BIGINT NOT NULL,
	code_id    TEXT COLLATE "C" REFERENCES codes(id),
	record_id  TEXT COLLATE "C",
	role       TEXT COLLATE "C" NOT NULL,
	kra        TEXT COLLATE "C" NOT NULL,
	revoked_at BIGINT,
	revocation_reason BIGINT NOT NULL DEFAULT 0
		CHECK (revocation_reason BETWEEN 0 AND 10 AND revocation_reason != 7),
	key_id     TEXT COLLATE "C"
);
CREATE INDEX certificates_email ON certificates(email, created_at);
CREATE INDEX certificates_template ON certificates(template, created_at);
CREATE INDEX certificates_state ON certificates(state, created_at);
CREATE INDEX certificates_code ON certificates(code_id) WHERE code_id IS NOT NULL;
CREATE INDEX certificates_kra ON certificates(kra, created_at) WHERE kra != '';
CREATE INDEX certificates_key ON certificates(key_id, created_at) WHERE key_id IS NOT NULL;
CREATE INDEX certificates_revoked ON certificates(serial) INCLUDE (not_after, revoked_at, revocation_reason)
	WHERE state = 'revoked';
CREATE INDEX certificates_record ON certificates(record_id) WHERE record_id IS NOT NULL;

CREATE TABLE records (
	id          TEXT COLLATE "C" PRIMARY KEY,
	serial      TEXT COLLATE "C" UNIQUE,
	email       TEXT COLLATE "C" NOT NULL,
	epoch       BIGINT NOT NULL REFERENCES recovery_sets(epoch),
	blob        BYTEA  NOT NULL,
	state       TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'active', 'abandoned')),
	created_at  BIGINT NOT NULL,
	fingerprint TEXT COLLATE "C"
);
CREATE INDEX records_email ON records(email, created_at);
CREATE INDEX records_state ON records(state, created_at);
CREATE INDEX records_epoch ON records(epoch);
CREATE INDEX records_fingerprint ON records(fingerprint, email) WHERE fingerprint IS NOT NULL AND state != 'abandoned';

CREATE TABLE pending (
	id         TEXT COLLATE "C" PRIMARY KEY,
	template   TEXT COLLATE "C" NOT NULL,
	email      TEXT COLLATE "C" NOT NULL,
	requester  TEXT COLLATE "C" NOT NULL,
	name       TEXT COLLATE "C" NOT NULL DEFAULT '',
	csr        BYTEA  NOT NULL,
	public_key BYTEA,
	state      TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'issued', 'denied')),
	created_at BIGINT NOT NULL,
	decided_by TEXT COLLATE "C" NOT NULL DEFAULT '',
	decided_at BIGINT,
	serial     TEXT COLLATE "C"
);
CREATE INDEX pending_state ON pending(state, created_at);

CREATE TABLE recoveries (
	id                TEXT COLLATE "C" PRIMARY KEY,
	kind              TEXT COLLATE "C" NOT NULL CHECK (kind IN ('recover', 'reseal')),
	requester         TEXT COLLATE "C" NOT NULL,
	requester_serial  TEXT COLLATE "C" NOT NULL,
	requester_mailbox TEXT COLLATE "C" NOT NULL DEFAULT '',
	reason            TEXT COLLATE "C" NOT NULL,
	key_label         TEXT COLLATE "C" NOT NULL,
	key_spki          BYTEA  NOT NULL,
	oaep_hash         TEXT COLLATE "C" NOT NULL,
	state             TEXT COLLATE "C" NOT NULL CHECK (state IN ('open', 'consumed', 'cancelled', 'expired')),
	created_at        BIGINT NOT NULL,
	expires_at        BIGINT NOT NULL,
	closed_at         BIGINT
);
CREATE INDEX recoveries_state ON recoveries(state, expires_at);

CREATE TABLE recovery_records (
	recovery_id TEXT COLLATE "C" NOT NULL REFERENCES recoveries(id),
	position    BIGINT NOT NULL,
	record_id   TEXT COLLATE "C" NOT NULL REFERENCES records(id),
	PRIMARY KEY (recovery_id, position),
	UNIQUE (recovery_id, record_id)
);

CREATE TABLE approvals (
	recovery_id   TEXT COLLATE "C" NOT NULL REFERENCES recoveries(id),
	kra           TEXT COLLATE "C" NOT NULL,
	signer_serial TEXT COLLATE "C" NOT NULL,
	shares        BYTEA  NOT NULL,
	signature     BYTEA  NOT NULL,
	created_at    BIGINT NOT NULL,
	PRIMARY KEY (recovery_id, kra)
);

CREATE TABLE approval_failures (
	kra TEXT COLLATE "C" NOT NULL,
	at  BIGINT NOT NULL
);
CREATE INDEX approval_failures_kra ON approval_failures(kra, at);

CREATE TABLE jobs (
	id           TEXT COLLATE "C" PRIMARY KEY,
	kind         TEXT COLLATE "C" NOT NULL CHECK (kind IN ('enroll', 'keygen', 'import')),
	template     TEXT COLLATE "C" NOT NULL,
	submitted_by TEXT COLLATE "C" NOT NULL,
	state        TEXT COLLATE "C" NOT NULL CHECK (state IN ('queued', 'running', 'done', 'cancelled')),
	input        TEXT COLLATE "C" NOT NULL,
	secret_key   BYTEA,
	total        BIGINT NOT NULL DEFAULT 0,
	done         BIGINT NOT NULL DEFAULT 0,
	failed       BIGINT NOT NULL DEFAULT 0,
	created_at   BIGINT NOT NULL,
	started_at   BIGINT,
	finished_at  BIGINT
);
CREATE INDEX jobs_state ON jobs(state, created_at);

CREATE TABLE job_items (
	job_id    TEXT COLLATE "C" NOT NULL REFERENCES jobs(id),
	seq       BIGINT NOT NULL,
	state     TEXT COLLATE "C" NOT NULL CHECK (state IN ('reserved', 'done', 'failed')),
	serial    TEXT COLLATE "C",
	record_id TEXT COLLATE "C",
	error     TEXT COLLATE "C",
	pkcs12    BYTEA,
	password  BYTEA,
	PRIMARY KEY (job_id, seq)
);

CREATE TABLE audit (
	seq     BIGINT PRIMARY KEY CHECK (seq >= 1),
	at      BIGINT NOT NULL,
	kind    TEXT COLLATE "C" NOT NULL,
	actor   TEXT COLLATE "C" NOT NULL,
	subject TEXT COLLATE "C" NOT NULL,
	details TEXT COLLATE "C" NOT NULL,
	prev    BYTEA  NOT NULL,
	hash    BYTEA  NOT NULL
);
CREATE INDEX audit_kind ON audit(kind, seq);

CREATE TABLE audit_checkpoints (
	seq       BIGINT PRIMARY KEY REFERENCES audit(seq),
	hash      BYTEA  NOT NULL,
	at        BIGINT NOT NULL,
	key_id    BYTEA  NOT NULL,
	signature BYTEA  NOT NULL
);

CREATE TABLE crls (
	number      BIGINT PRIMARY KEY CHECK (number >= 1),
	this_update BIGINT NOT NULL,
	next_update BIGINT NOT NULL,
	der         BYTEA  NOT NULL,
	created_at  BIGINT NOT NULL
);

CREATE TABLE ocsp_responses (
	serial      TEXT COLLATE "C" PRIMARY KEY REFERENCES certificates(serial),
	der         BYTEA   NOT NULL,
	this_update BIGINT  NOT NULL,
	next_update BIGINT  NOT NULL,
	revoked     BOOLEAN NOT NULL,
	reason      BIGINT  NOT NULL CHECK (reason BETWEEN 0 AND 10 AND reason != 7),
	updated_at  BIGINT  NOT NULL
);
`,
	// 2: the OCSP due index (the contract's, see store.OCSPResponses), as SQLite's migration
	// 9: each issued or revoked certificate has a row in ocsp_due, whose signed is the
	// thisUpdate of its stored response when that response has the certificate's status, and
	// the smallest bigint (due at once) when it has none or one of another status; not_after
	// is the certificate's. Triggers keep the rows in the transactions that insert, issue,
	// fail or revoke a certificate and store its response; UpsertOCSPResponses deletes the
	// rows of expired certificates through ocsp_due_expiry. Existing certificates get their
	// rows here.
	`
CREATE TABLE ocsp_due (
	serial    TEXT COLLATE "C" PRIMARY KEY,
	signed    BIGINT NOT NULL,
	not_after BIGINT
);
CREATE INDEX ocsp_due_signed ON ocsp_due(signed, not_after) INCLUDE (serial);
CREATE INDEX ocsp_due_expiry ON ocsp_due(not_after) WHERE not_after IS NOT NULL;

INSERT INTO ocsp_due (serial, signed, not_after)
	SELECT c.serial, CASE WHEN o.revoked = (c.state = 'revoked') AND o.reason = c.revocation_reason
		THEN o.this_update ELSE -9223372036854775807 - 1 END, c.not_after
	FROM certificates c LEFT JOIN ocsp_responses o ON o.serial = c.serial
	WHERE c.state IN ('issued', 'revoked');

CREATE FUNCTION keyarc_ocsp_due_certificate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.state IN ('issued', 'revoked') THEN
		INSERT INTO ocsp_due (serial, signed, not_after)
		VALUES (NEW.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = NEW.serial
			AND o.revoked = (NEW.state = 'revoked') AND o.reason = NEW.revocation_reason), -9223372036854775807 - 1),
			NEW.not_after)
		ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after;
	ELSIF TG_OP = 'UPDATE' THEN
		DELETE FROM ocsp_due WHERE serial = OLD.serial;
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER ocsp_due_certificate AFTER INSERT OR UPDATE OF state, revocation_reason, not_after ON certificates
	FOR EACH ROW EXECUTE FUNCTION keyarc_ocsp_due_certificate();

CREATE FUNCTION keyarc_ocsp_due_response() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	UPDATE ocsp_due d SET signed = CASE WHEN c.state = 'revoked' AND NEW.revoked AND c.revocation_reason = NEW.reason
		OR c.state = 'issued' AND NOT NEW.revoked THEN NEW.this_update ELSE -9223372036854775807 - 1 END
	FROM certificates c WHERE c.serial = NEW.serial AND d.serial = NEW.serial;
	RETURN NULL;
END
$$;
CREATE TRIGGER ocsp_due_response AFTER INSERT OR UPDATE ON ocsp_responses
	FOR EACH ROW EXECUTE FUNCTION keyarc_ocsp_due_response();
`,
	// 3: leases (store.Leases): one row per name, its holder ('' once released), its fencing
	// token (raised each time the lease changes hands, never reset) and its expiry (unix
	// microseconds).
	`
CREATE TABLE leases (
	name        TEXT   PRIMARY KEY,
	holder      TEXT   NOT NULL,
	token       BIGINT NOT NULL CHECK (token > 0),
	acquired_at BIGINT NOT NULL,
	expires     BIGINT NOT NULL
);
`,
	// 4: cursors (store.Cursors): how far a follower of the audit trail has applied it.
	`
CREATE TABLE cursors (
	name     TEXT   PRIMARY KEY,
	position BIGINT NOT NULL CHECK (position >= 0)
);
`,
	// 5: drill states (store.DrillStates): the rows of the recoverability drills, and an
	// index that counts the active records of each epoch without reading the records.
	`
CREATE TABLE drill_state (
	kind TEXT  NOT NULL,
	key  TEXT  NOT NULL,
	data BYTEA NOT NULL,
	PRIMARY KEY (kind, key)
);
CREATE INDEX records_epoch_state ON records(epoch, state);
`,
	// 6: failed logins per key and window (store.LoginFailures), shared by the nodes.
	`
CREATE TABLE login_failures (
	key          TEXT   NOT NULL,
	window_start BIGINT NOT NULL,
	failures     BIGINT NOT NULL CHECK (failures > 0),
	PRIMARY KEY (key, window_start)
);
CREATE INDEX login_failures_window ON login_failures(window_start, failures);
`,
	// 7: the certificates the directory publisher retries (store.DirectorySkips).
	`
CREATE TABLE directory_skipped (
	serial TEXT PRIMARY KEY
);
`,
	// 8: less written per certificate. The statements that store certificates and responses
	// keep ocsp_due themselves, in the same statement (data-modifying WITH clauses: see
	// sqltx.Dialect.KeepsDue), so the row triggers of migration 2 go: a PL/pgSQL call and its
	// query for every certificate and every response stored. And the indexes that no query
	// reads go: certificates_template, certificates_code (the sweep reaches codes from the
	// pending certificates), certificates_record, codes_serial, and records_epoch (the prefix
	// of records_epoch_state); certificates_state, read only by the sweep, becomes
	// certificates_pending, which holds the pending certificates alone. The rows of ocsp_due are
	// right as the triggers left them.
	`
DROP TRIGGER ocsp_due_certificate ON certificates;
DROP FUNCTION keyarc_ocsp_due_certificate();
DROP TRIGGER ocsp_due_response ON ocsp_responses;
DROP FUNCTION keyarc_ocsp_due_response();
DROP INDEX certificates_template, certificates_code, certificates_record, certificates_state, codes_serial, records_epoch;
CREATE INDEX certificates_pending ON certificates(created_at) WHERE state = 'pending';
`,
	// 9: the certificates of another CA whose keys a bulk import archived (template 'import')
	// are not this CA's to speak for: the statements no longer give them rows of ocsp_due (see
	// sqltx's dueInsert), and the rows and OCSP responses they had go.
	`
DELETE FROM ocsp_due WHERE serial IN (SELECT serial FROM certificates WHERE template = 'import');
DELETE FROM ocsp_responses WHERE serial IN (SELECT serial FROM certificates WHERE template = 'import');
`,
	// 10: a code's claim (used_at and serial set, neither indexed) is a HOT update when its
	// page has room for the new version: no new entry in the code's two indexes, one page
	// written. Codes are written once, packed full, and claimed later, so pages are left 40%
	// free for their claims (the pages written from now on; older ones as they are).
	`
ALTER TABLE codes SET (fillfactor = 60);
`,
}

// grants are the privileges of a node's role on each table: what the store's statements need
// and no more. The audit trail, its checkpoints, recovery sets and approvals are append-only
// for a node: it may insert rows but never change or delete one.
var grants = []struct{ privileges, tables string }{
	{"SELECT", "keyarc_schema"},
	{"SELECT, INSERT", "audit, audit_checkpoints, recovery_sets, recovery_set_kras, recovery_records, approvals"},
	{"SELECT, INSERT, UPDATE", "codes, certificates, records, pending, recoveries, jobs, ocsp_responses, leases, cursors"},
	{"SELECT, INSERT, DELETE", "approval_failures, crls"},
	{"SELECT, INSERT, UPDATE", "drill_state"},
	{"SELECT, INSERT, UPDATE, DELETE", "ocsp_due"},
	{"SELECT, INSERT, UPDATE, DELETE", "job_items"},
	{"SELECT, INSERT, UPDATE, DELETE", "login_failures"},
	{"SELECT, INSERT, DELETE", "directory_skipped"},
}

// Grants returns the statements that give role what a keyarc node needs on a database whose
// schema another role owns and migrates: CONNECT on the database, USAGE on the public schema,
// and on each table only the privileges the store's statements use (see the package
// documentation). Run them as the owner after the first [Open], and again after an upgrade
// whose migrations add tables. role is quoted as an identifier.
func Grants(database, role string) []string {
	r, d := pgx.Identifier{role}.Sanitize(), pgx.Identifier{database}.Sanitize()
	out := []string{"GRANT CONNECT ON DATABASE " + d + " TO " + r, "GRANT USAGE ON SCHEMA public TO " + r}
	for _, g := range grants {
		out = append(out, "GRANT "+g.privileges+" ON "+g.tables+" TO "+r)
	}
	return out
}

// migrate brings the schema up to date: the missing migrations in order, in one transaction
// that holds the migration lock, so that nodes starting at once apply each migration once
// (the second waits for the first, then finds the schema current). The version lives in the
// one row of keyarc_schema.
func migrate(ctx context.Context, conn *sql.Conn) (err error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lockMigrate); err != nil {
		return fmt.Errorf("store: migrate: lock: %w", err)
	}
	// Created only when missing: a node's role may not create tables (see Grants).
	var exists bool
	if err := tx.QueryRowContext(ctx, `SELECT to_regclass('keyarc_schema') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	if !exists {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE keyarc_schema (
			one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
			version BIGINT  NOT NULL)`); err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
	}
	var v int
	switch err := tx.QueryRowContext(ctx, `SELECT version FROM keyarc_schema`).Scan(&v); err {
	case nil, sql.ErrNoRows:
	default:
		return fmt.Errorf("store: migrate: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("store: migrate: database schema version %d is newer than this program's %d: %w",
			v, len(migrations), store.ErrSchema)
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("store: migrate to version %d: %w", i+1, err)
		}
	}
	if v < len(migrations) {
		if _, err := tx.ExecContext(ctx, `INSERT INTO keyarc_schema (version) VALUES ($1)
			ON CONFLICT (one) DO UPDATE SET version = excluded.version`, len(migrations)); err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: migrate: commit: %w", err)
	}
	return nil
}
