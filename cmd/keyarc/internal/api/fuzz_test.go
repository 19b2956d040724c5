package api

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
)

// The request readers of the HTTP layer face the network first. Their fuzz targets check that
// they never panic, that every refusal maps to a 4xx with a message, and that what they accept
// reads back the same. Seeds: testdata/fuzz/<target> and the f.Add calls.

// refusal checks that err is a client error status() maps to 400 or 413.
func refusal(t *testing.T, err error) {
	t.Helper()
	code, msg := status(err)
	if code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge {
		t.Fatalf("refusal maps to %d %q: %v", code, msg, err)
	}
	if msg == "" {
		t.Fatal("refusal without a message")
	}
}

// FuzzReadCSR posts a body to readCSR as an EST client would.
func FuzzReadCSR(f *testing.F) {
	f.Add([]byte("MIIBCDCBrwIBADAeMRwwGgYDVQQDDBNob3N0aWxlQGV4YW1wbGUub3Jn\r\n"))
	f.Add([]byte(""))
	f.Add([]byte("MA==\n"))
	f.Add([]byte(strings.Repeat("MIAw", 1000)))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/.well-known/est/smime-signature/simpleenroll", bytes.NewReader(body))
		csr, err := readCSR(httptest.NewRecorder(), r)
		if err != nil {
			if csr != nil {
				t.Fatal("request returned with an error")
			}
			refusal(t, err)
			return
		}
		// What was accepted reads back to the same request.
		again := httptest.NewRequest("POST", "/", strings.NewReader(base64.StdEncoding.EncodeToString(csr.Raw)))
		csr2, err := readCSR(httptest.NewRecorder(), again)
		if err != nil || !bytes.Equal(csr2.Raw, csr.Raw) {
			t.Fatalf("accepted request does not read back: %v", err)
		}
	})
}

// FuzzDecodeJSON feeds bodies to decodeJSON for each request type of the API.
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"template":"smime-encryption","csr":"MA==","encrypted_key":"MA=="}`))
	f.Add([]byte(`{"shares":[{"record_id":"r","share":"AA=="}],"signature":"AA=="}`))
	f.Add([]byte(`{"quorum":2,"kras":["1","2"]}`))
	f.Add([]byte(`{"a":1} {"a":2}`))
	f.Add([]byte(strings.Repeat("[", 20000)))
	f.Fuzz(func(t *testing.T, body []byte) {
		targets := []func() any{
			func() any { return new(wire.EnrollRequest) },
			func() any { return new(wire.KRAEnrollRequest) },
			func() any { return new(wire.Approval) },
			func() any {
				return new(struct {
					Quorum int      `json:"quorum"`
					KRAs   []string `json:"kras"`
				})
			},
		}
		for _, mk := range targets {
			r := httptest.NewRequest("POST", "/api/v1/enroll", bytes.NewReader(body))
			if err := decodeJSON(httptest.NewRecorder(), r, mk()); err != nil {
				refusal(t, err)
				if len(body) <= maxJSONBody && status413(err) {
					t.Fatalf("%d bytes refused as too large", len(body))
				}
			}
		}
	})
}

func status413(err error) bool {
	code, _ := status(err)
	return code == http.StatusRequestEntityTooLarge
}

// FuzzDecodeB64 checks decodeB64: a refusal names the field and wraps ErrInvalidRequest; what it
// accepts encodes back (standard alphabet, padded) to something it decodes to the same bytes.
func FuzzDecodeB64(f *testing.F) {
	for _, s := range []string{"", "MA==", "MA", "-_-_", "+/+/", "M A = =", "M\r\nA==", "====", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := decodeB64("encrypted_key", s)
		if err != nil {
			if !errors.Is(err, escrow.ErrInvalidRequest) || !strings.Contains(err.Error(), "encrypted_key") {
				t.Fatalf("refusal does not name the field: %v", err)
			}
			return
		}
		again, err := decodeB64("encrypted_key", base64.StdEncoding.EncodeToString(b))
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded bytes do not round-trip: %v", err)
		}
	})
}

// TestDecodeJSONDuplicateKeys: a body naming one key twice in an object, even in another case
// (encoding/json matches keys to fields without regard to case, and the last would win), is
// refused naming the key; the same key in different objects is not a duplicate.
func TestDecodeJSONDuplicateKeys(t *testing.T) {
	type share struct {
		RecordID string `json:"record_id"`
		Share    string `json:"share"`
	}
	type body struct {
		Reason string  `json:"reason"`
		Shares []share `json:"shares"`
		Inner  *share  `json:"inner"`
	}
	for _, tt := range []struct {
		body string
		dup  string // "" means accepted
	}{
		{`{"reason":"a","shares":[{"record_id":"r1","share":"x"},{"record_id":"r2","share":"y"}],"inner":{"record_id":"r3"}}`, ""},
		{`{"reason":"a","reason":"b"}`, "reason"},
		{`{"reason":"a","Reason":"b"}`, "Reason"},
		{`{"REASON":"a","reason":"b"}`, "reason"},
		{`{"shares":[{"record_id":"r1","record_id":"r2"}]}`, "record_id"},
		{`{"inner":{"share":"x","SHARE":"y"}}`, "SHARE"},
		{`{"inner":{"record_id":"r"},"inner":{"record_id":"s"}}`, "inner"},
		{`{"shares":[],"reason":"a","shares":[]}`, "shares"},
	} {
		r := httptest.NewRequest("POST", "/api/v1/x", strings.NewReader(tt.body))
		var v body
		err := decodeJSON(httptest.NewRecorder(), r, &v)
		switch {
		case tt.dup == "" && err != nil:
			t.Errorf("%s: %v, want it accepted", tt.body, err)
		case tt.dup != "" && (err == nil || !errors.Is(err, escrow.ErrInvalidRequest) || !strings.Contains(err.Error(), `"`+tt.dup+`" twice`)):
			t.Errorf("%s: %v, want a refusal naming %q", tt.body, err, tt.dup)
		}
	}
}
