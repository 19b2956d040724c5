package escrow

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Defaults of quorum health.
const (
	// DefaultProofWindow is how recent a KRA's drill proof must be to count.
	DefaultProofWindow = 90 * 24 * time.Hour
	// DefaultCertMargin is how long past now a KRA's certificate must stay valid to count.
	DefaultCertMargin = 30 * 24 * time.Hour
)

// EpochHealth is the quorum health of one recovery-set epoch.
type EpochHealth struct {
	Epoch   uint32
	Quorum  int
	Current bool
	// Records is how many active records are sealed under the epoch.
	Records int
	// Proven counts the KRAs whose last proof falls within the window; Valid those whose
	// unwrap certificate stays valid beyond the margin.
	Proven, Valid int
	KRAs          []KRAHealth
	// Canary: the epoch has a canary (drills can prove it).
	Canary bool
	// AtRisk: the epoch holds records and fewer than Quorum of its KRAs are proven, or
	// fewer than Quorum stay valid beyond the margin.
	AtRisk bool
	// NeedsReseal: an older epoch at risk: its records are to be resealed to the current set
	// while its KRAs who can still prove reach the quorum.
	NeedsReseal bool
	// Advice says what to do, empty when nothing is to be done.
	Advice string
}

// KRAHealth is one KRA of an epoch.
type KRAHealth struct {
	Name, Serial string
	NotAfter     time.Time
	// LastProof is the KRA's last proof of the epoch's canary, zero if none.
	LastProof time.Time
	Proven    bool // LastProof within the window
	Valid     bool // NotAfter beyond the margin
}

// RecoveryHealth reports the quorum health of the current epoch and of every older epoch that
// still holds active records, oldest first, at now: a KRA counts as proven when its last drill
// proof of the epoch is within window (0 or less: [DefaultProofWindow]) and as valid when its
// unwrap certificate stays valid beyond margin (0: no margin, valid until it expires; less
// than 0: [DefaultCertMargin]). It reads one snapshot and changes nothing.
//
// # Errors
//
// A storage error wrapping [store.ErrUnavailable]; a recovery set that
// does not resolve is a fault of the archive.
func (s *Service) RecoveryHealth(ctx context.Context, window, margin time.Duration) ([]EpochHealth, error) {
	if window <= 0 {
		window = DefaultProofWindow
	}
	if margin < 0 {
		margin = DefaultCertMargin
	}
	now := s.now()
	var out []EpochHealth
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
		proofs, err := dtx.ListDrillState(drillKindProof)
		if err != nil {
			return err
		}
		last := map[string]time.Time{}
		for k, data := range proofs {
			var p proofRow
			if err := json.Unmarshal(data, &p); err != nil {
				return fmt.Errorf("escrow: drill proof %s: %w", k, err)
			}
			last[k] = p.At
		}
		for _, e := range liveEpochs(cur, counts) {
			row, err := tx.GetRecoverySet(e)
			if err != nil {
				return fmt.Errorf("escrow: recovery set %d: %w", e, err)
			}
			rs, err := s.recoverySetIn(tx, row)
			if err != nil {
				return err
			}
			h := EpochHealth{Epoch: e, Quorum: rs.Quorum, Current: e == cur, Records: counts[e]}
			if _, err := dtx.GetDrillState(drillKindCanary, epochKey(e)); err == nil {
				h.Canary = true
			}
			for i, c := range rs.KRAs {
				k := KRAHealth{Name: rs.Names[i], Serial: serialOf(c), NotAfter: c.NotAfter, LastProof: last[proofKey(e, rs.Names[i])]}
				k.Proven = !k.LastProof.IsZero() && now.Sub(k.LastProof) <= window
				k.Valid = c.NotAfter.After(now.Add(margin))
				if k.Proven {
					h.Proven++
				}
				if k.Valid {
					h.Valid++
				}
				h.KRAs = append(h.KRAs, k)
			}
			h.judge(window, margin)
			out = append(out, h)
		}
		return nil
	})
	return out, err
}

// judge sets AtRisk, NeedsReseal and Advice.
func (h *EpochHealth) judge(window, margin time.Duration) {
	h.AtRisk = h.Records > 0 && (h.Proven < h.Quorum || h.Valid < h.Quorum)
	h.NeedsReseal = h.AtRisk && !h.Current
	var why []string
	if h.Proven < h.Quorum {
		why = append(why, fmt.Sprintf("%d of %d KRAs proven in the last %s, quorum %d", h.Proven, len(h.KRAs), SpanText(window), h.Quorum))
	}
	if h.Valid < h.Quorum {
		why = append(why, fmt.Sprintf("%d KRA certificates valid beyond %s, quorum %d", h.Valid, SpanText(margin), h.Quorum))
	}
	switch {
	case h.Records == 0 && len(why) > 0:
		h.Advice = "no records yet; run `keyarc admin drill open` and have each KRA run `keyarc kra drill`"
	case len(why) == 0:
	case h.NeedsReseal:
		h.Advice = strings.Join(why, "; ") + ": reseal its records to the current set now (`keyarc admin recovery-set reseal`), approved by KRAs of this epoch who can still prove"
	default:
		h.Advice = strings.Join(why, "; ") + ": have the KRAs drill (`keyarc kra drill`); if they cannot, define a new recovery set and reseal to it"
	}
}

// SpanText writes a window or a margin as an operator configured it: whole days as "90 days"
// ("1 day"), anything else as a Go duration without its zero tail ("12h", "36h", "90m").
func SpanText(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == day:
		return "1 day"
	case d > 0 && d%day == 0:
		return fmt.Sprintf("%d days", d/day)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
