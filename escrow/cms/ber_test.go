package cms

import (
	"bytes"
	"errors"
	"testing"
)

// nested returns n SEQUENCEs nested in each other around an INTEGER, with
// indefinite or definite lengths.
func nested(n int, indefinite bool) []byte {
	out := []byte{0x02, 0x01, 0x05}
	for i := 0; i < n; i++ {
		if indefinite {
			out = append(append([]byte{0x30, 0x80}, out...), 0, 0)
		} else {
			out = appendElem(nil, 0x30, out)
		}
	}
	return out
}

func TestNormalize(t *testing.T) {
	long := bytes.Repeat([]byte{0xab}, 200)
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr error
	}{
		{"der unchanged", readTestdata(t, "gcm-oaep-sha1.der"), readTestdata(t, "gcm-oaep-sha1.der"), nil},
		{"indefinite", []byte{0x30, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00}, []byte{0x30, 0x03, 0x02, 0x01, 0x05}, nil},
		{"indefinite long child", append(append([]byte{0x30, 0x80, 0x04, 0x81, 0xc8}, long...), 0, 0),
			append([]byte{0x30, 0x81, 0xcb, 0x04, 0x81, 0xc8}, long...), nil},
		{"indefinite inside definite", []byte{0x30, 0x06, 0xa0, 0x80, 0x05, 0x00, 0x00, 0x00}, []byte{0x30, 0x04, 0xa0, 0x02, 0x05, 0x00}, nil},
		{"chunked octet string kept", []byte{0xa0, 0x80, 0x04, 0x01, 0x01, 0x04, 0x01, 0x02, 0x00, 0x00}, []byte{0xa0, 0x06, 0x04, 0x01, 0x01, 0x04, 0x01, 0x02}, nil},
		{"max depth", nested(maxDepth, true), nested(maxDepth, false), nil},
		{"too deep indefinite", nested(maxDepth+1, true), nil, ErrMalformed},
		{"too deep definite", nested(maxDepth+1, false), nil, ErrMalformed},
		{"primitive indefinite", []byte{0x04, 0x80, 0x00, 0x00}, nil, ErrMalformed},
		{"non-minimal length 81", []byte{0x30, 0x81, 0x03, 0x02, 0x01, 0x05}, nil, ErrMalformed},
		{"non-minimal length 82", []byte{0x04, 0x82, 0x00, 0x81}, nil, ErrMalformed},
		{"length too large", []byte{0x04, 0x84, 0x01, 0x00, 0x00, 0x00}, nil, ErrMalformed},
		{"eoc in definite", []byte{0x30, 0x02, 0x00, 0x00}, nil, ErrMalformed},
		{"bad eoc", []byte{0x30, 0x80, 0x00, 0x01, 0x00}, nil, ErrMalformed},
		{"missing eoc", []byte{0x30, 0x80, 0x02, 0x01, 0x05}, nil, ErrMalformed},
		{"lone eoc", []byte{0x00, 0x00}, nil, ErrMalformed},
		{"high tag", []byte{0x1f, 0x81, 0x00, 0x00}, nil, ErrMalformed},
		{"truncated header", []byte{0x30}, nil, ErrMalformed},
		{"truncated length", []byte{0x30, 0x82, 0x01}, nil, ErrMalformed},
		{"truncated content", []byte{0x30, 0x05, 0x02, 0x01}, nil, ErrMalformed},
		{"trailing", []byte{0x05, 0x00, 0x05, 0x00}, nil, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := normalize(tc.in)
			if !errorIs(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %x\nwant %x", got, tc.want)
			}
		})
	}
}

// TestNormalizeStream: the BER that `openssl cms -stream` wrote parses to the
// same envelope as DER would.
func TestNormalizeStream(t *testing.T) {
	in := readTestdata(t, "gcm-oaep-stream.der")
	if !bytes.HasPrefix(in, []byte{0x30, 0x80}) {
		t.Fatal("testdata/gcm-oaep-stream.der is not indefinite-length BER")
	}
	env, err := parse(in)
	if err != nil {
		t.Fatal(err)
	}
	if !env.auth || len(env.recipients) != 1 || len(env.mac) != 16 || len(env.ciphertext) == 0 {
		t.Fatalf("unexpected envelope %+v", env)
	}
	if _, err := parse(in[:len(in)-2]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("missing final EOC: err = %v", err)
	}
}
