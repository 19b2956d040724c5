package store

import (
	"context"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"time"
)

// Revocation reasons: the CRLReason codes of RFC 5280 §5.3.1 that the S/MIME Baseline
// Requirements (§7.2.2, §4.9.1) let a CA use for a subscriber certificate. CRL signers leave
// the reasonCode extension out for [ReasonUnspecified] (BR §7.2.2: "If the reason for
// revocation is unspecified, CAs SHALL omit the reasonCode entry extension"), and OCSP
// responses never carry it as a single extension (BR §7.3.2).
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonPrivilegeWithdrawn   = 9
)

// ValidReason reports whether reason is one of the S/MIME BR set above: the reasons
// [Revocations.RevokeCertificate] accepts. certificateHold (6) is not among them: a
// revocation is final.
func ValidReason(reason int) bool {
	switch reason {
	case ReasonUnspecified, ReasonKeyCompromise, ReasonAffiliationChanged, ReasonSuperseded,
		ReasonCessationOfOperation, ReasonPrivilegeWithdrawn:
		return true
	}
	return false
}

// ValidStoredReason reports whether a certificate inserted in state revoked may carry reason:
// any CRLReason of RFC 5280 (0 to 10, 7 is unused), since certificates migrated from another
// CA keep the reason they were revoked with.
func ValidStoredReason(reason int) bool { return reason >= 0 && reason <= 10 && reason != 7 }

// CertStatus is what a CRL entry or an OCSP response says of one certificate.
type CertStatus struct {
	Serial    string    // canonical, see NormalizeSerial
	Revoked   bool      // revoked, or good (issued)
	RevokedAt time.Time // zero unless revoked; the CRL entry's revocationDate
	Reason    int       // CRLReason, 0 unless revoked
	NotAfter  time.Time // the certificate's expiry (zero if it was stored without one)
}

// CRLsKept is how many of the newest CRLs a backend keeps at least ([CRLs.InsertCRL] may
// delete older ones). The BR (§4.10.1) keep a certificate's entry on every CRL until it
// expires, which every new CRL does by itself; an old CRL document has no use once a newer
// one is published, and the few kept are for diagnosis.
const CRLsKept = 10

// CRL is a signed certificate revocation list as served from the CRL distribution point.
type CRL struct {
	Number     int64 // its cRLNumber: 1 for the first, increasing
	ThisUpdate time.Time
	NextUpdate time.Time
	DER        []byte
	CreatedAt  time.Time // zero on insert means now
}

// OCSPResponse is a pre-signed OCSP response for one certificate, as the responder serves it.
type OCSPResponse struct {
	Serial     string
	DER        []byte // the complete OCSPResponse
	ThisUpdate time.Time
	NextUpdate time.Time
	// Revoked and Reason are the status the response was signed with (good when not
	// Revoked; Reason 0 then). The store compares them with the certificate's current status
	// to find responses a revocation made wrong ([OCSPResponses.OCSPDue]).
	Revoked bool
	Reason  int
	// UpdatedAt is when the store last replaced the response (set by the store).
	UpdatedAt time.Time
}

// KeyID returns the key identity of a DER X.509 certificate: the lower-case hex SHA-256 of
// its SubjectPublicKeyInfo, the same hash as [Record.Fingerprint], so that certificates and
// escrow records of one key are found by one value. It reads only the outer structure of
// the certificate (Certificate, TBSCertificate and its first seven fields), so that every
// backend computes the same value for any certificate it stores, whatever else is in it;
// DER that is not shaped like a certificate gives [ErrInvalid].
func KeyID(der []byte) (string, error) {
	bad := func(what string) (string, error) {
		return "", fmt.Errorf("store: key id: %s: %w", what, ErrInvalid)
	}
	var certificate asn1.RawValue
	rest, err := asn1.Unmarshal(der, &certificate)
	if err != nil || len(rest) != 0 || !isSequence(certificate) {
		return bad("not a DER certificate")
	}
	var tbs asn1.RawValue
	if _, err := asn1.Unmarshal(certificate.Bytes, &tbs); err != nil || !isSequence(tbs) {
		return bad("no TBSCertificate")
	}
	// version [0] EXPLICIT (optional), serialNumber, signature, issuer, validity, subject,
	// subjectPublicKeyInfo.
	b := tbs.Bytes
	for i := 0; ; i++ {
		var field asn1.RawValue
		if b, err = asn1.Unmarshal(b, &field); err != nil {
			return bad("truncated TBSCertificate")
		}
		if i == 0 && field.Class == asn1.ClassContextSpecific && field.Tag == 0 {
			i-- // the version does not count
			continue
		}
		if i == 5 {
			if !isSequence(field) {
				return bad("subjectPublicKeyInfo is not a SEQUENCE")
			}
			sum := sha256.Sum256(field.FullBytes)
			return hex.EncodeToString(sum[:]), nil
		}
	}
}

func isSequence(v asn1.RawValue) bool {
	return v.Class == asn1.ClassUniversal && v.Tag == asn1.TagSequence && v.IsCompound
}

// ValidKeyID reports whether id has the form of a key identity: 64 lower-case hex digits.
func ValidKeyID(id string) bool {
	if len(id) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// IndexAllNew runs [OCSPResponses.IndexNewCertificates] on s, batch certificates to a
// transaction, until none is left to index.
func IndexAllNew(ctx context.Context, s Store, batch int) error {
	for more := true; more; {
		if err := s.Update(ctx, func(tx Tx) (err error) {
			more, err = tx.IndexNewCertificates(batch)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}
