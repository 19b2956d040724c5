// Package wire holds the JSON bodies of the appliance's HTTP API under /api/v1/: what the
// server writes and the client commands read, and the other way round. One definition for
// both ends keeps them from drifting.
//
// It holds plain data, no validation (the server checks what it decodes), and one behaviour
// both ends share: [DecodeError], which words a decoding error without Go's type names. It
// imports only the standard library and escrow/audit (the audit report is part of a body).
// Values are not shared between goroutines by this package; DecodeError is safe for
// concurrent use.
package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/keyarc/keyarc/escrow/audit"
)

// Template is a certificate template as GET /api/v1/templates lists it.
type Template struct {
	Name           string   `json:"name"`
	Purpose        string   `json:"purpose,omitempty"`
	KeyUsage       []string `json:"key_usage"`
	ExtKeyUsage    []string `json:"ext_key_usage"`
	ValidityDays   int      `json:"validity_days"`
	Archive        bool     `json:"archive"`
	ServerKeygen   bool     `json:"server_keygen"`
	ManualApproval bool     `json:"manual_approval"`
}

// EnrollRequest is the body of POST /api/v1/enroll: a CSR and, for archiving templates, the PKCS#8
// key in a CMS envelope to the transport certificate (both base64 DER).
type EnrollRequest struct {
	Template     string `json:"template"`
	CSR          string `json:"csr"`
	EncryptedKey string `json:"encrypted_key"`
}

// Issued is an issued certificate: the answer of an enrollment or of an admin issuing a pending
// request.
type Issued struct {
	Serial      string `json:"serial"`
	Certificate string `json:"certificate"`
	Chain       string `json:"chain"`
	RecordID    string `json:"record_id,omitempty"`
	NotAfter    string `json:"not_after"`
	// Notice tells the subscriber, in plain words, what became of their private key: set when
	// it was escrowed (EscrowNotice; S/MIME BR §4.12.1).
	Notice string `json:"notice,omitempty"`
}

// EscrowNotice is the notice of an enrollment whose private key was escrowed.
const EscrowNotice = "The private key of this encryption certificate has been escrowed: a copy is archived, " +
	"sealed so that it can be recovered only with the approval of a quorum of key recovery agents " +
	"(for instance if you lose it and need to read old mail). Where the appliance sends mail, you " +
	"are told by mail of every recovery of it that is requested, and when one is completed."

// KRAEnrollRequest is the body of POST /api/v1/kra/enroll.
type KRAEnrollRequest struct {
	Name      string `json:"name"`
	UnwrapKey string `json:"unwrap_public_key"` // base64 DER SubjectPublicKeyInfo
	AuthCSR   string `json:"auth_csr"`          // base64 DER PKCS#10
	Proof     string `json:"proof"`             // base64 auth-key signature over escrow.KRABinding
}

// Pending is a request waiting for an admin's decision.
type Pending struct {
	ID           string   `json:"id"`
	Template     string   `json:"template"`
	Name         string   `json:"name,omitempty"`
	Requester    string   `json:"requester,omitempty"`
	State        string   `json:"state"`
	CreatedAt    string   `json:"created_at"`
	DecidedBy    string   `json:"decided_by,omitempty"`
	Serial       string   `json:"serial,omitempty"`
	Fingerprints []string `json:"fingerprints,omitempty"`
}

// RecoverySet is the current recovery set: its epoch, quorum and KRAs.
type RecoverySet struct {
	Epoch  uint32        `json:"epoch"`
	Quorum int           `json:"quorum"`
	KRAs   []RecoveryKRA `json:"kras"`
}

// RecoveryKRA is one KRA of a [RecoverySet].
type RecoveryKRA struct {
	Name     string `json:"name"`
	Serial   string `json:"serial"`
	NotAfter string `json:"not_after"`
}

// Recovery is a recovery or reseal request.
type Recovery struct {
	ID              string         `json:"id"`
	Kind            string         `json:"kind"`
	State           string         `json:"state"`
	Requester       string         `json:"requester"`
	RequesterSerial string         `json:"requester_serial"`
	Reason          string         `json:"reason"`
	CreatedAt       string         `json:"created_at"`
	ExpiresAt       string         `json:"expires_at"`
	Items           []RecoveryItem `json:"records,omitempty"`
	Approvals       []string       `json:"approvals"`
	Have            int            `json:"have"`
	Need            int            `json:"need"`
	// RecoveryKey (base64 SPKI) and OAEP hash the KRAs re-encrypt their shares to.
	RecoveryKey string `json:"recovery_key,omitempty"`
	KeyOAEPHash string `json:"recovery_key_oaep_hash,omitempty"`
}

// RecoveryItem is one escrow record of a [Recovery].
type RecoveryItem struct {
	RecordID string `json:"record_id"`
	Serial   string `json:"serial"`
	Owner    string `json:"owner"`
	Epoch    uint32 `json:"epoch"`
	// Share and OAEPHash are shown to a KRA only: its own encrypted share of the record.
	Share    string `json:"share,omitempty"`
	OAEPHash string `json:"oaep_hash,omitempty"`
	// Revoke is what the fetch does with the record's certificate: "keep", or the revocation
	// reason (keyCompromise, superseded). Absent in listings.
	Revoke string `json:"revoke,omitempty"`
}

// RecoveryRequest is the body of POST /api/v1/recoveries: the key of one certificate (serial)
// or every archived key of a mailbox (email), why, and what the fetch does with the
// certificates (revoke: keep, keyCompromise or superseded; empty for the template's default).
type RecoveryRequest struct {
	Serial string `json:"serial,omitempty"`
	Email  string `json:"email,omitempty"`
	Reason string `json:"reason"`
	Revoke string `json:"revoke,omitempty"`
}

// RevokeRequest is the body of POST /api/v1/revocations: exactly one of serial, email (every
// unexpired certificate of a mailbox) and key_of (every unexpired certificate of the public key
// of that serial), and the reason: one of unspecified, keyCompromise, affiliationChanged,
// superseded, cessationOfOperation, privilegeWithdrawn.
type RevokeRequest struct {
	Serial string `json:"serial,omitempty"`
	Email  string `json:"email,omitempty"`
	KeyOf  string `json:"key_of,omitempty"`
	Reason string `json:"reason"`
}

// Revocation is the revocation of one certificate.
type Revocation struct {
	Serial    string `json:"serial"`
	Mailbox   string `json:"mailbox,omitempty"`
	Reason    string `json:"reason"`
	RevokedAt string `json:"revoked_at"` // RFC 3339, UTC
}

// Revoked is the answer of POST /api/v1/revocations (200), and part of a fetch's answer:
// the certificates revoked now, those revoked before whose reason moved to keyCompromise
// (their date stays the first), and those named that were revoked already and stay so.
type Revoked struct {
	Revoked       []Revocation `json:"revoked"`
	KeyCompromise []Revocation `json:"key_compromise,omitempty"`
	Unchanged     []Revocation `json:"unchanged,omitempty"`
}

// AlreadyRevoked is the answer (409) of a revocation whose certificates were all revoked
// already: the refusal and the existing revocations, which stay as they are.
type AlreadyRevoked struct {
	Error    string       `json:"error"`
	Existing []Revocation `json:"existing"`
}

// Approval is the body of POST /api/v1/recoveries/{id}/approvals: the KRA's shares
// re-encrypted to the request's recovery key, and its signature over them.
type Approval struct {
	Shares []struct {
		RecordID string `json:"record_id"`
		Share    string `json:"share"`
	} `json:"shares"`
	Signature string `json:"signature"`
}

// Fetched is the answer of POST /api/v1/recoveries/{id}/fetch: the PFX password, shown once,
// and the PFX files.
type Fetched struct {
	Password string `json:"password"`
	Files    []struct {
		Serial string `json:"serial"`
		PFX    string `json:"pfx"`
	} `json:"files"`
	// Revocations are what the fetch revoked, as the request said; nil when it kept the
	// certificates.
	Revocations *Revoked `json:"revocations,omitempty"`
}

// AuditEntry is one entry of the audit trail.
type AuditEntry struct {
	Seq     int64           `json:"seq"`
	At      string          `json:"at"`
	Kind    string          `json:"kind"`
	Actor   string          `json:"actor"`
	Subject string          `json:"subject"`
	Details json.RawMessage `json:"details"`
	Prev    string          `json:"prev"`
	Hash    string          `json:"hash"`
}

// AuditVerification is the verification of the whole audit trail.
type AuditVerification struct {
	OK      bool          `json:"ok"`
	Problem string        `json:"problem,omitempty"`
	Seq     int64         `json:"problem_seq,omitempty"`
	Report  *audit.Report `json:"report"`
	KeyID   string        `json:"audit_key_id"`
}

// KRAEnrollStatus is the answer of GET /api/v1/kra/enroll/{id}: the request and, once it is
// issued, the KRA's newest unwrap and auth certificates (PEM).
type KRAEnrollStatus struct {
	Pending
	Unwrap string `json:"unwrap_certificate,omitempty"`
	Auth   string `json:"auth_certificate,omitempty"`
}

// DecodeError turns the error of decoding a body of this package with encoding/json into one
// that names the field and the expected JSON type in words, without Go's type names (struct
// fields, reflect types). Both ends decode through it: the server for a request, the client
// commands for an answer. Errors it does not know are returned as they are; the result wraps
// err, so errors.Is and errors.As still see the decoder's error.
func DecodeError(err error) error {
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return &decodeError{fmt.Sprintf("the body must be a JSON %s, not a%s %s", jsonKind(te.Type), article(te.Value), te.Value), err}
		}
		return &decodeError{fmt.Sprintf("field %s must be a%s %s, not a%s %s", field, article(jsonKind(te.Type)), jsonKind(te.Type),
			article(te.Value), te.Value), err}
	case errors.As(err, &se):
		// The scanner's own words ("invalid character 'x' ...", "exceeded max depth") name no Go type.
		return &decodeError{fmt.Sprintf("the body is not valid JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: ")), err}
	case errors.Is(err, io.EOF):
		return &decodeError{"the body is empty; a JSON object is expected", err}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &decodeError{"the body ends before its JSON value does", err}
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return &decodeError{"unknown field " + strings.Trim(name, `"`), err}
	}
	return err
}

// decodeError is a decoder's error in words; Unwrap gives the decoder's own.
type decodeError struct {
	msg string
	err error
}

func (e *decodeError) Error() string { return e.msg }
func (e *decodeError) Unwrap() error { return e.err }

// jsonKind names the JSON type that decodes into t.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "whole number"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return "string (base64)"
		}
		return "list"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return "value"
}

// article is "n" when kind starts with a vowel, for "a"+article.
func article(kind string) string {
	if kind != "" && strings.ContainsRune("aeiou", rune(kind[0])) {
		return "n"
	}
	return ""
}

// RecoveryHealth is the answer of GET /api/v1/recovery-set/health: the quorum health of the
// current epoch and of every older epoch that still holds records, oldest first.
type RecoveryHealth struct {
	// WindowSeconds is how recent a KRA's drill proof must be to count; MarginSeconds how long
	// its certificate must stay valid. WindowDays and MarginDays are the same in whole days.
	WindowSeconds int64         `json:"window_seconds"`
	MarginSeconds int64         `json:"margin_seconds"`
	WindowDays    int           `json:"window_days"`
	MarginDays    int           `json:"margin_days"`
	Epochs        []EpochHealth `json:"epochs"`
}

// EpochHealth is one epoch of a [RecoveryHealth].
type EpochHealth struct {
	Epoch       uint32      `json:"epoch"`
	Quorum      int         `json:"quorum"`
	Current     bool        `json:"current"`
	Records     int         `json:"records"`
	Proven      int         `json:"proven"`
	Valid       int         `json:"valid"`
	Canary      bool        `json:"canary"`
	AtRisk      bool        `json:"at_risk"`
	NeedsReseal bool        `json:"needs_reseal"`
	Advice      string      `json:"advice,omitempty"`
	KRAs        []KRAHealth `json:"kras"`
}

// KRAHealth is one KRA of an [EpochHealth].
type KRAHealth struct {
	Name      string `json:"name"`
	Serial    string `json:"serial"`
	NotAfter  string `json:"not_after"`
	LastProof string `json:"last_proof,omitempty"` // RFC 3339; empty when never proven
	Proven    bool   `json:"proven"`
	Valid     bool   `json:"valid"`
}

// DrillRequest is the body of POST /api/v1/drills: a drill for one KRA, or (KRA empty, by an
// admin) a campaign of every KRA of every live epoch. A KRA opens a drill for itself.
type DrillRequest struct {
	KRA string `json:"kra,omitempty"`
}

// Drill is a drill; Items are filled only for the KRA it asks (GET /api/v1/drills/{id}).
type Drill struct {
	ID        string      `json:"id"`
	Campaign  string      `json:"campaign,omitempty"`
	KRA       string      `json:"kra"`
	Epochs    []uint32    `json:"epochs"`
	State     string      `json:"state"`
	OpenedBy  string      `json:"opened_by"`
	CreatedAt string      `json:"created_at"`
	ExpiresAt string      `json:"expires_at"` // RFC 3339 with fractions: part of what the KRA signs
	ClosedAt  string      `json:"closed_at,omitempty"`
	Proven    []uint32    `json:"proven,omitempty"` // the epochs a proof covered (the answer to a proof)
	DrillKey  string      `json:"drill_key"`        // base64 DER SubjectPublicKeyInfo
	KeyHash   string      `json:"key_oaep_hash"`
	Items     []DrillItem `json:"items,omitempty"`
}

// DrillItem is the KRA's canary share of one epoch: the ciphertext to decrypt in its token
// and the commitment the plain share must match before it is re-encrypted.
type DrillItem struct {
	Epoch      uint32 `json:"epoch"`
	Share      string `json:"share"` // base64 RSA-OAEP ciphertext to the KRA's unwrap key
	OAEPHash   string `json:"oaep_hash"`
	KeyID      string `json:"key_id"`     // base64
	Commitment string `json:"commitment"` // base64
}

// DrillProof is the body of POST /api/v1/drills/{id}/proof.
type DrillProof struct {
	Shares []struct {
		Epoch uint32 `json:"epoch"`
		Share string `json:"share"` // base64, RSA-OAEP to the drill key
	} `json:"shares"`
	Signature string `json:"signature"` // base64, by the KRA's auth key over escrow.DrillDigest
}
