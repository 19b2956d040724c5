package store

import (
	"fmt"
	"log/slog"
	"time"
)

// Stats are counters of a store's writer since it was opened.
type Stats struct {
	Updates      uint64 // Update functions that ran (committed or not)
	Failed       uint64 // functions that returned an error or panicked (savepoint rolled back)
	Commits      uint64 // successful COMMITs (each made its batch durable)
	CommitErrors uint64 // failed COMMITs or aborted transactions
	MaxBatch     int    // most functions run in one transaction
}

// States of certificates, escrow records and pending requests.
const (
	StatePending   = "pending"   // certificate, record, pending request
	StateIssued    = "issued"    // certificate, pending request
	StateFailed    = "failed"    // certificate
	StateRevoked   = "revoked"   // certificate
	StateActive    = "active"    // record
	StateAbandoned = "abandoned" // record
	StateDenied    = "denied"    // pending request
)

// TemplateImport is the template of the certificates of another CA whose keys were archived
// by a bulk import: stored as issued, so that their keys can be recovered and the directory
// finds them, but never this CA's to speak for. No OCSP response is signed, no CRL lists
// them, and they are not revoked here: the store keeps them out of ocsp_due, the statuses
// the pre-signer reads ([Tx.CertificateStatuses]), the responses it stores and looks up, and
// [Tx.RevokedCertificates].
const TemplateImport = "import"

// Code is a one-time enrollment code. Only a hash of the secret is stored.
type Code struct {
	ID        string
	Email     string
	Template  string
	Hash      []byte // hash of the secret, computed by the caller; never the secret
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time // nil while unused
	Serial    string     // certificate issued with this code, set by InsertCertificate
}

// String describes c without its hash.
func (c Code) String() string {
	used := "unused"
	if c.UsedAt != nil {
		used = "used " + c.UsedAt.Format(time.RFC3339)
	}
	return fmt.Sprintf("code %s for %s (%s, expires %s, %s)", c.ID, c.Email, c.Template,
		c.ExpiresAt.Format(time.RFC3339), used)
}

// GoString is String: the hash is never printed.
func (c Code) GoString() string { return c.String() }

// LogValue logs c without its hash.
func (c Code) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", c.ID), slog.String("template", c.Template),
		slog.Time("expires_at", c.ExpiresAt), slog.Bool("used", c.UsedAt != nil))
}

// Certificate is a certificate issued (or being issued) by the CA.
type Certificate struct {
	Serial    string // canonical lower-case hex, see NormalizeSerial
	Template  string
	Email     string
	Subject   string
	State     string // pending, issued, failed or revoked; "" on insert means pending
	DER       []byte // nil while pending
	NotBefore time.Time
	NotAfter  time.Time
	CreatedAt time.Time // zero on insert means now
	CodeID    string    // enrollment code used, if any
	RecordID  string    // escrow record, if the key is archived
	Role      string    // for client-auth credentials
	KRA       string    // for KRA certificates
	RevokedAt time.Time // zero unless revoked: the revocation date, kept by SetKeyCompromise
	// RevocationReason is the CRLReason of a revoked certificate (ReasonUnspecified = 0
	// otherwise); on insert only a revoked certificate may carry one (ValidStoredReason).
	RevocationReason int
	// KeyID is the hex SHA-256 of the certificate's SubjectPublicKeyInfo (see KeyID), set by
	// the store whenever it stores a DER and ignored on insert; "" without a DER, or when the
	// DER is not shaped like a certificate (the store does not refuse such a DER).
	KeyID string
}

// Filter selects certificates for [Tx.ListCertificates]; empty fields match
// everything, Limit 0 means no limit. Results are ordered by creation time,
// then serial.
type Filter struct {
	Email    string
	Template string
	KRA      string
	State    string
	Limit    int
}

// Record is a sealed escrow record (see escrow/record); Blob is its binary
// form, encrypted to the recovery set of Epoch.
type Record struct {
	ID        string
	Serial    string // certificate serial, canonical; may be empty, unique otherwise
	Email     string
	Epoch     uint32
	Blob      []byte
	State     string    // pending, active or abandoned; "" on insert means pending
	CreatedAt time.Time // zero on insert means now
	// Fingerprint is the hex SHA-256 of the key's SubjectPublicKeyInfo. On insert the store
	// reads it from the blob's header (a record of escrow/record's format 1); a caller's value
	// is used only for another blob, and must agree with the header otherwise.
	Fingerprint string
}

// Pending is a certificate request waiting for manual approval.
type Pending struct {
	ID        string
	Template  string
	Email     string
	Requester string
	// Name is the identity requested (a KRA's name).
	Name string
	CSR  []byte
	// PublicKey is a DER SubjectPublicKeyInfo requested without a CSR of its own (a KRA's
	// decrypt-only unwrap key cannot sign one).
	PublicKey []byte
	State     string    // pending, issued or denied; "" on insert means pending
	CreatedAt time.Time // zero on insert means now
	DecidedBy string
	DecidedAt time.Time
	Serial    string // certificate issued, when State is issued
}

// RecoverySet is the set of KRA certificates (by serial, in share order) and
// the quorum needed to open records sealed under its epoch.
type RecoverySet struct {
	Epoch      uint32 // assigned by InsertRecoverySet
	Quorum     int
	KRASerials []string
	CreatedAt  time.Time // zero on insert means now
	CreatedBy  string
}

// Swept counts what [Tx.SweepPending] changed.
type Swept struct {
	Certificates int // pending certificates marked failed
	Codes        int // enrollment codes released
	Records      int // pending records marked abandoned
}
