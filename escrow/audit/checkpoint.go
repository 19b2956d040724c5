package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Defaults of a [Checkpointer].
const (
	// DefaultEvery is how many entries may follow the last checkpoint before a new one is made.
	DefaultEvery = 1000
	// DefaultInterval is how long new entries may stay without a checkpoint: it bounds the
	// part of the trail a truncation could remove unnoticed.
	DefaultInterval = time.Minute
)

// checkpointDomain separates checkpoint signatures from any other use of the audit key.
const checkpointDomain = "keyarc audit checkpoint v1"

// CheckpointDigest is what the audit key signs: SHA-256 over a domain string, the entry's seq
// (8 bytes, big-endian), its hash, and the checkpoint's time (unix microseconds, 8 bytes). The
// time is signed too, so that a head file's date can be trusted.
func CheckpointDigest(seq int64, hash []byte, at time.Time) []byte {
	h := sha256.New()
	h.Write([]byte(checkpointDomain))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	h.Write(n[:])
	h.Write(hash)
	binary.BigEndian.PutUint64(n[:], uint64(at.UnixMicro()))
	h.Write(n[:])
	return h.Sum(nil)
}

// KeyID is the SHA-256 of a public key's SubjectPublicKeyInfo.
func KeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: key ID: %w", err)
	}
	sum := sha256.Sum256(spki)
	return sum[:], nil
}

// verifySignature checks a signature over a SHA-256 digest: ECDSA (ASN.1), RSA PKCS#1 v1.5, or
// Ed25519 over the digest itself.
func verifySignature(pub crypto.PublicKey, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
	case ed25519.PublicKey:
		return ed25519.Verify(k, digest, sig)
	}
	return false
}

// signerOpts picks the options to sign a SHA-256 digest with s.
func signerOpts(pub crypto.PublicKey) crypto.SignerOpts {
	if _, ok := pub.(ed25519.PublicKey); ok {
		return crypto.Hash(0)
	}
	return crypto.SHA256
}

// CheckCheckpoint verifies a checkpoint's signature and key ID against pub.
//
// It returns an error wrapping [ErrBadSignature] when they do not match.
func CheckCheckpoint(c store.AuditCheckpoint, pub crypto.PublicKey) error {
	id, err := KeyID(pub)
	if err != nil {
		return err
	}
	if string(id) != string(c.KeyID) {
		return fmt.Errorf("%w: checkpoint of entry %d names key %x, not the audit key %x", ErrBadSignature, c.Seq, c.KeyID, id)
	}
	if !verifySignature(pub, CheckpointDigest(c.Seq, c.Hash, c.At), c.Signature) {
		return fmt.Errorf("%w: checkpoint of entry %d", ErrBadSignature, c.Seq)
	}
	return nil
}

// Head is the latest checkpoint, kept in a file outside the database ([WriteHead]).
type Head struct {
	Seq       int64     `json:"seq"`
	Hash      []byte    `json:"hash"`
	At        time.Time `json:"at"`
	KeyID     []byte    `json:"key_id"`
	Signature []byte    `json:"signature"`
}

// Checkpoint returns the head as a store checkpoint.
func (h *Head) Checkpoint() store.AuditCheckpoint {
	return store.AuditCheckpoint{Seq: h.Seq, Hash: h.Hash, At: h.At, KeyID: h.KeyID, Signature: h.Signature}
}

// ErrNoHead: there is no head file.
var ErrNoHead = errors.New("audit: no head file")

// ReadHead reads a head file. A missing file gives an error wrapping [ErrNoHead].
func ReadHead(path string) (*Head, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoHead, path)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: read head: %w", err)
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil || h.Seq < 1 || len(h.Hash) != HashSize {
		return nil, fmt.Errorf("%w: head file %s is not a keyarc audit head", ErrBadSignature, path)
	}
	h.At = h.At.UTC()
	return &h, nil
}

// WriteHead replaces the head file atomically: it writes a temporary file in the same folder,
// syncs it, renames it over path and syncs the folder, so that after a crash the file is
// either the old head or the new one.
func WriteHead(path string, h *Head) error {
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return fmt.Errorf("audit: write head: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".audit-head-*")
	if err != nil {
		return fmt.Errorf("audit: write head: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("audit: write head: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("audit: write head: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit: write head: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("audit: write head: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("audit: write head: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: write head: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: write head: sync folder: %w", err)
	}
	return nil
}

// Checkpointer signs checkpoints of the chain with the audit key: when [DefaultEvery] (or
// Every) entries follow the last checkpoint, when new entries are older than Interval, and when
// asked ([Checkpointer.Checkpoint], for instance at shutdown). Fill the exported fields, then
// call Run in a goroutine.
type Checkpointer struct {
	DB     store.Store
	Signer crypto.Signer
	// HeadPath is the head file; empty keeps checkpoints in the database only.
	HeadPath string
	Every    int           // zero means DefaultEvery
	Interval time.Duration // zero means DefaultInterval
	Logger   *slog.Logger
	Now      func() time.Time
	// Leads, when set, reports whether this node makes the periodic checkpoints: with several
	// nodes on one database only the leader does (escrow.Leader.Leads); the others' entries
	// are in the same chain, so the leader's checkpoints cover them. Checkpoint, when asked,
	// works on every node. Nil means always (one node).
	Leads func() bool
	// Witness, when set, is the process's memory of the trail's last committed entry
	// ([Witness]): no checkpoint is signed over a trail that no longer holds it, every
	// periodic look at the trail checks it (on every node, leading or not), and once it
	// finds the tail lost, the head file is made to record the lost entry, signed, so that
	// `keyarc audit verify` and the next start see the loss ([Checkpointer.KeepEvidence]).
	Witness *Witness

	mu   sync.Mutex // one checkpoint at a time
	kept bool       // the witness's lost entry is in the head file (under mu)
	hint atomic.Int64
	wake chan struct{}
	once sync.Once
	// seen is the last checkpoint read from or stored in the database (nil before any): a
	// wake by Appended reads the database only when the hinted entries could make a
	// checkpoint due against it. Checkpoints only advance, so a stale one makes the reading
	// happen sooner, never later; the periodic check always reads.
	seenMu sync.Mutex
	seen   *store.AuditCheckpoint
}

// see records cp as the last checkpoint known to be in the database.
func (c *Checkpointer) see(cp *store.AuditCheckpoint) {
	if cp == nil {
		return
	}
	c.seenMu.Lock()
	defer c.seenMu.Unlock()
	if c.seen == nil || cp.Seq >= c.seen.Seq {
		c.seen = cp
	}
}

// notDue reports whether, by the last checkpoint seen, the entries hinted so far make no
// checkpoint due: fewer than Every entries follow it and it is not stale (younger than
// Interval). A
// checkpoint not yet seen (or none in the database) gives false: the database is read.
func (c *Checkpointer) notDue() bool {
	c.seenMu.Lock()
	cp := c.seen
	c.seenMu.Unlock()
	return cp != nil && c.hint.Load()-cp.Seq < c.every() && !c.stale(cp)
}

// stale reports whether checkpoint cp is old enough to make the next one due: Interval old, or
// dated in the clock's future (made before the clock was stepped back, or by a leader whose
// clock was ahead), its age unknown.
func (c *Checkpointer) stale(cp *store.AuditCheckpoint) bool {
	age := c.now().Sub(cp.At)
	return age < 0 || age >= c.interval()
}

func (c *Checkpointer) init() {
	c.once.Do(func() { c.wake = make(chan struct{}, 1) })
}

func (c *Checkpointer) now() time.Time {
	if c.Now != nil {
		return c.Now().UTC()
	}
	return time.Now().UTC()
}

func (c *Checkpointer) every() int64 {
	if c.Every > 0 {
		return int64(c.Every)
	}
	return DefaultEvery
}

func (c *Checkpointer) interval() time.Duration {
	if c.Interval > 0 {
		return c.Interval
	}
	return DefaultInterval
}

func (c *Checkpointer) log() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Appended tells the checkpointer that entry seq was appended (perhaps not yet committed). It
// never blocks, so it may be called from a store Update function.
func (c *Checkpointer) Appended(seq int64) {
	c.init()
	for {
		old := c.hint.Load()
		if seq <= old || c.hint.CompareAndSwap(old, seq) {
			break
		}
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run makes checkpoints as they fall due until ctx ends. Entries appended by other processes
// (the command-line tools, other nodes) are seen at the next periodic check, which reads the
// database every Interval/4 (at most 5 s); an entry of this process ([Checkpointer.Appended])
// makes it read at once when it could make a checkpoint due. With a Witness, each of these
// reads also checks that the trail still holds the witness's entry, on a node that does not
// lead too, and a loss makes the head file record the lost entry ([Checkpointer.KeepEvidence]).
func (c *Checkpointer) Run(ctx context.Context) {
	c.init()
	tick := time.NewTicker(min(c.interval()/4, 5*time.Second))
	defer tick.Stop()
	// A failure that lasts (the token refused its PIN, say) is logged once per distinct
	// cause, and its end once, not at every tick.
	failing := ""
	var lost <-chan struct{}
	if c.Witness != nil {
		lost = c.Witness.Lost()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
			// An entry of this process: the database is read only if it could make a
			// checkpoint due (see notDue); the tick below reads it anyway.
			if c.notDue() {
				continue
			}
		case <-lost:
			// The witness found the tail lost (an append refused): keep the evidence now.
			lost = nil
			if err := c.KeepEvidence(); err != nil {
				c.log().Error("audit trail: the lost entry could not be recorded in the head file", "err", err)
			}
			continue
		case <-tick.C:
		}
		var err error
		if c.Leads != nil && !c.Leads() {
			// Not the leader: no checkpoint, but the trail must still hold this node's entries.
			if c.Witness == nil {
				continue
			}
			err = c.Witness.Check(ctx, c.DB)
		} else {
			err = c.checkpointIfDue(ctx)
		}
		switch {
		case ctx.Err() != nil:
		case err != nil && err.Error() != failing:
			failing = err.Error()
			c.log().Error("audit checkpoint or check of the trail failed; retried at each interval, logged again only if the cause changes", "err", err)
		case err == nil && failing != "":
			failing = ""
			c.log().Info("audit checkpoint works again")
		}
	}
}

// checkpointIfDue makes a checkpoint if Every entries or Interval have passed since the last.
func (c *Checkpointer) checkpointIfDue(ctx context.Context) error {
	lastSeq, cp, err := c.state(ctx)
	if err != nil {
		return err
	}
	if hint := c.hint.Load(); hint-cpSeq(cp) >= c.every() && lastSeq < hint {
		// The hinted entry's batch may not have committed yet: an empty update queued now
		// returns only after it has.
		if err := c.DB.Update(ctx, func(store.Tx) error { return nil }); err != nil {
			return err
		}
		if lastSeq, cp, err = c.state(ctx); err != nil {
			return err
		}
	}
	switch {
	case lastSeq <= cpSeq(cp):
		return nil
	case lastSeq-cpSeq(cp) >= c.every(), cp == nil, c.stale(cp):
		_, err := c.Checkpoint(ctx)
		return err
	}
	return nil
}

func cpSeq(cp *store.AuditCheckpoint) int64 {
	if cp == nil {
		return 0
	}
	return cp.Seq
}

// state returns the last entry's seq and the last checkpoint (nil if none).
func (c *Checkpointer) state(ctx context.Context) (int64, *store.AuditCheckpoint, error) {
	var last int64
	var cp *store.AuditCheckpoint
	r := c.Witness.remember() // before the View's snapshot, which must hold it
	err := c.DB.View(ctx, func(tx store.Tx) error {
		e, err := tx.LastAudit()
		switch {
		case err == nil:
			last = e.Seq
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		cp, err = tx.LastCheckpoint()
		if errors.Is(err, store.ErrNotFound) {
			cp, err = nil, nil
		}
		if err != nil {
			return err
		}
		return c.checkWitness(tx, e, r)
	})
	if err != nil {
		return 0, nil, c.refused(err)
	}
	c.see(cp)
	return last, cp, nil
}

// checkWitness checks, in a View, that the trail whose last entry is last (nil when empty)
// still holds r, the witness's entry as it was before the View began.
func (c *Checkpointer) checkWitness(tx store.AuditLog, last *store.AuditEntry, r remembered) error {
	if c.Witness == nil {
		return nil
	}
	return c.Witness.checkCommitted(tx, last, r)
}

// refused wraps an error of a checkpoint's reading: a [*Problem] of the witness says the
// checkpoint is refused.
func (c *Checkpointer) refused(err error) error {
	var p *Problem
	if errors.As(err, &p) {
		return fmt.Errorf("audit: checkpoint refused: the trail lost entries this appliance had written or read: %w", p)
	}
	return fmt.Errorf("audit: checkpoint: %w", err)
}

// KeepEvidence makes the head file record the entry the witness remembers, signed, once the
// witness has found that the trail lost it: the database can no longer prove the entry
// existed, and the signed head file does, to `keyarc audit verify` (which then reports the
// trail truncated, or an entry that is not the one signed) and to the next start (which
// refuses the database until the loss is recorded with `keyarc restore --force`). A head
// file already at or beyond that entry is left as it is: it shows the loss already. It does
// nothing while the witness finds no problem, or without a witness or head file.
func (c *Checkpointer) KeepEvidence() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keepEvidence()
}

// keepEvidence is KeepEvidence with c.mu held.
func (c *Checkpointer) keepEvidence() error {
	if c.Witness == nil || c.Witness.Err() == nil || c.HeadPath == "" || c.kept {
		return nil
	}
	seq, hash := c.Witness.Head()
	if seq == 0 {
		c.kept = true
		return nil
	}
	if h, err := ReadHead(c.HeadPath); err == nil && h.Seq >= seq {
		c.kept = true
		return nil
	}
	cp, err := c.sign(&store.AuditEntry{Seq: seq, Hash: hash})
	if err != nil {
		return err
	}
	if err := WriteHead(c.HeadPath, &Head{Seq: cp.Seq, Hash: cp.Hash, At: cp.At, KeyID: cp.KeyID, Signature: cp.Signature}); err != nil {
		return err
	}
	c.kept = true
	c.log().Error("AUDIT TRAIL: the head file now records the lost entry, signed by the audit key; `keyarc audit verify` and the next start report the loss",
		"seq", seq, "head_file", c.HeadPath)
	return nil
}

// Checkpoint signs the last committed entry (if no checkpoint covers it yet), stores the
// checkpoint and writes the head file. It returns the latest checkpoint, nil when the trail is
// empty. Every signature is verified before it is stored. With a [Witness], a trail that no
// longer holds the witness's entry is not signed: the error wraps the witness's [*Problem],
// and the head file is made to record the lost entry ([Checkpointer.KeepEvidence]).
func (c *Checkpointer) Checkpoint(ctx context.Context) (*store.AuditCheckpoint, error) {
	if c.Witness != nil && c.Witness.Err() != nil {
		if err := c.KeepEvidence(); err != nil {
			c.log().Error("audit trail: the lost entry could not be recorded in the head file", "err", err)
		}
		return nil, c.refused(c.Witness.Err())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var last *store.AuditEntry
	var cp *store.AuditCheckpoint
	r := c.Witness.remember() // before the View's snapshot, which must hold it
	err := c.DB.View(ctx, func(tx store.Tx) error {
		var err error
		last, err = tx.LastAudit()
		if errors.Is(err, store.ErrNotFound) {
			last = nil
		} else if err != nil {
			return err
		}
		if err := c.checkWitness(tx, last, r); err != nil {
			return err
		}
		if last == nil {
			return store.ErrNotFound
		}
		cp, err = tx.LastCheckpoint()
		if errors.Is(err, store.ErrNotFound) {
			cp, err = nil, nil
		}
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	var p *Problem
	if errors.As(err, &p) {
		if err := c.keepEvidence(); err != nil {
			c.log().Error("audit trail: the lost entry could not be recorded in the head file", "err", err)
		}
		return nil, c.refused(err)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint: %w", err)
	}
	if cp == nil || cp.Seq < last.Seq {
		if cp, err = c.sign(last); err != nil {
			return nil, err
		}
		err := c.DB.Update(ctx, func(tx store.Tx) error { return tx.InsertCheckpoint(*cp) })
		if errors.Is(err, store.ErrConflict) {
			// Another node checkpointed the same entry first (at shutdown, or while the
			// leadership changed hands): its checkpoint is as good, if it is of this entry.
			var other *store.AuditCheckpoint
			if err2 := c.DB.View(ctx, func(tx store.Tx) (err error) { other, err = tx.LastCheckpoint(); return err }); err2 == nil &&
				other.Seq == cp.Seq && string(other.Hash) == string(cp.Hash) {
				cp, err = other, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("audit: store checkpoint: %w", err)
		}
		c.log().Info("audit checkpoint", "seq", cp.Seq)
	}
	c.see(cp)
	if c.HeadPath != "" {
		if h, err := ReadHead(c.HeadPath); err == nil && h.Seq == cp.Seq && string(h.Hash) == string(cp.Hash) {
			return cp, nil
		}
		if err := WriteHead(c.HeadPath, &Head{Seq: cp.Seq, Hash: cp.Hash, At: cp.At, KeyID: cp.KeyID, Signature: cp.Signature}); err != nil {
			return cp, err
		}
	}
	return cp, nil
}

func (c *Checkpointer) sign(e *store.AuditEntry) (*store.AuditCheckpoint, error) {
	pub := c.Signer.Public()
	id, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	at := time.UnixMicro(c.now().UnixMicro()).UTC()
	digest := CheckpointDigest(e.Seq, e.Hash, at)
	sig, err := c.Signer.Sign(rand.Reader, digest, signerOpts(pub))
	if err != nil {
		return nil, fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	if !verifySignature(pub, digest, sig) {
		return nil, fmt.Errorf("%w: the audit key's signature of checkpoint %d does not verify", ErrBadSignature, e.Seq)
	}
	return &store.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, At: at, KeyID: id, Signature: sig}, nil
}
