package bulk

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReaderFraming(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		lim     Limits
		items   int
		wantErr error
	}{
		{name: "enroll", file: `{"kind":"enroll","template":"smime-encryption"}` + "\n{}\n{}\n", items: 2},
		{name: "blank lines and CRLF", file: `{"kind":"keygen","template":"t","key":"p256"}` + "\r\n\r\n{}\r\n\n{}", items: 2},
		{name: "import without template", file: `{"kind":"import"}` + "\n{}\n", items: 1},
		{name: "empty", file: "", wantErr: ErrFormat},
		{name: "only blank", file: "\n\n", wantErr: ErrFormat},
		{name: "header not JSON", file: "kind=enroll\n{}\n", wantErr: ErrFormat},
		{name: "unknown header field", file: `{"kind":"enroll","template":"t","x":1}` + "\n", wantErr: ErrFormat},
		{name: "unknown kind", file: `{"kind":"revoke","template":"t"}` + "\n", wantErr: ErrFormat},
		{name: "enroll without template", file: `{"kind":"enroll"}` + "\n", wantErr: ErrFormat},
		{name: "key on enroll", file: `{"kind":"enroll","template":"t","key":"p256"}` + "\n", wantErr: ErrFormat},
		{name: "bad key type", file: `{"kind":"keygen","template":"t","key":"dsa"}` + "\n", wantErr: ErrFormat},
		{name: "two values on header", file: `{"kind":"import"} {"kind":"import"}` + "\n", wantErr: ErrFormat},
		{name: "line too long", file: `{"kind":"import"}` + "\n" + strings.Repeat("x", 100) + "\n", lim: Limits{MaxLine: 50}, items: 0, wantErr: ErrLineTooLong},
		{name: "too many items", file: `{"kind":"import"}` + "\n{}\n{}\n{}\n", lim: Limits{MaxItems: 2}, items: 2, wantErr: ErrTooManyItems},
		{name: "too large", file: `{"kind":"import"}` + "\n" + strings.Repeat("{}\n", 100), lim: Limits{MaxFile: 64}, wantErr: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd, err := NewReader(strings.NewReader(tt.file), tt.lim)
			n := 0
			for err == nil {
				var seq int
				seq, _, err = rd.Next()
				if err == nil {
					n++
					if seq != n {
						t.Fatalf("seq %d, want %d", seq, n)
					}
				}
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && n != tt.items {
				t.Fatalf("%d items, want %d", n, tt.items)
			}
		})
	}
}

func TestParseItem(t *testing.T) {
	env := newEnv(t)
	good := env.enrollItem(t, "alice@example.org")
	k := p256(t)
	old := newOtherCA(t)
	cert := old.issue(t, k.Public(), "bob@example.org")
	enroll := Header{Kind: KindEnroll, Template: "smime-encryption"}
	keygen := Header{Kind: KindKeygen, Template: "smime-encryption", Key: "p256"}
	imp := Header{Kind: KindImport}
	tests := []struct {
		name    string
		h       Header
		line    string
		want    any
		wantErr error
	}{
		{name: "enroll", h: enroll, line: jsonLine(t, good), want: &Enroll{}},
		{name: "enroll missing key", h: enroll, line: jsonLine(t, Item{Email: "a@b.org", CSR: good.CSR}), wantErr: ErrItem},
		{name: "enroll bad csr b64", h: enroll, line: jsonLine(t, Item{Email: "a@b.org", CSR: "!!", EncryptedKey: good.EncryptedKey}), wantErr: ErrItem},
		{name: "enroll csr not DER", h: enroll, line: jsonLine(t, Item{Email: "a@b.org", CSR: "AAAA", EncryptedKey: good.EncryptedKey}), wantErr: ErrItem},
		{name: "enroll with import field", h: enroll, line: jsonLine(t, Item{Email: "a@b.org", CSR: good.CSR, EncryptedKey: good.EncryptedKey, Password: "x"}), wantErr: ErrItem},
		{name: "unknown field", h: enroll, line: `{"email":"a@b.org","color":"red"}`, wantErr: ErrItem},
		{name: "not JSON", h: enroll, line: `email=a@b.org`, wantErr: ErrItem},
		{name: "key twice", h: keygen, line: `{"email":"a@example.org","email":"b@example.org"}`, wantErr: ErrItem},
		{name: "key twice in two cases", h: keygen, line: `{"email":"a@example.org","Email":"b@example.org"}`, wantErr: ErrItem},
		{name: "keygen", h: keygen, line: `{"email":"c@example.org"}`, want: &Keygen{Email: "c@example.org", Key: "p256"}},
		{name: "keygen own key", h: keygen, line: `{"email":"c@example.org","key":"rsa3072"}`, want: &Keygen{Email: "c@example.org", Key: "rsa3072"}},
		{name: "keygen bad key", h: keygen, line: `{"email":"c@example.org","key":"ed448"}`, wantErr: ErrItem},
		{name: "keygen no email", h: keygen, line: `{"key":"p256"}`, wantErr: ErrItem},
		{name: "import PEM", h: imp, line: jsonLine(t, Item{Certificate: pemOf("CERTIFICATE", cert.Raw), Key: pemOf("PRIVATE KEY", pkcs8(t, k))}), want: &Import{}},
		{name: "import DER", h: imp, line: jsonLine(t, Item{Certificate: b64(cert.Raw), Key: b64(pkcs8(t, k))}), want: &Import{}},
		{name: "import encrypted key", h: imp, line: jsonLine(t, Item{Certificate: b64(cert.Raw), Key: pemOf("ENCRYPTED PRIVATE KEY", []byte{1})}), wantErr: ErrItem},
		{name: "import no key", h: imp, line: jsonLine(t, Item{Certificate: b64(cert.Raw)}), wantErr: ErrItem},
		{name: "import email", h: imp, line: jsonLine(t, Item{Email: "x@y.org", Certificate: b64(cert.Raw), Key: b64(pkcs8(t, k))}), wantErr: ErrItem},
		{name: "import cert not X.509", h: imp, line: jsonLine(t, Item{Certificate: "AAAA", Key: b64(pkcs8(t, k))}), wantErr: ErrItem},
		{name: "import pkcs12 wrong password", h: imp, line: jsonLine(t, Item{PKCS12: b64(p12(t, k, cert, "right")), Password: "wrong"}), wantErr: ErrItem},
		{name: "import pkcs12", h: imp, line: jsonLine(t, Item{PKCS12: b64(p12(t, k, cert, "right")), Password: "right"}), want: &Import{}},
		{name: "import pkcs12 and key", h: imp, line: jsonLine(t, Item{PKCS12: "AAAA", Key: "AAAA"}), wantErr: ErrItem},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseItem(tt.h, []byte(tt.line))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if strings.Contains(err.Error(), "right") || strings.Contains(err.Error(), "wrong") {
					t.Fatalf("error repeats a password: %v", err)
				}
				return
			}
			switch w := tt.want.(type) {
			case *Keygen:
				if g, ok := got.(*Keygen); !ok || *g != *w {
					t.Fatalf("got %#v, want %#v", got, w)
				}
			case *Import:
				g, ok := got.(*Import)
				if !ok || !g.Cert.Equal(cert) || !bytes.Equal(g.PKCS8, pkcs8(t, k)) {
					t.Fatalf("import item not decoded to the certificate and key")
				}
			case *Enroll:
				g, ok := got.(*Enroll)
				if !ok || g.Email != "alice@example.org" || g.CSR == nil || len(g.Envelope) == 0 {
					t.Fatalf("enroll item not decoded")
				}
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte(`{"kind":"enroll","template":"smime-encryption"}` + "\n" + `{"email":"a@b.org","csr":"AAAA","encrypted_key":"AAAA"}` + "\n"))
	f.Add([]byte(`{"kind":"keygen","template":"smime-encryption","key":"p256"}` + "\n" + `{"email":"a@b.org"}` + "\n\n"))
	f.Add([]byte(`{"kind":"import"}` + "\n" + `{"certificate":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----","key":"AAAA"}` + "\n"))
	f.Add([]byte(`{"kind":"import"}` + "\n" + `{"pkcs12":"MIIB","password":"x"}` + "\r\n"))
	f.Add([]byte("{}\n{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data), Limits{MaxLine: 4096, MaxItems: 100, MaxFile: 1 << 16})
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrLineTooLong) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("header error not classified: %v", err)
			}
			return
		}
		if err := rd.Header().Validate(); err != nil {
			t.Fatalf("reader accepted an invalid header: %v", err)
		}
		for {
			_, line, err := rd.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, ErrLineTooLong) && !errors.Is(err, ErrTooManyItems) && !errors.Is(err, ErrTooLarge) {
					t.Fatalf("framing error not classified: %v", err)
				}
				return
			}
			if len(line) > 4096 {
				t.Fatalf("line of %d bytes over the limit", len(line))
			}
			v, err := ParseItem(rd.Header(), line)
			if err != nil {
				if !errors.Is(err, ErrItem) {
					t.Fatalf("item error not ErrItem: %v", err)
				}
				continue
			}
			if v == nil {
				t.Fatal("nil item without error")
			}
		}
	})
}

// flatSamples are item lines for the fast decoder: the ones it must take, and the ones it must
// leave to encoding/json (which may still accept them).
var flatSamples = []struct {
	line string
	fast bool
}{
	{`{"email":"a@b.org","csr":"MIIB","encrypted_key":"MIIC"}`, true},
	{` { "certificate" : "-----BEGIN CERTIFICATE-----" , "key":"AAAA" } ` + "\t", true},
	{`{}`, true},
	{`{"email":"ünïcødé@b.org"}`, true},
	{`{"email":""}`, true},
	{`{"key":"-----BEGIN PRIVATE KEY-----\nMIGH\/+\r\n\t\"\\-----END PRIVATE KEY-----\n"}`, true},
	{`{"email":"a\b@b.org"}`, false}, // \b, \f and \u are left to encoding/json
	{`{"email":"a\u0040b.org"}`, false},
	{`{"email":"a\x"}`, false},
	{`{"email":"a\`, false},
	{`{"EMAIL":"a@b.org"}`, false},                   // encoding/json matches names without case
	{`{"email":"a@b.org","email":"c@d.org"}`, false}, // duplicate: encoding/json keeps the last
	{`{"email":null}`, false},
	{`{"email":1}`, false},
	{`{"email":"a@b.org",}`, false},
	{`{"email":"a@b.org"} {}`, false},
	{`{"other":"x"}`, false},
	{"{\"email\":\"a\x01b\"}", false},
	{"{\"email\":\"\xff\"}", false},
	{`{"email":"a@b.org"`, false},
	{`["email"]`, false},
	{``, false},
}

func TestDecodeFlat(t *testing.T) {
	for _, tc := range flatSamples {
		var fast, slow Item
		ok := fast.decodeFlat([]byte(tc.line))
		if ok != tc.fast {
			t.Errorf("decodeFlat(%q) = %v, want %v", tc.line, ok, tc.fast)
			continue
		}
		if ok {
			if err := strictJSON([]byte(tc.line), &slow); err != nil {
				t.Errorf("decodeFlat took %q, which encoding/json refuses: %v", tc.line, err)
			} else if fast != slow {
				t.Errorf("%q: decodeFlat gives %+v, encoding/json %+v", tc.line, fast, slow)
			}
		}
	}
}

// FuzzDecodeFlat: whatever the fast decoder takes, encoding/json takes too, with the same result.
func FuzzDecodeFlat(f *testing.F) {
	for _, tc := range flatSamples {
		f.Add([]byte(tc.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var fast, slow Item
		if !fast.decodeFlat(line) {
			return
		}
		if err := strictJSON(line, &slow); err != nil {
			t.Fatalf("decodeFlat took %q, which encoding/json refuses: %v", line, err)
		}
		if fast != slow {
			t.Fatalf("%q: decodeFlat gives %+v, encoding/json %+v", line, fast, slow)
		}
	})
}
