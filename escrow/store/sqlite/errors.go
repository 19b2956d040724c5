package sqlite

import (
	"github.com/keyarc/keyarc/escrow/store"

	"errors"
	"fmt"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// classify wraps err with [ErrUnavailable] when it is a storage fault, and returns any other
// error (nil included) unchanged.
func classify(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	if errors.Is(err, store.ErrClosed) || isStorageFault(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// isStorageFault reports whether err carries an SQLite result code that describes the storage
// rather than the statement. A page that cannot be read back is one: SQLite reports a failed
// read (EIO) as a malformed database (SQLITE_CORRUPT), as it does a damaged file.
func isStorageFault(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff { // the primary code of an extended result code
	case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
		sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY,
		sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
		return true
	}
	return false
}
