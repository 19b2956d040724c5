package store

import "time"

// Lease is a named lease: while it is held, one node (its Holder) may do the work the name
// stands for (a bulk job, a singleton such as the CRL publisher) until Expires, and every
// write of that work carries Token, the lease's fencing token.
type Lease struct {
	Name   string
	Holder string // the node holding it; "" once released
	// Token is the fencing token: it strictly increases each time the lease is acquired by a
	// node that did not hold it (or whose hold had expired or been released), and stays the
	// same while its holder renews it.
	Token      int64
	AcquiredAt time.Time // when Token was handed out
	Expires    time.Time // the holder must renew before this instant
}

// Held reports whether l is held by holder with token at now: the holder and token match and
// the lease has not expired.
func (l *Lease) Held(holder string, token int64, now time.Time) bool {
	return l != nil && l.Holder != "" && l.Holder == holder && l.Token == token && now.Before(l.Expires)
}

// ErrLeaseHeld: another node holds the lease and it has not expired. It wraps [ErrConflict].
var ErrLeaseHeld = &leaseError{"store: lease held by another node", ErrConflict}

// ErrLeaseLost: the caller no longer holds the lease with its fencing token (it expired,
// another node acquired it since, or it was released), so the write that asked is refused:
// the work now belongs to another node or to none. It wraps [ErrConflict].
var ErrLeaseLost = &leaseError{"store: lease lost (fenced out)", ErrConflict}

type leaseError struct {
	msg  string
	base error
}

func (e *leaseError) Error() string        { return e.msg }
func (e *leaseError) Is(target error) bool { return target == e.base }

// Leases are named, expiring leases with fencing tokens: how several nodes sharing one
// database agree on who runs a bulk job or a singleton, and how a node that lost its lease
// (paused longer than the lease, then woken) is kept from writing.
//
// # Clock
//
// Leases are measured on one clock, read with [Leases.LeaseNow]: the database server's where
// several machines share the database (PostgreSQL), so that a node whose clock is minutes
// ahead does not find the others' leases expired and take them, nor a node whose clock is
// behind store leases the others find expired at once; the caller's own where the database
// is a file of one machine (SQLite). The other methods take that reading as now: a time of
// the caller's wall clock would bring its skew back. A holder measures how long it may act
// on its lease on its monotonic clock, from before the transaction that acquired or renewed
// it began: the lease is held at least ttl from then, whatever the wall clocks do.
//
// # Fencing
//
// A write made for leased work calls [Leases.CheckLease] first, in the same Update. Write
// transactions are serialised (SQLite: one writer; PostgreSQL: the writer lock every write
// transaction takes), so no other node can acquire the lease between the check and the
// writes after it: either the whole transaction was made by the holder, or it fails with
// [ErrLeaseLost] and should be returned (undoing its writes).
type Leases interface {
	// AcquireLease takes lease name for holder until now+ttl. If holder holds it already
	// (not expired), it is renewed with the same token; if it is free, released or expired,
	// holder gets it with a token one more than any the name had before (1 the first time).
	// [ErrLeaseHeld] if another holder holds it unexpired; [ErrInvalid] for an empty name or
	// holder or a ttl below one millisecond.
	AcquireLease(name, holder string, now time.Time, ttl time.Duration) (Lease, error)
	// RenewLease extends holder's lease name with token to now+ttl. It succeeds after
	// expiry too, as long as nobody acquired the lease since (the token is unchanged):
	// nobody else did any of the work. [ErrLeaseLost] if holder and token do not match the
	// lease (another node acquired it, it was released, or it never existed);
	// [ErrInvalid] as AcquireLease.
	RenewLease(name, holder string, token int64, now time.Time, ttl time.Duration) (Lease, error)
	// ReleaseLease gives up holder's lease name with token, so that another node may acquire
	// it at once; its token is kept, so the next holder's is higher. [ErrLeaseLost] if it is
	// not held by holder with token.
	ReleaseLease(name, holder string, token int64) error
	// CheckLease returns nil if holder holds lease name with token at now (see
	// [Lease.Held]), else [ErrLeaseLost]: the fencing check of a write (see above).
	CheckLease(name, holder string, token int64, now time.Time) error
	// GetLease returns lease name, or [ErrNotFound] if it was never acquired.
	GetLease(name string) (*Lease, error)
	// LeaseNow returns the time on the clock leases are measured on (see above): the
	// database server's, to the microsecond, where the database is shared by machines
	// (local is then unused), else local, the caller's reading of its own clock. Allowed in
	// a View. Faults of the storage wrap [ErrUnavailable].
	LeaseNow(local time.Time) (time.Time, error)
}
