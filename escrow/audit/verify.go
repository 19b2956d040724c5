package audit

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// What [Verify] finds. Each is wrapped in a [*Problem] naming the entry.
var (
	// ErrChanged: an entry's content, previous hash or hash was changed.
	ErrChanged = errors.New("audit: entry changed")
	// ErrMissing: an entry was deleted (a gap in the sequence, or later entries renumbered).
	ErrMissing = errors.New("audit: entry deleted")
	// ErrReordered: entries were moved or their contents swapped.
	ErrReordered = errors.New("audit: entries reordered")
	// ErrInserted: an entry that the appliance did not write was inserted.
	ErrInserted = errors.New("audit: entry inserted")
	// ErrChainBroken: an entry does not follow the one before it, for a reason not narrowed down.
	ErrChainBroken = errors.New("audit: chain broken")
	// ErrTruncated: the trail ends before the entry a signed checkpoint or the head file
	// records: its tail was removed, or the database was restored from an older backup.
	ErrTruncated = errors.New("audit: trail truncated")
	// ErrCheckpointMismatch: an entry differs from the hash a checkpoint signed: history was
	// rewritten (every later hash recomputed), or the database is another one or an older
	// backup that has since diverged.
	ErrCheckpointMismatch = errors.New("audit: entry does not match its signed checkpoint")
	// ErrBadSignature: a checkpoint or the head file is not signed by the audit key.
	ErrBadSignature = errors.New("audit: bad checkpoint signature")
)

// Problem is the first problem [Verify] found.
type Problem struct {
	Seq    int64 // the entry (or checkpoint) where it shows
	Err    error // one of the Err* sentinels of this package
	Detail string
}

func (p *Problem) Error() string {
	return fmt.Sprintf("%v at entry %d: %s", p.Err, p.Seq, p.Detail)
}

// Unwrap returns the sentinel.
func (p *Problem) Unwrap() error { return p.Err }

// Report describes a verified trail.
type Report struct {
	Entries     int64  `json:"entries"`
	Last        int64  `json:"last_seq"`
	LastHash    []byte `json:"last_hash,omitempty"`
	Checkpoints int    `json:"checkpoints"`
	// Signed is the seq of the last valid checkpoint: entries up to it are covered by the audit
	// key's signature; the later ones only by the chain.
	Signed   int64     `json:"signed_seq"`
	SignedAt time.Time `json:"signed_at,omitzero"`
	// Head is the head file's entry, 0 when there is none.
	Head int64 `json:"head_seq"`
	// Restores lists the restores from a backup that the trail records, oldest first: each is
	// a gap, the entries the restored database no longer holds.
	Restores []RestoreGap `json:"restores,omitempty"`
}

// RestoreGap is a restore entry of the trail, as [Verify] reports it.
type RestoreGap struct {
	Seq   int64     `json:"seq"` // the restore entry
	At    time.Time `json:"at"`
	Actor string    `json:"actor"`
	Restore
	// HeadVerified: the head file recorded before the restore is signed by the audit key, so
	// the trail did reach TrailSeq.
	HeadVerified bool `json:"head_verified"`
}

// pageSize is how many entries Verify reads at a time.
const pageSize = 1000

// Verify walks the whole trail in one consistent snapshot and checks, in this order: that the
// entries follow each other (no gap, each one's prev is the hash before it) and match their own
// hash; that every checkpoint is signed by pub and matches its entry; and, when head is not nil,
// that head is signed by pub and that the database still holds the entry it records.
//
// # Errors
//
// The first problem found is returned as a [*Problem] wrapping one of [ErrChanged],
// [ErrMissing], [ErrReordered], [ErrInserted], [ErrChainBroken], [ErrTruncated],
// [ErrCheckpointMismatch] or [ErrBadSignature], together with the report of what was read.
// Other errors are the database's.
func Verify(ctx context.Context, db store.Store, pub crypto.PublicKey, head *Head) (*Report, error) {
	rep := &Report{}
	var problem *Problem
	err := db.View(ctx, func(tx store.Tx) error {
		var err error
		problem, err = verifyTx(tx, pub, head, rep)
		return err
	})
	if err != nil {
		return rep, fmt.Errorf("audit: verify: %w", err)
	}
	if problem != nil {
		return rep, problem
	}
	return rep, nil
}

func verifyTx(tx store.Tx, pub crypto.PublicKey, head *Head, rep *Report) (*Problem, error) {
	prev := make([]byte, HashSize)
	var last int64
	for {
		page, err := tx.ListAudit(last+1, pageSize)
		if err != nil {
			return nil, err
		}
		for i := range page {
			e := &page[i]
			if e.Seq != last+1 {
				detail := fmt.Sprintf("entry %d is missing (deleted)", last+1)
				if e.Seq-1 > last+1 {
					detail = fmt.Sprintf("entries %d to %d are missing (deleted)", last+1, e.Seq-1)
				}
				return &Problem{Seq: last + 1, Err: ErrMissing, Detail: detail}, nil
			}
			linked := bytes.Equal(e.Prev, prev)
			if !linked || !bytes.Equal(ChainHash(e.Prev, *e), e.Hash) {
				return diagnose(tx, e, linked)
			}
			prev, last = e.Hash, e.Seq
			rep.Entries++
			if e.Kind == string(KindRestore) {
				rep.Restores = append(rep.Restores, restoreGap(e, pub))
			}
		}
		if len(page) < pageSize {
			break
		}
	}
	rep.Last = last
	if last > 0 {
		rep.LastHash = prev
	}

	var from int64 = 1
	for {
		cps, err := tx.Checkpoints(from, pageSize)
		if err != nil {
			return nil, err
		}
		for _, c := range cps {
			rep.Checkpoints++
			if p, err := checkAgainst(tx, c, pub, last, "checkpoint"); p != nil || err != nil {
				return p, err
			}
			rep.Signed, rep.SignedAt = c.Seq, c.At
			from = c.Seq + 1
		}
		if len(cps) < pageSize {
			break
		}
	}
	if head != nil {
		rep.Head = head.Seq
		if p, err := checkAgainst(tx, head.Checkpoint(), pub, last, "head file"); p != nil || err != nil {
			return p, err
		}
		if head.Seq > rep.Signed {
			rep.Signed, rep.SignedAt = head.Seq, head.At
		}
	}
	return nil, nil
}

// checkAgainst checks a signed checkpoint (from the database or the head file) against the
// verified chain, which ends at last.
func checkAgainst(tx store.Tx, c store.AuditCheckpoint, pub crypto.PublicKey, last int64, what string) (*Problem, error) {
	if err := CheckCheckpoint(c, pub); err != nil {
		return &Problem{Seq: c.Seq, Err: ErrBadSignature, Detail: fmt.Sprintf("the %s of entry %d is not signed by the audit key", what, c.Seq)}, nil
	}
	if c.Seq > last {
		return &Problem{Seq: last + 1, Err: ErrTruncated, Detail: fmt.Sprintf(
			"the trail ends at entry %d but the %s signed on %s records entry %d: its tail was removed or the database was restored from an older backup",
			last, what, c.At.Format(time.RFC3339), c.Seq)}, nil
	}
	e, err := tx.GetAudit(c.Seq)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(e.Hash, c.Hash) {
		return &Problem{Seq: c.Seq, Err: ErrCheckpointMismatch, Detail: fmt.Sprintf(
			"entry %d is not the one the %s signed on %s: the history up to it was rewritten, or this database was restored from an older backup and has diverged",
			c.Seq, what, c.At.Format(time.RFC3339))}, nil
	}
	return nil, nil
}

// diagnose names what happened at e, the first entry that does not follow the chain. linked
// tells whether e's prev is the hash of the entry before it.
func diagnose(tx store.Tx, e *store.AuditEntry, linked bool) (*Problem, error) {
	orig, err := originalSeq(tx, e)
	if err != nil {
		return nil, err
	}
	switch {
	case orig == e.Seq:
		// e is intact where it is, but does not follow the entry before it.
		return &Problem{Seq: e.Seq - 1, Err: ErrInserted, Detail: fmt.Sprintf(
			"entry %d does not follow entry %d: entry %d was inserted or replaced", e.Seq, e.Seq-1, e.Seq-1)}, nil
	case orig != 0:
		next, err := nextOriginal(tx, e.Seq)
		if err != nil {
			return nil, err
		}
		shifted := next == 0 || next == orig+1
		switch {
		case orig < e.Seq && shifted:
			return &Problem{Seq: orig, Err: ErrInserted, Detail: fmt.Sprintf(
				"entry %d is the former entry %d: %d entries were inserted before it", e.Seq, orig, e.Seq-orig)}, nil
		case orig > e.Seq && shifted:
			return &Problem{Seq: e.Seq, Err: ErrMissing, Detail: fmt.Sprintf(
				"entry %d is the former entry %d: %d entries were deleted and the later ones renumbered", e.Seq, orig, orig-e.Seq)}, nil
		}
		return &Problem{Seq: e.Seq, Err: ErrReordered, Detail: fmt.Sprintf("entry %d was moved from position %d", e.Seq, orig)}, nil
	}
	// e's content does not hash to e's hash anywhere: changed, or another entry's content.
	if j, err := contentOf(tx, e); err != nil {
		return nil, err
	} else if j != 0 {
		return &Problem{Seq: e.Seq, Err: ErrReordered, Detail: fmt.Sprintf("entry %d holds the content of entry %d", e.Seq, j)}, nil
	}
	what := "its content or hash"
	if !linked {
		what = "its link to the entry before it"
	}
	return &Problem{Seq: e.Seq, Err: ErrChanged, Detail: fmt.Sprintf("entry %d does not match its hash: %s was changed", e.Seq, what)}, nil
}

// originalSeq returns the seq at which e's stored prev and hash are consistent with its
// content, or 0. It tries the positions nearest e.Seq first.
func originalSeq(tx store.Tx, e *store.AuditEntry) (int64, error) {
	last, err := tx.LastAudit()
	if err != nil {
		return 0, err
	}
	c := *e
	for d := int64(0); d <= last.Seq; d++ {
		for _, s := range []int64{e.Seq + d, e.Seq - d} {
			if s < 1 || s > last.Seq+1 || (d == 0 && s != e.Seq) {
				continue
			}
			c.Seq = s
			if bytes.Equal(ChainHash(e.Prev, c), e.Hash) {
				return s, nil
			}
		}
	}
	return 0, nil
}

// nextOriginal returns the original seq of the entry stored after seq, or 0 when there is
// none or it is not consistent anywhere.
func nextOriginal(tx store.Tx, seq int64) (int64, error) {
	next, err := tx.GetAudit(seq + 1)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return originalSeq(tx, next)
}

// contentOf returns the seq of another entry whose prev and hash e's content matches, or 0.
func contentOf(tx store.Tx, e *store.AuditEntry) (int64, error) {
	var last int64
	for {
		page, err := tx.ListAudit(last+1, pageSize)
		if err != nil {
			return 0, err
		}
		for _, o := range page {
			c := *e
			c.Seq = o.Seq
			if o.Seq != e.Seq && bytes.Equal(ChainHash(o.Prev, c), o.Hash) {
				return o.Seq, nil
			}
			last = o.Seq
		}
		if len(page) < pageSize {
			return 0, nil
		}
	}
}

// Reaches checks that db still holds the entry head records, with the same hash: a database
// restored from a backup older than the head, or cut short, does not. It checks no signature
// and no chain ([Verify] does); `keyarc restore` uses it to refuse an older backup.
//
// It returns nil, or a [*Problem] wrapping [ErrTruncated] or [ErrCheckpointMismatch].
func Reaches(ctx context.Context, db store.Store, head *Head) error {
	var p *Problem
	err := db.View(ctx, func(tx store.Tx) error {
		var last int64
		if e, err := tx.LastAudit(); err == nil {
			last = e.Seq
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if head.Seq > last {
			p = &Problem{Seq: last + 1, Err: ErrTruncated, Detail: fmt.Sprintf(
				"the trail ends at entry %d but the head file signed on %s records entry %d: this database is older than the audit trail",
				last, head.At.Format(time.RFC3339), head.Seq)}
			return nil
		}
		e, err := tx.GetAudit(head.Seq)
		if err != nil {
			return err
		}
		if !bytes.Equal(e.Hash, head.Hash) {
			p = &Problem{Seq: head.Seq, Err: ErrCheckpointMismatch, Detail: fmt.Sprintf(
				"entry %d is not the one the head file signed on %s: this database has another history", head.Seq, head.At.Format(time.RFC3339))}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: reaches head: %w", err)
	}
	if p != nil {
		return p
	}
	return nil
}

// restoreGap reads a restore entry.
func restoreGap(e *store.AuditEntry, pub crypto.PublicKey) RestoreGap {
	g := RestoreGap{Seq: e.Seq, At: e.At, Actor: e.Actor}
	var d Details
	if json.Unmarshal([]byte(e.Details), &d) == nil && d.Restore != nil {
		g.Restore = *d.Restore
		if h := d.Restore.Head; h != nil {
			g.HeadVerified = CheckCheckpoint(h.Checkpoint(), pub) == nil
		}
	}
	return g
}
