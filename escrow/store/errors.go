package store

import "errors"

// ErrCorrupt reports a database that fails its backend's integrity check.
var ErrCorrupt = errors.New("store: database is corrupt")

// ErrUnavailable marks a fault of the storage itself, not of the request: an I/O error, a full
// disk, the database locked beyond its wait limit, a database server that is down or
// unreachable, or a closed database. The same call may
// succeed once the fault clears; callers report it as "storage unavailable" and retry later.
// Errors wrapping it keep the underlying error in their chain.
var ErrUnavailable = errors.New("store: storage unavailable")

// ErrDiskFull: the file system that holds the database has no room left. It comes with
// [ErrUnavailable], and the message says where the file system is and how much is free.
var ErrDiskFull = errors.New("store: the disk holding the database is full")

// ErrKeyArchivedElsewhere: the private key of a record is already archived for another
// mailbox. A key belongs to one mailbox: archiving it for a second would let a recovery of
// either mailbox release the other's key. The error never names the other mailbox.
var ErrKeyArchivedElsewhere = errors.New("store: key already archived for another mailbox")

// Errors returned by the store. Callers test them with [errors.Is].
var (
	ErrNotFound    = errors.New("store: not found")
	ErrConflict    = errors.New("store: conflict")
	ErrCodeUsed    = errors.New("store: enrollment code already used")
	ErrCodeExpired = errors.New("store: enrollment code expired")
	ErrInvalid     = errors.New("store: invalid argument")
	ErrClosed      = errors.New("store: database closed")
	ErrReadOnly    = errors.New("store: write in a read-only transaction")
	ErrTxDone      = errors.New("store: transaction used after its function returned")
	ErrPanic       = errors.New("store: update function panicked")
	ErrSchema      = errors.New("store: unsupported schema version")
)

// ErrNotIssued: the serial was reserved but its certificate never issued (state pending or
// failed). An OCSP responder must never answer "good" for it. [OCSPResponses.GetOCSPResponse]
// gives it together with [ErrNotFound], [OCSPResponses.UpsertOCSPResponses] together with
// [ErrConflict], so that callers testing only those sentinels stay correct.
var ErrNotIssued = errors.New("store: certificate never issued")

// ErrNoResponse: the certificate is issued or revoked but no OCSP response is stored for it
// yet. It does not wrap [ErrNotFound]: the serial is known, and a responder must not answer
// as for a serial it never issued.
var ErrNoResponse = errors.New("store: no OCSP response signed yet")
