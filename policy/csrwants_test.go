package policy

import (
	"slices"
	"testing"
)

// TestCSRWants: what a template wants follows its key rules (or the defaults) and its
// emailProtection usage.
func TestCSRWants(t *testing.T) {
	builtins := map[string]Template{}
	for _, b := range Builtins() {
		builtins[b.Name] = b
	}
	sig, kra, client := builtins[TemplateSMIMESignature], builtins[TemplateKRA], builtins[TemplateClientAuth]
	p384 := Template{Name: "p384", Keys: []KeyRule{{Algorithm: AlgorithmECDSA, Curves: []string{CurveP384}}}}
	rsa := Template{Name: "rsa", ExtKeyUsage: []string{EKUEmailProtection},
		Keys: []KeyRule{{Algorithm: AlgorithmRSA, MinBits: 3072, MaxBits: 4096}}}
	tests := []struct {
		name string
		tmpl *Template
		want CSRWants
	}{
		{"smime-signature, default keys", &sig, CSRWants{RSA: true, RSAMinBits: MinRSABits, RSAMaxBits: MaxRSABits,
			Curves: []string{CurveP256, CurveP384}, Mailbox: true}},
		{"kra, RSA only", &kra, CSRWants{RSA: true, RSAMinBits: 2048, RSAMaxBits: 16384}},
		{"client-auth, no mailbox", &client, CSRWants{RSA: true, RSAMinBits: MinRSABits, RSAMaxBits: MaxRSABits,
			Curves: []string{CurveP256, CurveP384}}},
		{"P-384 only", &p384, CSRWants{Curves: []string{CurveP384}}},
		{"RSA 3072 to 4096", &rsa, CSRWants{RSA: true, RSAMinBits: 3072, RSAMaxBits: 4096, Mailbox: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.tmpl.CSRWants()
			if got.RSA != tc.want.RSA || got.RSAMinBits != tc.want.RSAMinBits || got.RSAMaxBits != tc.want.RSAMaxBits ||
				got.Mailbox != tc.want.Mailbox || !slices.Equal(got.Curves, tc.want.Curves) {
				t.Errorf("CSRWants() = %+v, want %+v", got, tc.want)
			}
		})
	}
	// The answer is a copy: changing it changes nothing in the template.
	w := sig.CSRWants()
	w.Curves[0] = "changed"
	if again := sig.CSRWants(); again.Curves[0] != CurveP256 {
		t.Errorf("CSRWants shares its curve list with the template: %v", again.Curves)
	}
}
