package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// HashSize is the size of an entry's hash (SHA-256).
const HashSize = sha256.Size

// chainDomain separates entry hashes from any other SHA-256 use.
const chainDomain = "keyarc audit entry v1"

// ChainHash is the hash of an entry: SHA-256 over a domain string, the previous entry's hash,
// and the entry's seq, time (unix microseconds), kind, actor, subject and details, every
// variable-length field preceded by its length (4 bytes, big-endian), so that no two
// different entries encode alike. Only Seq, At, Kind, Actor, Subject and Details of e are read.
func ChainHash(prev []byte, e store.AuditEntry) []byte {
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

// Link appends e to the trail in tx, after its head, and returns it with Seq, Prev and Hash
// set and At truncated to microseconds, UTC (the zero time means now), and never before the
// head's: an entry made by a node whose clock is behind the last writer's, or after this
// node's clock was stepped back, takes the head's time. The trail's times never go back, so
// it can be searched by time ([SeqAt]); an entry's time is then late by at most the skew of
// the clock that wrote the head. Kind and Actor are required. It must run in a store Update function: the entry is committed with the rest of
// that function's writes, or not at all.
//
// It returns an error wrapping [store.ErrInvalid] for a missing kind or actor,
// [store.ErrReadOnly] in a View, and [store.ErrConflict] when the head moved under this
// transaction (a backend whose writers do not serialise the trail's tail; SQLite's do).
//
// Link checks nothing about the head it follows: the appliance appends with
// [Witness.Link], which refuses a head that lost the entries it wrote.
func Link(tx store.AuditLog, e store.AuditEntry) (store.AuditEntry, error) {
	return (*Witness)(nil).Link(tx, e)
}

// Link is [Link] checked by the witness: the head it follows must still hold the last entry
// the witness knows to be committed ([Witness]); it costs no query unless another process or
// node appended since. A head that does not is refused with the witness's [*Problem]
// (wrapping [ErrTruncated], [ErrMissing] or [ErrChanged]), as is every later append. A nil
// witness checks nothing.
func (w *Witness) Link(tx store.AuditLog, e store.AuditEntry) (store.AuditEntry, error) {
	if e.Kind == "" || e.Actor == "" {
		return store.AuditEntry{}, fmt.Errorf("audit: link entry: kind and actor are required: %w", store.ErrInvalid)
	}
	seq, prev, err := tx.AuditHead()
	if err != nil {
		return store.AuditEntry{}, err
	}
	if w != nil {
		if err := w.admit(tx, seq, prev); err != nil {
			return store.AuditEntry{}, err
		}
	}
	if seq == 0 {
		prev = make([]byte, HashSize)
	}
	if t := e.At; t.IsZero() {
		e.At = time.Now()
	}
	e.Seq, e.Prev = seq+1, prev
	e.At = time.UnixMicro(e.At.UnixMicro()).UTC()
	if seq > 0 {
		at, err := tx.AuditHeadTime()
		if err != nil {
			return store.AuditEntry{}, err
		}
		if e.At.Before(at) {
			e.At = at
		}
	}
	e.Hash = ChainHash(e.Prev, e)
	if err := tx.InsertAudit(e); err != nil {
		return store.AuditEntry{}, err
	}
	if w != nil {
		w.linked(e)
	}
	return e, nil
}

// SeqAt returns the seq of the first entry whose time is t or later (1 when t is before the
// trail, the seq after the last when after it), by bisection: entries are appended in time
// order ([Link] keeps it so; a trail written before it did may go back where a clock was
// stepped back). An entry missing from the middle (a damaged trail) ends the search at the start, so
// a caller scanning forward from the result still sees every entry.
func SeqAt(tx store.AuditLog, t time.Time) (int64, error) {
	last, err := tx.LastAudit()
	if errors.Is(err, store.ErrNotFound) {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	lo, hi := int64(1), last.Seq+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		e, err := tx.GetAudit(mid)
		if errors.Is(err, store.ErrNotFound) {
			return 1, nil
		}
		if err != nil {
			return 0, err
		}
		if e.At.Before(t) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, nil
}
