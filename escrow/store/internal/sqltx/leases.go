package sqltx

import (
	"errors"
	"fmt"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Leases (store.Leases). Every write transaction holds the writer lock (SQLite's across the
// processes of one node, PostgreSQL's across nodes), so reading a lease and writing it in one
// Update is atomic, and so is a fencing check with the writes that follow it. On one SQLite
// node the lease is always this node's, but the same rows fence a second process that opens
// the file.

func checkLeaseArgs(op, name, holder string, ttl time.Duration) error {
	switch {
	case name == "":
		return invalid(op, "lease name is empty")
	case holder == "":
		return invalid(op, "lease %s: holder is empty", name)
	case ttl < time.Millisecond:
		return invalid(op, "lease %s: ttl %v is below 1ms", name, ttl)
	}
	return nil
}

// AcquireLease takes or renews a lease; see store.Leases.
func (tx *Tx) AcquireLease(name, holder string, now time.Time, ttl time.Duration) (store.Lease, error) {
	const op = "acquire lease"
	if err := checkLeaseArgs(op, name, holder, ttl); err != nil {
		return store.Lease{}, err
	}
	if err := tx.check(true); err != nil {
		return store.Lease{}, fmt.Errorf("store: %s: %w", op, err)
	}
	cur, err := tx.GetLease(name)
	switch {
	case err == nil && cur.Holder == holder && now.Before(cur.Expires):
		return tx.RenewLease(name, holder, cur.Token, now, ttl)
	case err == nil && cur.Holder != "" && now.Before(cur.Expires):
		return store.Lease{}, fmt.Errorf("store: %s %s: held by %s until %s: %w", op, name, cur.Holder,
			cur.Expires.UTC().Format(time.RFC3339Nano), store.ErrLeaseHeld)
	case err == nil:
		l := store.Lease{Name: name, Holder: holder, Token: cur.Token + 1, AcquiredAt: now, Expires: now.Add(ttl)}
		n, err := tx.exec(op, `UPDATE leases SET holder = ?, token = ?, acquired_at = ?, expires = ?
			WHERE name = ? AND token = ?`, holder, l.Token, now.UnixMicro(), l.Expires.UnixMicro(), name, cur.Token)
		if err != nil {
			return store.Lease{}, err
		}
		if n == 0 {
			return store.Lease{}, fmt.Errorf("store: %s %s: changed hands meanwhile: %w", op, name, store.ErrLeaseHeld)
		}
		return l, nil
	case errorsIsNotFound(err):
		l := store.Lease{Name: name, Holder: holder, Token: 1, AcquiredAt: now, Expires: now.Add(ttl)}
		if _, err := tx.exec(op, `INSERT INTO leases (name, holder, token, acquired_at, expires) VALUES (?, ?, ?, ?, ?)`,
			name, holder, l.Token, now.UnixMicro(), l.Expires.UnixMicro()); err != nil {
			return store.Lease{}, err
		}
		return l, nil
	default:
		return store.Lease{}, err
	}
}

// RenewLease extends a lease its holder still has; see store.Leases.
func (tx *Tx) RenewLease(name, holder string, token int64, now time.Time, ttl time.Duration) (store.Lease, error) {
	const op = "renew lease"
	if err := checkLeaseArgs(op, name, holder, ttl); err != nil {
		return store.Lease{}, err
	}
	n, err := tx.exec(op, `UPDATE leases SET expires = ? WHERE name = ? AND holder = ? AND token = ?`,
		now.Add(ttl).UnixMicro(), name, holder, token)
	if err != nil {
		return store.Lease{}, err
	}
	if n == 0 {
		return store.Lease{}, fmt.Errorf("store: %s %s for %s (token %d): %w", op, name, holder, token, store.ErrLeaseLost)
	}
	l, err := tx.GetLease(name)
	if err != nil {
		return store.Lease{}, err
	}
	return *l, nil
}

// ReleaseLease gives up a lease; see store.Leases.
func (tx *Tx) ReleaseLease(name, holder string, token int64) error {
	const op = "release lease"
	n, err := tx.exec(op, `UPDATE leases SET holder = '', expires = 0 WHERE name = ? AND holder = ? AND token = ? AND holder <> ''`,
		name, holder, token)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("store: %s %s for %s (token %d): %w", op, name, holder, token, store.ErrLeaseLost)
	}
	return nil
}

// CheckLease is the fencing check; see store.Leases.
func (tx *Tx) CheckLease(name, holder string, token int64, now time.Time) error {
	const op = "check lease"
	l, err := tx.GetLease(name)
	if err != nil && !errorsIsNotFound(err) {
		return err
	}
	if !l.Held(holder, token, now) {
		return fmt.Errorf("store: %s %s for %s (token %d): %w", op, name, holder, token, store.ErrLeaseLost)
	}
	return nil
}

// GetLease reads a lease; see store.Leases.
func (tx *Tx) GetLease(name string) (*store.Lease, error) {
	var l store.Lease
	var acquired, expires int64
	if err := tx.queryRow("get lease", []any{&l.Name, &l.Holder, &l.Token, &acquired, &expires},
		`SELECT name, holder, token, acquired_at, expires FROM leases WHERE name = ?`, name); err != nil {
		return nil, err
	}
	l.AcquiredAt, l.Expires = time.UnixMicro(acquired).UTC(), time.UnixMicro(expires).UTC()
	return &l, nil
}

// LeaseNow reads the clock leases are measured on; see store.Leases.
func (tx *Tx) LeaseNow(local time.Time) (time.Time, error) {
	if tx.d.Clock == "" {
		if err := tx.check(false); err != nil {
			return time.Time{}, fmt.Errorf("store: read the lease clock: %w", err)
		}
		return local.UTC(), nil
	}
	var us int64
	if err := tx.queryRow("read the lease clock", []any{&us}, `SELECT `+tx.d.Clock); err != nil {
		return time.Time{}, err
	}
	return time.UnixMicro(us).UTC(), nil
}

func errorsIsNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
