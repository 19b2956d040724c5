// Package audit is keyarc's tamper-evident audit trail: what an entry says ([Kind],
// [Details]), how entries are appended ([Append], inside the store transaction of the change
// they record), how the chain is checkpointed with the audit key in the token ([Checkpointer],
// [Head]) and how it is verified ([Verify]).
//
// # The chain
//
// Every entry carries the SHA-256 of the entry before it and of its own fields
// ([ChainHash]). A changed byte, a deleted entry, two entries swapped or an entry inserted
// in the middle breaks the chain where it happened. Recomputing every hash after the change
// needs no secret, so the chain alone does not resist a determined forger: checkpoints do. A
// checkpoint is the audit key's signature over (seq, hash, time) of an entry; it is stored in
// the database and, the latest one, in a head file outside it ([WriteHead]). A rewritten
// history no longer matches the signed hashes; a truncated tail or a database restored from an
// older backup no longer reaches the head file's entry.
//
// The entries after the last checkpoint are guarded by the running process instead: a
// [Witness] remembers the last entry it knows committed, and an append or a checkpoint over a
// trail that no longer holds it is refused (rows deleted behind the appliance's back would
// otherwise leave a shorter chain that still links up, and the next checkpoint would sign
// it). The loss is then made permanent evidence: the head file records the lost entry,
// signed ([Checkpointer.KeepEvidence]).
//
// # Secrets
//
// Details is a fixed set of fields, none of which is ever a key, a share, a PIN, a password or
// an enrollment code: the type, not the caller's care, keeps secrets out.
//
// # Imports and concurrency
//
// audit imports escrow/store and the standard library only; escrow imports it, never the
// reverse. It receives the audit key as a crypto.Signer and knows nothing of hsm. [Append] runs
// on the store's writer goroutine and must stay quick; a [Checkpointer] and a [Witness] are
// safe for concurrent use.
package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Kind is what an entry records.
type Kind string

// The kinds of entries.
const (
	KindEnroll             Kind = "enroll"               // a certificate issued (no key archived)
	KindArchive            Kind = "archive"              // a certificate issued and its key archived, or a key imported
	KindEnrollRefused      Kind = "enroll-refused"       // an enrollment refused by policy
	KindCodeCreated        Kind = "code-created"         // an enrollment code made (never the code itself)
	KindPendingSubmitted   Kind = "pending-submitted"    // a request waiting for an admin (KRA enrollment)
	KindPendingDecided     Kind = "pending-decided"      // an admin issued or denied a pending request
	KindRecoverySetChanged Kind = "recovery-set-changed" // a new recovery set (epoch)
	KindRecoveryRequested  Kind = "recovery-requested"   // an officer asked for a recovery, or an admin for a reseal
	KindApproval           Kind = "approval"             // a KRA's signed approval, with its signature
	KindApprovalRefused    Kind = "approval-refused"     // an approval refused (bad signature, wrong KRA, ...)
	KindRecoveryFetched    Kind = "recovery-fetched"     // recovered keys delivered to the officer
	KindRecoveryCancelled  Kind = "recovery-cancelled"
	KindRecoveryExpired    Kind = "recovery-expired"
	KindReseal             Kind = "reseal"         // records moved to the current recovery set
	KindSweep              Kind = "sweep"          // issuances a crash left half-done, marked failed
	KindStartup            Kind = "startup"        // the appliance started
	KindConfigChanged      Kind = "config-changed" // the configuration differs from the last start's
	KindLoginFailed        Kind = "login-failed"   // a credential or an enrollment code refused, or a role refused
	KindPINFailed          Kind = "pin-failed"     // the appliance token refused the PIN at start-up
	KindRestore            Kind = "restore"        // the database was restored from a backup (see [Restore])
	KindBulkSubmitted      Kind = "bulk-submitted" // a bulk job queued (its ID, kind, template and item count)
	KindBulkPasswords      Kind = "bulk-passwords" // a keygen job's PKCS#12 passwords released (once)
	// KindRevoke: certificates revoked (Serials, RevocationReason), or revoked ones whose
	// reason moved to keyCompromise (KeyCompromise), by a revoke request or a recovery's fetch.
	KindRevoke Kind = "revoke"
)

// Details is an entry's structured content, stored as JSON. Its fields are the only things an
// entry can say: none may ever hold a key, a share, a PIN, a password or an enrollment code.
type Details struct {
	Template    string   `json:"template,omitempty"`
	Serial      string   `json:"serial,omitempty"` // certificate serial (lower-case hex)
	Serials     []string `json:"serials,omitempty"`
	Mailbox     string   `json:"mailbox,omitempty"`
	Mailboxes   []string `json:"mailboxes,omitempty"`
	Role        string   `json:"role,omitempty"`
	Record      string   `json:"record,omitempty"` // escrow record ID
	Records     []string `json:"records,omitempty"`
	Request     string   `json:"request,omitempty"` // recovery or pending request ID
	RequestKind string   `json:"request_kind,omitempty"`
	KRA         string   `json:"kra,omitempty"`
	Signer      string   `json:"signer,omitempty"` // serial of the certificate that signed an approval
	// Signature is a KRA's approval signature (base64), over Digest (hex): with the request and
	// the stored shares, anyone can check the KRA really approved.
	Signature   string   `json:"signature,omitempty"`
	Digest      string   `json:"digest,omitempty"`
	Epoch       uint32   `json:"epoch,omitempty"`
	FromEpochs  []uint32 `json:"from_epochs,omitempty"`
	Quorum      int      `json:"quorum,omitempty"`
	Decision    string   `json:"decision,omitempty"`
	Reason      string   `json:"reason,omitempty"` // the officer's stated reason, or why something was refused
	Expires     string   `json:"expires,omitempty"`
	NotAfter    string   `json:"not_after,omitempty"`
	Fingerprint []string `json:"fingerprint,omitempty"` // SHA-256 of public keys (hex)
	Count       int      `json:"count,omitempty"`
	Route       string   `json:"route,omitempty"`
	Status      int      `json:"status,omitempty"`
	Remote      string   `json:"remote,omitempty"` // the client's address
	Version     string   `json:"version,omitempty"`
	Config      string   `json:"config,omitempty"` // SHA-256 of the configuration file (hex)
	PrevConfig  string   `json:"prev_config,omitempty"`
	Token       string   `json:"token,omitempty"` // token label
	// CertHash is the SHA-256 (hex) of each issued certificate's DER, in the order of Serial
	// or Serials. [Append] fills it for enroll and archive entries; entries written before it
	// existed lack it, and the consistency check accepts that.
	CertHash []string `json:"cert_sha256,omitempty"`
	// RevocationReason is the RFC 5280 name of the CRLReason of a revocation (kind revoke).
	RevocationReason string `json:"revocation_reason,omitempty"`
	// KeyCompromise lists the serials of certificates revoked before whose reason moved to
	// keyCompromise (kind revoke); their revocation date is the first one.
	KeyCompromise []string `json:"key_compromise,omitempty"`
	// Revoke is what a recovery does with the certificate of each record when its key is
	// fetched, in the order of Records: "keep", or the name of a revocation reason (kind
	// recovery-requested; entries written before it existed lack it: keep).
	Revoke []string `json:"revoke,omitempty"`
	// Restore describes a restore from a backup (kind restore).
	Restore *Restore `json:"restore,omitempty"`
	// Node names the node that wrote the entry when several share the database; entries of
	// one node, and entries written before it existed, lack it (their encoding is unchanged).
	Node string `json:"node,omitempty"`
}

// Restore is what a restore entry records: which backup was put in place, where the trail it
// replaced had reached, and so which entries the restored database no longer holds.
type Restore struct {
	// Backup is the file restored from (its path as given, and its SHA-256).
	Backup       string `json:"backup"`
	BackupSHA256 string `json:"backup_sha256,omitempty"`
	// RestoredSeq is the last entry of the restored database: this entry follows it.
	RestoredSeq int64 `json:"restored_seq"`
	// TrailSeq is the last entry the replaced trail is known to have reached (the head file's
	// or the replaced database's, whichever is later); 0 when nothing is known.
	TrailSeq int64 `json:"trail_seq"`
	// Head is the head file in place before the restore, nil when it was missing. Its
	// signature can still be checked with the audit key: it proves where the trail had been.
	Head *Head `json:"head,omitempty"`
	// HeadMissing: there was no head file, so the extent of what was lost is not known from it.
	HeadMissing bool `json:"head_missing,omitempty"`
	// ReplacedSeq is the last entry of the database that was replaced, 0 when there was none
	// (or it was the file restored in place); ReplacedKeptAs is where it was kept.
	ReplacedSeq    int64  `json:"replaced_seq,omitempty"`
	ReplacedKeptAs string `json:"replaced_kept_as,omitempty"`
	// Forced: the restore went back behind the signed head (keyarc restore --force).
	Forced bool `json:"forced,omitempty"`
}

// Lost returns the first and last entries of the replaced trail that the restored database
// does not hold; ok is false when none are known to be lost.
func (r *Restore) Lost() (from, to int64, ok bool) {
	if r.TrailSeq <= r.RestoredSeq {
		return 0, 0, false
	}
	return r.RestoredSeq + 1, r.TrailSeq, true
}

// maxReason bounds free text copied into an entry (error messages, stated reasons).
const maxReason = 1000

// Clip shortens free text for an entry to a bounded length.
func Clip(s string) string {
	if len(s) <= maxReason {
		return s
	}
	return s[:maxReason] + "..."
}

// ErrAppend: the entry could not be written, so the operation it records is refused.
var ErrAppend = errors.New("audit: cannot write the audit trail")

// Append writes one entry in tx, in the same transaction as the change it records: if it
// fails, the caller returns the error and the whole change is rolled back. An enroll or archive
// entry records the SHA-256 of each certificate it names, read back from tx (the certificate
// must be stored first), for the consistency check. at is the entry's
// time; actor is who did it (a role and name, "local" or "system"); subject is what it is about
// (a mailbox, a serial, a request ID).
//
// Errors wrap [ErrAppend] and the store's error.
func Append(tx store.Tx, at time.Time, kind Kind, actor, subject string, d Details) (store.AuditEntry, error) {
	return (*Witness)(nil).Append(tx, at, kind, actor, subject, d)
}

// Append is [Append] through [Witness.Link]: an entry that would follow a trail which lost
// the witness's entry is refused, with an error wrapping [ErrAppend] and the witness's
// [*Problem]. A nil witness checks nothing.
func (w *Witness) Append(tx store.Tx, at time.Time, kind Kind, actor, subject string, d Details) (store.AuditEntry, error) {
	d.Reason = Clip(d.Reason)
	if actor == "" {
		actor = "system"
	}
	if (kind == KindEnroll || kind == KindArchive) && len(d.CertHash) == 0 {
		serials := d.Serials
		if d.Serial != "" {
			serials = []string{d.Serial}
		}
		if len(serials) > 0 {
			sums, err := tx.CertificateHashes(serials)
			if err != nil {
				return store.AuditEntry{}, fmt.Errorf("%w: %s: %w", ErrAppend, kind, err)
			}
			if len(sums) == len(serials) {
				d.CertHash = sums
			}
		}
	}
	js, err := json.Marshal(d)
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("%w: %w", ErrAppend, err)
	}
	e, err := w.Link(tx, store.AuditEntry{At: at, Kind: string(kind), Actor: actor, Subject: subject, Details: string(js)})
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("%w: %s: %w", ErrAppend, kind, err)
	}
	return e, nil
}
