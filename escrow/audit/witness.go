package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/keyarc/keyarc/escrow/store"
)

// Witness remembers the last entry of the trail that this process knows to be committed: the
// head it read at start ([Witness.Start]), then each entry it appended once the transaction
// that holds it has committed ([Witness.Track]), or a later entry of another process or node
// once it has checked that the trail still holds its own. The trail's head only moves
// forward, so a database whose trail no longer holds that entry, with that hash, has lost
// its tail: rows deleted behind the appliance's back, which the chain alone cannot show
// (the entries left still link up) and which the next checkpoint would otherwise sign.
//
// The check costs no round trip on the append path: [Witness.Link] compares the head the
// store reads anyway ([store.AuditLog.AuditHead]) with the remembered entry and with the
// entries this process appended and has not seen commit, which shows at once a tail cut
// short. A head that another process or node moved (a command-line tool, another node on
// PostgreSQL) is let through: whether the trail still holds the remembered entry under
// others' entries is read by [Witness.Check], which [Checkpointer] runs on committed data
// before it signs and at each periodic look at the trail (every few seconds), so that such a
// loss, or a tail removed while nothing is appended, is seen within seconds and never signed.
//
// Once the trail fails the check, the witness keeps the [*Problem] ([Witness.Err]): every
// later append and checkpoint is refused with it, until an operator has looked (a restart
// checks the database against the head file, which the [Checkpointer] has by then made
// record the lost entry). The zero Witness is ready to use; it is safe for concurrent use.
type Witness struct {
	// Logger receives the one error line that reports a lost tail; nil discards it.
	Logger *slog.Logger

	mu    sync.Mutex
	known bool   // seq and hash hold the remembered entry (seq 0: the trail was empty)
	seq   int64  // the last entry known to be committed
	hash  []byte // its hash
	// mine holds the entries this process appended that are not known to be committed yet,
	// seq to hash: a head equal to one of them is this process's own, in flight or just
	// committed. An entry leaves it when its function fails, its Update returns, or the
	// remembered entry passes it.
	mine map[int64][]byte
	// cur collects the entries the running Update function appends (see Track): the store
	// runs its functions one at a time, on its writer.
	cur     *appended
	problem *Problem
	alarm   chan struct{} // closed when problem is set
}

// appended is what one Update function appended: its last entry, and all of them.
type appended struct {
	seq     int64
	hash    []byte
	entries []store.AuditEntry // Seq and Hash only
}

// Start remembers the trail's last committed entry as db holds it now. Call it once the
// database has been checked against its head file and before anything appends; a witness
// that was not started remembers the first head its first append reads.
func (w *Witness) Start(ctx context.Context, db store.Store) error {
	var seq int64
	var hash []byte
	err := db.View(ctx, func(tx store.Tx) error {
		e, err := tx.LastAudit()
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil
		case err != nil:
			return err
		}
		seq, hash = e.Seq, e.Hash
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: witness: read the trail's head: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance(seq, hash)
	return nil
}

// Head returns the remembered entry: the last one known to be committed (0 and nil when the
// trail was empty or the witness knows nothing yet).
func (w *Witness) Head() (seq int64, hash []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq, w.hash
}

// Err returns the [*Problem] found, nil while the trail holds the remembered entry.
func (w *Witness) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.problem == nil {
		return nil
	}
	return w.problem
}

// Lost returns a channel that is closed when the witness finds the trail lost its entry
// ([Witness.Err] then returns the problem): a metric or an alert waits on it.
func (w *Witness) Lost() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.alarm == nil {
		w.alarm = make(chan struct{})
	}
	return w.alarm
}

// Track returns db with its Update calls observed, so that the witness learns which of the
// entries it appended have committed: those of a function whose Update returned nil. db's
// writer must run the Update functions one at a time (the SQLite and PostgreSQL backends
// do). Appends must go through the returned store for the witness to follow them; entries
// appended through another handle are checked like another process's.
func (w *Witness) Track(db store.Store) store.Store {
	return &tracked{Store: db, w: w}
}

// tracked is a store whose Update calls tell the witness what committed.
type tracked struct {
	store.Store
	w *Witness
}

func (t *tracked) Update(ctx context.Context, fn func(store.Tx) error) error {
	var mine appended
	err := t.Store.Update(ctx, func(tx store.Tx) error {
		t.w.enter(&mine)
		defer t.w.leave()
		err := fn(tx)
		if err != nil {
			// The function's savepoint is rolled back, and its entries with it.
			t.w.forget(&mine)
		}
		return err
	})
	if err != nil {
		t.w.forget(&mine)
	} else {
		t.w.committed(&mine)
	}
	return err
}

func (w *Witness) enter(a *appended) {
	w.mu.Lock()
	w.cur = a
	w.mu.Unlock()
}

func (w *Witness) leave() {
	w.mu.Lock()
	w.cur = nil
	w.mu.Unlock()
}

// forget drops the entries of a function that was rolled back.
func (w *Witness) forget(a *appended) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.drop(a)
	a.seq, a.hash, a.entries = 0, nil, nil
}

// drop removes a's entries from mine. An entry of a later function may have taken the seq
// of one rolled back (its caller is told after the writer has gone on): it stays. w.mu is
// held.
func (w *Witness) drop(a *appended) {
	for _, e := range a.entries {
		if h, ok := w.mine[e.Seq]; ok && bytes.Equal(h, e.Hash) {
			delete(w.mine, e.Seq)
		}
	}
}

// committed remembers the last entry of a function whose transaction committed.
func (w *Witness) committed(a *appended) {
	if a.seq == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.problem == nil {
		w.advance(a.seq, a.hash)
	}
	w.drop(a)
}

// advance remembers entry seq as committed, if it is later than the remembered one, and
// drops the entries of this process it covers. w.mu is held.
func (w *Witness) advance(seq int64, hash []byte) {
	if w.known && seq <= w.seq {
		return
	}
	w.known, w.seq, w.hash = true, seq, bytes.Clone(hash)
	for s := range w.mine {
		if s <= seq {
			delete(w.mine, s)
		}
	}
}

// linked records an entry this process appended, not yet known to be committed.
func (w *Witness) linked(e store.AuditEntry) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mine == nil {
		w.mine = make(map[int64][]byte)
	}
	w.mine[e.Seq] = e.Hash
	if a := w.cur; a != nil {
		a.seq, a.hash = e.Seq, e.Hash
		a.entries = append(a.entries, store.AuditEntry{Seq: e.Seq, Hash: e.Hash})
	}
}

// fail keeps p as the witness's problem (the first one found stays), logs it and closes
// Lost, once. It returns the problem kept.
func (w *Witness) fail(p *Problem) *Problem {
	w.mu.Lock()
	if w.problem != nil {
		p = w.problem
		w.mu.Unlock()
		return p
	}
	w.problem = p
	if w.alarm == nil {
		w.alarm = make(chan struct{})
	}
	close(w.alarm)
	w.mu.Unlock()
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log.Error("AUDIT TRAIL LOST ENTRIES THIS APPLIANCE HAD WRITTEN OR READ: audited operations and checkpoints are refused; run `keyarc audit verify`",
		"remembered_seq", p.Seq, "problem", p.Error())
	return p
}

// admit checks the head seq, hash that an append in tx is about to follow against the
// remembered entry. The head is the committed trail's, or an entry appended earlier in the
// same transaction: the latter are this process's own (mine).
func (w *Witness) admit(tx store.AuditLog, seq int64, hash []byte) error {
	w.mu.Lock()
	if w.problem != nil {
		defer w.mu.Unlock()
		return w.problem
	}
	if !w.known {
		// Not started: the first head read is the committed trail's.
		w.advance(seq, hash)
		w.mu.Unlock()
		return nil
	}
	kseq, khash := w.seq, w.hash
	switch {
	case seq == kseq && bytes.Equal(hash, khash):
		w.mu.Unlock()
		return nil
	case seq > kseq && hash != nil && bytes.Equal(w.mine[seq], hash):
		w.mu.Unlock()
		return nil
	}
	w.mu.Unlock()
	if seq <= kseq {
		return w.fail(w.shorter(kseq, seq, hash))
	}
	// Entries another process or node appended follow ours. Whether the trail still holds
	// ours is for [Witness.Check] to say, on committed data and off the writer: a read here
	// would hold every node's writer lock for one more round trip at nearly every
	// transaction of a cluster. The remembered entry stays until Check (or this process's
	// next commit) moves it, and the checkpointer checks before it signs.
	return nil
}

// shorter describes a head (seq, hash) at or before the remembered entry kseq.
func (w *Witness) shorter(kseq, seq int64, hash []byte) *Problem {
	if seq == kseq {
		return &Problem{Seq: kseq, Err: ErrChanged, Detail: fmt.Sprintf(
			"the trail's last entry %d is not the entry %d this appliance wrote or read (its hash differs): it was deleted and replaced, or changed", seq, kseq)}
	}
	gone := fmt.Sprintf("entry %d was", kseq)
	if seq+1 < kseq {
		gone = fmt.Sprintf("entries %d to %d were", seq+1, kseq)
	}
	return &Problem{Seq: seq + 1, Err: ErrTruncated, Detail: fmt.Sprintf(
		"the trail ends at entry %d but this appliance had written or read entry %d: %s deleted from the database",
		seq, kseq, gone)}
}

// compare checks entry e (nil when missing), read at the remembered seq kseq, against the
// remembered hash.
func (w *Witness) compare(kseq int64, khash []byte, e *store.AuditEntry) *Problem {
	switch {
	case e == nil:
		return &Problem{Seq: kseq, Err: ErrMissing, Detail: fmt.Sprintf(
			"entry %d, which this appliance wrote or read, was deleted from the database", kseq)}
	case !bytes.Equal(e.Hash, khash):
		return &Problem{Seq: kseq, Err: ErrChanged, Detail: fmt.Sprintf(
			"entry %d is not the entry this appliance wrote or read (its hash differs): it was deleted and replaced, or changed", kseq)}
	}
	return nil
}

// remembered is the witness's entry as it was before a View began.
type remembered struct {
	known bool
	seq   int64
	hash  []byte
}

// remember returns the remembered entry. Read before a View, it was committed before the
// View's snapshot, which must hold it: read during the View, it may have committed since.
func (w *Witness) remember() remembered {
	if w == nil {
		return remembered{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return remembered{known: w.known, seq: w.seq, hash: w.hash}
}

// checkCommitted checks, in a View (committed data) whose last entry is last (nil: the trail
// is empty), that the trail still holds r, the entry remembered before the View began, and
// then remembers last. It returns the witness's [*Problem], or an error of the store.
func (w *Witness) checkCommitted(tx store.AuditLog, last *store.AuditEntry, r remembered) error {
	var lseq int64
	var lhash []byte
	if last != nil {
		lseq, lhash = last.Seq, last.Hash
	}
	if err := w.Err(); err != nil {
		return err
	}
	known, kseq, khash := r.known, r.seq, r.hash
	if known && kseq > 0 {
		var p *Problem
		switch {
		case lseq < kseq || lseq == kseq && !bytes.Equal(lhash, khash):
			p = w.shorter(kseq, lseq, lhash)
		case lseq > kseq:
			e, err := tx.GetAudit(kseq)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			p = w.compare(kseq, khash, e)
		}
		if p != nil {
			return w.fail(p)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.problem != nil {
		return w.problem
	}
	w.advance(lseq, lhash)
	return nil
}

// Check reads the committed trail of db and checks that it still holds the remembered
// entry; on success the trail's last entry becomes the remembered one. It returns the
// witness's [*Problem] (wrapping [ErrTruncated], [ErrMissing] or [ErrChanged]), or an error of
// the store.
func (w *Witness) Check(ctx context.Context, db store.Store) error {
	var problem error
	r := w.remember()
	err := db.View(ctx, func(tx store.Tx) error {
		last, err := tx.LastAudit()
		switch {
		case errors.Is(err, store.ErrNotFound):
			last = nil
		case err != nil:
			return err
		}
		problem = w.checkCommitted(tx, last, r)
		var p *Problem
		if problem != nil && !errors.As(problem, &p) {
			return problem
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: witness: %w", err)
	}
	return problem
}
