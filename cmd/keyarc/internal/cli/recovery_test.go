package cli

import (
	"strings"
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

// TestQuorumNote: a request whose keys were sealed under one recovery set counts that set's
// quorum; one whose keys span several epochs says that each key needs its own epoch's quorum,
// since Have and Need are then only the least-approved key's (the distinct KRAs needed can be
// more than Need: kra1..kra3 for epoch 2 and kra4 for epoch 3 are four, not three).
func TestQuorumNote(t *testing.T) {
	one := wire.Recovery{Have: 1, Need: 2, Items: []wire.RecoveryItem{{Epoch: 3}, {Epoch: 3}}}
	if got, want := quorumNote(one), ""; got != want {
		t.Errorf("one epoch: %q, want %q", got, want)
	}
	if got, want := needText(one), "needs 2 KRA approvals"; got != want {
		t.Errorf("one epoch: %q, want %q", got, want)
	}
	several := wire.Recovery{Have: 0, Need: 3, Items: []wire.RecoveryItem{{Epoch: 3}, {Epoch: 2}, {Epoch: 3}}}
	if got, want := quorumNote(several), " for the least-approved key; each key needs the quorum of its own recovery set (epochs 2, 3)"; got != want {
		t.Errorf("several epochs: %q, want %q", got, want)
	}
	if got, want := needText(several), "needs, for each key, the quorum of its own recovery set (epochs 2, 3)"; got != want {
		t.Errorf("several epochs: %q, want %q", got, want)
	}
}

// TestShownTime: an expiry the API gives to the nanosecond (the KRAs sign it exactly) is shown
// to the second, as every other time the CLI prints; anything else is shown as it is.
func TestShownTime(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"2026-12-12T21:07:52.314585038Z", "2026-12-12T21:07:52Z"},
		{"2026-12-06T21:07:28.285464Z", "2026-12-06T21:07:28Z"},
		{"2026-12-06T21:07:28Z", "2026-12-06T21:07:28Z"},
		{"", ""},
		{"soon", "soon"},
	} {
		if got := shownTime(tc.in); got != tc.want {
			t.Errorf("shownTime(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestDialRefusesServerWithoutHTTPS: a --server that is not an https:// URL is refused before
// anything is read or sent, with a message that names it.
func TestDialRefusesServerWithoutHTTPS(t *testing.T) {
	for _, tc := range []struct{ server, want string }{
		{"http://127.0.0.1:8080", "HTTPS only"},
		{"127.0.0.1:8443", "not a URL"},
		{"keyarc.example.org", "not a URL"},
	} {
		c := clientFlags{server: tc.server, cacert: "/nonexistent/ca.pem"}
		_, err := c.dial(false)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.server) {
			t.Errorf("--server %s: %v, want an error saying %q", tc.server, err, tc.want)
		}
	}
	c := clientFlags{server: "https://127.0.0.1:8443/", cacert: "/nonexistent/ca.pem"}
	if _, err := c.dial(false); err == nil || strings.Contains(err.Error(), "--server") {
		t.Errorf("an https:// server is refused: %v", err)
	}
}
