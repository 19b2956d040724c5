package policy

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

func TestBuiltinsValid(t *testing.T) {
	for _, tmpl := range Builtins() {
		if err := tmpl.Validate(); err != nil {
			t.Errorf("builtin %s: %v", tmpl.Name, err)
		}
	}
}

func TestBuiltinsShape(t *testing.T) {
	m, err := Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	enc := m[TemplateSMIMEEncryption]
	if !enc.Archive || !enc.ServerKeygen || enc.ValidityDays != 365 || !enc.IsSMIME() {
		t.Errorf("smime-encryption: %+v", enc)
	}
	sig := m[TemplateSMIMESignature]
	if sig.Archive || sig.KeyUsageBits() != x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment {
		t.Errorf("smime-signature: %+v", sig)
	}
	kra := m[TemplateKRA]
	ekus, unknown := kra.ExtKeyUsages()
	if !kra.ManualApproval || kra.ValidityDays != 730 || len(ekus) != 0 || len(unknown) != 1 || !unknown[0].Equal(OIDKeyRecovery) {
		t.Errorf("kra: %+v ekus %v %v", kra, ekus, unknown)
	}
	ca := m[TemplateClientAuth]
	ekus, _ = ca.ExtKeyUsages()
	if len(ekus) != 1 || ekus[0] != x509.ExtKeyUsageClientAuth || ca.KeyUsageBits() != x509.KeyUsageDigitalSignature {
		t.Errorf("client-auth: %+v", ca)
	}
	if got := enc.Validity().Hours(); got != 365*24 {
		t.Errorf("Validity = %vh", got)
	}
}

func TestKeyUsageFor(t *testing.T) {
	enc := &Builtins()[0]
	if got := enc.KeyUsageFor(&rsa.PublicKey{}); got != x509.KeyUsageKeyEncipherment {
		t.Errorf("RSA: %v", got)
	}
	if got := enc.KeyUsageFor(&ecdsa.PublicKey{}); got != x509.KeyUsageKeyAgreement {
		t.Errorf("ECDSA: %v", got)
	}
}

func valid() Template {
	return Template{
		Name:         "x",
		KeyUsage:     []string{KUKeyEncipherment},
		ExtKeyUsage:  []string{EKUEmailProtection},
		ValidityDays: 365,
		Archive:      true,
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name      string
		edit      func(*Template)
		wantErr   error
		wantField string
	}{
		{name: "ok", edit: func(*Template) {}},
		{name: "ok rsa bounds default", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "rsa", MinBits: 3072}} }},
		{name: "ok ecdsa one curve", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "ecdsa", Curves: []string{"P-384"}}} }},
		{name: "ok 825 days", edit: func(t *Template) { t.ValidityDays = 825 }},
		{name: "ok role", edit: func(t *Template) {
			*t = Template{Name: "admins", KeyUsage: []string{KUDigitalSignature}, ExtKeyUsage: []string{EKUClientAuth}, ValidityDays: 90, Role: "admin"}
		}},
		{name: "ok long non-smime", edit: func(t *Template) { t.ExtKeyUsage = []string{EKUKeyRecovery}; t.ValidityDays = 1000 }},
		{name: "empty name", edit: func(t *Template) { t.Name = "" }, wantErr: ErrInvalidTemplate, wantField: "name"},
		{name: "upper-case name", edit: func(t *Template) { t.Name = "Smime" }, wantErr: ErrInvalidTemplate, wantField: "name"},
		{name: "name with slash", edit: func(t *Template) { t.Name = "a/b" }, wantErr: ErrInvalidTemplate, wantField: "name"},
		{name: "reserved name", edit: func(t *Template) { t.Name = "import" }, wantErr: ErrInvalidTemplate, wantField: "name"},
		{name: "archive with digitalSignature", edit: func(t *Template) { t.KeyUsage = append(t.KeyUsage, KUDigitalSignature) }, wantErr: ErrInvalidTemplate, wantField: "key_usage"},
		{name: "archive with nonRepudiation", edit: func(t *Template) { t.KeyUsage = []string{KUNonRepudiation} }, wantErr: ErrInvalidTemplate, wantField: "key_usage"},
		{name: "unknown usage", edit: func(t *Template) { t.KeyUsage = []string{"keyCertSign"} }, wantErr: ErrInvalidTemplate, wantField: "key_usage"},
		{name: "no usage", edit: func(t *Template) { t.KeyUsage = nil }, wantErr: ErrInvalidTemplate, wantField: "key_usage"},
		{name: "duplicate usage", edit: func(t *Template) { t.KeyUsage = []string{KUKeyEncipherment, KUKeyEncipherment} }, wantErr: ErrInvalidTemplate, wantField: "key_usage"},
		{name: "unknown eku", edit: func(t *Template) { t.ExtKeyUsage = []string{"codeSigning"} }, wantErr: ErrInvalidTemplate, wantField: "ext_key_usage"},
		{name: "no eku", edit: func(t *Template) { t.ExtKeyUsage = nil }, wantErr: ErrInvalidTemplate, wantField: "ext_key_usage"},
		{name: "email and server", edit: func(t *Template) { t.ExtKeyUsage = []string{EKUEmailProtection, EKUServerAuth} }, wantErr: ErrInvalidTemplate, wantField: "ext_key_usage"},
		{name: "826 days smime", edit: func(t *Template) { t.ValidityDays = 826 }, wantErr: ErrInvalidTemplate, wantField: "validity_days"},
		{name: "0 days", edit: func(t *Template) { t.ValidityDays = 0 }, wantErr: ErrInvalidTemplate, wantField: "validity_days"},
		{name: "too long non-smime", edit: func(t *Template) { t.ExtKeyUsage = []string{EKUKeyRecovery}; t.ValidityDays = 4000 }, wantErr: ErrInvalidTemplate, wantField: "validity_days"},
		{name: "rsa 1024", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "rsa", MinBits: 1024}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "rsa 32768", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "rsa", MaxBits: 32768}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "rsa min above max", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "rsa", MinBits: 4096, MaxBits: 3072}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "rsa with curves", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "rsa", Curves: []string{"P-256"}}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "P-521", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "ecdsa", Curves: []string{"P-521"}}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "ecdsa bits", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "ecdsa", MinBits: 256}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "ed25519", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "ed25519"}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "duplicate algorithm", edit: func(t *Template) { t.Keys = []KeyRule{{Algorithm: "rsa"}, {Algorithm: "rsa"}} }, wantErr: ErrInvalidTemplate, wantField: "keys"},
		{name: "server keygen without archive", edit: func(t *Template) {
			t.Archive = false
			t.ServerKeygen = true
		}, wantErr: ErrInvalidTemplate, wantField: "server_keygen"},
		{name: "unknown role", edit: func(t *Template) { t.Role = "root" }, wantErr: ErrInvalidTemplate, wantField: "role"},
		{name: "role without clientAuth", edit: func(t *Template) { t.Role = "admin" }, wantErr: ErrInvalidTemplate, wantField: "role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := valid()
			tt.edit(&tmpl)
			err := tmpl.Validate()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate() = %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.wantField || fe.Template != tmpl.Name {
				t.Fatalf("Validate() = %#v, want field %s", err, tt.wantField)
			}
			if !strings.Contains(err.Error(), `template "`+tmpl.Name+`"`) || !strings.Contains(err.Error(), tt.wantField+":") {
				t.Errorf("message %q does not name template and field", err)
			}
		})
	}
}

func TestArchiveSigningMessage(t *testing.T) {
	tmpl := valid()
	tmpl.KeyUsage = []string{KUKeyEncipherment, KUDigitalSignature}
	want := `policy: template "x": key_usage: archive is allowed only for key-management templates; digitalSignature allows signing`
	if err := tmpl.Validate(); err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func TestTemplates(t *testing.T) {
	custom := valid()
	custom.Name = "exchange-user"
	override := Builtins()[1] // smime-signature
	override.ValidityDays = 90
	badOverride := Builtins()[1]
	badOverride.Archive = true

	tests := []struct {
		name    string
		config  []Template
		wantErr error
		check   func(*testing.T, map[string]*Template)
	}{
		{name: "builtins only", check: func(t *testing.T, m map[string]*Template) {
			if len(m) != 4 {
				t.Errorf("%d templates", len(m))
			}
		}},
		{name: "extend", config: []Template{custom}, check: func(t *testing.T, m map[string]*Template) {
			if len(m) != 5 || m["exchange-user"] == nil {
				t.Errorf("got %v", m)
			}
		}},
		{name: "override", config: []Template{override}, check: func(t *testing.T, m map[string]*Template) {
			if m[TemplateSMIMESignature].ValidityDays != 90 {
				t.Errorf("override ignored")
			}
		}},
		{name: "override that archives a signing key", config: []Template{badOverride}, wantErr: ErrInvalidTemplate},
		{name: "defined twice", config: []Template{custom, custom}, wantErr: ErrInvalidTemplate},
		{name: "invalid", config: []Template{{Name: "BAD"}}, wantErr: ErrInvalidTemplate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Templates(tt.config)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Templates() = %v, want %v", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

func TestTemplatesCopies(t *testing.T) {
	cfg := []Template{valid()}
	m, err := Templates(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg[0].KeyUsage[0] = KUDigitalSignature
	if m["x"].KeyUsage[0] != KUKeyEncipherment {
		t.Fatal("Templates shares slices with its input")
	}
}
