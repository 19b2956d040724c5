package cms

import (
	"errors"
	"fmt"
)

// normalize re-encodes a single BER element as DER lengths: indefinite
// lengths (as `openssl cms -stream` writes them) become definite ones. It is
// strict otherwise: definite lengths must be minimal, tags must be in
// low-tag-number form, primitive elements may not use the indefinite form,
// nesting is bounded by maxDepth and nothing may follow the element. It does
// not merge constructed string chunks; the parser handles the one place CMS
// has them (encryptedContent). For input that is already DER the output is
// identical to the input.
func normalize(in []byte) ([]byte, error) {
	out, rest, err := normElem(in, 0)
	if err == errEOC {
		return nil, malformed("unexpected end-of-contents marker")
	}
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes of trailing data after the ContentInfo", ErrMalformed, len(rest))
	}
	return out, nil
}

var errEOC = errors.New("end-of-contents")

// normElem reads one element from in and returns its normalised encoding and
// the remaining input. It returns errEOC (with rest after the marker) when it
// meets an end-of-contents marker.
func normElem(in []byte, depth int) (out, rest []byte, err error) {
	if depth > maxDepth {
		return nil, nil, fmt.Errorf("%w: ASN.1 nesting deeper than %d", ErrMalformed, maxDepth)
	}
	if len(in) < 2 {
		return nil, nil, fmt.Errorf("%w: truncated ASN.1 header", ErrMalformed)
	}
	tag, lb := in[0], in[1]
	if tag&0x1f == 0x1f {
		return nil, nil, fmt.Errorf("%w: high-tag-number form is not used by CMS", ErrMalformed)
	}
	constructed := tag&0x20 != 0
	if tag == 0 {
		if lb != 0 {
			return nil, nil, fmt.Errorf("%w: bad end-of-contents marker", ErrMalformed)
		}
		return nil, in[2:], errEOC
	}
	in = in[2:]
	if lb == 0x80 {
		if !constructed {
			return nil, nil, fmt.Errorf("%w: indefinite length on a primitive element", ErrMalformed)
		}
		var body []byte
		for {
			child, r, err := normElem(in, depth+1)
			if err == errEOC {
				in = r
				break
			}
			if err != nil {
				return nil, nil, err
			}
			body = append(body, child...)
			in = r
		}
		return appendElem(nil, tag, body), in, nil
	}
	length := int(lb)
	if lb > 0x80 {
		n := int(lb & 0x7f)
		if n > 3 { // 3 length bytes cover 16 MiB, far beyond MaxEnvelopeSize
			return nil, nil, fmt.Errorf("%w: ASN.1 length too large", ErrMalformed)
		}
		if len(in) < n {
			return nil, nil, fmt.Errorf("%w: truncated ASN.1 length", ErrMalformed)
		}
		length = 0
		for _, b := range in[:n] {
			length = length<<8 | int(b)
		}
		if in[0] == 0 || length < 0x80 {
			return nil, nil, fmt.Errorf("%w: non-minimal ASN.1 length", ErrMalformed)
		}
		in = in[n:]
	}
	if len(in) < length {
		return nil, nil, fmt.Errorf("%w: truncated: element wants %d bytes, %d left", ErrMalformed, length, len(in))
	}
	content, rest := in[:length], in[length:]
	if !constructed {
		return appendElem(nil, tag, content), rest, nil
	}
	var body []byte
	for len(content) > 0 {
		child, r, err := normElem(content, depth+1)
		if err == errEOC {
			return nil, nil, fmt.Errorf("%w: end-of-contents inside a definite-length element", ErrMalformed)
		}
		if err != nil {
			return nil, nil, err
		}
		body = append(body, child...)
		content = r
	}
	return appendElem(nil, tag, body), rest, nil
}

// appendElem appends tag, a minimal DER length and body to dst.
func appendElem(dst []byte, tag byte, body []byte) []byte {
	dst = append(dst, tag)
	switch n := len(body); {
	case n < 0x80:
		dst = append(dst, byte(n))
	case n < 0x100:
		dst = append(dst, 0x81, byte(n))
	case n < 0x10000:
		dst = append(dst, 0x82, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, body...)
}
