package escrow

// Recoverability drills (issue 17): proof, long before a recovery is needed, that each KRA's
// token still holds its unwrap key and that the KRA can use it, without a user's record ever
// being read.
//
// # The canary
//
// Each recovery-set epoch gets a canary: a random 32-byte secret sealed exactly like a user's
// record (escrow/record, the epoch's m-of-n, shares RSA-OAEP to each KRA's unwrap
// certificate), whose header lives in its own namespace ([CanaryIssuer], no CA's DN has that
// form; the serial is the epoch; the SPKI hash is over a domain string), so that the AEAD
// binds it as a canary and it can never pass for a user's record or be put in a record's
// place. The secret itself is discarded once sealed. For each KRA the appliance keeps a
// commitment to the KRA's plain share ([CanaryCommitment]), never the share.
//
// # A drill
//
// A drill asks one KRA to prove its share of the canary of every live epoch it belongs to,
// under a fresh drill key in the appliance token (like a recovery request's key). The KRA
// fetches its encrypted canary shares and the commitments, decrypts each share in its own
// token, and refuses to go on unless the plain share matches the commitment the appliance
// gave: an appliance taken over after a record was sealed cannot pass that record's share
// off as a canary share, since it would have to commit to a share it never knew. The KRA re-encrypts each share
// to the drill key and signs [DrillDigest] with its auth key. The appliance checks the
// signature, decrypts each share with the drill key, checks the commitment, records the proof
// per KRA and epoch with a signed audit entry, and destroys the drill key. No quorum is
// needed and nothing of a real key is revealed: a canary share protects nothing (once m KRAs
// have proven, the appliance could open its own canary, which holds nothing).
//
// A campaign is one drill per KRA of every live epoch, opened together under one campaign ID.
//
// # Health
//
// [Service.RecoveryHealth] reports, per epoch that still holds records, how many of its KRAs
// proved their share within a window, whether that reaches the quorum, how many records
// depend on it and when its KRAs' certificates expire. An old epoch below its quorum is to be
// resealed to the current set by the KRAs who can still prove (RequestReseal and
// CompleteReseal), before it is too late.
//
// # Storage
//
// Drills keep their rows in the archive's drill states ([store.DrillStates]: encodings of this
// package, by kind canary, drill and proof), in the same transactions as their audit entries.

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/shamir"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Drill errors.
var (
	// ErrBadDrillProof: a drill proof whose signature, shares or commitments do not match the
	// drill: the KRA's token did not decrypt its canary shares, or the proof is another
	// drill's.
	ErrBadDrillProof = errors.New("escrow: drill proof refused")
	// ErrDrillClosed: the drill was answered, closed or expired.
	ErrDrillClosed = errors.New("escrow: drill is closed")
	// ErrDrillPending: the KRA has a drill open already; it answers that one first.
	ErrDrillPending = errors.New("escrow: a drill of this KRA is open already")
	// ErrDrillsFull: as many drills are open as the appliance keeps drill keys for.
	ErrDrillsFull = errors.New("escrow: too many drills are open")
)

// CanaryIssuer is the issuer field of every canary's sealed header: not a DN, so no user
// record (whose issuer is the CA's subject DN) ever has it.
const CanaryIssuer = "keyarc-recovery-canary-v1"

// Drill states.
const (
	DrillOpen    = "open"
	DrillProven  = "proven"
	DrillExpired = "expired"
)

// Kinds of drill rows in the archive ([store.DrillStates]).
const (
	drillKindCanary = "canary" // key: the epoch, decimal
	drillKindDrill  = "drill"  // key: the drill ID
	drillKindProof  = "proof"  // key: epoch "/" KRA name; the KRA's last proof for the epoch
)

// Audit kinds of drills.
const (
	KindDrillOpened  audit.Kind = "drill-opened"  // a drill (or a campaign's drills) opened
	KindDrillProof   audit.Kind = "drill-proof"   // a KRA proved its canary shares, with its signature
	KindDrillRefused audit.Kind = "drill-refused" // a drill proof refused
	KindDrillExpired audit.Kind = "drill-expired" // a drill closed unanswered
	KindCanarySealed audit.Kind = "canary-sealed" // an epoch's canary sealed
)

// maxDrillTTL bounds how long a drill stays open.
const maxDrillTTL = 30 * 24 * time.Hour

// maxOpenDrills bounds the drills open at once, each of which holds a key in the appliance
// token until it is answered or expires: admins open campaigns at will, and a token's room
// for objects is finite. It is a variable for the tests.
var maxOpenDrills = 256

// maxDrillSignature bounds a drill proof's signature: an RSA-8192 signature, the largest a
// KRA auth key makes (ECDSA ones are far shorter).
const maxDrillSignature = 1024

// canaryRow is an epoch's canary as stored.
type canaryRow struct {
	Epoch     uint32        `json:"epoch"`
	Record    []byte        `json:"record"` // the sealed canary (escrow/record format)
	CreatedAt time.Time     `json:"created_at"`
	KRAs      []canaryShare `json:"kras"`
}

// canaryShare is one KRA's place in a canary: who, which unwrap key, and the commitment to
// its plain share.
type canaryShare struct {
	KRA        string `json:"kra"`
	Serial     string `json:"serial"` // the unwrap certificate's serial
	KeyID      []byte `json:"key_id"`
	Commitment []byte `json:"commitment"`
}

// drillRow is a drill as stored.
type drillRow struct {
	ID        string    `json:"id"`
	Campaign  string    `json:"campaign,omitempty"`
	KRA       string    `json:"kra"`
	Epochs    []uint32  `json:"epochs"`
	KeyLabel  string    `json:"key_label"`
	KeySPKI   []byte    `json:"key_spki"`
	OAEPHash  string    `json:"oaep_hash"`
	OpenedBy  string    `json:"opened_by"`
	State     string    `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	ClosedAt  time.Time `json:"closed_at,omitzero"`
	Signer    string    `json:"signer,omitempty"` // the serial of the auth certificate that signed the proof
}

// proofRow is a KRA's last proof of its share of an epoch's canary.
type proofRow struct {
	Epoch    uint32    `json:"epoch"`
	KRA      string    `json:"kra"`
	Drill    string    `json:"drill"`
	Campaign string    `json:"campaign,omitempty"`
	Signer   string    `json:"signer"`
	At       time.Time `json:"at"`
}

// Drill is a drill as the engine shows it.
type Drill struct {
	ID, Campaign, KRA string
	Epochs            []uint32
	// KeySPKI is the drill key (DER SubjectPublicKeyInfo); OAEPHash the hash the KRA
	// re-encrypts with.
	KeySPKI  []byte
	OAEPHash string
	OpenedBy string
	State    string
	// Proven are the epochs the KRA's proof covered ([Service.SubmitDrillProof]'s answer only).
	Proven    []uint32
	CreatedAt time.Time
	ExpiresAt time.Time
	ClosedAt  time.Time
}

func (d *drillRow) view() Drill {
	return Drill{ID: d.ID, Campaign: d.Campaign, KRA: d.KRA, Epochs: slices.Clone(d.Epochs), KeySPKI: d.KeySPKI,
		OAEPHash: d.OAEPHash, OpenedBy: d.OpenedBy, State: d.State, CreatedAt: d.CreatedAt, ExpiresAt: d.ExpiresAt, ClosedAt: d.ClosedAt}
}

// DrillShare is one canary share a KRA is asked to prove.
type DrillShare struct {
	Epoch uint32
	// Share is the KRA's canary share, RSA-OAEP encrypted to its unwrap key with OAEPHash.
	Share    []byte
	OAEPHash crypto.Hash
	// KeyID is the unwrap key's ID in the canary ([record.KeyID]); Commitment the
	// [CanaryCommitment] the plain share must match before the KRA re-encrypts it.
	KeyID      []byte
	Commitment []byte
}

// ProvenShare is one canary share, re-encrypted by the KRA to the drill key.
type ProvenShare struct {
	Epoch uint32 `json:"epoch"`
	Share []byte `json:"share"`
}

// drillField writes one length-prefixed field.
func drillField(h interface{ Write([]byte) (int, error) }, b []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	h.Write(n[:])
	h.Write(b)
}

func epochBytes(e uint32) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], e)
	return b[:]
}

// CanaryCommitment is the commitment to a KRA's plain canary share of an epoch:
// SHA-256 over length-prefixed fields (a domain string, the epoch, the KRA's unwrap key ID,
// the share). It cannot fail.
func CanaryCommitment(epoch uint32, keyID, share []byte) []byte {
	h := sha256.New()
	drillField(h, []byte("keyarc canary share commitment v1"))
	drillField(h, epochBytes(epoch))
	drillField(h, keyID)
	drillField(h, share)
	return h.Sum(nil)
}

// canaryHeader is the sealed header of epoch's canary for a set of m of n.
func canaryHeader(epoch uint32, m, n int, hash crypto.Hash) (record.Header, error) {
	id, err := record.NewID()
	if err != nil {
		return record.Header{}, err
	}
	return record.Header{Version: record.Version, ID: id, Issuer: CanaryIssuer, Serial: append([]byte{0xca}, epochBytes(epoch)...),
		SPKIHash: sha256.Sum256(append([]byte("keyarc canary v1 epoch "), epochBytes(epoch)...)),
		Epoch:    epoch, M: uint8(m), N: uint8(n), OAEPHash: hash}, nil
}

// IsCanary reports whether a sealed header is a canary's.
func IsCanary(h record.Header) bool { return h.Issuer == CanaryIssuer }

// sealCanary seals a fresh canary for rs and returns its row. The secret and the plain shares
// are cleared (best effort).
func (s *Service) sealCanary(rs *RecoverySet) (*canaryRow, error) {
	h, err := canaryHeader(rs.Epoch, rs.Quorum, len(rs.recipients), s.shareHash())
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	defer clear(secret)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	sealed, shares, err := sealKeepingShares(h, secret, rs.recipients)
	if err != nil {
		return nil, fmt.Errorf("escrow: seal the canary of epoch %d: %w", rs.Epoch, err)
	}
	defer clearAll(shares)
	blob, err := sealed.MarshalBinary()
	if err != nil {
		return nil, err
	}
	row := &canaryRow{Epoch: rs.Epoch, Record: blob, CreatedAt: s.now()}
	for i, c := range rs.KRAs {
		kid := record.KeyID(c)
		row.KRAs = append(row.KRAs, canaryShare{KRA: rs.Names[i], Serial: serialOf(c), KeyID: kid,
			Commitment: CanaryCommitment(rs.Epoch, kid, shares[i])})
	}
	return row, nil
}

// sealKeepingShares seals secret for rcpts exactly as [record.Seal] does (a fresh data key
// K, AES-256-GCM with the encoded header as additional data, K split m-of-n with
// escrow/shamir, share i RSA-OAEP to recipient i), but returns the plain shares too, in
// recipient order, for the commitments: record.Seal keeps its shares to itself. The result
// is opened back with m of the shares before it is returned, so a canary that the format
// would not open is never stored. The caller clears the shares.
func sealKeepingShares(h record.Header, secret []byte, rcpts []record.Recipient) (*record.Record, [][]byte, error) {
	key := make([]byte, record.KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, err
	}
	shares, err := shamir.Split(key, int(h.N), int(h.M))
	if err != nil {
		return nil, nil, err
	}
	r := &record.Record{Header: h, Shares: make([]record.EncShare, len(rcpts))}
	for i, rc := range rcpts {
		ct, err := rsa.EncryptOAEP(h.OAEPHash.New(), rand.Reader, rc.Key, shares[i], nil)
		if err != nil {
			clearAll(shares)
			return nil, nil, fmt.Errorf("recipient %d: %w", i, err)
		}
		r.Shares[i] = record.EncShare{KeyID: slices.Clone(rc.KeyID), Ciphertext: ct}
	}
	// The additional data is the encoded header: the first bytes of the record's encoding.
	r.Sealed = make([]byte, record.MinSealed)
	enc, err := r.MarshalBinary()
	if err != nil {
		clearAll(shares)
		return nil, nil, err
	}
	aad := enc[:headerLen(&h)]
	block, err := aes.NewCipher(key)
	if err != nil {
		clearAll(shares)
		return nil, nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		clearAll(shares)
		return nil, nil, err
	}
	sealed := make([]byte, record.NonceSize, record.NonceSize+len(secret)+record.TagSize)
	if _, err := rand.Read(sealed); err != nil {
		clearAll(shares)
		return nil, nil, err
	}
	r.Sealed = gcm.Seal(sealed, sealed[:record.NonceSize], secret, aad)
	got, err := record.Open(r, shares[:h.M])
	if err == nil && subtle.ConstantTimeCompare(got, secret) != 1 {
		err = errors.New("it opens to another secret")
	}
	clear(got)
	if err != nil {
		clearAll(shares)
		return nil, nil, fmt.Errorf("escrow: the sealed canary does not open: %w", err)
	}
	return r, shares, nil
}

// headerLen is the length of h's encoding (escrow/record's format, version 1).
func headerLen(h *record.Header) int {
	return len(record.Magic) + 1 + 16 + 2 + len(h.Issuer) + 1 + len(h.Serial) + 32 + 4 + 3
}

func serialOf(c *x509.Certificate) string { return store.FormatSerial(c.SerialNumber) }

// liveEpochs are the epochs to drill: the current one, and every older one that still holds
// active records.
func liveEpochs(cur uint32, counts map[uint32]int) []uint32 {
	var out []uint32
	for e := uint32(1); e <= cur; e++ {
		if e == cur || counts[e] > 0 {
			out = append(out, e)
		}
	}
	return out
}

// EnsureCanaries seals a canary for every live epoch that has none (an epoch made before
// drills existed, or a new one), each with an audit entry, and returns how many it sealed.
// Two nodes racing seal one canary each; the first stored wins and the other is dropped.
//
// # Errors
//
// Only faults of the appliance: a storage error wrapping
// [store.ErrUnavailable], the audit trail's ([audit.ErrAppend]) or a recovery set that does
// not resolve (a fault of the archive).
func (s *Service) EnsureCanaries(ctx context.Context) (int, error) {
	var missing []*RecoverySet
	err := s.Store.View(ctx, func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		cur, err := tx.CurrentEpoch()
		if err != nil || cur == 0 {
			return err
		}
		counts, err := dtx.ActiveRecordsByEpoch()
		if err != nil {
			return err
		}
		for _, e := range liveEpochs(cur, counts) {
			if _, err := dtx.GetDrillState(drillKindCanary, epochKey(e)); err == nil {
				continue
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			row, err := tx.GetRecoverySet(e)
			if err != nil {
				return fmt.Errorf("escrow: recovery set %d: %w", e, err)
			}
			rs, err := s.recoverySetIn(tx, row)
			if err != nil {
				return err
			}
			missing = append(missing, rs)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	sealed := 0
	for _, rs := range missing {
		row, err := s.sealCanary(rs)
		if err != nil {
			return sealed, err
		}
		data, err := json.Marshal(row)
		if err != nil {
			return sealed, err
		}
		err = s.Store.Update(ctx, func(tx store.Tx) error {
			dtx := store.DrillStates(tx)
			if err := dtx.InsertDrillState(drillKindCanary, epochKey(rs.Epoch), data); err != nil {
				return err
			}
			// The commitments go in the signed trail (Fingerprint: SHA-256 values, none a
			// secret), so that a canary row altered later can be told from the one sealed.
			d := audit.Details{Epoch: rs.Epoch, Quorum: rs.Quorum}
			for _, k := range row.KRAs {
				d.Serials = append(d.Serials, k.Serial)
				d.Fingerprint = append(d.Fingerprint, hex.EncodeToString(k.Commitment))
			}
			return s.audit(tx, KindCanarySealed, "system", fmt.Sprintf("epoch %d", rs.Epoch), d)
		})
		if errors.Is(err, store.ErrConflict) {
			continue // another node sealed it first
		}
		if err != nil {
			return sealed, err
		}
		sealed++
		s.log().Info("canary sealed", "epoch", rs.Epoch, "kras", len(row.KRAs), "quorum", rs.Quorum)
	}
	return sealed, nil
}

func epochKey(e uint32) string { return strconv.FormatUint(uint64(e), 10) }

func drillKeyLabel(id string) string { return "drill-" + id }

// checkDrillID refuses, before the archive is read, what is not a drill ID as [newID] makes
// them (16 lower-case hex digits): a path, a huge or non-hex string. The ID is not echoed: it
// is the client's, of any size.
func checkDrillID(id string) error {
	if !isNewID(id) {
		return fmt.Errorf("%w: not a drill ID (a drill ID is 16 lower-case hex digits, as `keyarc admin drill list` shows them)", ErrInvalidRequest)
	}
	return nil
}

// drillKeyUse serialises, in this process, the uses of each drill key (by label): a proof's
// decryptions, its commit and the key's destruction after it, and the destruction of an
// expired drill's key. A second proof of the same drill waits, then finds the drill closed,
// rather than decrypting with a key destroyed under it (which the token reports as a lost
// handle, a fault of the token).
var drillKeyUse keyedMutex

// keyedMutex is a mutex per key; entries live while held or waited for.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu sync.Mutex
	n  int // holders and waiters
}

// lock locks key and returns its unlock.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.n++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.n--; e.n == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// OpenDrill opens a drill for one KRA (kra, by name) over the canaries of every live epoch it
// belongs to, or, with kra empty, a campaign: one drill per KRA of every live epoch, under one
// campaign ID. An admin opens either; a KRA opens a drill for itself only. Canaries missing
// are sealed first ([Service.EnsureCanaries]). Each drill gets a fresh drill key in the token.
//
// # Errors
//
// [ErrInvalidRequest] (a ttl out of 1 minute..30 days, a KRA in no live epoch),
// [ErrForbidden] (a KRA opening another's drill), [ErrDrillPending] (a KRA opening a drill
// for itself while one of its drills is open), [ErrDrillsFull] (the drills would be more
// than maxOpenDrills open at once), [ErrNoRecoverySet] (no recovery set yet),
// or, for faults of the appliance, the token's error making a drill key, a
// storage error wrapping [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]).
func (s *Service) OpenDrill(ctx context.Context, by policy.Principal, kra string, ttl time.Duration) ([]Drill, error) {
	if ttl < time.Minute || ttl > maxDrillTTL {
		return nil, fmt.Errorf("%w: a drill stays open between 1 minute and %d days", ErrInvalidRequest, int(maxDrillTTL.Hours()/24))
	}
	switch by.Role {
	case policy.RoleAdmin:
	case policy.RoleKRA:
		if kra == "" {
			kra = by.Name
		}
		if kra != by.Name {
			return nil, fmt.Errorf("%w: a KRA opens drills for itself only", ErrForbidden)
		}
	default:
		return nil, fmt.Errorf("%w: only an admin or a KRA opens drills", ErrForbidden)
	}
	if s.RecoveryKeys == nil {
		return nil, errors.New("escrow: no key store configured for drill keys")
	}
	// Each drill is a key made in the appliance token and kept until the drill ends: a KRA
	// opens one for itself only while it has none open, so that its credential alone cannot
	// fill the token. Checked here, before a key is made, and again where the drill is stored.
	selfOpen := by.Role == policy.RoleKRA
	if selfOpen {
		err := s.Store.View(ctx, func(tx store.Tx) error { return s.noOpenDrill(store.DrillStates(tx), kra) })
		if err != nil {
			return nil, err
		}
	}
	// Every drill holds a token key: the drills open stay under maxOpenDrills, whoever opens
	// them. Checked for one more before any key is made, and for all of them where they are
	// stored.
	if err := s.Store.View(ctx, func(tx store.Tx) error { return s.roomForDrills(store.DrillStates(tx), 1) }); err != nil {
		return nil, err
	}
	if _, err := s.EnsureCanaries(ctx); err != nil {
		return nil, err
	}
	var canaries []*canaryRow
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		canaries, err = liveCanaries(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(canaries) == 0 {
		return nil, fmt.Errorf("%w: no recovery set is defined yet", ErrNoRecoverySet)
	}
	byKRA := map[string][]uint32{}
	var order []string
	for _, c := range canaries {
		for _, k := range c.KRAs {
			if kra != "" && k.KRA != kra {
				continue
			}
			if _, ok := byKRA[k.KRA]; !ok {
				order = append(order, k.KRA)
			}
			byKRA[k.KRA] = append(byKRA[k.KRA], c.Epoch)
		}
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("%w: KRA %.64q is in no live recovery set", ErrInvalidRequest, kra)
	}
	campaign := ""
	if kra == "" {
		if campaign, err = newID(); err != nil {
			return nil, err
		}
	}
	now := s.now()
	rows := make([]drillRow, 0, len(order))
	destroyAll := func() {
		for _, r := range rows {
			s.destroyKey(r.KeyLabel)
		}
	}
	for _, name := range order {
		id, err := newID()
		if err != nil {
			destroyAll()
			return nil, err
		}
		label := drillKeyLabel(id)
		pub, err := s.RecoveryKeys.Generate(label)
		if err != nil {
			destroyAll()
			return nil, fmt.Errorf("escrow: generate drill key: %w", err)
		}
		spki, err := x509.MarshalPKIXPublicKey(pub)
		rows = append(rows, drillRow{ID: id, Campaign: campaign, KRA: name, Epochs: byKRA[name], KeyLabel: label, KeySPKI: spki,
			OAEPHash: s.shareHash().String(), OpenedBy: by.Name, State: DrillOpen, CreatedAt: now, ExpiresAt: now.Add(ttl)})
		if err != nil {
			destroyAll()
			return nil, err
		}
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		if selfOpen {
			if err := s.noOpenDrill(dtx, kra); err != nil {
				return err
			}
		}
		if err := s.roomForDrills(dtx, len(rows)); err != nil {
			return err
		}
		for _, r := range rows {
			data, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := dtx.InsertDrillState(drillKindDrill, r.ID, data); err != nil {
				return err
			}
			if err := s.audit(tx, KindDrillOpened, principalActor(string(by.Role), by.Name), r.ID, audit.Details{Request: r.ID,
				RequestKind: "drill", KRA: r.KRA, FromEpochs: r.Epochs, Reason: campaignNote(r.Campaign),
				Signer: by.Serial, Expires: r.ExpiresAt.Format(time.RFC3339)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		destroyAll()
		if errors.Is(err, ErrDrillPending) || errors.Is(err, ErrDrillsFull) {
			return nil, err
		}
		return nil, fmt.Errorf("escrow: store drills: %w", err)
	}
	out := make([]Drill, len(rows))
	for i := range rows {
		out[i] = rows[i].view()
	}
	s.log().Info("drill opened", "drills", len(rows), "campaign", campaign, "by", by.Name)
	return out, nil
}

// noOpenDrill is [ErrDrillPending], naming the drill, when kra has an open drill that has not
// expired.
func (s *Service) noOpenDrill(dtx store.DrillStates, kra string) error {
	rows, err := allDrills(dtx)
	if err != nil {
		return err
	}
	now := s.now()
	for _, d := range rows {
		if d.KRA == kra && d.State == DrillOpen && now.Before(d.ExpiresAt) {
			return fmt.Errorf("%w: KRA %s has drill %s open until %s; answer it with `keyarc kra drill` (it answers every open drill)",
				ErrDrillPending, kra, d.ID, d.ExpiresAt.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// roomForDrills is [ErrDrillsFull] when adding more drills would leave more than
// maxOpenDrills open and unexpired.
func (s *Service) roomForDrills(dtx store.DrillStates, adding int) error {
	rows, err := allDrills(dtx)
	if err != nil {
		return err
	}
	now, open := s.now(), 0
	for _, d := range rows {
		if d.State == DrillOpen && now.Before(d.ExpiresAt) {
			open++
		}
	}
	if open+adding > maxOpenDrills {
		return fmt.Errorf("%w: %d drills are open and %d more would pass the appliance's bound of %d (each holds a key in the token); let drills be answered or expire first (`keyarc admin drill list --open`)",
			ErrDrillsFull, open, adding, maxOpenDrills)
	}
	return nil
}

func campaignNote(c string) string {
	if c == "" {
		return ""
	}
	return "campaign " + c
}

// liveCanaries reads the canaries of the live epochs, oldest first.
func liveCanaries(tx store.Tx) ([]*canaryRow, error) {
	dtx := store.DrillStates(tx)
	cur, err := tx.CurrentEpoch()
	if err != nil {
		return nil, err
	}
	counts, err := dtx.ActiveRecordsByEpoch()
	if err != nil {
		return nil, err
	}
	var out []*canaryRow
	for _, e := range liveEpochs(cur, counts) {
		c, err := getCanary(dtx, e)
		if errors.Is(err, store.ErrNotFound) {
			continue // sealed by the next EnsureCanaries
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func getCanary(dtx store.DrillStates, e uint32) (*canaryRow, error) {
	data, err := dtx.GetDrillState(drillKindCanary, epochKey(e))
	if err != nil {
		return nil, err
	}
	var c canaryRow
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("escrow: canary of epoch %d: %w", e, err)
	}
	return &c, nil
}

// allDrills returns every drill, in no order.
func allDrills(dtx store.DrillStates) ([]*drillRow, error) {
	rows, err := dtx.ListDrillState(drillKindDrill)
	if err != nil {
		return nil, err
	}
	out := make([]*drillRow, 0, len(rows))
	for id, data := range rows {
		var d drillRow
		if err := json.Unmarshal(data, &d); err != nil {
			return nil, fmt.Errorf("escrow: drill %s: %w", id, err)
		}
		out = append(out, &d)
	}
	return out, nil
}

func getDrill(dtx store.DrillStates, id string) (*drillRow, error) {
	data, err := dtx.GetDrillState(drillKindDrill, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no drill %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	var d drillRow
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("escrow: drill %s: %w", id, err)
	}
	return &d, nil
}

// ListDrills lists the drills, newest first: of one campaign when campaign is set, of one KRA
// when kra is set, open ones only when open.
//
// # Errors
//
// A storage error wrapping [store.ErrUnavailable].
func (s *Service) ListDrills(ctx context.Context, campaign, kra string, open bool) ([]Drill, error) {
	var out []Drill
	err := s.Store.View(ctx, func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		rows, err := allDrills(dtx)
		if err != nil {
			return err
		}
		now := s.now()
		for _, d := range rows {
			if campaign != "" && d.Campaign != campaign || kra != "" && d.KRA != kra {
				continue
			}
			if open && (d.State != DrillOpen || !now.Before(d.ExpiresAt)) {
				continue
			}
			out = append(out, d.view())
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// DrillFor returns drill id and, for the KRA it asks (kra, as authenticated), the KRA's
// encrypted canary shares and their commitments, in the drill's epoch order.
//
// # Errors
//
// [ErrInvalidRequest] (an id that is not a drill ID), [ErrNotFound], [ErrForbidden] (another
// KRA's drill), [ErrDrillClosed], or a storage error wrapping [store.ErrUnavailable]. A
// canary that does not parse, or that holds no share for the KRA's unwrap key, is a fault of
// the archive.
func (s *Service) DrillFor(ctx context.Context, kra policy.Principal, id string) (*Drill, []DrillShare, error) {
	if err := checkDrillID(id); err != nil {
		return nil, nil, err
	}
	var d *drillRow
	var canaries []*canaryRow
	err := s.Store.View(ctx, func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		var err error
		if d, err = getDrill(dtx, id); err != nil {
			return err
		}
		for _, e := range d.Epochs {
			c, err := getCanary(dtx, e)
			if err != nil {
				return fmt.Errorf("escrow: canary of epoch %d: %w", e, err)
			}
			canaries = append(canaries, c)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if err := s.checkDrillOpen(kra, d); err != nil {
		return nil, nil, err
	}
	var out []DrillShare
	for _, c := range canaries {
		sh, err := canaryShareFor(c, d.KRA)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, sh)
	}
	v := d.view()
	return &v, out, nil
}

// canaryShareFor is kra's encrypted share of canary c, with its commitment.
func canaryShareFor(c *canaryRow, kra string) (DrillShare, error) {
	sealed, err := record.Parse(c.Record)
	if err != nil {
		return DrillShare{}, fmt.Errorf("escrow: canary of epoch %d: %w", c.Epoch, err)
	}
	if !IsCanary(sealed.Header) || sealed.Header.Epoch != c.Epoch {
		return DrillShare{}, fmt.Errorf("%w: the canary of epoch %d is not sealed as one", ErrRecordMismatch, c.Epoch)
	}
	for _, k := range c.KRAs {
		if k.KRA != kra {
			continue
		}
		_, ct, err := sealed.ShareFor(k.KeyID)
		if err != nil {
			return DrillShare{}, fmt.Errorf("escrow: canary of epoch %d holds no share for KRA %s: %w", c.Epoch, kra, err)
		}
		return DrillShare{Epoch: c.Epoch, Share: ct, OAEPHash: sealed.Header.OAEPHash, KeyID: k.KeyID, Commitment: k.Commitment}, nil
	}
	return DrillShare{}, fmt.Errorf("escrow: KRA %s is not in the canary of epoch %d", kra, c.Epoch)
}

// checkDrillOpen: kra may answer drill d now.
func (s *Service) checkDrillOpen(kra policy.Principal, d *drillRow) error {
	if kra.Role != policy.RoleKRA || kra.Name != d.KRA {
		return fmt.Errorf("%w: drill %s is KRA %s's", ErrForbidden, d.ID, d.KRA)
	}
	if d.State != DrillOpen {
		return fmt.Errorf("%w: drill %s is %s", ErrDrillClosed, d.ID, d.State)
	}
	if !s.now().Before(d.ExpiresAt) {
		return fmt.Errorf("%w: drill %s expired at %s", ErrDrillClosed, d.ID, d.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

// DrillDigest is what a KRA's auth key signs to answer a drill (SHA-256, then ECDSA or RSA
// PKCS#1 v1.5): a domain string of its own (an approval's signature never passes for a drill
// proof, nor the reverse), the drill's ID, campaign, KRA, drill key and expiry, and for each
// epoch of the drill in order, the epoch and the SHA-256 of the re-encrypted share. A proof for
// one drill, epoch or campaign is worthless for any other. It cannot fail.
func DrillDigest(d *Drill, shares []ProvenShare) []byte {
	h := sha256.New()
	drillField(h, []byte("keyarc recovery drill proof v1"))
	drillField(h, []byte(d.ID))
	drillField(h, []byte(d.Campaign))
	drillField(h, []byte(d.KRA))
	keyHash := sha256.Sum256(d.KeySPKI)
	drillField(h, keyHash[:])
	var exp [8]byte
	binary.BigEndian.PutUint64(exp[:], uint64(d.ExpiresAt.UnixMicro()))
	drillField(h, exp[:])
	byEpoch := map[uint32][]byte{}
	for _, s := range shares {
		byEpoch[s.Epoch] = s.Share
	}
	for _, e := range d.Epochs {
		drillField(h, epochBytes(e))
		if sh, ok := byEpoch[e]; ok {
			sum := sha256.Sum256(sh)
			drillField(h, sum[:])
		} else {
			drillField(h, nil)
		}
	}
	return h.Sum(nil)
}

// SubmitDrillProof checks a KRA's answer to drill id: the signature by the KRA's auth
// certificate (the one it authenticated with) over [DrillDigest], one re-encrypted share for
// each epoch of the drill the KRA can prove (at least one, in the drill's order), each
// decrypting with the drill key to the share the canary's commitment names. It records the KRA's proof for each epoch and closes the drill with a signed audit
// entry, then destroys the drill key. It reads no user record and decrypts nothing but the
// re-encrypted canary shares, with the drill key.
//
// # Errors
//
// [ErrInvalidRequest] (an id that is not a drill ID), [ErrNotFound], [ErrForbidden] (another
// KRA's drill), [ErrDrillClosed] (also for a second proof of the drill submitted at the same
// time), [ErrBadDrillProof] (a bad signature or share: the refusal is audited and counts
// against the KRA's approval rate limit), [ErrTooManyFailures], or, for faults of the
// appliance, [ErrRecoveryKey] wrapping the token's error (the drill key cannot be found or
// does not decrypt what the appliance encrypts to it itself), a storage error wrapping
// [store.ErrUnavailable] or the audit trail's ([audit.ErrAppend]). A fault leaves the drill
// open and answerable, with nothing of the proof recorded, audited or counted.
func (s *Service) SubmitDrillProof(ctx context.Context, kra policy.Principal, id string, shares []ProvenShare, sig []byte) (*Drill, error) {
	if err := checkDrillID(id); err != nil {
		return nil, err
	}
	now := s.now()
	var blocked bool
	err := s.Store.View(ctx, func(tx store.Tx) error {
		n, err := tx.ApprovalFailures(kra.Name, now.Add(-approvalWindow))
		blocked = n >= approvalFailures
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("escrow: approval rate limit: %w", err)
	}
	if blocked {
		s.auditAlone(ctx, KindDrillRefused, principalActor("kra", kra.Name), id, audit.Details{Request: id, RequestKind: "drill",
			KRA: kra.Name, Signer: kra.Serial, Reason: ErrTooManyFailures.Error()})
		return nil, ErrTooManyFailures
	}
	d, err := s.submitDrillProof(ctx, kra, id, shares, sig, now)
	if errors.Is(err, ErrBadDrillProof) {
		// The refusal keeps the signature, as far as one can be a signature: the trail must not
		// grow by what a client chooses to send.
		var kept string
		if len(sig) <= maxDrillSignature {
			kept = base64.StdEncoding.EncodeToString(sig)
		}
		s.approvalRefused(ctx, kra.Name, now, id, audit.Details{Request: id, RequestKind: "drill", KRA: kra.Name,
			Signer: kra.Serial, Signature: kept, Reason: err.Error()})
	}
	return d, err
}

func (s *Service) submitDrillProof(ctx context.Context, kra policy.Principal, id string, shares []ProvenShare, sig []byte, now time.Time) (*Drill, error) {
	var d *drillRow
	var canaries []*canaryRow
	var signer *store.Certificate
	err := s.Store.View(ctx, func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		var err error
		if d, err = getDrill(dtx, id); err != nil {
			return err
		}
		for _, e := range d.Epochs {
			c, err := getCanary(dtx, e)
			if err != nil {
				return fmt.Errorf("escrow: canary of epoch %d: %w", e, err)
			}
			canaries = append(canaries, c)
		}
		signer, err = tx.GetCertificate(kra.Serial)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := s.checkDrillOpen(kra, d); err != nil {
		return nil, err
	}
	// One share for each epoch the KRA can prove, in the drill's order: a KRA whose unwrap key
	// changed between epochs proves those it still holds, and the others stay unproven.
	if len(shares) == 0 || len(shares) > len(d.Epochs) {
		return nil, fmt.Errorf("%w: a proof carries one share for each of the drill's epochs (%d) the KRA can prove, not %d", ErrBadDrillProof, len(d.Epochs), len(shares))
	}
	next := 0
	for _, sh := range shares {
		i := slices.Index(d.Epochs[next:], sh.Epoch)
		if i < 0 {
			return nil, fmt.Errorf("%w: a share for epoch %d, which the drill does not ask, or out of the drill's order %v", ErrBadDrillProof, sh.Epoch, d.Epochs)
		}
		next += i + 1
		if len(sh.Share) == 0 || len(sh.Share) > maxShareBytes {
			return nil, fmt.Errorf("%w: share for epoch %d is empty or too large", ErrBadDrillProof, sh.Epoch)
		}
	}
	if len(sig) == 0 || len(sig) > maxDrillSignature {
		return nil, fmt.Errorf("%w: the signature is %d bytes; a KRA auth key's is 1 to %d", ErrBadDrillProof, len(sig), maxDrillSignature)
	}
	if signer.State != store.StateIssued || signer.KRA != d.KRA {
		return nil, fmt.Errorf("%w: the signer is not KRA %s's issued credential", ErrBadDrillProof, d.KRA)
	}
	cert, err := x509.ParseCertificate(signer.DER)
	if err != nil {
		return nil, fmt.Errorf("escrow: signer certificate: %w", err)
	}
	view := d.view()
	digest := DrillDigest(&view, shares)
	if !verifyDigest(cert.PublicKey, digest, sig) {
		return nil, fmt.Errorf("%w: the signature is not the KRA's over this drill and these shares", ErrBadDrillProof)
	}
	hash, err := hashByName(d.OAEPHash)
	if err != nil {
		return nil, err
	}
	// From the first use of the drill key to its destruction, one proof of this drill at a
	// time; the one that waited finds the drill closed.
	defer drillKeyUse.lock(d.KeyLabel)()
	if err := s.drillStillOpen(ctx, id); err != nil {
		return nil, err
	}
	dec, err := s.RecoveryKeys.Decrypter(d.KeyLabel)
	if err != nil {
		return nil, s.drillKeyFault(ctx, id, err)
	}
	canaryOf := map[uint32]*canaryRow{}
	for _, c := range canaries {
		canaryOf[c.Epoch] = c
	}
	for _, sh := range shares {
		want, err := canaryShareFor(canaryOf[sh.Epoch], d.KRA)
		if err != nil {
			return nil, err
		}
		opts := &rsa.OAEPOptions{Hash: hash, MGFHash: hash}
		pt, err := dec.Decrypt(rand.Reader, sh.Share, opts)
		if err != nil {
			// A share that the drill key does not open was encrypted to another key (another
			// drill's proof, or garbage), unless the token fails: then the key does not open
			// what the appliance encrypts to it either, and that is the appliance's fault.
			// When it does, the share is tried once more, so that a fault that passed (a
			// session pool that timed out) is not taken for the client's.
			if perr := probeKey(dec, d.KeySPKI, hash); perr != nil {
				return nil, s.drillKeyFault(ctx, id, perr)
			}
			if pt, err = dec.Decrypt(rand.Reader, sh.Share, opts); err != nil {
				return nil, fmt.Errorf("%w: the share for epoch %d is not encrypted to this drill's key", ErrBadDrillProof, sh.Epoch)
			}
		}
		ok := subtle.ConstantTimeCompare(CanaryCommitment(sh.Epoch, want.KeyID, pt), want.Commitment) == 1
		clear(pt)
		if !ok {
			return nil, fmt.Errorf("%w: the share for epoch %d is not KRA %s's canary share", ErrBadDrillProof, sh.Epoch, d.KRA)
		}
	}
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		cur, err := getDrill(dtx, id) // closed meanwhile?
		if err != nil {
			return err
		}
		if cur.State != DrillOpen {
			return fmt.Errorf("%w: drill %s was %s meanwhile", ErrDrillClosed, id, cur.State)
		}
		cur.State, cur.ClosedAt, cur.Signer = DrillProven, now, kra.Serial
		data, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		if err := dtx.PutDrillState(drillKindDrill, id, data); err != nil {
			return err
		}
		for _, sh := range shares {
			e := sh.Epoch
			p, err := json.Marshal(proofRow{Epoch: e, KRA: d.KRA, Drill: id, Campaign: d.Campaign, Signer: kra.Serial, At: now})
			if err != nil {
				return err
			}
			if err := dtx.PutDrillState(drillKindProof, proofKey(e, d.KRA), p); err != nil {
				return err
			}
		}
		return s.audit(tx, KindDrillProof, principalActor("kra", kra.Name), id, audit.Details{Request: id, RequestKind: "drill",
			KRA: d.KRA, Signer: kra.Serial, FromEpochs: provenEpochs(shares), Reason: campaignNote(d.Campaign),
			Signature: base64.StdEncoding.EncodeToString(sig), Digest: hex.EncodeToString(digest)})
	})
	if err != nil {
		return nil, err
	}
	s.destroyKey(d.KeyLabel)
	s.log().Info("drill proven", "id", id, "kra", d.KRA, "epochs", provenEpochs(shares), "asked", d.Epochs)
	d.State, d.ClosedAt = DrillProven, now
	v := d.view()
	v.Proven = provenEpochs(shares)
	return &v, nil
}

// drillStillOpen re-reads drill id: [ErrDrillClosed] if it was closed meanwhile.
func (s *Service) drillStillOpen(ctx context.Context, id string) error {
	return s.Store.View(ctx, func(tx store.Tx) error {
		cur, err := getDrill(store.DrillStates(tx), id)
		if err != nil {
			return err
		}
		if cur.State != DrillOpen {
			return fmt.Errorf("%w: drill %s was %s meanwhile", ErrDrillClosed, id, cur.State)
		}
		return nil
	})
}

// drillKeyFault is the error of a drill key that the token could not find or use: the drill
// closed meanwhile (by another node's proof or expiry, which destroyed the key) is
// [ErrDrillClosed]; anything else is the appliance's fault, [ErrRecoveryKey] wrapping the
// token's error (whose own sentinel, a token gone for one, decides the status).
func (s *Service) drillKeyFault(ctx context.Context, id string, keyErr error) error {
	if err := s.drillStillOpen(ctx, id); errors.Is(err, ErrDrillClosed) {
		return err
	}
	return fmt.Errorf("%w: drill key of drill %s: %w", ErrRecoveryKey, id, keyErr)
}

// probeKey checks that dec, a drill's or a recovery request's key, still decrypts: a
// random value encrypted to its public half (spki) must come back. nil when it does.
func probeKey(dec crypto.Decrypter, spki []byte, hash crypto.Hash) error {
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return err
	}
	key, ok := pub.(*rsa.PublicKey)
	if !ok {
		return errors.New("the key is not RSA")
	}
	probe := make([]byte, 32)
	if _, err := rand.Read(probe); err != nil {
		return err
	}
	ct, err := rsa.EncryptOAEP(hash.New(), rand.Reader, key, probe, nil)
	if err != nil {
		return err
	}
	got, err := dec.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: hash, MGFHash: hash})
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(got, probe) != 1 {
		return errors.New("the key decrypts a probe to another value")
	}
	return nil
}

func provenEpochs(shares []ProvenShare) []uint32 {
	out := make([]uint32, len(shares))
	for i, sh := range shares {
		out[i] = sh.Epoch
	}
	return out
}

func proofKey(e uint32, kra string) string { return epochKey(e) + "/" + kra }

// ExpireDrills closes open drills past their expiry and destroys their keys; the appliance
// runs it with the recovery expiry.
//
// # Errors
//
// A storage error wrapping [store.ErrUnavailable] or the audit trail's
// ([audit.ErrAppend]). A drill key the token fails to destroy is logged.
func (s *Service) ExpireDrills(ctx context.Context) (int, error) {
	// A read first: most passes find nothing to expire and take no write lock. By this node's
	// clock: a node behind the database's leaves them to the others, which run this too.
	due, err := s.ListDrills(ctx, "", "", false)
	if err != nil {
		return 0, err
	}
	if local := s.now(); !slices.ContainsFunc(due, func(d Drill) bool { return d.State == DrillOpen && !local.Before(d.ExpiresAt) }) {
		return 0, nil
	}
	var expired []drillRow
	err = s.Store.Update(ctx, func(tx store.Tx) error {
		expired = expired[:0]
		// By the database's clock (the server's with PostgreSQL), as recovery requests: a node
		// whose clock is ahead would otherwise close every node's drills early.
		now, err := tx.LeaseNow(s.now())
		if err != nil {
			return err
		}
		dtx := store.DrillStates(tx)
		rows, err := allDrills(dtx)
		if err != nil {
			return err
		}
		for _, d := range rows {
			if d.State != DrillOpen || now.Before(d.ExpiresAt) {
				continue
			}
			d.State, d.ClosedAt = DrillExpired, now
			b, err := json.Marshal(d)
			if err != nil {
				return err
			}
			if err := dtx.PutDrillState(drillKindDrill, d.ID, b); err != nil {
				return err
			}
			if err := s.audit(tx, KindDrillExpired, "system", d.ID, audit.Details{Request: d.ID, RequestKind: "drill", KRA: d.KRA,
				Expires: d.ExpiresAt.Format(time.RFC3339)}); err != nil {
				return err
			}
			expired = append(expired, *d)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, d := range expired {
		unlock := drillKeyUse.lock(d.KeyLabel) // not under a proof still decrypting with it
		s.destroyKey(d.KeyLabel)
		unlock()
		s.log().Warn("drill expired unanswered", "id", d.ID, "kra", d.KRA)
	}
	return len(expired), nil
}
