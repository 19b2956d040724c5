package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateMailbox(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr error
	}{
		{name: "simple", in: "alice@example.com"},
		{name: "dots and plus", in: "alice.b+tag@mail.example.co.uk"},
		{name: "upper-case domain", in: "alice@Example.COM"},
		{name: "single-label domain", in: "root@localhost"},
		{name: "atext", in: "a!#$%&'*+/=?^_`{|}~-@x.y"},
		{name: "254 chars", in: strings.Repeat("a", 64) + "@" + strings.Repeat(strings.Repeat("b", 60)+".", 3) + strings.Repeat("c", 6)},
		{name: "empty", in: "", wantErr: ErrInvalidMailbox},
		{name: "no at", in: "alice", wantErr: ErrInvalidMailbox},
		{name: "two ats", in: "a@b@example.com", wantErr: ErrInvalidMailbox},
		{name: "empty local", in: "@example.com", wantErr: ErrInvalidMailbox},
		{name: "empty domain", in: "alice@", wantErr: ErrInvalidMailbox},
		{name: "leading dot", in: ".alice@example.com", wantErr: ErrInvalidMailbox},
		{name: "double dot", in: "al..ice@example.com", wantErr: ErrInvalidMailbox},
		{name: "trailing dot domain", in: "alice@example.com.", wantErr: ErrInvalidMailbox},
		{name: "hyphen label", in: "alice@-example.com", wantErr: ErrInvalidMailbox},
		{name: "underscore domain", in: "alice@ex_ample.com", wantErr: ErrInvalidMailbox},
		{name: "ip literal", in: "alice@[10.0.0.1]", wantErr: ErrInvalidMailbox},
		{name: "space", in: "alice smith@example.com", wantErr: ErrInvalidMailbox},
		{name: "quoted", in: `"alice"@example.com`, wantErr: ErrInvalidMailbox},
		{name: "newline", in: "alice@example.com\n", wantErr: ErrInvalidMailbox},
		{name: "crlf injection", in: "alice@example.com\r\nBcc: x@y.z", wantErr: ErrInvalidMailbox},
		{name: "nul", in: "alice\x00@example.com", wantErr: ErrInvalidMailbox},
		{name: "non-ascii", in: "zoë@example.com", wantErr: ErrInvalidMailbox},
		{name: "local 65", in: strings.Repeat("a", 65) + "@example.com", wantErr: ErrInvalidMailbox},
		{name: "label 64", in: "a@" + strings.Repeat("b", 64) + ".com", wantErr: ErrInvalidMailbox},
		{name: "255 chars", in: strings.Repeat("a", 64) + "@" + strings.Repeat(strings.Repeat("b", 60)+".", 3) + strings.Repeat("c", 7), wantErr: ErrInvalidMailbox},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateMailbox(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ValidateMailbox(%q) = %v, want %v", tt.in, err, tt.wantErr)
			}
			if err != nil && strings.ContainsAny(err.Error(), "\r\n\x00") {
				t.Fatalf("error carries control characters: %q", err)
			}
		})
	}
}

func TestNormalizeMailbox(t *testing.T) {
	got, err := NormalizeMailbox("Alice@Example.COM")
	if err != nil || got != "Alice@example.com" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := NormalizeMailbox("x"); !errors.Is(err, ErrInvalidMailbox) {
		t.Fatalf("got %v", err)
	}
}

func TestSameMailbox(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"a@x.org", "a@X.ORG", true},
		{"A@x.org", "a@x.org", false},
		{"a@x.org", "a@y.org", false},
		{"a", "a", false},
	}
	for _, tt := range tests {
		if got := SameMailbox(tt.a, tt.b); got != tt.want {
			t.Errorf("SameMailbox(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}

// TestRefusalsDoNotRepeatInput: a value refused as no mailbox or no template may be a password
// or an enrollment code typed in the wrong field; the error, which reaches logs and the audit
// trail, does not repeat it.
func TestRefusalsDoNotRepeatInput(t *testing.T) {
	const secret = "Hunter2secretCODE"
	for _, in := range []string{secret, secret + "@", "@" + secret, secret + " x@example.org", secret + "@-bad-.example"} {
		err := ValidateMailbox(in)
		if !errors.Is(err, ErrInvalidMailbox) {
			t.Fatalf("ValidateMailbox(%q) = %v, want %v", in, err, ErrInvalidMailbox)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("ValidateMailbox(%q) = %q repeats its input", in, err)
		}
	}
	err := UnknownTemplate(secret, map[string]*Template{"smime-encryption": nil})
	if !errors.Is(err, ErrUnknownTemplate) || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "smime-encryption") {
		t.Errorf("UnknownTemplate(%q) = %q: want %v naming the templates, not the input", secret, err, ErrUnknownTemplate)
	}
}
