package cli

import (
	"testing"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
)

// TestEffectiveRecoveryState: recovery show and list show what a stored state means now.
func TestEffectiveRecoveryState(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	later, earlier := now.Add(time.Hour).Format(time.RFC3339Nano), now.Add(-time.Second).Format(time.RFC3339Nano)
	for _, tc := range []struct {
		name string
		r    wire.Recovery
		want string
	}{
		{"open", wire.Recovery{State: "open", Have: 1, Need: 2, ExpiresAt: later}, "open"},
		{"quorum met", wire.Recovery{State: "open", Have: 2, Need: 2, ExpiresAt: later}, "approved"},
		{"expired", wire.Recovery{State: "open", Have: 0, Need: 2, ExpiresAt: earlier}, "expired"},
		{"quorum met, then expired", wire.Recovery{State: "open", Have: 2, Need: 2, ExpiresAt: earlier}, "expired"},
		{"consumed", wire.Recovery{State: "consumed", Have: 2, Need: 2, ExpiresAt: earlier}, "consumed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := effectiveState(tc.r, now); got != tc.want {
				t.Errorf("effectiveState = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestShownReason: a reason with line breaks or terminal escapes (one stored before the
// appliance checked reseal reasons) is shown quoted on one line, its controls escaped; a
// printable one as it is.
func TestShownReason(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"laptop stolen", "laptop stolen"},
		{"laptop\tstolen", "laptop\tstolen"},
		{"rotate\napproved: 3 of 2", `"rotate\napproved: 3 of 2"`},
		{"x \x1b[2J\x1b[H", `"x \x1b[2J\x1b[H"`},
		{"x \u009b2J", `"x \u009b2J"`},
	} {
		if got := shownReason(tc.in); got != tc.want {
			t.Errorf("shownReason(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
