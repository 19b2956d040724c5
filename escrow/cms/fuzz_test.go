package cms

import (
	"bytes"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecrypt feeds mutations of the testdata/ envelopes to Decrypt. It must
// not panic; every error wraps one of the sentinels and comes with no
// plaintext; the key is only used with OAEP (oaepOnly); and an
// AuthEnvelopedData that opens yields exactly the seed plaintext (GCM does
// not open garbage; CBC is malleable, so garbage CBC content can "succeed").
func FuzzDecrypt(f *testing.F) {
	tr := loadTransport(f)
	want, err := os.ReadFile(filepath.Join("testdata", "plaintext.der"))
	if err != nil {
		f.Fatal(err)
	}
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.der"))
	for _, s := range seeds {
		if filepath.Base(s) == "plaintext.der" {
			continue
		}
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, c := range []Content{EnvelopedAESCBC, AuthEnvelopedAESGCM} {
		b, err := Encrypt(want, tr.cert, c, crypto.SHA256)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x30, 0x80, 0x00, 0x00})
	sentinels := []error{ErrMalformed, ErrNoRecipient, ErrUnsupported, ErrDecrypt, ErrKeyMismatch}
	f.Fuzz(func(t *testing.T, in []byte) {
		dec := &oaepOnly{tb: t, key: tr.key}
		got, err := Decrypt(in, tr.cert, dec)
		if err != nil {
			if got != nil {
				t.Fatal("plaintext returned with an error")
			}
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error wraps no sentinel: %v", err)
		}
		env, perr := parse(in)
		if perr != nil {
			t.Fatalf("Decrypt succeeded but parse fails: %v", perr)
		}
		if env.auth && !bytes.Equal(got, want) {
			t.Fatal("AuthEnvelopedData opened to something other than the seed plaintext")
		}
	})
}
