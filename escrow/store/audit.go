package store

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// AuditHashSize is the size of an entry's hash (SHA-256).
const AuditHashSize = sha256.Size

// AuditEntry is one entry of the audit trail.
type AuditEntry struct {
	Seq     int64     // 1, 2, 3, ...; set by AppendAudit
	At      time.Time // stored in microseconds, UTC
	Kind    string
	Actor   string
	Subject string
	Details string // JSON made by escrow/audit; never a secret
	Prev    []byte // hash of entry Seq-1 (zeros for the first); set by AppendAudit
	Hash    []byte // ChainHash(Prev, this entry); set by AppendAudit
}

// AuditCheckpoint is a signature, by the audit key, over the chain up to entry Seq.
type AuditCheckpoint struct {
	Seq       int64
	Hash      []byte // the hash of entry Seq
	At        time.Time
	KeyID     []byte // SHA-256 of the audit key's SubjectPublicKeyInfo
	Signature []byte
}

// chainDomain separates entry hashes from any other SHA-256 use.
const chainDomain = "keyarc audit entry v1"

// ChainHash is the hash of an entry: SHA-256 over a domain string, the previous entry's hash,
// and the entry's seq, time (unix microseconds), kind, actor, subject and details, every
// variable-length field preceded by its length (4 bytes, big-endian), so that no two
// different entries encode alike. Only Seq, At, Kind, Actor, Subject and Details of e are read.
func ChainHash(prev []byte, e AuditEntry) []byte {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint32(n[:4], uint32(len(b)))
		h.Write(n[:4])
		h.Write(b)
	}
	field([]byte(chainDomain))
	field(prev)
	binary.BigEndian.PutUint64(n[:], uint64(e.Seq))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(e.At.UnixMicro()))
	h.Write(n[:])
	field([]byte(e.Kind))
	field([]byte(e.Actor))
	field([]byte(e.Subject))
	field([]byte(e.Details))
	return h.Sum(nil)
}
