package policy

import (
	"errors"
	"slices"
	"testing"
)

func TestTemplateSMIMEPolicy(t *testing.T) {
	sig := func(edit func(*Template)) Template {
		tt := Builtins()[1] // smime-signature
		edit(&tt)
		return tt
	}
	tests := []struct {
		name     string
		tmpl     Template
		wantErr  error
		wantOIDs []string
	}{
		{name: "default strict", tmpl: sig(func(*Template) {}), wantOIDs: []string{"2.23.140.1.5.1.3"}},
		{name: "explicit strict", tmpl: sig(func(t *Template) { t.SMIMEPolicy = SMIMEMailboxStrict }), wantOIDs: []string{"2.23.140.1.5.1.3"}},
		{name: "multipurpose with clientAuth", tmpl: sig(func(t *Template) {
			t.SMIMEPolicy = SMIMEMailboxMultipurpose
			t.ExtKeyUsage = append(t.ExtKeyUsage, EKUClientAuth)
		}), wantOIDs: []string{"2.23.140.1.5.1.2"}},
		{name: "legacy", tmpl: sig(func(t *Template) { t.SMIMEPolicy = SMIMEMailboxLegacy }), wantOIDs: []string{"2.23.140.1.5.1.1"}},
		{name: "strict with clientAuth", tmpl: sig(func(t *Template) { t.ExtKeyUsage = append(t.ExtKeyUsage, EKUClientAuth) }), wantErr: ErrInvalidTemplate},
		{name: "unknown policy", tmpl: sig(func(t *Template) { t.SMIMEPolicy = "organization-strict" }), wantErr: ErrInvalidTemplate},
		{name: "policy on a non-S/MIME template", tmpl: func() Template {
			tt := Builtins()[3]
			tt.SMIMEPolicy = SMIMEMailboxStrict
			return tt
		}(), wantErr: ErrInvalidTemplate},
		{name: "client-auth has none", tmpl: Builtins()[3]},
		{name: "kra has none", tmpl: Builtins()[2]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.tmpl.Validate()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate() = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				var fe *FieldError
				if !errors.As(err, &fe) || (fe.Field != "smime_policy" && fe.Field != "ext_key_usage") {
					t.Errorf("error %v does not name smime_policy or ext_key_usage", err)
				}
				return
			}
			var got []string
			for _, o := range tt.tmpl.CertificatePolicies() {
				got = append(got, o.String())
			}
			if !slices.Equal(got, tt.wantOIDs) {
				t.Errorf("CertificatePolicies() = %v, want %v", got, tt.wantOIDs)
			}
		})
	}
}

// TestBuiltinSMIMETemplatesClaimStrict: every built-in emailProtection template claims the
// strict mailbox-validated policy, and the slice returned is the caller's own.
func TestBuiltinSMIMETemplatesClaimStrict(t *testing.T) {
	for _, b := range Builtins() {
		if !b.IsSMIME() {
			continue
		}
		p := b.CertificatePolicies()
		if len(p) != 1 || !p[0].Equal(OIDSMIMEMailboxStrict) {
			t.Errorf("%s: policies %v", b.Name, p)
		}
		p[0][0] = 9
		if !b.CertificatePolicies()[0].Equal(OIDSMIMEMailboxStrict) {
			t.Errorf("%s: CertificatePolicies shares its slice", b.Name)
		}
	}
}
