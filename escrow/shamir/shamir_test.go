package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"testing"
)

// refMul is a slow, obviously correct reference multiplication (carry-less
// multiply, then reduce modulo 0x11b), used only to check gfMul.
func refMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b&(1<<i) != 0 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p&(1<<i) != 0 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

func TestGFMulKnownAnswers(t *testing.T) {
	// FIPS 197 section 4.2 and 4.2.1, and the AES S-box inverse pair {53}{ca}.
	tests := []struct{ a, b, want byte }{
		{0x57, 0x83, 0xc1},
		{0x57, 0x02, 0xae},
		{0x57, 0x04, 0x47},
		{0x57, 0x08, 0x8e},
		{0x57, 0x10, 0x07},
		{0x57, 0x13, 0xfe},
		{0x53, 0xca, 0x01},
		{0x00, 0xff, 0x00},
		{0x01, 0xff, 0xff},
	}
	for _, tt := range tests {
		if got := gfMul(tt.a, tt.b); got != tt.want {
			t.Errorf("gfMul(%#02x, %#02x) = %#02x, want %#02x", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestGFExhaustive(t *testing.T) {
	for a := range 256 {
		for b := range 256 {
			if got, want := gfMul(byte(a), byte(b)), refMul(byte(a), byte(b)); got != want {
				t.Fatalf("gfMul(%#02x, %#02x) = %#02x, want %#02x", a, b, got, want)
			}
		}
		inv := gfInv(byte(a))
		if a == 0 {
			if inv != 0 {
				t.Fatalf("gfInv(0) = %#02x, want 0", inv)
			}
			continue
		}
		if p := gfMul(byte(a), inv); p != 1 {
			t.Fatalf("%#02x * gfInv(%#02x) = %#02x, want 1", a, a, p)
		}
	}
}

func TestCombineKnownAnswer(t *testing.T) {
	// Worked by hand: secret 0x57, m = 2, f(x) = 0x57 + 0x83 x.
	// f(1) = 0x57 ^ 0x83 = 0xd4; f(2) = 0x57 ^ xtime(0x83) = 0x57 ^ 0x1d = 0x4a;
	// f(3) = f(1) ^ f(2) ^ 0x57 = 0xc9.
	s1, s2, s3 := []byte{0xd4, 0x01}, []byte{0x4a, 0x02}, []byte{0xc9, 0x03}
	for _, set := range [][][]byte{{s1, s2}, {s2, s1}, {s1, s3}, {s3, s2}, {s1, s2, s3}} {
		got, err := Combine(set)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, []byte{0x57}) {
			t.Errorf("Combine = %x, want 57", got)
		}
	}
}

// fixedReader yields a deterministic byte stream, for split's known answer.
type fixedReader struct{ next byte }

func (r *fixedReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.next
		r.next++
	}
	return len(p), nil
}

func TestSplitKnownAnswer(t *testing.T) {
	// With a deterministic random source, split must be deterministic and
	// its shares must match polynomials evaluated with the reference
	// multiplication.
	secret := []byte{0x00, 0x11, 0xfe}
	a, err := split(&fixedReader{}, secret, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	b, err := split(&fixedReader{}, secret, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("share %d differs between identical runs", i)
		}
	}
	// Recompute: coordinates used the first 64-byte block; coefficients are
	// the next 6 bytes 0x40..0x45 (2 per secret byte).
	coeffs := []byte{0x40, 0x41, 0x42, 0x43, 0x44, 0x45}
	for _, sh := range a {
		x := sh[len(secret)]
		for i, c0 := range secret {
			c1, c2 := coeffs[2*i], coeffs[2*i+1]
			want := c0 ^ refMul(c1, x) ^ refMul(c2, refMul(x, x))
			if sh[i] != want {
				t.Fatalf("share x=%#02x byte %d = %#02x, want %#02x", x, i, sh[i], want)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	params := []struct{ m, n int }{
		{1, 1}, {1, 2}, {1, 5}, {2, 2}, {2, 3}, {3, 3}, {2, 5}, {3, 5}, {5, 5},
		{4, 10}, {10, 10}, {16, 32}, {100, 255}, {255, 255}, {1, 255},
	}
	for _, p := range params {
		t.Run(fmt.Sprintf("m%d_n%d", p.m, p.n), func(t *testing.T) {
			shares, err := Split(secret, p.n, p.m)
			if err != nil {
				t.Fatal(err)
			}
			if len(shares) != p.n {
				t.Fatalf("got %d shares, want %d", len(shares), p.n)
			}
			seen := map[byte]bool{}
			for _, s := range shares {
				if len(s) != len(secret)+1 {
					t.Fatalf("share length %d, want %d", len(s), len(secret)+1)
				}
				x := s[len(secret)]
				if x == 0 || seen[x] {
					t.Fatalf("bad or repeated x %d", x)
				}
				seen[x] = true
				if p.m == 1 && !bytes.Equal(s[:len(secret)], secret) {
					t.Fatal("m = 1 share is not the secret")
				}
			}
			// A few random m-subsets, in random order, and all n shares.
			for range 5 {
				idx := mrand.Perm(p.n)[:p.m]
				sub := make([][]byte, 0, p.m)
				for _, i := range idx {
					sub = append(sub, shares[i])
				}
				got, err := Combine(sub)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, secret) {
					t.Fatalf("subset %v did not recover the secret", idx)
				}
			}
			got, err := Combine(shares)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatal("all shares did not recover the secret")
			}
		})
	}
}

func TestEverySubset(t *testing.T) {
	// Every m-subset of a 3-of-6 split recovers the secret (all 20 of them).
	secret := []byte("correct horse battery staple")
	const n, m = 6, 3
	shares, err := Split(secret, n, m)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for mask := range 1 << n {
		var sub [][]byte
		for i := range n {
			if mask&(1<<i) != 0 {
				sub = append(sub, shares[i])
			}
		}
		if len(sub) != m {
			continue
		}
		count++
		got, err := Combine(sub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, secret) {
			t.Fatalf("subset %06b did not recover the secret", mask)
		}
	}
	if count != 20 {
		t.Fatalf("checked %d subsets, want 20", count)
	}
}

func TestBelowThreshold(t *testing.T) {
	// m-1 shares give a value independent of the secret; for a 32-byte
	// secret the chance of hitting it is 2^-256.
	secret := make([]byte, 32)
	rand.Read(secret)
	for _, p := range []struct{ m, n int }{{2, 2}, {2, 3}, {3, 5}, {5, 5}, {10, 20}} {
		shares, err := Split(secret, p.n, p.m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Combine(shares[:p.m-1])
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, secret) {
			t.Fatalf("m=%d n=%d: %d shares recovered the secret", p.m, p.n, p.m-1)
		}
	}
}

func TestSplitErrors(t *testing.T) {
	tests := []struct {
		name    string
		secret  []byte
		n, m    int
		wantErr error
	}{
		{"m zero", []byte{1}, 3, 0, ErrInvalidParams},
		{"m negative", []byte{1}, 3, -1, ErrInvalidParams},
		{"m above n", []byte{1}, 2, 3, ErrInvalidParams},
		{"n above 255", []byte{1}, 256, 2, ErrInvalidParams},
		{"n zero", []byte{1}, 0, 0, ErrInvalidParams},
		{"empty secret", []byte{}, 3, 2, ErrEmptySecret},
		{"nil secret", nil, 3, 2, ErrEmptySecret},
		{"ok", []byte{1}, 3, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Split(tt.secret, tt.n, tt.m)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Split error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestCombineErrors(t *testing.T) {
	shares, err := Split([]byte("secret"), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	dupX := bytes.Clone(shares[1])
	dupX[len(dupX)-1] = shares[0][len(shares[0])-1] // same x, different y
	zeroX := bytes.Clone(shares[1])
	zeroX[len(zeroX)-1] = 0
	tests := []struct {
		name    string
		shares  [][]byte
		wantErr error
	}{
		{"none", nil, ErrNoShares},
		{"empty list", [][]byte{}, ErrNoShares},
		{"identical shares", [][]byte{shares[0], shares[0]}, ErrDuplicateShare},
		{"same x", [][]byte{shares[0], dupX}, ErrDuplicateShare},
		{"zero x", [][]byte{shares[0], zeroX}, ErrInvalidShare},
		{"short share", [][]byte{shares[0], shares[1][:3]}, ErrShareLength},
		{"long share", [][]byte{shares[0], append(bytes.Clone(shares[1]), 7)}, ErrShareLength},
		{"one byte shares", [][]byte{{1}, {2}}, ErrShareLength},
		{"empty share", [][]byte{{}}, ErrShareLength},
		{"ok", shares[:2], nil},
		{"one share", shares[:1], nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Combine(tt.shares)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Combine error = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestCoordinatesUniformish(t *testing.T) {
	// Every value 1..255 shows up as a coordinate and 0 never does. With 20,000 draws the
	// chance that a fair generator misses some value is below 1e-30.
	var seen [256]int
	for range 2000 {
		xs, err := coordinates(rand.Reader, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range xs {
			seen[x]++
		}
	}
	if seen[0] != 0 {
		t.Fatal("coordinate 0 produced")
	}
	for x := 1; x < 256; x++ {
		if seen[x] == 0 {
			t.Errorf("coordinate %d never produced in 20000 draws", x)
		}
	}
}

func TestErrorsHoldNoSecret(t *testing.T) {
	secret := []byte{0xde, 0xad, 0xbe, 0xef}
	shares, err := Split(secret, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Combine([][]byte{shares[0], shares[0]})
	for _, b := range [][]byte{secret, shares[0]} {
		if bytes.Contains([]byte(err.Error()), []byte(fmt.Sprintf("%x", b))) ||
			bytes.Contains([]byte(err.Error()), b) {
			t.Fatalf("error %q holds secret material", err)
		}
	}
}

func FuzzCombine(f *testing.F) {
	shares, _ := Split([]byte("seed secret"), 3, 2)
	f.Add(bytes.Join(shares, nil), uint8(len(shares[0])))
	f.Add([]byte{0xd4, 0x01, 0x4a, 0x02}, uint8(2))
	f.Add([]byte{1, 0, 2, 0}, uint8(2))
	f.Add([]byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, size uint8) {
		// Cut data into shares of length size (the last one may be short).
		var in [][]byte
		if size == 0 {
			in = [][]byte{data}
		} else {
			for len(data) > 0 {
				k := min(int(size), len(data))
				in = append(in, data[:k])
				data = data[k:]
			}
		}
		out, err := Combine(in)
		if err == nil && len(out) != len(in[0])-1 {
			t.Fatalf("Combine returned %d bytes for shares of %d", len(out), len(in[0]))
		}
	})
}

func BenchmarkSplit32_3of5(b *testing.B) {
	secret := make([]byte, 32)
	rand.Read(secret)
	b.SetBytes(int64(len(secret)))
	for b.Loop() {
		if _, err := Split(secret, 5, 3); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCombine32_3of5(b *testing.B) {
	secret := make([]byte, 32)
	rand.Read(secret)
	shares, err := Split(secret, 5, 3)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(secret)))
	for b.Loop() {
		if _, err := Combine(shares[:3]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGFMul(b *testing.B) {
	var acc byte = 1
	for b.Loop() {
		acc = gfMul(acc, 0x53) ^ 0x01
	}
	_ = acc
}
