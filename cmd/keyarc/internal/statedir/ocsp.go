package statedir

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
)

// The delegated OCSP responder (RFC 6960 §4.2.2.2): a sign-only P-256 key in the appliance
// token and a short-lived certificate for it, issued by the CA with the OCSPSigning extended
// key usage, kept in the state folder and renewed by the running appliance.
const (
	OCSPKeyLabel = "ocsp-key"
	OCSPCertName = "ocsp.pem"
	// OCSPCertValidity is the responder certificate's lifetime; it is renewed once less than
	// OCSPCertRenewBefore remains, so that every response (valid 7 days) ends before the
	// certificate that signed it, with a day to spare: a renewal every 6 days.
	OCSPCertValidity    = 14 * 24 * time.Hour
	OCSPCertRenewBefore = 8 * 24 * time.Hour
)

// EnsureOCSPKey returns the responder key of the token, generating it (P-256, sign only) if
// it is missing; say, when not nil, tells which.
//
// # Errors
//
// The token's (hsm.ErrTokenGone, hsm.ErrKeyUsage for a key under the label that cannot
// sign, ...), wrapped with the label.
func EnsureOCSPKey(tok *hsm.Token, say func(string, ...any)) (crypto.Signer, error) {
	_, err := tok.GenerateKey(OCSPKeyLabel, hsm.P256, hsm.UsageSign)
	switch {
	case errors.Is(err, hsm.ErrKeyExists):
		if say != nil {
			say("exists   OCSP responder key %q in token (never overwritten)", OCSPKeyLabel)
		}
	case err != nil:
		return nil, fmt.Errorf("generate OCSP responder key %q: %w", OCSPKeyLabel, err)
	default:
		if say != nil {
			say("created  OCSP responder key %q in token (p256)", OCSPKeyLabel)
		}
	}
	s, err := tok.Signer(OCSPKeyLabel)
	if err != nil {
		return nil, fmt.Errorf("OCSP responder key %q: %w", OCSPKeyLabel, err)
	}
	return s, nil
}

// IssueOCSPCert issues a responder certificate for pub through svc
// ([escrow.Service.IssueAppliance], so it is on record like any other), valid from a minute
// before now for [OCSPCertValidity] (or until the CA expires, if sooner): digitalSignature,
// OCSPSigning and id-pkix-ocsp-nocheck (S/MIME BR 4.9.9).
//
// # Errors
//
// Those of [escrow.Service.IssueAppliance] (ca.ErrLint, a storage or token error), wrapped.
func IssueOCSPCert(ctx context.Context, svc *escrow.Service, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	caCert := svc.Issuer.Certificate()
	nb := now.Add(-time.Minute)
	validity := min(OCSPCertValidity, caCert.NotAfter.Sub(nb)-time.Minute)
	issued, err := svc.IssueAppliance(ctx, escrow.ApplianceRequest{
		Purpose:     escrow.ApplianceOCSP,
		PublicKey:   pub,
		Subject:     pkix.Name{CommonName: caCert.Subject.CommonName + " OCSP responder", Organization: caCert.Subject.Organization},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		OCSPNoCheck: true,
		NotBefore:   nb,
		Validity:    validity,
	})
	if err != nil {
		return nil, fmt.Errorf("issue OCSP responder certificate: %w", err)
	}
	return issued.Certificate, nil
}

// EnsureOCSPResponder returns the responder key and a current certificate for it: the one in
// DIR/ocsp.pem while more than [OCSPCertRenewBefore] of it remains, else a new one, issued
// by svc and written there (0644). The key is made first if the token lacks it.
//
// # Errors
//
// Those of [EnsureOCSPKey] and [IssueOCSPCert]; an error naming the file when ocsp.pem is
// unreadable or holds another key than the token's; the file system's.
func EnsureOCSPResponder(ctx context.Context, cfg *config.Config, tok *hsm.Token, svc *escrow.Service, now time.Time, say func(string, ...any)) (crypto.Signer, *x509.Certificate, error) {
	signer, err := EnsureOCSPKey(tok, say)
	if err != nil {
		return nil, nil, err
	}
	cert, err := RenewOCSPCert(ctx, cfg, signer, svc, nil, now, say)
	return signer, cert, err
}

// RenewOCSPCert returns cur (or DIR/ocsp.pem when cur is nil) if it is the signer's, issued
// by svc's CA and has more than [OCSPCertRenewBefore] left at now; otherwise it issues a new
// certificate with svc (stored, then written to DIR/ocsp.pem). Errors as
// [EnsureOCSPResponder].
func RenewOCSPCert(ctx context.Context, cfg *config.Config, signer crypto.Signer, svc *escrow.Service, cur *x509.Certificate, now time.Time, say func(string, ...any)) (*x509.Certificate, error) {
	path := cfg.Path(OCSPCertName)
	if cur == nil && pemfile.Exists(path) {
		c, err := pemfile.ReadCertificate(path)
		if err != nil {
			return nil, fmt.Errorf("OCSP responder certificate: %w", err)
		}
		if !PublicKeysEqual(c.PublicKey, signer.Public()) {
			return nil, fmt.Errorf("OCSP responder key %q in the token is not the key of %s", OCSPKeyLabel, path)
		}
		cur = c
	}
	if cur != nil && issuedBy(cur, svc.Issuer.Certificate()) && cur.NotAfter.Sub(now) > OCSPCertRenewBefore && !cur.NotBefore.After(now) {
		return cur, nil
	}
	cert, err := IssueOCSPCert(ctx, svc, signer.Public(), now)
	if err != nil {
		return nil, err
	}
	// Replace the file atomically: a crash leaves the old certificate or the new one.
	tmp := path + ".new"
	os.Remove(tmp)
	if err := pemfile.Write(tmp, "CERTIFICATE", cert.Raw, 0o644); err != nil {
		return nil, fmt.Errorf("write OCSP responder certificate: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write OCSP responder certificate: %w", err)
	}
	if say != nil {
		say("created  %s (OCSP responder, serial %s, until %s)", path, store.FormatSerial(cert.SerialNumber), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

// verifiedOCSP remembers the last responder certificate whose signature checked against its
// CA, so that the presigner's call of the responder on every pass checks each certificate once.
var verifiedOCSP struct {
	sync.Mutex
	cert, issuer []byte
}

// issuedBy reports whether cert's signature checks against issuer's key. A pair that checked
// before is not checked again: both certificates are compared byte for byte, so another
// certificate or another CA is checked afresh.
func issuedBy(cert, issuer *x509.Certificate) bool {
	verifiedOCSP.Lock()
	defer verifiedOCSP.Unlock()
	if verifiedOCSP.cert != nil && bytes.Equal(verifiedOCSP.cert, cert.Raw) && bytes.Equal(verifiedOCSP.issuer, issuer.Raw) {
		return true
	}
	if cert.CheckSignatureFrom(issuer) != nil {
		return false
	}
	verifiedOCSP.cert, verifiedOCSP.issuer = cert.Raw, issuer.Raw
	return true
}
