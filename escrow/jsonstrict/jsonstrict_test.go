package jsonstrict

import "testing"

func TestDuplicateKey(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}`, ""},
		{`{"a":1,"a":2}`, "a"},
		{`{"a":1,"A":2}`, "A"},
		{`{"k":1,"\u212a":2}`, "\u212a"}, // the Kelvin sign, which encoding/json matches to "k"
		{`{"b":{"x":1,"X":[1,2]}}`, "X"},
		{`[{"a":1},{"a":1,"a":1}]`, "a"},
		{`{"a":[{"b":1}],"a":2}`, "a"},
		{`{"a":{"b":{"c":{}}},"d":{"c":1}}`, ""},
		{`{"a":1} {"a":2}`, ""}, // two values: the caller's decoder refuses them
		{`{"a":1,`, ""},         // not JSON: the decoder says so
		{`"a"`, ""},
		{``, ""},
	} {
		if got := DuplicateKey([]byte(tt.in)); got != tt.want {
			t.Errorf("DuplicateKey(%s) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
