package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"database/sql"
	"fmt"
)

// migrations[i] brings the schema from version i to version i+1. Append only:
// never edit a migration that has shipped.
var migrations = []string{
	// 1: initial schema. Times are unix microseconds (UTC); serials are
	// canonical lower-case hex (NormalizeSerial).
	`
CREATE TABLE codes (
	id         TEXT    PRIMARY KEY,
	email      TEXT    NOT NULL,
	template   TEXT    NOT NULL,
	hash       BLOB    NOT NULL,
	created_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER,
	serial     TEXT
) STRICT;
CREATE INDEX codes_email ON codes(email);

CREATE TABLE recovery_sets (
	epoch      INTEGER PRIMARY KEY CHECK (epoch >= 1),
	quorum     INTEGER NOT NULL CHECK (quorum >= 1),
	created_at INTEGER NOT NULL,
	created_by TEXT    NOT NULL
) STRICT;

CREATE TABLE recovery_set_kras (
	epoch    INTEGER NOT NULL REFERENCES recovery_sets(epoch),
	position INTEGER NOT NULL,
	serial   TEXT    NOT NULL,
	PRIMARY KEY (epoch, position),
	UNIQUE (epoch, serial)
) STRICT;

CREATE TABLE certificates (
	serial     TEXT    PRIMARY KEY,
	template   TEXT    NOT NULL,
	email      TEXT    NOT NULL,
	subject    TEXT    NOT NULL,
	state      TEXT    NOT NULL CHECK (state IN ('pending', 'issued', 'failed', 'revoked')),
	der        BLOB,
	not_before INTEGER,
	not_after  INTEGER,
	created_at INTEGER NOT NULL,
	code_id    TEXT    REFERENCES codes(id),
	record_id  TEXT,
	role       TEXT    NOT NULL,
	kra        TEXT    NOT NULL,
	revoked_at INTEGER
) STRICT;
CREATE INDEX certificates_email ON certificates(email, created_at);
CREATE INDEX certificates_template ON certificates(template, created_at);
CREATE INDEX certificates_state ON certificates(state, created_at);
CREATE INDEX certificates_code ON certificates(code_id);
CREATE INDEX certificates_kra ON certificates(kra, created_at);

CREATE TABLE records (
	id         TEXT    PRIMARY KEY,
	serial     TEXT    UNIQUE,
	email      TEXT    NOT NULL,
	epoch      INTEGER NOT NULL REFERENCES recovery_sets(epoch),
	blob       BLOB    NOT NULL,
	state      TEXT    NOT NULL CHECK (state IN ('pending', 'active', 'abandoned')),
	created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX records_email ON records(email, created_at);
CREATE INDEX records_state ON records(state, created_at);
CREATE INDEX records_epoch ON records(epoch);

CREATE TABLE pending (
	id         TEXT    PRIMARY KEY,
	template   TEXT    NOT NULL,
	email      TEXT    NOT NULL,
	requester  TEXT    NOT NULL,
	name       TEXT    NOT NULL DEFAULT '',
	csr        BLOB    NOT NULL,
	public_key BLOB,
	state      TEXT    NOT NULL CHECK (state IN ('pending', 'issued', 'denied')),
	created_at INTEGER NOT NULL,
	decided_by TEXT    NOT NULL DEFAULT '',
	decided_at INTEGER,
	serial     TEXT
) STRICT;
CREATE INDEX pending_state ON pending(state, created_at);
`,
	// 2: recovery requests and the KRAs' approvals.
	`
CREATE TABLE recoveries (
	id                TEXT    PRIMARY KEY,
	kind              TEXT    NOT NULL CHECK (kind IN ('recover', 'reseal')),
	requester         TEXT    NOT NULL,
	requester_serial  TEXT    NOT NULL,
	requester_mailbox TEXT    NOT NULL DEFAULT '',
	reason            TEXT    NOT NULL,
	key_label         TEXT    NOT NULL,
	key_spki          BLOB    NOT NULL,
	oaep_hash         TEXT    NOT NULL,
	state             TEXT    NOT NULL CHECK (state IN ('open', 'consumed', 'cancelled', 'expired')),
	created_at        INTEGER NOT NULL,
	expires_at        INTEGER NOT NULL,
	closed_at         INTEGER
) STRICT;
CREATE INDEX recoveries_state ON recoveries(state, expires_at);

CREATE TABLE recovery_records (
	recovery_id TEXT    NOT NULL REFERENCES recoveries(id),
	position    INTEGER NOT NULL,
	record_id   TEXT    NOT NULL REFERENCES records(id),
	PRIMARY KEY (recovery_id, position),
	UNIQUE (recovery_id, record_id)
) STRICT;

CREATE TABLE approvals (
	recovery_id   TEXT    NOT NULL REFERENCES recoveries(id),
	kra           TEXT    NOT NULL,
	signer_serial TEXT    NOT NULL,
	shares        BLOB    NOT NULL,
	signature     BLOB    NOT NULL,
	created_at    INTEGER NOT NULL,
	PRIMARY KEY (recovery_id, kra)
) STRICT;
`,
	// 3: bulk jobs. Each item is reserved before its certificate is signed and finished
	// after, so a job resumes after a crash without issuing an item twice.
	`
CREATE TABLE jobs (
	id           TEXT    PRIMARY KEY,
	kind         TEXT    NOT NULL CHECK (kind IN ('enroll', 'keygen', 'import')),
	template     TEXT    NOT NULL,
	submitted_by TEXT    NOT NULL,
	state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'cancelled')),
	input        TEXT    NOT NULL,
	secret_key   BLOB,
	total        INTEGER NOT NULL DEFAULT 0,
	done         INTEGER NOT NULL DEFAULT 0,
	failed       INTEGER NOT NULL DEFAULT 0,
	created_at   INTEGER NOT NULL,
	started_at   INTEGER,
	finished_at  INTEGER
) STRICT;
CREATE INDEX jobs_state ON jobs(state, created_at);

CREATE TABLE job_items (
	job_id    TEXT    NOT NULL REFERENCES jobs(id),
	seq       INTEGER NOT NULL,
	state     TEXT    NOT NULL CHECK (state IN ('reserved', 'done', 'failed')),
	serial    TEXT,
	record_id TEXT,
	error     TEXT,
	pkcs12    BLOB,
	password  BLOB,
	PRIMARY KEY (job_id, seq)
) STRICT;
`,
	// 4: the audit trail: append-only, hash-chained entries and signed checkpoints.
	`
CREATE TABLE audit (
	seq     INTEGER PRIMARY KEY CHECK (seq >= 1),
	at      INTEGER NOT NULL,
	kind    TEXT    NOT NULL,
	actor   TEXT    NOT NULL,
	subject TEXT    NOT NULL,
	details TEXT    NOT NULL,
	prev    BLOB    NOT NULL,
	hash    BLOB    NOT NULL
) STRICT;

CREATE TABLE audit_checkpoints (
	seq       INTEGER PRIMARY KEY REFERENCES audit(seq),
	hash      BLOB    NOT NULL,
	at        INTEGER NOT NULL,
	key_id    BLOB    NOT NULL,
	signature BLOB    NOT NULL
) STRICT;
`,
	// 5: the indexes of the few certificates issued with an enrollment code or to a KRA hold
	// only those rows, so that the many others (bulk issuance, imports) do not write them.
	`
DROP INDEX certificates_code;
CREATE INDEX certificates_code ON certificates(code_id) WHERE code_id IS NOT NULL;
DROP INDEX certificates_kra;
CREATE INDEX certificates_kra ON certificates(kra, created_at) WHERE kra != '';
`,
	// 6: each record's key fingerprint (hex SHA-256 of the SubjectPublicKeyInfo, as in its
	// sealed header), so that one key is never archived for two mailboxes; and the KRAs'
	// refused approvals, so that their rate limit survives a restart. The fingerprints of
	// existing version-1 records are read from their headers (see recordFingerprint): bytes
	// 22-23 are the issuer's length Li, byte 24+Li the serial's length Ls, and the 32 bytes
	// from 25+Li+Ls the hash (SQLite counts from 1).
	`
ALTER TABLE records ADD COLUMN fingerprint TEXT;
UPDATE records SET fingerprint = f.fp FROM (
	SELECT id, CASE WHEN length(b) >= 24 + li + ls + 32 THEN lower(hex(substr(b, 25 + li + ls, 32))) END AS fp FROM (
		SELECT id, b, li,
			(instr('0123456789ABCDEF', substr(hex(substr(b, 24 + li, 1)), 1, 1)) - 1) * 16 +
			(instr('0123456789ABCDEF', substr(hex(substr(b, 24 + li, 1)), 2, 1)) - 1) AS ls
		FROM (
			SELECT id, blob AS b,
				(instr('0123456789ABCDEF', substr(hex(substr(blob, 22, 2)), 1, 1)) - 1) * 4096 +
				(instr('0123456789ABCDEF', substr(hex(substr(blob, 22, 2)), 2, 1)) - 1) * 256 +
				(instr('0123456789ABCDEF', substr(hex(substr(blob, 22, 2)), 3, 1)) - 1) * 16 +
				(instr('0123456789ABCDEF', substr(hex(substr(blob, 22, 2)), 4, 1)) - 1) AS li
			FROM records WHERE substr(blob, 1, 5) = X'4B41524301' AND length(blob) >= 24
		)
	)
) AS f WHERE records.id = f.id;
CREATE INDEX records_fingerprint ON records(fingerprint) WHERE fingerprint IS NOT NULL;

CREATE TABLE approval_failures (
	kra TEXT    NOT NULL,
	at  INTEGER NOT NULL
) STRICT;
CREATE INDEX approval_failures_kra ON approval_failures(kra, at);
`,
	// 7: the key-owner check seeks (fingerprint, email) ranges instead of scanning every live
	// record of a key: a key re-certified many times for its one mailbox (renewals with the
	// same key, migrations) made each insert read all of them. Abandoned records are left out
	// of the index, as the check leaves them out.
	`
DROP INDEX records_fingerprint;
CREATE INDEX records_fingerprint ON records(fingerprint, email) WHERE fingerprint IS NOT NULL AND state != 'abandoned';
`,
	// 8: revocation, CRLs and OCSP. Each certificate gets its revocation reason (a CRLReason of
	// RFC 5280; 0, unspecified, for the certificates revoked before) and its key identity
	// (hex SHA-256 of the SubjectPublicKeyInfo, as records' fingerprints), which
	// backfillKeyIDs computes for the existing certificates after this SQL. The revoked
	// certificates have an index of their own that holds every column a CRL needs, in serial
	// order, so that a CRL is read from it alone. CRLs keep their number and the newest few
	// documents; OCSP responses are kept one per certificate, with the status they were
	// signed with.
	`
ALTER TABLE certificates ADD COLUMN revocation_reason INTEGER NOT NULL DEFAULT 0
	CHECK (revocation_reason BETWEEN 0 AND 10 AND revocation_reason != 7);
ALTER TABLE certificates ADD COLUMN key_id TEXT;
CREATE INDEX certificates_key ON certificates(key_id, created_at) WHERE key_id IS NOT NULL;
CREATE INDEX certificates_revoked ON certificates(serial, not_after, revoked_at, revocation_reason) WHERE state = 'revoked';

CREATE TABLE crls (
	number      INTEGER PRIMARY KEY CHECK (number >= 1),
	this_update INTEGER NOT NULL,
	next_update INTEGER NOT NULL,
	der         BLOB    NOT NULL,
	created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE ocsp_responses (
	serial      TEXT    PRIMARY KEY REFERENCES certificates(serial),
	der         BLOB    NOT NULL,
	this_update INTEGER NOT NULL,
	next_update INTEGER NOT NULL,
	revoked     INTEGER NOT NULL CHECK (revoked IN (0, 1)),
	reason      INTEGER NOT NULL CHECK (reason BETWEEN 0 AND 10 AND reason != 7),
	updated_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
`,
	// 9: the OCSP due index (see Tx.OCSPDue). Each issued or revoked certificate has a row in
	// ocsp_due: signed is the thisUpdate of its stored response when that response has the
	// certificate's status, and the smallest integer (due at once) when it has none or one of
	// another status; not_after is the certificate's. A pass finds what is due in the range
	// signed < now - refresh age of ocsp_due_signed instead of reading every certificate.
	// Triggers keep the rows in the transactions that insert, issue, fail or revoke a
	// certificate and store its response, whatever statement does it; the rows of expired
	// certificates are deleted by UpsertOCSPResponses through ocsp_due_expiry. Existing
	// certificates get their rows here.
	`
CREATE TABLE ocsp_due (
	serial    TEXT    PRIMARY KEY,
	signed    INTEGER NOT NULL,
	not_after INTEGER
) STRICT, WITHOUT ROWID;
CREATE INDEX ocsp_due_signed ON ocsp_due(signed, not_after);
CREATE INDEX ocsp_due_expiry ON ocsp_due(not_after) WHERE not_after IS NOT NULL;

INSERT INTO ocsp_due (serial, signed, not_after)
	SELECT c.serial, CASE WHEN o.revoked = (c.state = 'revoked') AND o.reason = c.revocation_reason
		THEN o.this_update ELSE -9223372036854775807 - 1 END, c.not_after
	FROM certificates c LEFT JOIN ocsp_responses o ON o.serial = c.serial
	WHERE c.state IN ('issued', 'revoked');

CREATE TRIGGER ocsp_due_insert AFTER INSERT ON certificates WHEN new.state IN ('issued', 'revoked')
BEGIN
	INSERT INTO ocsp_due (serial, signed, not_after) VALUES (new.serial, -9223372036854775807 - 1, new.not_after);
END;

CREATE TRIGGER ocsp_due_status AFTER UPDATE OF state, revocation_reason, not_after ON certificates
BEGIN
	DELETE FROM ocsp_due WHERE serial = old.serial AND new.state NOT IN ('issued', 'revoked');
	INSERT INTO ocsp_due (serial, signed, not_after)
		SELECT new.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = new.serial
			AND o.revoked = (new.state = 'revoked') AND o.reason = new.revocation_reason), -9223372036854775807 - 1), new.not_after
		WHERE new.state IN ('issued', 'revoked')
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after;
END;

CREATE TRIGGER ocsp_due_signed_insert AFTER INSERT ON ocsp_responses
BEGIN
	UPDATE ocsp_due SET signed = CASE WHEN (SELECT c.state = 'revoked' AND new.revoked = 1 AND c.revocation_reason = new.reason
		OR c.state = 'issued' AND new.revoked = 0 FROM certificates c WHERE c.serial = new.serial)
		THEN new.this_update ELSE -9223372036854775807 - 1 END
	WHERE serial = new.serial;
END;

CREATE TRIGGER ocsp_due_signed_update AFTER UPDATE ON ocsp_responses
BEGIN
	UPDATE ocsp_due SET signed = CASE WHEN (SELECT c.state = 'revoked' AND new.revoked = 1 AND c.revocation_reason = new.reason
		OR c.state = 'issued' AND new.revoked = 0 FROM certificates c WHERE c.serial = new.serial)
		THEN new.this_update ELSE -9223372036854775807 - 1 END
	WHERE serial = new.serial;
END;
`,
	// 10: leases (store.Leases): one row per name, its holder ('' once released), its fencing
	// token (raised each time the lease changes hands, never reset) and its expiry.
	`
CREATE TABLE leases (
	name        TEXT    PRIMARY KEY,
	holder      TEXT    NOT NULL,
	token       INTEGER NOT NULL CHECK (token > 0),
	acquired_at INTEGER NOT NULL,
	expires     INTEGER NOT NULL
) WITHOUT ROWID;
`,
	// 11: cursors (store.Cursors): how far a follower of the audit trail has applied it.
	`
CREATE TABLE cursors (
	name     TEXT    PRIMARY KEY,
	position INTEGER NOT NULL CHECK (position >= 0)
) WITHOUT ROWID;
`,
	// 12: drill states (store.DrillStates): the rows of the recoverability drills, and an
	// index that counts the active records of each epoch without reading the records.
	`
CREATE TABLE drill_state (
	kind TEXT NOT NULL,
	key  TEXT NOT NULL,
	data BLOB NOT NULL,
	PRIMARY KEY (kind, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX records_epoch_state ON records(epoch, state);
`,
	// 13: failed logins per key and window (store.LoginFailures).
	`
CREATE TABLE login_failures (
	key          TEXT    NOT NULL,
	window_start INTEGER NOT NULL,
	failures     INTEGER NOT NULL CHECK (failures > 0),
	PRIMARY KEY (key, window_start)
) STRICT, WITHOUT ROWID;
CREATE INDEX login_failures_window ON login_failures(window_start, failures);
`,
	// 14: the certificates the directory publisher retries (store.DirectorySkips).
	`
CREATE TABLE directory_skipped (
	serial TEXT PRIMARY KEY
) STRICT, WITHOUT ROWID;
`,
	// 15: less written per certificate: the indexes that no query reads go
	// (certificates_template; certificates_code, now that the sweep reaches the codes from the
	// pending certificates; records_epoch, the prefix of records_epoch_state), and
	// certificates_state, read only by the sweep, becomes certificates_pending, which holds
	// the pending certificates alone.
	`
DROP INDEX certificates_template;
DROP INDEX certificates_code;
DROP INDEX certificates_state;
DROP INDEX records_epoch;
CREATE INDEX certificates_pending ON certificates(created_at) WHERE state = 'pending';
`,
	// 16: ocsp_responses becomes a rowid table. As a WITHOUT ROWID table its rows lived in
	// the leaves of an index b-tree, which keep at most about a quarter of a page of a row
	// before the rest spills to an overflow page: every response (about 1.1 KB with the
	// responder certificate) took a page of its own, 4 KiB written to the WAL each time it was
	// stored or re-signed. In a rowid table three or four fit a page. The triggers on the table
	// go with it, and ocsp_due_status, which reads it, must go while the table is away (the
	// rename checks every trigger): all three are made again as migration 9 made them.
	`
DROP TRIGGER ocsp_due_status;
CREATE TABLE ocsp_responses_rowid (
	serial      TEXT    PRIMARY KEY REFERENCES certificates(serial),
	der         BLOB    NOT NULL,
	this_update INTEGER NOT NULL,
	next_update INTEGER NOT NULL,
	revoked     INTEGER NOT NULL CHECK (revoked IN (0, 1)),
	reason      INTEGER NOT NULL CHECK (reason BETWEEN 0 AND 10 AND reason != 7),
	updated_at  INTEGER NOT NULL
) STRICT;
INSERT INTO ocsp_responses_rowid (serial, der, this_update, next_update, revoked, reason, updated_at)
	SELECT serial, der, this_update, next_update, revoked, reason, updated_at FROM ocsp_responses ORDER BY serial;
DROP TABLE ocsp_responses;
ALTER TABLE ocsp_responses_rowid RENAME TO ocsp_responses;

CREATE TRIGGER ocsp_due_status AFTER UPDATE OF state, revocation_reason, not_after ON certificates
BEGIN
	DELETE FROM ocsp_due WHERE serial = old.serial AND new.state NOT IN ('issued', 'revoked');
	INSERT INTO ocsp_due (serial, signed, not_after)
		SELECT new.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = new.serial
			AND o.revoked = (new.state = 'revoked') AND o.reason = new.revocation_reason), -9223372036854775807 - 1), new.not_after
		WHERE new.state IN ('issued', 'revoked')
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after;
END;

CREATE TRIGGER ocsp_due_signed_insert AFTER INSERT ON ocsp_responses
BEGIN
	UPDATE ocsp_due SET signed = CASE WHEN (SELECT c.state = 'revoked' AND new.revoked = 1 AND c.revocation_reason = new.reason
		OR c.state = 'issued' AND new.revoked = 0 FROM certificates c WHERE c.serial = new.serial)
		THEN new.this_update ELSE -9223372036854775807 - 1 END
	WHERE serial = new.serial;
END;

CREATE TRIGGER ocsp_due_signed_update AFTER UPDATE ON ocsp_responses
BEGIN
	UPDATE ocsp_due SET signed = CASE WHEN (SELECT c.state = 'revoked' AND new.revoked = 1 AND c.revocation_reason = new.reason
		OR c.state = 'issued' AND new.revoked = 0 FROM certificates c WHERE c.serial = new.serial)
		THEN new.this_update ELSE -9223372036854775807 - 1 END
	WHERE serial = new.serial;
END;
`,
	// 17: codes_email goes: no query reads the codes by mailbox (a code is found by its ID, the
	// sweep reaches the codes from the pending certificates), and every code created wrote an
	// entry of it, most often in a leaf page of its own (2.1 -> 1.7 WAL pages per code created,
	// with its audit entry, eight callers at once).
	`
DROP INDEX codes_email;
`,
	// 18: the certificates of another CA whose keys a bulk import archived (template 'import')
	// are not this CA's to speak for: they get no row of ocsp_due, so that the pre-signer never
	// signs an OCSP response for them, and those signed before go.
	`
DROP TRIGGER ocsp_due_insert;
CREATE TRIGGER ocsp_due_insert AFTER INSERT ON certificates
	WHEN new.state IN ('issued', 'revoked') AND new.template <> 'import'
BEGIN
	INSERT INTO ocsp_due (serial, signed, not_after) VALUES (new.serial, -9223372036854775807 - 1, new.not_after);
END;

DROP TRIGGER ocsp_due_status;
CREATE TRIGGER ocsp_due_status AFTER UPDATE OF state, revocation_reason, not_after ON certificates
	WHEN new.template <> 'import'
BEGIN
	DELETE FROM ocsp_due WHERE serial = old.serial AND new.state NOT IN ('issued', 'revoked');
	INSERT INTO ocsp_due (serial, signed, not_after)
		SELECT new.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = new.serial
			AND o.revoked = (new.state = 'revoked') AND o.reason = new.revocation_reason), -9223372036854775807 - 1), new.not_after
		WHERE new.state IN ('issued', 'revoked')
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after;
END;

DELETE FROM ocsp_due WHERE serial IN (SELECT serial FROM certificates WHERE template = 'import');
DELETE FROM ocsp_responses WHERE serial IN (SELECT serial FROM certificates WHERE template = 'import');
`,
	// 19: a certificate's transaction no longer writes its row of ocsp_due: three b-trees, and
	// nearly one of the four WAL pages an EST enrollment wrote. ocsp_mark holds the position (rowid)
	// up to which the certificates are indexed, and the serial found there, to tell that the
	// rowids were not renumbered (a dump loaded again); Tx.IndexNewCertificates indexes those
	// above it, a page at a time, and OCSPDue reads them from certificates until then. A
	// certificate above the mark that becomes issued is left to IndexNewCertificates too; one
	// below it (a pending certificate the index passed by) gets its row here, and a
	// revocation always does, at once. Every certificate stored so far has its row.
	`
CREATE TABLE ocsp_mark (
	id     INTEGER PRIMARY KEY CHECK (id = 1),
	pos    INTEGER NOT NULL,
	serial TEXT    NOT NULL
) STRICT;
INSERT INTO ocsp_mark (id, pos, serial)
	SELECT 1, coalesce(max(rowid), 0), coalesce((SELECT serial FROM certificates ORDER BY rowid DESC LIMIT 1), '') FROM certificates;

DROP TRIGGER ocsp_due_insert;

DROP TRIGGER ocsp_due_status;
CREATE TRIGGER ocsp_due_status AFTER UPDATE OF state, revocation_reason, not_after ON certificates
	WHEN new.template <> 'import' AND (new.state = 'revoked' OR old.rowid <= (SELECT pos FROM ocsp_mark))
BEGIN
	DELETE FROM ocsp_due WHERE serial = old.serial AND new.state NOT IN ('issued', 'revoked');
	INSERT INTO ocsp_due (serial, signed, not_after)
		SELECT new.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = new.serial
			AND o.revoked = (new.state = 'revoked') AND o.reason = new.revocation_reason), -9223372036854775807 - 1), new.not_after
		WHERE new.state IN ('issued', 'revoked')
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after;
END;
`,
	// 20: the index of the certificates by key (BR §6.1.2: every certificate of a compromised
	// key is revoked) leaves the issuing transaction too. certificates_key took an entry per
	// certificate keyed by a hash, so a leaf page at random: 1.3 of the 3.4 WAL pages an
	// enrollment wrote. certificate_keys holds the same entries, filled by
	// Tx.IndexNewCertificates with the rows of ocsp_due, and CertificatesByKey reads the
	// certificates above ocsp_mark besides. A certificate below the mark whose key changes (a
	// pending one issued) moves its entry at once. The issuance's own question, whether a
	// key is compromised, is answered by certificates_compromised, which holds the
	// certificates revoked for keyCompromise alone.
	`
CREATE TABLE certificate_keys (
	key_id     TEXT    NOT NULL,
	created_at INTEGER NOT NULL,
	serial     TEXT    NOT NULL,
	PRIMARY KEY (key_id, created_at, serial)
) STRICT, WITHOUT ROWID;
INSERT INTO certificate_keys (key_id, created_at, serial)
	SELECT key_id, created_at, serial FROM certificates WHERE key_id IS NOT NULL AND rowid <= (SELECT pos FROM ocsp_mark);

DROP INDEX certificates_key;
CREATE INDEX certificates_compromised ON certificates(key_id, created_at) WHERE state = 'revoked' AND revocation_reason = 1;

CREATE TRIGGER certificate_keys_update AFTER UPDATE OF key_id ON certificates
	WHEN old.rowid <= (SELECT pos FROM ocsp_mark)
BEGIN
	DELETE FROM certificate_keys WHERE key_id = old.key_id AND created_at = old.created_at AND serial = old.serial;
	INSERT INTO certificate_keys (key_id, created_at, serial) SELECT new.key_id, new.created_at, new.serial WHERE new.key_id IS NOT NULL;
END;
`,
	// 21: storing a response no longer fires a trigger that looks its certificate up to move
	// its row of ocsp_due. Tx.UpsertOCSPResponses has the status of every certificate already
	// (it refuses the serials never issued), so it moves the rows itself, and stores the
	// responses of the current status without the lookup of ocspReplaces either: one lookup
	// of the certificate per response instead of three, the most of what storing a re-signed
	// response cost the writer beside the write itself.
	`
DROP TRIGGER ocsp_due_signed_insert;
DROP TRIGGER ocsp_due_signed_update;
`,
	// 22: a row of ocsp_due also holds its certificate's status (revoked, reason), kept by
	// ocsp_due_status and Tx.IndexNewCertificates, so that storing a response learns it from
	// the narrow due table (about a hundred rows a page) rather than from the certificate's
	// row (a kilobyte or more, rarely in the page cache during a pass): in a re-signing pass
	// of 100,000 responses that was five points of the ratio to the token's raw rate.
	`
ALTER TABLE ocsp_due ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1));
ALTER TABLE ocsp_due ADD COLUMN reason INTEGER NOT NULL DEFAULT 0;
UPDATE ocsp_due SET revoked = 1, reason = (SELECT c.revocation_reason FROM certificates c WHERE c.serial = ocsp_due.serial)
	WHERE serial IN (SELECT serial FROM certificates WHERE state = 'revoked');

DROP TRIGGER ocsp_due_status;
CREATE TRIGGER ocsp_due_status AFTER UPDATE OF state, revocation_reason, not_after ON certificates
	WHEN new.template <> 'import' AND (new.state = 'revoked' OR old.rowid <= (SELECT pos FROM ocsp_mark))
BEGIN
	DELETE FROM ocsp_due WHERE serial = old.serial AND new.state NOT IN ('issued', 'revoked');
	INSERT INTO ocsp_due (serial, signed, not_after, revoked, reason)
		SELECT new.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = new.serial
			AND o.revoked = (new.state = 'revoked') AND o.reason = new.revocation_reason), -9223372036854775807 - 1), new.not_after,
			new.state = 'revoked', new.revocation_reason
		WHERE new.state IN ('issued', 'revoked')
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after,
		revoked = excluded.revoked, reason = excluded.reason;
END;
`,
	// 23: a row of ocsp_due also holds its certificate's revocation time, kept as its status
	// is, so that a page of OCSPDue is read from the due table alone: joining each due
	// certificate's own row (a kilobyte or more, seldom in the page cache during a pass) took
	// the pass's reader 1.5 µs more per response of 100,000 re-signed.
	`
ALTER TABLE ocsp_due ADD COLUMN revoked_at INTEGER;
UPDATE ocsp_due SET revoked_at = (SELECT c.revoked_at FROM certificates c WHERE c.serial = ocsp_due.serial);

DROP TRIGGER ocsp_due_status;
CREATE TRIGGER ocsp_due_status AFTER UPDATE OF state, revocation_reason, revoked_at, not_after ON certificates
	WHEN new.template <> 'import' AND (new.state = 'revoked' OR old.rowid <= (SELECT pos FROM ocsp_mark))
BEGIN
	DELETE FROM ocsp_due WHERE serial = old.serial AND new.state NOT IN ('issued', 'revoked');
	INSERT INTO ocsp_due (serial, signed, not_after, revoked, reason, revoked_at)
		SELECT new.serial, coalesce((SELECT o.this_update FROM ocsp_responses o WHERE o.serial = new.serial
			AND o.revoked = (new.state = 'revoked') AND o.reason = new.revocation_reason), -9223372036854775807 - 1), new.not_after,
			new.state = 'revoked', new.revocation_reason, new.revoked_at
		WHERE new.state IN ('issued', 'revoked')
	ON CONFLICT (serial) DO UPDATE SET signed = excluded.signed, not_after = excluded.not_after,
		revoked = excluded.revoked, reason = excluded.reason, revoked_at = excluded.revoked_at;
END;
`,
}

// goSteps[v] runs in Go right after the SQL of migration v (the one that brings the schema to
// version v), in the same transaction, for what SQL cannot do. Append only, as migrations.
var goSteps = map[int]func(context.Context, *sql.Conn) error{
	8: backfillKeyIDs,
}

// backfillKeyIDs sets the key identity of every certificate stored with a DER before
// migration 8, a page of rows at a time (the connection runs one statement at a time). A DER
// that is not shaped like a certificate keeps a NULL key_id, as on insert.
func backfillKeyIDs(ctx context.Context, conn *sql.Conn) error {
	const page = 1000
	type row struct {
		id  int64
		key string
	}
	for after := int64(0); ; {
		rows, err := conn.QueryContext(ctx, `SELECT rowid, der FROM certificates WHERE rowid > ? AND der IS NOT NULL
			ORDER BY rowid LIMIT ?`, after, page)
		if err != nil {
			return err
		}
		var got []row
		for rows.Next() {
			var r row
			var der []byte
			if err := rows.Scan(&r.id, &der); err != nil {
				rows.Close()
				return err
			}
			r.key, _ = store.KeyID(der)
			got = append(got, r)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range got {
			if r.key == "" {
				continue
			}
			if _, err := conn.ExecContext(ctx, `UPDATE certificates SET key_id = ? WHERE rowid = ?`, r.key, r.id); err != nil {
				return err
			}
		}
		if len(got) < page {
			return nil
		}
		after = got[len(got)-1].id
	}
}

// migrate applies the missing migrations in order, in one transaction.
func migrate(ctx context.Context, conn *sql.Conn) (err error) {
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer func() {
		if err != nil {
			conn.ExecContext(ctx, "ROLLBACK")
		}
	}()
	var v int
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("store: migrate: database schema version %d is newer than this program's %d: %w",
			v, len(migrations), store.ErrSchema)
	}
	for i := v; i < len(migrations); i++ {
		if _, err := conn.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("store: migrate to version %d: %w", i+1, err)
		}
		if step := goSteps[i+1]; step != nil {
			if err := step(ctx, conn); err != nil {
				return fmt.Errorf("store: migrate to version %d: %w", i+1, err)
			}
		}
	}
	if v < len(migrations) {
		// PRAGMA takes no bound parameters; the value is our own integer.
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
			return fmt.Errorf("store: migrate: %w", err)
		}
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("store: migrate: commit: %w", err)
	}
	return nil
}
