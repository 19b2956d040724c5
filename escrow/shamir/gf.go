package shamir

// Arithmetic in GF(2^8) modulo the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11b).
//
// Every function here runs in constant time with respect to its operands: no
// table is indexed by a value and no branch depends on one. Multiplication is
// a fixed eight-round shift-and-xor loop in which the conditional steps are
// applied through all-zeros / all-ones masks; inversion is exponentiation to
// the fixed public power 254 (a^254 = a^-1 for a != 0, and 0 for a == 0).

// gfAdd adds (and subtracts) two field elements.
func gfAdd(a, b byte) byte { return a ^ b }

// gfMul multiplies two field elements in constant time.
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= -(b & 1) & a             // add a when the low bit of b is set
		carry := -(a >> 7)            // 0xff when the top bit of a is set
		a = (a << 1) ^ (carry & 0x1b) // multiply a by x, reduce modulo 0x11b
		b >>= 1
	}
	return p
}

// gfInv returns the multiplicative inverse of a, computed as a^254 with a fixed
// sequence of squarings and multiplications. gfInv(0) is 0; callers never
// divide by zero because share x coordinates are checked to be nonzero and
// distinct before interpolation.
func gfInv(a byte) byte {
	// 254 = 0b11111110: a^254 = a^2 * a^4 * a^8 * a^16 * a^32 * a^64 * a^128.
	sq := gfMul(a, a) // a^2
	r := sq
	for range 6 {
		sq = gfMul(sq, sq) // a^4, a^8, ..., a^128
		r = gfMul(r, sq)
	}
	return r
}
