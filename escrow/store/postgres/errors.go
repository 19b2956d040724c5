package postgres

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// classify wraps err with [store.ErrUnavailable] when it is a fault of the server or of the
// connection to it, and returns any other error (nil included) unchanged.
func classify(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	if errors.Is(err, store.ErrClosed) || isServerFault(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// isServerFault reports whether err describes the server or the connection rather than the
// statement: a connection refused or lost, the server shutting down or out of resources, a
// transaction the server gave up (serialization failure, deadlock), a lock or statement
// timeout.
func isServerFault(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's own doing, reported as it is
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			strings.HasPrefix(pe.Code, "53"),               // insufficient resources (disk full, out of memory, too many connections)
			strings.HasPrefix(pe.Code, "57"),               // operator intervention (admin shutdown, crash shutdown, cannot connect now)
			strings.HasPrefix(pe.Code, "58"),               // system error (I/O error)
			strings.HasPrefix(pe.Code, "XX"),               // internal error (data corrupted)
			pe.Code == "40001",                             // serialization_failure
			pe.Code == "40P01",                             // deadlock_detected
			pe.Code == "55P03",                             // lock_not_available
			pe.Code == "25006",                             // read_only_sql_transaction (a hot standby)
			pe.Code == "25P02",                             // in_failed_sql_transaction: an earlier fault aborted it
			pe.Code == "25P03",                             // idle_in_transaction_session_timeout: the server ended the session
			pe.Severity == "FATAL", pe.Severity == "PANIC": // the server ended the session
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, sql.ErrConnDone) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || pgconn.Timeout(err) || pgconn.SafeToRetry(err)
}

// mapErr maps constraint failures to the store's sentinels, keeping PostgreSQL's message
// (which names the table and constraint; the detail, which quotes values, is not part of
// PgError's Error text).
func mapErr(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch {
	case pe.Code == "23505": // unique_violation
		return fmt.Errorf("%w (%w)", store.ErrConflict, err)
	case pe.Code == "23503": // foreign_key_violation
		return fmt.Errorf("%w: referenced row missing (%w)", store.ErrNotFound, err)
	case pe.Code == "23514", pe.Code == "23502", // check_violation, not_null_violation
		strings.HasPrefix(pe.Code, "22"): // data exception (a value out of range, bad encoding)
		return fmt.Errorf("%w (%w)", store.ErrInvalid, err)
	}
	return err
}
