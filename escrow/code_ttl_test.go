package escrow

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keyarc/keyarc/policy"
)

// TestCreateCodeRefusesMisleadingInput: a code that would be born expired, or live longer than
// MaxCodeTTL, is refused, and an
// unknown template names the configured ones.
func TestCreateCodeRefusesMisleadingInput(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		template string
		ttl      time.Duration
		wantErr  error
	}{
		{"negative ttl", policy.TemplateSMIMEEncryption, -5 * time.Minute, ErrInvalidRequest},
		{"zero ttl", policy.TemplateSMIMEEncryption, 0, ErrInvalidRequest},
		{"ten years", policy.TemplateSMIMEEncryption, 10 * 365 * 24 * time.Hour, ErrInvalidRequest},
		{"longest", policy.TemplateSMIMEEncryption, MaxCodeTTL, nil},
		{"past the longest", policy.TemplateSMIMEEncryption, MaxCodeTTL + time.Second, ErrInvalidRequest},
		{"unknown template", "smime-encrypton", time.Hour, policy.ErrUnknownTemplate},
		{"valid", policy.TemplateSMIMEEncryption, time.Hour, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := env.svc.CreateCode(ctx, "dave@example.org", tc.template, tc.ttl)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CreateCode: %v, want %v", err, tc.wantErr)
			}
			var ute *policy.UnknownTemplateError
			if errors.As(err, &ute) && len(ute.Known) < 4 {
				t.Errorf("unknown template error lists %v, want the configured templates", ute.Known)
			}
		})
	}
}
