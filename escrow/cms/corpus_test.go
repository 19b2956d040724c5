package cms

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// corpus lists the committed openssl-made envelopes in testdata/ (all
// addressed to testdata/transport.pem, content testdata/plaintext.der) with
// the `openssl cms -encrypt` options that made them. `go test -run
// TestCorpus -update` regenerates key, certificate and envelopes.
var corpus = []struct {
	file    string
	args    []string
	wantErr error
}{
	{"cbc-oaep-sha1.der", []string{"-aes-256-cbc", "-keyopt", "rsa_padding_mode:oaep"}, nil},
	{"cbc-oaep-sha256.der", []string{"-aes-256-cbc", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"}, nil},
	{"gcm-oaep-sha1.der", []string{"-aes-256-gcm", "-keyopt", "rsa_padding_mode:oaep"}, nil},
	{"gcm-oaep-sha256.der", []string{"-aes-256-gcm", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"}, nil},
	{"cbc-oaep-ski-stream.der", []string{"-aes-128-cbc", "-keyid", "-stream", "-keyopt", "rsa_padding_mode:oaep"}, nil},
	{"gcm-oaep-stream.der", []string{"-aes-256-gcm", "-stream", "-keyopt", "rsa_padding_mode:oaep"}, nil},
	{"cbc-pkcs1v15.der", []string{"-aes-256-cbc"}, ErrUnsupported},
}

func TestCorpus(t *testing.T) {
	if *update {
		needOpenSSL(t)
		openssl(t, nil, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
			"-keyout", filepath.Join("testdata", "transport.key"), "-out", filepath.Join("testdata", "transport.pem"),
			"-subj", "/CN=keyarc test transport (test only)", "-days", "36500")
		if err := os.WriteFile(filepath.Join("testdata", "plaintext.der"), newPKCS8(t), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, c := range corpus {
			args := append([]string{"cms", "-encrypt", "-binary", "-outform", "DER", "-in", filepath.Join("testdata", "plaintext.der"),
				"-out", filepath.Join("testdata", c.file), "-recip", filepath.Join("testdata", "transport.pem")}, c.args...)
			openssl(t, nil, args...)
		}
	}
	tr := loadTransport(t)
	want, err := os.ReadFile(filepath.Join("testdata", "plaintext.der"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range corpus {
		t.Run(c.file, func(t *testing.T) {
			der, err := os.ReadFile(filepath.Join("testdata", c.file))
			if err != nil {
				t.Fatal(err)
			}
			dec := tr.decrypter(t)
			got, err := Decrypt(der, tr.cert, dec)
			if !errorIs(err, c.wantErr) {
				t.Fatalf("Decrypt: err = %v, want %v", err, c.wantErr)
			}
			if c.wantErr != nil {
				if dec.calls.Load() != 0 {
					t.Errorf("key used %d times for a refused envelope", dec.calls.Load())
				}
				return
			}
			if !bytes.Equal(got, want) {
				t.Fatal("plaintext differs")
			}
		})
	}
}

// errorIs is errors.Is that also accepts want == nil meaning no error.
func errorIs(err, want error) bool {
	if want == nil {
		return err == nil
	}
	return errors.Is(err, want)
}
