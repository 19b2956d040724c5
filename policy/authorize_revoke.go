package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Revocation errors.
var (
	// ErrBadRevocationReason means a revocation reason is not one of the S/MIME Baseline
	// Requirements' set; the message lists the allowed names.
	ErrBadRevocationReason = errors.New("policy: revocation reason not allowed")
	// ErrBadRecoveryRevocation means what a recovery is to do with the certificate is not one
	// of keep, keyCompromise or superseded.
	ErrBadRecoveryRevocation = errors.New("policy: recovery revocation choice not allowed")
)

// The CRLReason codes of RFC 5280 §5.3.1 that the CA/Browser Forum S/MIME Baseline
// Requirements (§7.2.2) allow for a subscriber certificate, by the names of RFC 5280's ASN.1
// module. certificateHold is not among them: a revocation is final. The codes are the
// store's (escrow/store ReasonUnspecified...), which policy does not import.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonPrivilegeWithdrawn   = 9
)

var reasonNames = []struct {
	name string
	code int
}{
	{"unspecified", ReasonUnspecified},
	{"keyCompromise", ReasonKeyCompromise},
	{"affiliationChanged", ReasonAffiliationChanged},
	{"superseded", ReasonSuperseded},
	{"cessationOfOperation", ReasonCessationOfOperation},
	{"privilegeWithdrawn", ReasonPrivilegeWithdrawn},
}

// RevocationReasons returns the names of the allowed revocation reasons, in code order.
func RevocationReasons() []string {
	out := make([]string, len(reasonNames))
	for i, r := range reasonNames {
		out[i] = r.name
	}
	return out
}

// ParseRevocationReason returns the CRLReason code of a reason named as RFC 5280 names it
// (keyCompromise); the case of the letters does not matter. Any other name, certificateHold
// and removeFromCRL included, gives an error wrapping [ErrBadRevocationReason] that lists the
// allowed names.
func ParseRevocationReason(name string) (int, error) {
	for _, r := range reasonNames {
		if strings.EqualFold(name, r.name) {
			return r.code, nil
		}
	}
	what := fmt.Sprintf("%q", truncate(name))
	if name == "" {
		what = "none given"
	}
	return 0, fmt.Errorf("%w: %s; the S/MIME Baseline Requirements (§7.2.2) allow %s", ErrBadRevocationReason, what,
		strings.Join(RevocationReasons(), ", "))
}

// RevocationReasonName returns the RFC 5280 name of a CRLReason code, or "reason N" for a
// code outside the allowed set (a certificate migrated from another CA may carry one).
func RevocationReasonName(code int) string {
	for _, r := range reasonNames {
		if r.code == code {
			return r.name
		}
	}
	return fmt.Sprintf("reason %d", code)
}

// RecoveryKeep is the recovery revocation choice that leaves the certificate as it is.
const RecoveryKeep = "keep"

// ParseRecoveryRevocation reads what a recovery does with the certificate of each recovered
// key when the key is fetched: "keep" (nothing: the default of every built-in template), or
// revoke it as "keyCompromise" (a stolen laptop: the key is in other hands) or "superseded"
// (the subscriber gets a new certificate). It returns the choice's canonical name and, unless
// keep, its reason code. Anything else gives an error wrapping [ErrBadRecoveryRevocation].
func ParseRecoveryRevocation(choice string) (name string, reason int, keep bool, err error) {
	switch {
	case strings.EqualFold(choice, RecoveryKeep):
		return RecoveryKeep, 0, true, nil
	case strings.EqualFold(choice, "keyCompromise"):
		return "keyCompromise", ReasonKeyCompromise, false, nil
	case strings.EqualFold(choice, "superseded"):
		return "superseded", ReasonSuperseded, false, nil
	}
	return "", 0, false, fmt.Errorf("%w: %q; choose keep, keyCompromise (the key is in other hands) or superseded (the subscriber gets a new certificate)",
		ErrBadRecoveryRevocation, truncate(choice))
}

// CertRef is a certificate a revocation names, as policy sees it.
type CertRef struct {
	Serial  string
	Mailbox string // the certificate's mailbox ("" for operator and KRA certificates)
	Role    string // the operator role of a credential ("" for a subscriber's certificate)
	KRA     string // the KRA whose unwrap certificate it is ("" for others)
}

// AuthorizeRevoke decides whether p may revoke the certificates certs with reason (a code of
// the allowed set). Admins ([ActRevokeCredential]) may revoke any certificate. Officers
// ([ActRevoke]) revoke subscribers' certificates and their own credential, not another
// operator's credential nor a KRA certificate: those are the CA administrator's (separation of
// duties: an officer must not be able to lock an admin out, nor take a KRA's certificate away
// from the quorum). A subscriber, authenticated with a certificate of their mailbox (p.Mailbox set, no operator
// role), may revoke the certificates of that mailbox and no other (BR §4.9.2: the subscriber
// requests the revocation of their own certificate), and never with privilegeWithdrawn,
// which is the CA's finding that the subscriber broke their obligations. A request that
// reaches one certificate of someone else (a --key-of revocation whose key is also in another
// mailbox's certificate) is refused whole. The refusal wraps [ErrForbidden].
func AuthorizeRevoke(p Principal, reason int, certs []CertRef) error {
	if Allowed(p.Role, ActRevokeCredential) {
		return nil
	}
	if Allowed(p.Role, ActRevoke) {
		for _, c := range certs {
			if (c.Role != "" || c.KRA != "") && (p.Serial == "" || c.Serial != p.Serial) {
				what := "an operator credential (" + truncate(c.Role) + ")"
				if c.KRA != "" {
					what = "the KRA certificate of " + truncate(c.KRA)
				}
				return fmt.Errorf("%w: certificate %s is %s; only an admin revokes those (an officer revokes subscribers' certificates and their own credential)",
					ErrForbidden, truncate(c.Serial), what)
			}
		}
		return nil
	}
	if (p.Role != "" && p.Role != RoleEnrollee) || p.Mailbox == "" {
		return Authorize(p, ActRevoke, Resource{Kind: "certificates"})
	}
	for _, c := range certs {
		if c.Role != "" || !SameMailbox(c.Mailbox, p.Mailbox) {
			return fmt.Errorf("%w: certificate %s is not one of mailbox %s's; a subscriber revokes only the certificates of their own mailbox (an officer or admin revokes others)",
				ErrForbidden, truncate(c.Serial), truncate(p.Mailbox))
		}
	}
	if reason == ReasonPrivilegeWithdrawn {
		return fmt.Errorf("%w: privilegeWithdrawn is the CA's reason, not the subscriber's; choose another", ErrForbidden)
	}
	return nil
}
