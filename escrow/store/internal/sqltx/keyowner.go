package sqltx

import (
	"errors"
	"strings"
	"sync"

	"github.com/keyarc/keyarc/escrow/store"

	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// recordFingerprint reads the key fingerprint (hex SHA-256 of the SubjectPublicKeyInfo) from
// the header of a version-1 escrow record (the format of escrow/record): magic "KARC",
// version 1, a 16-byte ID, a 2-byte issuer length Li and the issuer, a 1-byte serial length
// Ls and the serial, then the 32-byte hash. The store knows this much of the format, and no
// more, to keep one key to one mailbox on every insert path (migration 6 does the same in
// SQL for older rows). It returns "" for anything else.
func recordFingerprint(blob []byte) string {
	const fixed = 4 + 1 + 16 + 2
	if len(blob) < fixed || string(blob[:4]) != "KARC" || blob[4] != 1 {
		return ""
	}
	p := fixed + int(binary.BigEndian.Uint16(blob[fixed-2:fixed]))
	if len(blob) < p+1 {
		return ""
	}
	p += 1 + int(blob[p])
	if len(blob) < p+32 {
		return ""
	}
	return hex.EncodeToString(blob[p : p+32])
}

// checkKeyOwners refuses records whose key is archived, in a live record (pending or
// active), for another mailbox: among rs themselves or in the store. It runs in the insert's
// transaction, on the writer, so two concurrent inserts cannot both pass.
func (tx *Tx) checkKeyOwners(op string, rs []store.Record, fps []string) error {
	owner := make(map[string]string, len(rs))
	var ask []any // (index, fingerprint, email) of each key to look up in the store
	for i, r := range rs {
		fp := fps[i]
		if fp == "" {
			continue
		}
		if o, ok := owner[fp]; ok {
			if o != r.Email {
				return fmt.Errorf("store: %s %s: %w", op, r.ID, store.ErrKeyArchivedElsewhere)
			}
			continue
		}
		owner[fp] = r.Email
		ask = append(ask, i, fp, r.Email)
	}
	// The lookups go rowsPerInsert to a statement, as the inserts do: on the single writer,
	// one statement per record would cost more than the record's insert.
	for len(ask) > 0 {
		k := min(len(ask)/3, rowsPerInsert)
		var i int
		err := tx.queryRow("check key owners", []any{&i}, keyOwnersQuery(k), ask[:3*k]...)
		switch {
		case err == nil:
			return fmt.Errorf("store: %s %s: %w", op, rs[i].ID, store.ErrKeyArchivedElsewhere)
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		ask = ask[3*k:]
	}
	return nil
}

// keyOwnersQuery returns the first of rows (index, fingerprint, email) whose key is live in a
// record of another mailbox, with the same two range seeks as [Tx.KeyArchivedElsewhere].
func keyOwnersQuery(rows int) string {
	if q, ok := keyOwnersQueries.Load(rows); ok {
		return q.(string)
	}
	// The casts give the values' types to PostgreSQL, which cannot infer them in a VALUES list.
	const row = `(CAST(? AS bigint), CAST(? AS text), CAST(? AS text))`
	q := `WITH q(i, fp, email) AS (VALUES ` + row + strings.Repeat(`, `+row, rows-1) + `)
	SELECT q.i FROM q
	WHERE EXISTS (SELECT 1 FROM records r WHERE r.fingerprint = q.fp AND r.email < q.email AND r.state != 'abandoned')
	   OR EXISTS (SELECT 1 FROM records r WHERE r.fingerprint = q.fp AND r.email > q.email AND r.state != 'abandoned')
	ORDER BY q.i LIMIT 1`
	keyOwnersQueries.Store(rows, q)
	return q
}

var keyOwnersQueries sync.Map // rows → query

// KeyArchivedElsewhere returns [ErrKeyArchivedElsewhere] when a live (pending or active)
// record of the key with this fingerprint (hex SHA-256 of its SubjectPublicKeyInfo) belongs
// to another mailbox than email, and nil otherwise. [Tx.InsertRecords] runs the same check;
// a caller that inserts many records at once can use this one to refuse a single item
// before its batch.
func (tx *Tx) KeyArchivedElsewhere(fingerprint, email string) error {
	// Two range seeks in records_fingerprint (mailboxes sorting before and after email), so
	// the cost does not grow with the number of records of the key for its own mailbox.
	var n bool
	err := tx.queryRow("check key owner", []any{&n},
		`SELECT EXISTS (SELECT 1 FROM records WHERE fingerprint = ? AND email < ? AND state != 'abandoned')
		     OR EXISTS (SELECT 1 FROM records WHERE fingerprint = ? AND email > ? AND state != 'abandoned')`,
		fingerprint, email, fingerprint, email)
	if err != nil {
		return err
	}
	if n {
		return store.ErrKeyArchivedElsewhere
	}
	return nil
}
