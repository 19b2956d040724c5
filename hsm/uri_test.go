package hsm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		name    string
		uri     string
		want    URI
		wantErr error
	}{
		{
			name: "design example",
			uri:  "pkcs11:token=keyarc;object=ca-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/keyarc/pin",
			want: URI{Token: "keyarc", Object: "ca-key", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINSource: "file:/run/keyarc/pin"},
		},
		{
			name: "percent-encoding",
			uri:  "pkcs11:token=My%20Token%3B1;object=ca%2Fkey;id=%01%02%ff?module-path=/opt/a%26b/p11.so&pin-source=file:/run/pin%3Dx",
			want: URI{Token: "My Token;1", Object: "ca/key", ID: []byte{1, 2, 0xff}, ModulePath: "/opt/a&b/p11.so", PINSource: "file:/run/pin=x"},
		},
		{
			name: "other path attributes",
			uri:  "pkcs11:manufacturer=SoftHSM%20project;serial=abc;slot-id=7;token=t;type=private?pin-source=env:KEYARC_PIN",
			want: URI{Token: "t", Manufacturer: "SoftHSM project", Serial: "abc", SlotID: "7", PINSource: "env:KEYARC_PIN"},
		},
		{name: "token only", uri: "pkcs11:token=t", want: URI{Token: "t"}},
		{name: "empty", uri: "pkcs11:", want: URI{}},
		{name: "wrong scheme", uri: "http:token=t", wantErr: ErrInvalidURI},
		{name: "pin-value refused", uri: "pkcs11:token=t?pin-value=1234", wantErr: ErrInvalidURI},
		{name: "pin-source without scheme", uri: "pkcs11:token=t?pin-source=/run/pin", wantErr: ErrInvalidURI},
		{name: "pin-source unknown scheme", uri: "pkcs11:token=t?pin-source=http://x/pin", wantErr: ErrInvalidURI},
		{name: "pin-source empty file", uri: "pkcs11:token=t?pin-source=file:", wantErr: ErrInvalidURI},
		{name: "pin-source bad env name", uri: "pkcs11:token=t?pin-source=env:1X", wantErr: ErrInvalidURI},
		{name: "bad percent-encoding", uri: "pkcs11:token=a%zz", wantErr: ErrInvalidURI},
		{name: "repeated attribute", uri: "pkcs11:token=a;token=b", wantErr: ErrInvalidURI},
		{name: "unknown path attribute", uri: "pkcs11:token=a;colour=red", wantErr: ErrInvalidURI},
		{name: "unknown query attribute", uri: "pkcs11:token=a?module-name=softhsm2", wantErr: ErrInvalidURI},
		{name: "attribute without value", uri: "pkcs11:token", wantErr: ErrInvalidURI},
		{name: "bad slot-id", uri: "pkcs11:slot-id=x", wantErr: ErrInvalidURI},
		{name: "bad type", uri: "pkcs11:type=secret", wantErr: ErrInvalidURI},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.uri)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseURI(%q) error = %v, want %v", tt.uri, err, tt.wantErr)
			}
			if err != nil {
				if bytes.Contains([]byte(err.Error()), []byte("1234")) {
					t.Errorf("error echoes the pin-value: %v", err)
				}
				return
			}
			if got.Token != tt.want.Token || got.Object != tt.want.Object || !bytes.Equal(got.ID, tt.want.ID) ||
				got.ModulePath != tt.want.ModulePath || got.PINSource != tt.want.PINSource ||
				got.Manufacturer != tt.want.Manufacturer || got.Serial != tt.want.Serial || got.SlotID != tt.want.SlotID {
				t.Fatalf("ParseURI(%q) = %+v, want %+v", tt.uri, got, tt.want)
			}
			// String round-trips.
			again, err := ParseURI(got.String())
			if err != nil {
				t.Fatalf("ParseURI(String()) = %v (String %q)", err, got.String())
			}
			if again.String() != got.String() || again.Token != got.Token || again.Object != got.Object ||
				!bytes.Equal(again.ID, got.ID) || again.ModulePath != got.ModulePath || again.PINSource != got.PINSource {
				t.Errorf("round trip: %q -> %q", got.String(), again.String())
			}
		})
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	writeMode := func(name, content string, mode os.FileMode) string {
		p := write(name, content)
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("KEYARC_TEST_PIN_SET", "s3cret")
	// The PIN in the files: letters and a dash, so that no temporary folder's random digits
	// can contain it and pass for a leak.
	const pin = "q-pin-Z"
	tests := []struct {
		name    string
		source  string
		want    string
		wantErr error
	}{
		{"file with newline", "file:" + write("a", pin+"\n"), pin, nil},
		{"file with CRLF", "file:" + write("b", pin+"\r\n"), pin, nil},
		{"file without newline", "file:" + write("c", pin), pin, nil},
		{"inner spaces kept", "file:" + write("d", " 12 34 \n"), " 12 34 ", nil},
		{"empty file", "file:" + write("e", "\n"), "", ErrPINSource},
		{"missing file", "file:" + filepath.Join(dir, "none"), "", ErrPINSource},
		{"group may read", "file:" + writeMode("g", pin+"\n", 0o640), pin, nil},
		{"any user may read", "file:" + writeMode("o", pin+"\n", 0o644), "", ErrPINSource},
		{"any user may write", "file:" + writeMode("w", pin+"\n", 0o602), "", ErrPINSource},
		{"env", "env:KEYARC_TEST_PIN_SET", "s3cret", nil},
		{"env unset", "env:KEYARC_TEST_PIN_UNSET", "", ErrPINSource},
		{"bad source", "pin:" + pin, "", ErrPINSource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readPIN(tt.source)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("readPIN = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("readPIN = %q, want %q", got, tt.want)
			}
			if err != nil && bytes.Contains([]byte(err.Error()), []byte(pin)) {
				t.Errorf("error leaks the PIN: %v", err)
			}
		})
	}
}
