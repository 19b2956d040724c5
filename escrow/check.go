package escrow

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"

	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
)

// ErrIntegrity: a row the appliance was about to trust fails the consistency check (a
// certificate, its escrow record, or a credential's row was changed behind the appliance's
// back). It is a fault of the appliance's archive, never of the caller: the answer names the
// class and the way out, the details ([check.Problem]) go to the log. Errors that wrap it also
// wrap [check.ErrInconsistent] and, for the recovery of a record, [ErrRecordMismatch].
var ErrIntegrity = errors.New("escrow: the archive failed its consistency check for this certificate; an administrator must run keyarc check")

// checker is the consistency checker of the service's store against its CA.
func (s *Service) checker() *check.Checker {
	return s.checkerOf(s.Store)
}

// checkerIn is the consistency checker reading in tx: a recovery checks the very rows it uses,
// in the snapshot it reads them from, without a snapshot of its own per check.
func (s *Service) checkerIn(tx store.Tx) *check.Checker {
	return s.checkerOf(txStore{tx})
}

func (s *Service) checkerOf(db store.Store) *check.Checker {
	return &check.Checker{DB: db, CA: s.Issuer.Certificate(), Foreign: []string{TemplateImport}}
}

// txStore is a [store.Store] over one open read transaction: its View runs in that
// transaction (the snapshot the caller is reading), and it cannot write.
type txStore struct{ tx store.Tx }

func (t txStore) View(_ context.Context, fn func(store.Tx) error) error { return fn(t.tx) }

func (t txStore) Update(context.Context, func(store.Tx) error) error {
	return fmt.Errorf("escrow: write in a snapshot: %w", store.ErrReadOnly)
}

func (t txStore) Stats() store.Stats { return store.Stats{} }

func (t txStore) Close() error { return nil }

// checkRecord runs the consistency check ([check.Checker.Record]) on an escrow record and its
// certificate before a recovery trusts them: before a request is opened (the record's owner
// decides who may ask), before a KRA is shown its shares or its approval stored, and before
// fetch decrypts anything. A certificate whose stored bytes no longer verify against the CA,
// that differs from what the audit trail recorded at issuance, whose row's mailbox, template,
// role or KRA name disagree with the certificate or the audit trail, or whose record link is
// broken, never leaves the appliance in a PKCS#12, and its key stays sealed.
//
// The cost is the two rows, a bisection of the audit trail to the issuance entry, and a
// signature verification, in the snapshot of tx.
//
// The refusal wraps [ErrIntegrity], [ErrRecordMismatch] and [check.ErrInconsistent]; otherwise
// it returns the store's error.
func (s *Service) checkRecord(ctx context.Context, tx store.Tx, id string) error {
	return s.recordFault(id, s.checkerIn(tx).Record(ctx, id))
}

// recordFault turns the consistency checker's verdict on record id into the engine's error,
// and logs a refusal.
func (s *Service) recordFault(id string, err error) error {
	if errors.Is(err, check.ErrInconsistent) {
		s.log().Error("recovery refused: the archive fails its consistency check", "record", id, "err", err)
		return fmt.Errorf("%w (%w): %w", ErrIntegrity, ErrRecordMismatch, err)
	}
	return err
}

// CheckCredential checks the stored row of a certificate presented as a credential (a TLS
// client certificate, verified against the CA by the handshake) before the row's columns are
// trusted to grant anything: the row must hold exactly the presented certificate's bytes, and
// pass the consistency check, so its mailbox, template, role and KRA name are the ones the CA
// signed into the certificate and the audit trail recorded at issuance.
//
// The presented DER is the cheap half (the handshake already verified its signature); the
// audited half costs a bisection of the trail in one read snapshot.
//
// # Errors
//
// [ErrUnauthorized] when the certificate is not in the issued state (revoked, above all),
// [ErrIntegrity] wrapping [check.ErrInconsistent] when the row fails the check (an integrity
// fault: 500, details in the log), or the store's error.
func (s *Service) CheckCredential(ctx context.Context, row *store.Certificate, presented *x509.Certificate) error {
	if row.State != store.StateIssued {
		return fmt.Errorf("%w: the client certificate is %s", ErrUnauthorized, row.State)
	}
	if !bytes.Equal(row.DER, presented.Raw) {
		p := &check.Problem{Serial: row.Serial, Err: check.ErrRowMismatch, Detail: "the stored certificate is not the one presented"}
		s.log().Error("credential refused: the archive fails its consistency check", "serial", row.Serial, "err", p)
		return fmt.Errorf("%w: %w", ErrIntegrity, p)
	}
	sum := credentialSum(row)
	if s.creds.has(row.Serial, sum) {
		return nil
	}
	err := s.checker().Certificate(ctx, row.Serial)
	if errors.Is(err, check.ErrInconsistent) {
		s.log().Error("credential refused: the archive fails its consistency check", "serial", row.Serial, "err", err)
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	}
	if err == nil {
		s.creds.add(row.Serial, sum)
	}
	return err
}

// verifiedCredentials remembers, per serial, the digest of a credential row that passed the full
// check in this process, so that a client presenting its certificate again costs one comparison,
// not an audit-trail search and a signature verification. A row changed since (offline, or
// under the running appliance) has another digest and is checked again in full; a process starts
// with nothing remembered, so rows edited while it was stopped are always checked. The memory is
// bounded: past maxVerifiedCredentials serials it starts afresh.
type verifiedCredentials struct {
	mu sync.Mutex
	m  map[string][sha256.Size]byte
}

const maxVerifiedCredentials = 100_000

func (v *verifiedCredentials) has(serial string, sum [sha256.Size]byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	got, ok := v.m[serial]
	return ok && got == sum
}

func (v *verifiedCredentials) add(serial string, sum [sha256.Size]byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil || len(v.m) >= maxVerifiedCredentials {
		v.m = make(map[string][sha256.Size]byte)
	}
	v.m[serial] = sum
}

// credentialSum is the digest of every column of a certificate row that grants something.
func credentialSum(row *store.Certificate) [sha256.Size]byte {
	h := sha256.New()
	for _, f := range []string{row.Serial, row.Template, row.Email, row.Subject, row.State, row.Role, row.KRA, row.RecordID} {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	h.Write(row.DER)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// signerFault turns the consistency checker's verdict on a KRA's authentication certificate,
// checked before its role and name count an approval, into the engine's error (as
// [Service.CheckCredential]'s), and logs a refusal.
func (s *Service) signerFault(serial string, err error) error {
	if errors.Is(err, check.ErrInconsistent) {
		s.log().Error("approval refused: the signer's certificate fails the consistency check", "serial", serial, "err", err)
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	}
	return err
}
