// Package shamir implements Shamir's secret sharing over GF(2^8), the
// threshold scheme that splits an escrow record's data key among the Key
// Recovery Agents (see DESIGN.md section 4).
//
// It owns the field arithmetic, the share format and the choice of share
// coordinates, and nothing else: it knows no keys, records, KRAs or policy.
// It imports only the standard library and must stay that way.
//
// # Field and timing
//
// Arithmetic is in GF(2^8) modulo the AES polynomial 0x11b and runs in constant
// time: multiplication is a masked shift-and-xor loop and inversion is a^254,
// so no table lookup is indexed by, and no branch depends on, secret bytes
// (secret bytes, polynomial coefficients and share y values). The share x
// coordinates are public and are validated with ordinary branches.
//
// # Share format
//
// A share is len(secret)+1 bytes: the len(secret) y values (one per secret
// byte, each the value at x of an independent random polynomial of degree at
// most m-1 whose constant term is that secret byte), followed by one byte x,
// the share's coordinate. The n coordinates of one [Split] are distinct,
// nonzero and drawn from crypto/rand (the first n entries of a uniformly
// random permutation of 1..255), so shares carry no order information.
//
// With m == 1 the polynomials are constants: every share is the secret itself
// followed by its x byte, and any single share recovers the secret.
//
// # Thresholds are not checked by Combine
//
// A share does not record the threshold m. [Combine] given fewer than m shares
// returns a wrong secret without any error: this is inherent in the scheme
// (fewer than m shares carry no information about the secret). Callers that
// need to detect it must authenticate the secret, as package record does with
// AES-GCM.
//
// # Concurrency
//
// [Split] and [Combine] keep no state and are safe for concurrent use. They
// do not retain or modify their arguments.
//
// # Errors
//
// Errors are the sentinels below, possibly wrapped with %w to add the
// parameter values; they never contain secret or share bytes.
package shamir

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
)

// MaxShares is the largest number of shares: the number of nonzero elements
// of GF(2^8).
const MaxShares = 255

var (
	// ErrInvalidParams reports thresholds outside 1 <= m <= n <= 255.
	ErrInvalidParams = errors.New("shamir: invalid parameters")
	// ErrEmptySecret reports an attempt to split an empty secret.
	ErrEmptySecret = errors.New("shamir: empty secret")
	// ErrNoShares reports a Combine call without any share.
	ErrNoShares = errors.New("shamir: no shares")
	// ErrShareLength reports shares that are too short (fewer than 2 bytes) or
	// not all of the same length.
	ErrShareLength = errors.New("shamir: invalid or mismatched share lengths")
	// ErrDuplicateShare reports two shares with the same x coordinate.
	ErrDuplicateShare = errors.New("shamir: duplicate share")
	// ErrInvalidShare reports a share whose x coordinate is zero (the
	// coordinate of the secret itself, never produced by Split).
	ErrInvalidShare = errors.New("shamir: invalid share")
	// ErrRandom reports a failure of the random source.
	ErrRandom = errors.New("shamir: random source failed")
)

// Split divides secret into n shares, any m of which recover it with
// [Combine]. It validates its arguments before reading any randomness:
// 1 <= m <= n <= 255 ([ErrInvalidParams]) and a non-empty secret
// ([ErrEmptySecret]). All randomness (coordinates and coefficients) comes from
// crypto/rand. The returned shares do not alias secret or each other; the
// random coefficients are cleared before Split returns (best effort: the Go
// runtime may have copied them).
func Split(secret []byte, n, m int) ([][]byte, error) {
	return split(rand.Reader, secret, n, m)
}

// split is Split with the random source as a parameter, for tests.
func split(rnd io.Reader, secret []byte, n, m int) ([][]byte, error) {
	if m < 1 || n < m || n > MaxShares {
		return nil, fmt.Errorf("%w: need 1 <= m <= n <= %d, have m=%d n=%d", ErrInvalidParams, MaxShares, m, n)
	}
	if len(secret) == 0 {
		return nil, ErrEmptySecret
	}
	xs, err := coordinates(rnd, n)
	if err != nil {
		return nil, err
	}

	// coeffs[i*(m-1)+d] is the coefficient of x^(d+1) of the polynomial
	// for secret byte i.
	deg := m - 1
	coeffs := make([]byte, len(secret)*deg)
	defer clear(coeffs)
	if _, err := io.ReadFull(rnd, coeffs); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRandom, err)
	}

	shares := make([][]byte, n)
	for s := range shares {
		x := xs[s]
		share := make([]byte, len(secret)+1)
		for i, c0 := range secret {
			cs := coeffs[i*deg : (i+1)*deg]
			// Horner: ((c_deg x + c_{deg-1}) x + ... + c_1) x + c0.
			var y byte
			for d := deg - 1; d >= 0; d-- {
				y = gfAdd(gfMul(y, x), cs[d])
			}
			share[i] = gfAdd(gfMul(y, x), c0)
		}
		share[len(secret)] = x
		shares[s] = share
	}
	return shares, nil
}

// coordinates returns the first n entries of a uniformly random permutation
// of 1..255 (a partial Fisher-Yates shuffle with rejection sampling).
func coordinates(rnd io.Reader, n int) ([]byte, error) {
	var all [MaxShares]byte
	for i := range all {
		all[i] = byte(i + 1)
	}
	var buf [64]byte
	pos := len(buf)
	for i := range n {
		k := MaxShares - i // choose uniformly among all[i:], k in 1..255
		limit := 256 - 256%k
		var r int
		for {
			if pos == len(buf) {
				if _, err := io.ReadFull(rnd, buf[:]); err != nil {
					return nil, fmt.Errorf("%w: %w", ErrRandom, err)
				}
				pos = 0
			}
			r = int(buf[pos])
			pos++
			if r < limit {
				break
			}
		}
		j := i + r%k
		all[i], all[j] = all[j], all[i]
	}
	xs := make([]byte, n)
	copy(xs, all[:n])
	return xs, nil
}

// Combine reconstructs a secret from shares made by [Split] by Lagrange
// interpolation at x = 0. It refuses an empty list ([ErrNoShares]), shares
// shorter than 2 bytes or of different lengths ([ErrShareLength]), a zero x
// coordinate ([ErrInvalidShare]) and two shares with the same x coordinate
// ([ErrDuplicateShare]).
//
// One share is accepted (it is the secret when m == 1). With fewer shares than
// the threshold used at Split, Combine silently returns a wrong value: see the
// package documentation. The caller owns the result and should clear it after
// use.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) == 0 {
		return nil, ErrNoShares
	}
	size := len(shares[0])
	if size < 2 {
		return nil, fmt.Errorf("%w: share length %d", ErrShareLength, size)
	}
	var seen [256]bool
	xs := make([]byte, len(shares))
	for i, s := range shares {
		if len(s) != size {
			return nil, fmt.Errorf("%w: share %d has length %d, share 0 has %d", ErrShareLength, i, len(s), size)
		}
		x := s[size-1] // public coordinate: branching on it leaks nothing
		if x == 0 {
			return nil, fmt.Errorf("%w: share %d has x coordinate 0", ErrInvalidShare, i)
		}
		if seen[x] {
			return nil, fmt.Errorf("%w: share %d", ErrDuplicateShare, i)
		}
		seen[x] = true
		xs[i] = x
	}

	secret := make([]byte, size-1)
	for i, s := range shares {
		// Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i).
		var num, den byte = 1, 1
		for j, xj := range xs {
			if j == i {
				continue
			}
			num = gfMul(num, xj)
			den = gfMul(den, gfAdd(xj, xs[i]))
		}
		li := gfMul(num, gfInv(den))
		for k := range secret {
			secret[k] = gfAdd(secret[k], gfMul(s[k], li))
		}
	}
	return secret, nil
}
