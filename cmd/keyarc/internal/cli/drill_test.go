package cli

import (
	"strings"
	"testing"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
)

// TestHealthHeader: `recovery-set show` names the drill window and the certificate margin as
// configured, not truncated to whole days; an appliance sending days only is still read.
func TestHealthHeader(t *testing.T) {
	for _, tt := range []struct {
		h    wire.RecoveryHealth
		want string
	}{
		{wire.RecoveryHealth{WindowSeconds: 90 * 86400, MarginSeconds: 30 * 86400, WindowDays: 90, MarginDays: 30}, "within 90 days; certificates valid beyond 30 days)"},
		{wire.RecoveryHealth{WindowSeconds: 12 * 3600, MarginSeconds: 36 * 3600, MarginDays: 1}, "within 12h; certificates valid beyond 36h)"},
		{wire.RecoveryHealth{WindowSeconds: 86400}, "within 1 day; certificates not expired)"},
		{wire.RecoveryHealth{WindowDays: 90, MarginDays: 30}, "within 90 days; certificates valid beyond 30 days)"},
	} {
		if got := healthHeader(tt.h); !strings.Contains(got, tt.want) {
			t.Errorf("healthHeader(%+v) = %q, want it to contain %q", tt.h, got, tt.want)
		}
	}
}
