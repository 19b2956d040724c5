package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRevocationReason(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr error
	}{
		{name: "unspecified", in: "unspecified", want: ReasonUnspecified},
		{name: "keyCompromise", in: "keyCompromise", want: ReasonKeyCompromise},
		{name: "any case", in: "KEYCOMPROMISE", want: ReasonKeyCompromise},
		{name: "affiliationChanged", in: "affiliationChanged", want: ReasonAffiliationChanged},
		{name: "superseded", in: "superseded", want: ReasonSuperseded},
		{name: "cessationOfOperation", in: "cessationOfOperation", want: ReasonCessationOfOperation},
		{name: "privilegeWithdrawn", in: "privilegeWithdrawn", want: ReasonPrivilegeWithdrawn},
		{name: "certificateHold is not final", in: "certificateHold", wantErr: ErrBadRevocationReason},
		{name: "removeFromCRL", in: "removeFromCRL", wantErr: ErrBadRevocationReason},
		{name: "cACompromise is not a subscriber's", in: "cACompromise", wantErr: ErrBadRevocationReason},
		{name: "aACompromise", in: "aACompromise", wantErr: ErrBadRevocationReason},
		{name: "a number", in: "1", wantErr: ErrBadRevocationReason},
		{name: "empty", in: "", wantErr: ErrBadRevocationReason},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRevocationReason(tt.in)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && got != tt.want) {
				t.Fatalf("ParseRevocationReason(%q) = %d, %v; want %d, %v", tt.in, got, err, tt.want, tt.wantErr)
			}
			if err != nil {
				for _, n := range RevocationReasons() {
					if !strings.Contains(err.Error(), n) {
						t.Errorf("refusal %q does not list %s", err, n)
					}
				}
				return
			}
			if name := RevocationReasonName(got); !strings.EqualFold(name, tt.in) {
				t.Errorf("RevocationReasonName(%d) = %q, want %q", got, name, tt.in)
			}
		})
	}
	if got := RevocationReasonName(6); got != "reason 6" {
		t.Errorf("RevocationReasonName(6) = %q", got)
	}
}

func TestParseRecoveryRevocation(t *testing.T) {
	tests := []struct {
		in      string
		name    string
		reason  int
		keep    bool
		wantErr error
	}{
		{in: "keep", name: "keep", keep: true},
		{in: "keyCompromise", name: "keyCompromise", reason: ReasonKeyCompromise},
		{in: "keycompromise", name: "keyCompromise", reason: ReasonKeyCompromise},
		{in: "superseded", name: "superseded", reason: ReasonSuperseded},
		{in: "affiliationChanged", wantErr: ErrBadRecoveryRevocation},
		{in: "", wantErr: ErrBadRecoveryRevocation},
		{in: "revoke", wantErr: ErrBadRecoveryRevocation},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			name, reason, keep, err := ParseRecoveryRevocation(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if err == nil && (name != tt.name || reason != tt.reason || keep != tt.keep) {
				t.Fatalf("got %q %d %v, want %q %d %v", name, reason, keep, tt.name, tt.reason, tt.keep)
			}
		})
	}
}

func TestAuthorizeRevoke(t *testing.T) {
	alice := Principal{Role: RoleEnrollee, Mailbox: "alice@example.org", Serial: "01"}
	own := []CertRef{{Serial: "0a", Mailbox: "alice@example.org"}, {Serial: "0b", Mailbox: "alice@Example.ORG"}}
	mixed := append(own[:1:1], CertRef{Serial: "0c", Mailbox: "bob@example.org"})
	tests := []struct {
		name    string
		p       Principal
		reason  int
		certs   []CertRef
		wantErr error
	}{
		{"officer, anyone's", Principal{Role: RoleOfficer, Name: "o"}, ReasonKeyCompromise, mixed, nil},
		{"officer, an admin's credential", Principal{Role: RoleOfficer, Name: "o", Serial: "01"}, ReasonKeyCompromise,
			append(own[:1:1], CertRef{Serial: "0d", Role: "admin"}), ErrForbidden},
		{"officer, a KRA certificate", Principal{Role: RoleOfficer, Name: "o", Serial: "01"}, ReasonSuperseded,
			[]CertRef{{Serial: "0f", KRA: "kra1"}}, ErrForbidden},
		{"officer, their own credential", Principal{Role: RoleOfficer, Name: "o", Serial: "0e"}, ReasonKeyCompromise,
			[]CertRef{{Serial: "0e", Role: "officer"}}, nil},
		{"admin, an officer's credential and a KRA certificate", Principal{Role: RoleAdmin, Name: "a", Serial: "01"}, ReasonKeyCompromise,
			[]CertRef{{Serial: "0e", Role: "officer"}, {Serial: "0f", KRA: "kra1"}}, nil},
		{"admin, privilegeWithdrawn", Principal{Role: RoleAdmin, Name: "a"}, ReasonPrivilegeWithdrawn, mixed, nil},
		{"subscriber, own mailbox", alice, ReasonKeyCompromise, own, nil},
		{"subscriber, another local part's case", alice, ReasonKeyCompromise, []CertRef{{Serial: "0e", Mailbox: "Alice@example.org"}}, ErrForbidden},
		{"subscriber, someone else's", alice, ReasonKeyCompromise, []CertRef{{Serial: "0c", Mailbox: "bob@example.org"}}, ErrForbidden},
		{"subscriber, a key shared with another mailbox", alice, ReasonKeyCompromise, mixed, ErrForbidden},
		{"subscriber, an operator credential", alice, ReasonUnspecified, []CertRef{{Serial: "0d", Mailbox: "alice@example.org", Role: "admin"}}, ErrForbidden},
		{"subscriber, privilegeWithdrawn", alice, ReasonPrivilegeWithdrawn, own, ErrForbidden},
		{"no mailbox, no role", Principal{Role: RoleEnrollee}, ReasonUnspecified, own, ErrForbidden},
		{"auditor", Principal{Role: RoleAuditor, Mailbox: "alice@example.org"}, ReasonUnspecified, own, ErrForbidden},
		{"kra", Principal{Role: RoleKRA, Name: "k"}, ReasonUnspecified, own, ErrForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := AuthorizeRevoke(tt.p, tt.reason, tt.certs)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("AuthorizeRevoke = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestTemplateRecoveryRevoke(t *testing.T) {
	enc := func(v string) Template {
		t := Builtins()[0]
		t.RecoveryRevoke = v
		return t
	}
	sig := Builtins()[1]
	sig.RecoveryRevoke = "keyCompromise"
	tests := []struct {
		name    string
		tmpl    Template
		want    string
		wantErr error
	}{
		{"default keep", enc(""), RecoveryKeep, nil},
		{"keyCompromise", enc("keyCompromise"), "keyCompromise", nil},
		{"superseded", enc("superseded"), "superseded", nil},
		{"keep", enc("keep"), RecoveryKeep, nil},
		{"another reason", enc("cessationOfOperation"), "", ErrInvalidTemplate},
		{"not archiving", sig, "", ErrInvalidTemplate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.tmpl.Validate()
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Validate = %v, want %v", err, tt.wantErr)
			}
			var fe *FieldError
			if err != nil && (!errors.As(err, &fe) || fe.Field != "recovery_revoke") {
				t.Fatalf("Validate = %v, want a field error on recovery_revoke", err)
			}
			if err == nil && tt.tmpl.RecoveryRevocation() != tt.want {
				t.Fatalf("RecoveryRevocation = %q, want %q", tt.tmpl.RecoveryRevocation(), tt.want)
			}
		})
	}
}
