package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"fmt"
	"os"
	"strings"
)

// Check runs SQLite's quick integrity check over the whole file (pages, indexes, constraints).
// The appliance runs it at start-up and refuses to serve a corrupt database.
func (db *DB) Check(ctx context.Context) error {
	db.viewMu.RLock()
	defer db.viewMu.RUnlock()
	if db.viewClosed {
		return store.ErrClosed
	}
	rows, err := db.r.QueryContext(ctx, "PRAGMA quick_check")
	if err != nil {
		return checkErr(ctx, err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return checkErr(ctx, err)
		}
		if line != "ok" && len(problems) < 5 {
			problems = append(problems, line)
		}
	}
	if err := rows.Err(); err != nil {
		return checkErr(ctx, err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", store.ErrCorrupt, strings.Join(problems, "; "))
	}
	return nil
}

// checkErr is the error of a check that could not run to its end: an interruption says so
// (the file is not blamed), anything else is a corrupt file.
func checkErr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("store: check: %w", ctxErr)
	}
	return fmt.Errorf("%w: %w", store.ErrCorrupt, err)
}

// Backup writes a consistent copy of the database to path (which must not exist) while the
// appliance keeps running: SQLite's VACUUM INTO reads one snapshot. The copy holds sealed
// records and certificates, never a key in clear; it is written with mode 0600.
func (db *DB) Backup(ctx context.Context, path string) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("store: backup: %s exists; not overwritten", path)
	}
	// Create the file first so that it gets mode 0600; VACUUM INTO fills an empty file.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("store: backup: %w", err)
	}
	f.Close()
	db.viewMu.RLock()
	defer db.viewMu.RUnlock()
	if db.viewClosed {
		os.Remove(path)
		return store.ErrClosed
	}
	if _, err := db.r.ExecContext(ctx, "VACUUM INTO ?", path); err != nil {
		os.Remove(path)
		os.Remove(path + "-journal") // an interrupted VACUUM INTO leaves its journal
		return fmt.Errorf("store: backup: %w", classify(err))
	}
	return nil
}
