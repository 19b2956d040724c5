package policy

import (
	"errors"
	"testing"
)

func TestAuthorizeCredential(t *testing.T) {
	m, err := Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	enc, sig := m[TemplateSMIMEEncryption], m[TemplateSMIMESignature]
	encFromSig := enc.clone()
	encFromSig.ReenrollFrom = []string{TemplateSMIMESignature}

	tests := []struct {
		name     string
		template *Template
		cred     Credential
		wantErr  error
	}{
		{name: "own template re-enrolls", template: sig, cred: Credential{Template: TemplateSMIMESignature}},
		{name: "another template by default", template: enc, cred: Credential{Template: TemplateSMIMESignature}, wantErr: ErrCredential},
		{name: "another template listed in reenroll_from", template: encFromSig, cred: Credential{Template: TemplateSMIMESignature}},
		{name: "a template not listed", template: encFromSig, cred: Credential{Template: "exchange-user"}, wantErr: ErrCredential},
		{name: "operator credential", template: sig, cred: Credential{Template: TemplateClientAuth, Role: "admin"}, wantErr: ErrCredential},
		{name: "operator credential of the template itself", template: m[TemplateClientAuth], cred: Credential{Template: TemplateClientAuth, Role: "auditor"}, wantErr: ErrCredential},
		{name: "superseded certificate", template: sig, cred: Credential{Template: TemplateSMIMESignature, Superseded: "0a"}, wantErr: ErrCredential},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.template.AuthorizeCredential(tt.cred)
			if !errors.Is(err, tt.wantErr) || (err != nil && tt.wantErr == nil) {
				t.Fatalf("AuthorizeCredential() = %v, want %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrNotAllowed) {
				t.Errorf("%v does not wrap ErrNotAllowed", err)
			}
		})
	}
}

func TestTemplatesReenrollFrom(t *testing.T) {
	with := func(name string, from ...string) Template {
		for _, b := range Builtins() {
			if b.Name == name {
				b.ReenrollFrom = from
				return b
			}
		}
		panic(name)
	}
	tests := []struct {
		name    string
		config  []Template
		wantErr error
	}{
		{name: "a known template", config: []Template{with(TemplateSMIMEEncryption, TemplateSMIMESignature)}},
		{name: "an unknown template", config: []Template{with(TemplateSMIMEEncryption, "nosuch")}, wantErr: ErrInvalidTemplate},
		{name: "itself", config: []Template{with(TemplateSMIMEEncryption, TemplateSMIMEEncryption)}, wantErr: ErrInvalidTemplate},
		{name: "listed twice", config: []Template{with(TemplateSMIMEEncryption, TemplateSMIMESignature, TemplateSMIMESignature)}, wantErr: ErrInvalidTemplate},
		{name: "from the KRA template", config: []Template{with(TemplateSMIMEEncryption, TemplateKRA)}, wantErr: ErrInvalidTemplate},
		{name: "on a manual-approval template", config: []Template{with(TemplateKRA, TemplateSMIMESignature)}, wantErr: ErrInvalidTemplate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Templates(tt.config)
			if !errors.Is(err, tt.wantErr) || (err != nil && tt.wantErr == nil) {
				t.Fatalf("Templates() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
