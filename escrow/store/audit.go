package store

import "time"

// AuditEntry is one row of the audit trail. The store keeps the rows and their linkage;
// escrow/audit computes Prev and Hash (the chain) and verifies them.
type AuditEntry struct {
	Seq     int64     // 1, 2, 3, ...
	At      time.Time // stored in microseconds, UTC
	Kind    string
	Actor   string
	Subject string
	Details string // JSON made by escrow/audit; never a secret
	Prev    []byte // hash of entry Seq-1 (zeros for the first)
	Hash    []byte // the entry's hash in the chain
}

// AuditCheckpoint is a signature, by the audit key, over the chain up to entry Seq.
type AuditCheckpoint struct {
	Seq       int64
	Hash      []byte // the hash of entry Seq
	At        time.Time
	KeyID     []byte // SHA-256 of the audit key's SubjectPublicKeyInfo
	Signature []byte
}
