package escrow

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestResealReason: a reseal's reason is shown to the KRAs who approve it, as a recovery's is:
// the same rule holds, 1 to 1000 printable characters (no line breaks, no terminal escapes);
// an empty one gets the default. A refused reason makes no recovery key.
func TestResealReason(t *testing.T) {
	tests := []struct {
		name, reason string
		wantErr      error
	}{
		{"plain", "rotate the KRAs", nil},
		{"empty: the default", "", nil},
		{"a tab", "rotate\tthe KRAs", nil},
		{"a line break", "rotate the KRAs\nand approve the next one too", ErrInvalidRequest},
		{"an ANSI escape", "rotate the KRAs \x1b[2J\x1b[Happroved by the CISO", ErrInvalidRequest},
		{"a C1 escape", "rotate the KRAs \u009b2J", ErrInvalidRequest},
		{"not UTF-8", "rotate the KRAs \xff", ErrInvalidRequest},
		{"1001 characters", strings.Repeat("x", 1001), ErrInvalidRequest},
		{"5 KB", strings.Repeat("rotate the KRAs ", 320), ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			r.newSet(t, "kra-3", "kra-4")
			made := r.keys.made.Load()
			rec, err := r.svc.RequestReseal(context.Background(), r.admin, tt.reason, 0, time.Hour)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("RequestReseal(%.60q): %v, want %v", tt.reason, err, tt.wantErr)
			}
			if err != nil {
				if n := r.keys.made.Load() - made; n != 0 {
					t.Errorf("%d recovery key(s) made for a refused reseal", n)
				}
				return
			}
			if want := tt.reason; want != "" && rec.Reason != want {
				t.Errorf("reason %.60q stored, want %.60q", rec.Reason, want)
			}
		})
	}
}

// TestRecoveryReasonC1: a recovery's reason refuses the C1 controls too (U+009B is a CSI, an
// escape sequence's start on many terminals), and text that is not UTF-8.
func TestRecoveryReasonC1(t *testing.T) {
	r := newRecoveryEnv(t)
	for _, reason := range []string{"laptop \u009b2J stolen", "laptop \xff stolen"} {
		if _, err := r.svc.RequestRecovery(context.Background(), r.officer, r.serial, "", reason, time.Hour); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("RequestRecovery(%q): %v, want %v", reason, err, ErrInvalidRequest)
		}
	}
}
