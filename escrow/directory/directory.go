// Package directory publishes the encryption certificates keyarc issues to a directory that
// mail clients search (an LDAP server: escrow/directory/ldapdir), and takes them away again when
// they are revoked or expire, so that a sender can find a recipient's certificate.
//
// # The queue is the audit trail
//
// Every issuance and every revocation writes an audit entry in the transaction that makes it
// (kinds enroll, archive and revoke, each naming its serials). The audit trail is therefore
// already a durable, ordered log of everything the directory must learn, written at no extra
// cost to issuance. A [Publisher] follows it from a [Cursor], the position of the last entry it
// handled, kept in the store and moved forward after each batch has been applied to the
// directory. So:
//
//   - issuance never waits for the directory, and a directory that is down loses nothing: the
//     entries wait in the trail, and the publisher applies them when the server is back;
//   - a restart, or another node taking over the leader lease, starts from the stored cursor;
//   - a bulk job of 10,000 certificates is published at the publisher's pace, one batch at a
//     time, after the job has committed;
//   - enabling the directory later publishes every certificate issued before (the cursor
//     starts at 0).
//
// Each entry is applied by the certificate's state now, not by what the entry says: an
// issued, unexpired certificate is published, a revoked or expired one is withdrawn. Both are
// idempotent (a value already there, or already gone, is a success), so a batch applied twice
// (a crash between the directory's change and the cursor's) does no harm, and entries may be
// applied in any order.
//
// # What is published
//
// Only certificates this CA issued (the CA's name as issuer and a valid CA signature), for a
// mailbox, whose key usage includes keyEncipherment or keyAgreement: the certificate a sender
// encrypts to. Signing-only certificates are not published: a signed message carries its own
// certificate. Operator credentials and KRA certificates are never published. Certificates
// imported from another CA (bulk import) are not published by keyarc: their own CA publishes
// and withdraws them. Expired certificates are removed by a periodic sweep ([Publisher.Sweep])
// that reads the directory, and removes only values whose certificate this CA issued.
// A certificate skipped for want of a single entry is kept apart ([store.DirectorySkips]) and
// tried again after each sweep ([Publisher.Retry]).
//
// # Imports and concurrency
//
// directory imports escrow/store, escrow/audit, Prometheus and the standard library; it never
// imports a network client (ldapdir does, and implements [Directory]). A Publisher runs on the
// node that holds the leader lease ([Publisher.Leads]); two running at once (a lease changing
// hands) do the same idempotent work twice, nothing worse.
package directory

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
)

// Errors a [Directory] returns for a mailbox it cannot publish to: the certificate is skipped
// (counted and logged), and the batch goes on; the store keeps the certificate, and
// [Publisher.Retry] tries it again after each sweep, until its entry appears. Any other error is a fault of the directory or the way to
// it (a server down, a refused bind), and the batch is retried.
var (
	// ErrNoEntry: no entry has this mailbox as its mail attribute under the search base.
	ErrNoEntry = errors.New("directory: no entry with this mail under the search base")
	// ErrManyEntries: several entries have this mailbox: the publisher does not guess.
	ErrManyEntries = errors.New("directory: several entries with this mail under the search base")
	// ErrEntryRefused: the directory refused the change for this entry (its object classes
	// do not allow the attributes, say).
	ErrEntryRefused = errors.New("directory: the directory refused the change of this entry")
)

// Directory is where certificates are published. Implementations are safe for use by one
// goroutine at a time.
type Directory interface {
	// Publish adds cert to the one entry whose mail is mailbox. A value already there is a
	// success. [ErrNoEntry] or [ErrManyEntries] (wrapped) when there is not exactly one entry.
	Publish(ctx context.Context, mailbox string, cert *x509.Certificate) error
	// Withdraw removes the values that hold cert (and only those) from the entries whose mail
	// is mailbox. A value not there, or no entry at all, is a success.
	Withdraw(ctx context.Context, mailbox string, cert *x509.Certificate) error
	// Prune reads every certificate published under the search base and removes the values of
	// those for which remove returns true, returning how many values it removed. remove is
	// called only with certificates that parse.
	Prune(ctx context.Context, remove func(*x509.Certificate) bool) (int, error)
}

// Cursor keeps how far a [Publisher] has applied the audit trail.
type Cursor interface {
	// Position returns the seq of the last audit entry applied, 0 before the first.
	Position(ctx context.Context) (int64, error)
	// Advance moves the position forward to seq; a seq at or behind it changes nothing.
	Advance(ctx context.Context, seq int64) error
}

// Issued reports whether cert was issued by ca: the issuer's name is ca's subject and ca's key
// verifies its signature. Only such certificates are ever published or removed.
func Issued(cert, ca *x509.Certificate) bool {
	if cert == nil || ca == nil || !bytes.Equal(cert.RawIssuer, ca.RawSubject) {
		return false
	}
	return cert.CheckSignatureFrom(ca) == nil
}

// ForEncryption reports whether cert is one a sender encrypts to: its key usage includes
// keyEncipherment or keyAgreement, and its extended key usage (when it has one) allows e-mail
// protection.
func ForEncryption(cert *x509.Certificate) bool {
	if cert.KeyUsage&(x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement) == 0 {
		return false
	}
	if len(cert.ExtKeyUsage) == 0 && len(cert.UnknownExtKeyUsage) == 0 {
		return true
	}
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageEmailProtection || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}
