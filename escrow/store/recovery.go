package store

import "time"

// Recovery request kinds: deliver the keys to the officer, or move records to the current
// recovery set without any key leaving the appliance.
const (
	KindRecover = "recover"
	KindReseal  = "reseal"
)

// Recovery request states.
const (
	RecoveryOpen      = "open"
	RecoveryConsumed  = "consumed"
	RecoveryCancelled = "cancelled"
	RecoveryExpired   = "expired"
)

// Recovery is a recovery request: who asked, for which records, and the label of the
// per-request recovery key in the appliance token that approving KRAs re-encrypt shares to.
type Recovery struct {
	ID               string
	Kind             string // KindRecover (default) or KindReseal
	Requester        string // the officer's credential name
	RequesterSerial  string // serial of the officer's credential
	RequesterMailbox string
	Reason           string
	KeyLabel         string
	KeySPKI          []byte // DER SubjectPublicKeyInfo of the recovery key
	OAEPHash         string // hash KRAs re-encrypt shares with ("SHA-1" or "SHA-256")
	State            string
	CreatedAt        time.Time
	ExpiresAt        time.Time
	ClosedAt         time.Time
	// Records are the record IDs being recovered, in order.
	Records []string
}

// Approval is one KRA's signed approval of a recovery request, with its shares re-encrypted to
// the request's recovery key (an encoding owned by the escrow package).
type Approval struct {
	RecoveryID   string
	KRA          string
	SignerSerial string
	Shares       []byte
	Signature    []byte
	CreatedAt    time.Time
}
