package store

import (
	"errors"
	"math/big"
	"strings"
	"testing"
)

func TestNormalizeSerial(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        error
	}{
		{name: "canonical", in: "3aff", want: "3aff"},
		{name: "upper case", in: "3AFF", want: "3aff"},
		{name: "leading zeros", in: "00003aff", want: "3aff"},
		{name: "0x prefix", in: "0x3AFF", want: "3aff"},
		{name: "colons", in: "00:3A:FF", want: "3aff"},
		{name: "spaces around", in: " 3aff\n", want: "3aff"},
		{name: "zero", in: "00", want: "0"},
		{name: "empty", in: "", wantErr: ErrInvalid},
		{name: "only prefix", in: "0x", wantErr: ErrInvalid},
		{name: "only colons", in: "::", wantErr: ErrInvalid},
		{name: "not hex", in: "12g4", wantErr: ErrInvalid},
		{name: "negative", in: "-12", wantErr: ErrInvalid},
		{name: "too long", in: strings.Repeat("f", 65), wantErr: ErrInvalid},
		{name: "long with zeros", in: "00" + strings.Repeat("f", 64), want: strings.Repeat("f", 64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeSerial(tt.in)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("NormalizeSerial(%q) error %v, want %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("NormalizeSerial(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	n, _ := new(big.Int).SetString("00ABCDEF0123", 16)
	if got := FormatSerial(n); got != "abcdef0123" {
		t.Errorf("FormatSerial = %q", got)
	}
	if got := FormatSerial(new(big.Int).Neg(n)); got != "abcdef0123" {
		t.Errorf("FormatSerial(negative) = %q", got)
	}
}
