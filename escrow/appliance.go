package escrow

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
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
// pre-signer answers for it, it is revocable by serial and a revocation puts it on the CRL.
// The actor of ctx ([WithActor]) is recorded. If the transaction fails, no certificate is
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
