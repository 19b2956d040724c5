package escrow

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"

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
	return &check.Checker{DB: s.Store, CA: s.Issuer.Certificate(), Foreign: []string{TemplateImport}}
}

// checkRecord runs the consistency check ([check.Checker.Record]) on an escrow record and its
// certificate before a recovery trusts them: before a request is opened (the record's owner
// decides who may ask), before a KRA is shown its shares or its approval stored, and before
// fetch decrypts anything. A certificate whose stored bytes no longer verify against the CA,
// that differs from what the audit trail recorded at issuance, whose row's mailbox, template,
// role or KRA name disagree with the certificate or the audit trail, or whose record link is
// broken, never leaves the appliance in a PKCS#12, and its key stays sealed.
//
// The cost is one read snapshot: the two rows, a bisection of the audit trail to the issuance
// entry, and a signature verification.
//
// The refusal wraps [ErrIntegrity], [ErrRecordMismatch] and [check.ErrInconsistent]; otherwise
// it returns the store's error.
func (s *Service) checkRecord(ctx context.Context, id string) error {
	err := s.checker().Record(ctx, id)
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
// [ErrIntegrity] wrapping [check.ErrInconsistent] when the row fails the check (an integrity
// fault: 500, details in the log), or the store's error.
func (s *Service) CheckCredential(ctx context.Context, row *store.Certificate, presented *x509.Certificate) error {
	if !bytes.Equal(row.DER, presented.Raw) {
		p := &check.Problem{Serial: row.Serial, Err: check.ErrRowMismatch, Detail: "the stored certificate is not the one presented"}
		s.log().Error("credential refused: the archive fails its consistency check", "serial", row.Serial, "err", p)
		return fmt.Errorf("%w: %w", ErrIntegrity, p)
	}
	err := s.checker().Certificate(ctx, row.Serial)
	if errors.Is(err, check.ErrInconsistent) {
		s.log().Error("credential refused: the archive fails its consistency check", "serial", row.Serial, "err", err)
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	}
	return err
}

// checkSigner checks the row of a KRA's authentication certificate before its role and name
// count an approval. Errors as [Service.CheckCredential].
func (s *Service) checkSigner(ctx context.Context, serial string) error {
	err := s.checker().Certificate(ctx, serial)
	if errors.Is(err, check.ErrInconsistent) {
		s.log().Error("approval refused: the signer's certificate fails the consistency check", "serial", serial, "err", err)
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	}
	return err
}
