package escrow

import (
	"context"
	"errors"
	"fmt"

	"github.com/keyarc/keyarc/escrow/check"
)

// checkCertificate runs the consistency check ([check.Checker.Certificate]) on the certificate
// of a record about to be opened: a certificate whose stored bytes no longer verify against the
// CA, differ from what the audit trail recorded at issuance, or whose escrow record link is
// broken, never leaves the appliance in a PKCS#12, and its key stays sealed.
//
// The refusal wraps [ErrRecordMismatch] and [check.ErrInconsistent].
func (s *Service) checkCertificate(ctx context.Context, serial string) error {
	c := &check.Checker{DB: s.Store, CA: s.Issuer.Certificate(), Foreign: []string{TemplateImport}}
	err := c.Certificate(ctx, serial)
	if errors.Is(err, check.ErrInconsistent) {
		return fmt.Errorf("%w: recovery refused, the certificate fails the consistency check (run keyarc check): %w", ErrRecordMismatch, err)
	}
	return err
}
