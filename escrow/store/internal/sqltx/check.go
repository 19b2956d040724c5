package sqltx

import (
	"github.com/keyarc/keyarc/escrow/store"

	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"strings"
)

// Reads for the consistency check (escrow/check) and for the certificate hashes that issuance
// entries of the audit trail record.

// CertificateHashes returns the SHA-256 (hex) of the stored DER of each certificate in serials,
// in the same order; "" for a serial with no DER (unknown, or not signed yet).
func (tx *Tx) CertificateHashes(serials []string) ([]string, error) {
	const op = "certificate hashes"
	out := make([]string, len(serials))
	index := make(map[string][]int, len(serials))
	for i, s := range serials {
		n, err := store.NormalizeSerial(s)
		if err != nil {
			return nil, err
		}
		index[n] = append(index[n], i)
	}
	keys := make([]any, 0, len(index))
	for k := range index {
		keys = append(keys, k)
	}
	const chunk = 500
	for start := 0; start < len(keys); start += chunk {
		part := keys[start:min(start+chunk, len(keys))]
		// A few statement shapes only (the writer caches its prepared statements): the list is
		// padded with its last serial to 1, 8, 64 or 500 places.
		for _, size := range []int{1, 8, 64, chunk} {
			if len(part) <= size {
				for len(part) < size {
					part = append(part[:len(part):len(part)], part[len(part)-1])
				}
				break
			}
		}
		q := `SELECT serial, der FROM certificates WHERE der IS NOT NULL AND serial IN (?` + strings.Repeat(", ?", len(part)-1) + `)`
		err := tx.query(op, func(rows Rows) error {
			var serial string
			var der []byte
			if err := rows.Scan(&serial, &der); err != nil {
				return err
			}
			sum := sha256.Sum256(der)
			for _, i := range index[serial] {
				out[i] = hex.EncodeToString(sum[:])
			}
			return nil
		}, q, part...)
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SignedCertificates returns at most limit certificates that hold a DER (issued, revoked, or
// signed but not delivered), with position > after, in position (insertion) order, and the
// position of the last one returned (after itself when none is). The position is the
// dialect's (see [Dialect.Position]).
func (tx *Tx) SignedCertificates(after int64, limit int) ([]store.Certificate, int64, error) {
	const op = "list signed certificates"
	if limit <= 0 {
		return nil, after, invalid(op, "limit %d must be positive", limit)
	}
	var out []store.Certificate
	last := after
	err := tx.query(op, func(rows Rows) error {
		var id int64
		c, err := scanCertificate(func(dest ...any) error { return rows.Scan(append([]any{&id}, dest...)...) })
		if err == nil {
			out = append(out, *c)
			last = id
		}
		return err
	}, `SELECT `+tx.d.Position+`, `+certColumns+` FROM certificates WHERE `+tx.d.Position+` > ? AND der IS NOT NULL
		ORDER BY `+tx.d.Position+` LIMIT ?`, after, limit)
	return out, last, err
}

// LastCertificatePosition returns the highest position of the certificates table, 0 when it is
// empty. On PostgreSQL, positions come from an identity column; writers take turns (see the
// backend's documentation), so they grow in commit order.
func (tx *Tx) LastCertificatePosition() (int64, error) {
	var id sql.NullInt64
	if err := tx.queryRow("last certificate rowid", []any{&id}, `SELECT max(`+tx.d.Position+`) FROM certificates`); err != nil {
		return 0, err
	}
	return id.Int64, nil
}

// AuditOfKindsFrom returns at most limit entries of the given kinds with seq >= from, in seq
// order.
func (tx *Tx) AuditOfKindsFrom(kinds []string, from int64, limit int) ([]store.AuditEntry, error) {
	const op = "list audit entries of kinds"
	if limit <= 0 || len(kinds) == 0 {
		return nil, invalid(op, "kinds and a positive limit are required")
	}
	args := []any{from}
	for _, k := range kinds {
		args = append(args, k)
	}
	args = append(args, limit)
	var out []store.AuditEntry
	err := tx.query(op, func(rows Rows) error {
		e, err := scanAudit(rows.Scan)
		if err == nil {
			out = append(out, *e)
		}
		return err
	}, `SELECT `+auditColumns+` FROM audit WHERE seq >= ? AND kind IN (?`+strings.Repeat(", ?", len(kinds)-1)+`) ORDER BY seq LIMIT ?`, args...)
	return out, err
}
