package cms

import (
	"bytes"
	"crypto"
	"fmt"
	"strings"
	"testing"
)

// TestDecryptFromOpenSSL: `openssl cms -encrypt` makes envelopes, Decrypt opens them.
func TestDecryptFromOpenSSL(t *testing.T) {
	needOpenSSL(t)
	tr := loadTransport(t)
	tests := []struct {
		cipher string
		md     string // "" = OAEP default (SHA-1)
		extra  []string
	}{
		{"aes-256-cbc", "", nil},
		{"aes-256-cbc", "sha256", nil},
		{"aes-256-gcm", "", nil},
		{"aes-256-gcm", "sha256", nil},
		{"aes-128-cbc", "sha1", nil},
		{"aes-192-cbc", "sha256", nil},
		{"aes-128-gcm", "sha256", nil},
		{"aes-192-gcm", "", nil},
		{"aes-256-cbc", "sha256", []string{"-keyid"}},
		{"aes-256-gcm", "", []string{"-keyid", "-stream"}},
		{"aes-256-cbc", "sha256", []string{"-stream"}},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s/oaep-%s/%s", tc.cipher, tc.md, strings.Join(tc.extra, ""))
		t.Run(name, func(t *testing.T) {
			pt := newPKCS8(t)
			args := []string{"cms", "-encrypt", "-binary", "-outform", "DER", "-" + tc.cipher,
				"-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep"}
			if tc.md != "" {
				args = append(args, "-keyopt", "rsa_oaep_md:"+tc.md)
			}
			args = append(args, tc.extra...)
			der := openssl(t, pt, args...)
			dec := tr.decrypter(t)
			got, err := Decrypt(der, tr.cert, dec)
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatal("plaintext differs")
			}
			if n := dec.calls.Load(); n != 1 {
				t.Errorf("Decrypter called %d times, want 1", n)
			}
		})
	}
}

// TestEncryptToOpenSSL: Encrypt makes envelopes, `openssl cms -decrypt` opens them.
func TestEncryptToOpenSSL(t *testing.T) {
	needOpenSSL(t)
	tr := loadTransport(t)
	for _, c := range []Content{EnvelopedAESCBC, AuthEnvelopedAESGCM} {
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
			t.Run(fmt.Sprintf("%v/%v", c, h), func(t *testing.T) {
				for _, pt := range [][]byte{newPKCS8(t), {}, bytes.Repeat([]byte{0x10}, 32)} {
					der, err := Encrypt(pt, tr.cert, c, h)
					if err != nil {
						t.Fatalf("Encrypt: %v", err)
					}
					got := openssl(t, der, "cms", "-decrypt", "-binary", "-inform", "DER", "-recip", tr.certPath, "-inkey", tr.keyPath)
					if !bytes.Equal(got, pt) {
						t.Fatalf("openssl plaintext differs (len %d, want %d)", len(got), len(pt))
					}
					got, err = Decrypt(der, tr.cert, tr.decrypter(t))
					if err != nil || !bytes.Equal(got, pt) {
						t.Fatalf("Decrypt round trip: %v", err)
					}
				}
				// The structure openssl sees is what the RFCs ask for.
				der, _ := Encrypt([]byte("x"), tr.cert, c, h)
				dump := string(openssl(t, der, "cms", "-cmsout", "-print", "-inform", "DER"))
				for _, want := range []string{"version: 0", "rsaesOaep"} {
					if !strings.Contains(dump, want) {
						t.Errorf("openssl -print lacks %q:\n%s", want, dump)
					}
				}
				if h == crypto.SHA256 && !strings.Contains(dump, "sha256") {
					t.Errorf("openssl -print lacks sha256:\n%s", dump)
				}
			})
		}
	}
}

// TestDecryptRefusedOpenSSL: envelopes openssl can make that Decrypt refuses.
func TestDecryptRefusedOpenSSL(t *testing.T) {
	needOpenSSL(t)
	tr := loadTransport(t)
	otherPath, _ := otherCert(t)
	tests := []struct {
		name    string
		args    []string
		wantErr error
	}{
		{"pkcs1v15", []string{"-aes-256-cbc", "-recip", tr.certPath}, ErrUnsupported},
		{"pkcs1v15 gcm", []string{"-aes-256-gcm", "-recip", tr.certPath}, ErrUnsupported},
		{"oaep label", []string{"-aes-256-cbc", "-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_label:0102"}, ErrUnsupported},
		{"mgf1 hash differs", []string{"-aes-256-cbc", "-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256", "-keyopt", "rsa_mgf1_md:sha1"}, ErrUnsupported},
		{"oaep sha512", []string{"-aes-256-cbc", "-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha512"}, ErrUnsupported},
		{"other recipient", []string{"-aes-256-cbc", "-recip", otherPath, "-keyopt", "rsa_padding_mode:oaep"}, ErrNoRecipient},
		{"des3", []string{"-des3", "-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep"}, ErrUnsupported},
	}
	pt := newPKCS8(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"cms", "-encrypt", "-binary", "-outform", "DER"}, tc.args...)
			der := openssl(t, pt, args...)
			dec := tr.decrypter(t)
			_, err := Decrypt(der, tr.cert, dec)
			if !errorIs(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if n := dec.calls.Load(); n != 0 {
				t.Errorf("key used %d times for a refused envelope", n)
			}
			t.Logf("%v", err)
		})
	}
	// Two recipients, ours second: found; and the other one's PKCS#1 v1.5 is no obstacle.
	t.Run("second of two recipients", func(t *testing.T) {
		der := openssl(t, pt, "cms", "-encrypt", "-binary", "-outform", "DER", "-aes-256-gcm",
			"-recip", otherPath, "-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep")
		got, err := Decrypt(der, tr.cert, tr.decrypter(t))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Decrypt: %v", err)
		}
	})
	t.Run("password recipient skipped", func(t *testing.T) {
		der := openssl(t, pt, "cms", "-encrypt", "-binary", "-outform", "DER", "-aes-256-cbc",
			"-pwri_password", "not-a-secret", "-recip", tr.certPath, "-keyopt", "rsa_padding_mode:oaep")
		got, err := Decrypt(der, tr.cert, tr.decrypter(t))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Decrypt: %v", err)
		}
	})
}
