package escrow

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/store"
)

// AppliancePurpose says which of the appliance's own certificates one is.
type AppliancePurpose string

// The appliance's own certificates. Each is stored under the template name
// [AppliancePurpose.Template] returns: "appliance-" and the purpose.
const (
	// ApplianceTLS is the HTTPS server's certificate (tls.pem).
	ApplianceTLS AppliancePurpose = "tls"
	// ApplianceTransport is the transport certificate clients encrypt private keys to
	// (transport.pem).
	ApplianceTransport AppliancePurpose = "transport"
	// ApplianceAudit is the audit key's certificate, which anchors the signed checkpoints
	// (audit.pem).
	ApplianceAudit AppliancePurpose = "audit"
	// ApplianceOCSP is the delegated OCSP responder's certificate (ocsp.pem).
	ApplianceOCSP AppliancePurpose = "ocsp"
)

// Template is the name the certificates of purpose p are stored under, "appliance-tls" for
// example; "" for a purpose that is none of the above.
func (p AppliancePurpose) Template() string {
	switch p {
	case ApplianceTLS, ApplianceTransport, ApplianceAudit, ApplianceOCSP:
		return "appliance-" + string(p)
	}
	return ""
}

// ApplianceRequest is one of the appliance's own certificates. No template describes them:
// the caller gives the profile, and the CA's checks (escrow/ca's lint and zlint) apply.
type ApplianceRequest struct {
	Purpose     AppliancePurpose
	PublicKey   crypto.PublicKey
	Subject     pkix.Name
	DNSNames    []string
	IPAddresses []net.IP
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	// NotBefore is the start of validity; zero means a minute before the Service's clock
	// (room for the clocks of relying parties).
	NotBefore time.Time
	Validity  time.Duration
	// OCSPNoCheck marks the OCSP responder's certificate with id-pkix-ocsp-nocheck.
	OCSPNoCheck bool
}

// IssueAppliance issues one of the appliance's own certificates through the one issuance
// path ([issue.Pipeline.IssueSigned]): the CA signs, then one transaction stores the
// certificate as issued, under the template name of its purpose, with an enroll audit entry.
// So it is on record like any other certificate: the consistency check covers it, the OCSP
// pre-signer answers for it, and once expired it may be revoked by serial (while unexpired it
// is refused: see [ErrApplianceCertificate]). The actor of ctx ([WithActor]) is recorded. If the transaction fails, no certificate is
// returned and the signed one is kept on record as failed.
//
// # Errors
//
// [ErrInvalidRequest] (an unknown purpose, no public key, no positive validity), the CA's
// [ca.ErrLint] (a profile the CA refuses), or, for faults of the appliance, a storage error
// wrapping [store.ErrUnavailable], the CA signer's (token's) error or the audit trail's
// ([audit.ErrAppend]), wrapped.
func (s *Service) IssueAppliance(ctx context.Context, req ApplianceRequest) (*Issued, error) {
	name := req.Purpose.Template()
	switch {
	case name == "":
		return nil, fmt.Errorf("%w: appliance certificate purpose %q: choose %s, %s, %s or %s", ErrInvalidRequest,
			req.Purpose, ApplianceTLS, ApplianceTransport, ApplianceAudit, ApplianceOCSP)
	case req.PublicKey == nil:
		return nil, fmt.Errorf("%w: the %s certificate needs a public key", ErrInvalidRequest, name)
	case req.Validity <= 0:
		return nil, fmt.Errorf("%w: the %s certificate needs a positive validity, not %v", ErrInvalidRequest, name, req.Validity)
	}
	serial, err := ca.NewSerial()
	if err != nil {
		return nil, err
	}
	nb := req.NotBefore
	if nb.IsZero() {
		nb = s.now().Add(-time.Minute)
	}
	res, err := s.Pipeline().IssueSigned(ctx, issue.SignedRequest{
		CA: ca.Request{
			Serial:      serial,
			PublicKey:   req.PublicKey,
			Subject:     req.Subject,
			DNSNames:    req.DNSNames,
			IPAddresses: req.IPAddresses,
			KeyUsage:    req.KeyUsage,
			ExtKeyUsage: req.ExtKeyUsage,
			NotBefore:   nb,
			Validity:    req.Validity,
			OCSPNoCheck: req.OCSPNoCheck,
		},
		Row:     store.Certificate{Template: name},
		Kind:    audit.KindEnroll,
		Actor:   actorFrom(ctx),
		Details: audit.Details{Template: name, Fingerprint: []string{PublicKeyFingerprint(req.PublicKey)}},
	})
	if err != nil {
		return nil, fmt.Errorf("escrow: %s certificate: %w", name, err)
	}
	s.log().Info("appliance certificate issued", "serial", res.Serial, "template", name,
		"not_after", res.Certificate.NotAfter.UTC().Format(time.RFC3339))
	return &Issued{Certificate: res.Certificate, Serial: res.Serial}, nil
}

// RecordAppliance keeps on record one of the appliance's own certificates that this CA signed
// before they were stored (a state folder made by an older keyarc): it is stored as issued
// under the template name of its purpose, with an enroll audit entry, in one transaction, so
// that from then on it is answered by OCSP and revocable like any other. A certificate whose
// serial is stored already is left as it is. It reports whether it stored the certificate.
//
// # Errors
//
// [ErrInvalidRequest] (an unknown purpose; a certificate this CA did not sign),
// [store.ErrConflict] (the serial is stored with another certificate), or, for faults
// of the appliance, a storage error wrapping [store.ErrUnavailable] or the audit trail's
// ([audit.ErrAppend]), wrapped.
func (s *Service) RecordAppliance(ctx context.Context, purpose AppliancePurpose, cert *x509.Certificate) (bool, error) {
	name := purpose.Template()
	if name == "" {
		return false, fmt.Errorf("%w: appliance certificate purpose %q: choose %s, %s, %s or %s", ErrInvalidRequest,
			purpose, ApplianceTLS, ApplianceTransport, ApplianceAudit, ApplianceOCSP)
	}
	if err := cert.CheckSignatureFrom(s.Issuer.Certificate()); err != nil {
		return false, fmt.Errorf("%w: the %s certificate was not signed by this CA: %w", ErrInvalidRequest, name, err)
	}
	row := store.Certificate{Serial: store.FormatSerial(cert.SerialNumber), Template: name, Subject: cert.Subject.String(),
		State: store.StateIssued, DER: cert.Raw, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter, CreatedAt: s.now()}
	stored := false
	err := s.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error {
		stored = false
		c, err := tx.GetCertificate(row.Serial)
		switch {
		case err == nil && bytes.Equal(c.DER, cert.Raw):
			return nil
		case err == nil:
			return fmt.Errorf("%w: serial %s is stored with another certificate", store.ErrConflict, row.Serial)
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		if err := tx.InsertCertificate(row); err != nil {
			return err
		}
		stored = true
		d := audit.Details{Template: name, Serial: row.Serial, NotAfter: cert.NotAfter.UTC().Format(time.RFC3339),
			Fingerprint: []string{PublicKeyFingerprint(cert.PublicKey)}}
		return s.audit(tx, audit.KindEnroll, actorFrom(ctx), row.Subject, d)
	})
	if err != nil {
		return false, fmt.Errorf("escrow: record the %s certificate: %w", name, err)
	}
	if stored {
		s.log().Info("appliance certificate recorded", "serial", row.Serial, "template", name)
	}
	return stored, nil
}
