package ops

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/policy"
)

// published is what relying parties may have seen of the replaced database: its revocations
// and its newest CRL.
type published struct {
	revoked []store.CertStatus
	crl     *store.CRL // nil before the first CRL
}

// replacedDB is what the restore reads of the database it replaces: its last audit entry (seq
// 0 when its trail is empty), and what it published.
type replacedDB struct {
	last *store.AuditEntry
	published
}

// readReplaced reads, in one snapshot of the database at path, its last audit entry, its
// revocations (expired certificates' too) and its newest CRL. A CRL that is not signed by
// caCert (a database of another appliance put in place) is left out: only the CA's own CRL is
// ever served.
func readReplaced(ctx context.Context, path string, caCert *x509.Certificate) (*replacedDB, error) {
	db, err := sqlite.Open(path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	r := &replacedDB{}
	err = db.View(ctx, func(tx store.Tx) error {
		r.last, r.revoked, r.crl = &store.AuditEntry{}, r.revoked[:0], nil
		switch e, err := tx.LastAudit(); {
		case err == nil:
			r.last = e
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		if err := tx.RevokedCertificates(time.Unix(1, 0), func(st store.CertStatus) error {
			r.revoked = append(r.revoked, st)
			return nil
		}); err != nil {
			return err
		}
		c, err := tx.LatestCRL()
		switch {
		case err == nil:
			if l, err := x509.ParseRevocationList(c.DER); err == nil && l.CheckSignatureFrom(caCert) == nil {
				r.crl = c
			}
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		return nil
	})
	return r, err
}

// carriedOver is what [keepPublished] did.
type carriedOver struct {
	revoked, keyCompromise int
	// missing are revoked certificates of the replaced database that the backup does not
	// hold as issued (issued after it, or still pending in it): their revocations cannot be
	// carried over.
	missing []string
	crl     int64 // the replaced database's CRL number kept, 0 if none was needed
}

// keepPublished carries into the restored database, in one transaction, what the replaced
// database had published: a revocation is final (relying parties have seen it on a CRL or in
// OCSP, and a compromised key must stay revoked), and a CRL number is never issued twice
// (RFC 5280 5.2.3). A certificate the backup holds as issued is revoked with the replaced
// database's date and reason, one revoked for another reason moves to keyCompromise when the
// replaced database had it so, and the replaced database's newest CRL is stored when it is
// newer than the backup's, so that the next CRL is numbered above it. Each change is an audit
// entry of kind revoke, by actor.
func keepPublished(ctx context.Context, db store.Store, p *published, actor string, now time.Time) (*carriedOver, error) {
	out := &carriedOver{}
	err := db.Update(ctx, func(tx store.Tx) error {
		*out = carriedOver{}
		byReason := map[int][]string{}
		var moved []string
		for _, st := range p.revoked {
			c, err := tx.GetCertificate(st.Serial)
			if errors.Is(err, store.ErrNotFound) {
				out.missing = append(out.missing, st.Serial)
				continue
			}
			if err != nil {
				return err
			}
			switch {
			case c.State == store.StateIssued:
				reason, at := st.Reason, st.RevokedAt
				if !store.ValidReason(reason) {
					reason = store.ReasonUnspecified
				}
				if at.IsZero() {
					at = now
				}
				if err := tx.RevokeCertificate(c.Serial, reason, at); err != nil {
					return fmt.Errorf("revoke %s again: %w", c.Serial, err)
				}
				byReason[reason] = append(byReason[reason], c.Serial)
				out.revoked++
			case c.State == store.StateRevoked && st.Reason == store.ReasonKeyCompromise && c.RevocationReason != store.ReasonKeyCompromise:
				if err := tx.SetKeyCompromise(c.Serial); err != nil {
					return fmt.Errorf("move %s to keyCompromise again: %w", c.Serial, err)
				}
				moved = append(moved, c.Serial)
				out.keyCompromise++
			case c.State != store.StateRevoked:
				out.missing = append(out.missing, st.Serial)
			}
		}
		reasons := make([]int, 0, len(byReason))
		for r := range byReason {
			reasons = append(reasons, r)
		}
		slices.Sort(reasons)
		for _, r := range reasons {
			d := audit.Details{RevocationReason: policy.RevocationReasonName(r), Serials: byReason[r], Count: len(byReason[r])}
			if r == store.ReasonKeyCompromise {
				d.KeyCompromise, moved = moved, nil
				d.Count += len(d.KeyCompromise)
			}
			if _, err := audit.Append(tx, now, audit.KindRevoke, actor, "restore", d); err != nil {
				return err
			}
		}
		if len(moved) > 0 {
			d := audit.Details{RevocationReason: policy.RevocationReasonName(store.ReasonKeyCompromise), KeyCompromise: moved, Count: len(moved)}
			if _, err := audit.Append(tx, now, audit.KindRevoke, actor, "restore", d); err != nil {
				return err
			}
		}
		if p.crl == nil {
			return nil
		}
		latest, err := tx.LatestCRL()
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if latest != nil && latest.Number >= p.crl.Number {
			return nil
		}
		if err := tx.InsertCRL(*p.crl); err != nil {
			return fmt.Errorf("keep CRL %d: %w", p.crl.Number, err)
		}
		out.crl = p.crl.Number
		return nil
	})
	return out, err
}
