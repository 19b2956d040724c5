package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math"
	"math/big"
	"net"
	"slices"
	"time"

	"github.com/zmap/zcrypto/cryptobyte"
	cbasn1 "github.com/zmap/zcrypto/cryptobyte/asn1"
	zasn1 "github.com/zmap/zcrypto/encoding/asn1"
)

// The to-be-signed certificate is written once, by keyarc's own encoder, for the profile an
// Issuer signs: zlint parses those bytes (with a placeholder signature), the CA key signs their
// digest, and the Certificate is assembled around them in place. The encoding is
// x509.CreateCertificate's, byte for byte, for every request the Issuer accepts (a test holds
// them equal for the built-in templates, the service certificates keyarc issues, every
// subscriber and CA key type, and randomized requests): crypto/x509 can only encode a
// certificate by signing it, which before this cost a throwaway signature and its verification
// for the lint, and a second encoding and verification for the real one.

// Room around the TBS for the Certificate assembled in place ([assemble]): its header (tag
// and a length of up to 4 bytes) before, and the signature algorithm and the BIT STRING of a
// signature of up to RSA-4096 after.
const (
	certHeadroom = 6
	certTailroom = 544
)

var (
	oidExtSubjectKeyID  = zasn1.ObjectIdentifier{2, 5, 29, 14}
	oidExtKeyUsage      = zasn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtSAN           = zasn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtBasicCons     = zasn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtCRLDP         = zasn1.ObjectIdentifier{2, 5, 29, 31}
	oidExtPolicies      = zasn1.ObjectIdentifier{2, 5, 29, 32}
	oidExtExtKeyUsage   = zasn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtAIA           = zasn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 1}
	oidAccessOCSP       = zasn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1}
	oidAccessCAIssuers  = zasn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 2}
	emptyName           = []byte{0x30, 0x00}
	basicConstraintsEEv = []byte{0x30, 0x00} // cA FALSE and no pathLen, both DEFAULT: an empty SEQUENCE
)

// extKeyUsageOIDs are the OIDs of the extended key usages crypto/x509 names, as it writes them.
var extKeyUsageOIDs = map[x509.ExtKeyUsage]zasn1.ObjectIdentifier{
	x509.ExtKeyUsageAny:                            {2, 5, 29, 37, 0},
	x509.ExtKeyUsageServerAuth:                     {1, 3, 6, 1, 5, 5, 7, 3, 1},
	x509.ExtKeyUsageClientAuth:                     {1, 3, 6, 1, 5, 5, 7, 3, 2},
	x509.ExtKeyUsageCodeSigning:                    {1, 3, 6, 1, 5, 5, 7, 3, 3},
	x509.ExtKeyUsageEmailProtection:                {1, 3, 6, 1, 5, 5, 7, 3, 4},
	x509.ExtKeyUsageIPSECEndSystem:                 {1, 3, 6, 1, 5, 5, 7, 3, 5},
	x509.ExtKeyUsageIPSECTunnel:                    {1, 3, 6, 1, 5, 5, 7, 3, 6},
	x509.ExtKeyUsageIPSECUser:                      {1, 3, 6, 1, 5, 5, 7, 3, 7},
	x509.ExtKeyUsageTimeStamping:                   {1, 3, 6, 1, 5, 5, 7, 3, 8},
	x509.ExtKeyUsageOCSPSigning:                    {1, 3, 6, 1, 5, 5, 7, 3, 9},
	x509.ExtKeyUsageMicrosoftServerGatedCrypto:     {1, 3, 6, 1, 4, 1, 311, 10, 3, 3},
	x509.ExtKeyUsageNetscapeServerGatedCrypto:      {2, 16, 840, 1, 113730, 4, 1},
	x509.ExtKeyUsageMicrosoftCommercialCodeSigning: {1, 3, 6, 1, 4, 1, 311, 2, 1, 22},
	x509.ExtKeyUsageMicrosoftKernelCodeSigning:     {1, 3, 6, 1, 4, 1, 311, 61, 1, 1},
}

// certProfile is what the Issuer writes into every certificate, encoded once by [New]: the
// issuer name, the signature AlgorithmIdentifier and the hash signed, and the three extensions
// that are the same in every certificate (authority key identifier, authority information
// access, CRL distribution points), each a whole DER Extension.
type certProfile struct {
	issuer []byte
	algID  []byte
	hash   crypto.Hash
	aki    []byte
	aia    []byte
	crldp  []byte
}

// newCertProfile encodes the fixed parts of the Issuer's certificates. It runs after the
// options, which set the public URLs.
func (i *Issuer) newCertProfile() (certProfile, error) {
	var p certProfile
	var err error
	if p.algID, p.hash, err = sigAlgID(i.sigAlg); err != nil {
		return p, err
	}
	p.issuer = i.cert.RawSubject
	if len(p.issuer) == 0 {
		// A certificate built in memory rather than parsed: crypto/x509 marshals its Subject.
		if p.issuer, err = asn1.Marshal(i.cert.Subject.ToRDNSequence()); err != nil {
			return p, fmt.Errorf("ca: CA subject: %w", err)
		}
	}
	ext := func(oid zasn1.ObjectIdentifier, value func(*cryptobyte.Builder)) ([]byte, error) {
		var b cryptobyte.Builder
		addExtension(&b, oid, false, value)
		return b.Bytes()
	}
	if p.aki, err = ext(zasn1.ObjectIdentifier(oidAKI), func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(i.aki) })
		})
	}); err != nil {
		return p, fmt.Errorf("ca: encode authority key identifier: %w", err)
	}
	// AuthorityInfoAccessSyntax: OCSP first, then caIssuers, each an IA5String URI
	// ([6] IMPLICIT), as crypto/x509 orders them.
	if p.aia, err = ext(oidExtAIA, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, a := range []struct {
				oid zasn1.ObjectIdentifier
				url string
			}{{oidAccessOCSP, i.urls.OCSP}, {oidAccessCAIssuers, i.urls.CACert}} {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(a.oid)
					b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(a.url)) })
				})
			}
		})
	}); err != nil {
		return p, fmt.Errorf("ca: encode authority information access: %w", err)
	}
	// CRLDistributionPoints: one DistributionPoint whose distributionPoint [0] is a fullName
	// [0] of one URI [6].
	if p.crldp, err = ext(oidExtCRLDP, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(i.urls.CRL)) })
					})
				})
			})
		})
	}); err != nil {
		return p, fmt.Errorf("ca: encode CRL distribution points: %w", err)
	}
	return p, nil
}

// addExtension writes one Extension: its OID, critical only when true (the field is DEFAULT
// FALSE), and the value, written by value inside the OCTET STRING.
func addExtension(b *cryptobyte.Builder, oid zasn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// tbsFields are the values of one certificate that lint decided: everything else comes from
// the request as it is, or from the Issuer's certProfile.
type tbsFields struct {
	serial   *big.Int
	notAfter time.Time
	subject  []byte // DER Name
	spki     []byte // DER SubjectPublicKeyInfo
	ski      []byte
	policies []asn1.ObjectIdentifier
}

// encodeTBSCertificate writes the TBSCertificate (RFC 5280 §4.1) of req with the fields lint
// decided, after certHeadroom zero bytes, in a buffer with certTailroom spare capacity. The
// extensions are crypto/x509's, in its order: key usage (critical), extended key usage,
// basic constraints (critical, cA FALSE), subject key identifier, authority key identifier,
// authority information access, subject alternative names (critical when the subject is
// empty), certificate policies, CRL distribution points, then id-pkix-ocsp-nocheck.
//
// It fails with [ErrLint] for what crypto/x509 would refuse to encode: a DNS name or mailbox
// that is not an IA5String, an extended key usage it does not name; and for what it would
// encode but x509.ParseCertificate refuses, so that the self-check would fail after the CA key
// signed: an IP address neither 4 nor 16 bytes long, an extended key usage OID with an arc
// of 2^31 or more.
func (i *Issuer) encodeTBSCertificate(req *Request, f *tbsFields) ([]byte, error) {
	for _, ip := range req.IPAddresses {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, lintErr("IP address %v is %d bytes long, neither 4 nor 16", ip, len(ip))
		}
	}
	for _, s := range req.DNSNames {
		if !isIA5(s) {
			return nil, lintErr("DNS name %q is not an IA5String", s)
		}
	}
	for _, s := range req.EmailAddresses {
		if !isIA5(s) {
			return nil, lintErr("mailbox %q is not an IA5String", s)
		}
	}
	ekus := make([]zasn1.ObjectIdentifier, 0, len(req.ExtKeyUsage)+len(req.UnknownExtKeyUsage))
	for _, u := range req.ExtKeyUsage {
		oid, ok := extKeyUsageOIDs[u]
		if !ok {
			return nil, lintErr("unknown extended key usage %d", u)
		}
		ekus = append(ekus, oid)
	}
	for _, u := range req.UnknownExtKeyUsage {
		if !validOID(u) || slices.Max(u) > math.MaxInt32 {
			return nil, lintErr("extended key usage %v is not a valid OID with arcs below 2^31", u)
		}
		ekus = append(ekus, zasn1.ObjectIdentifier(u))
	}
	p := &i.profile
	b := cryptobyte.NewBuilder(make([]byte, certHeadroom, certHeadroom+768+len(f.subject)+len(f.spki)+certTailroom))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1Int64(2) }) // v3
		b.AddASN1BigInt(f.serial)
		b.AddBytes(p.algID)
		b.AddBytes(p.issuer)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, req.NotBefore)
			addTime(b, f.notAfter)
		})
		b.AddBytes(f.subject)
		b.AddBytes(f.spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				addExtension(b, oidExtKeyUsage, true, func(b *cryptobyte.Builder) { addKeyUsage(b, req.KeyUsage) })
				if len(ekus) > 0 {
					addExtension(b, oidExtExtKeyUsage, false, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							for _, oid := range ekus {
								b.AddASN1ObjectIdentifier(oid)
							}
						})
					})
				}
				addExtension(b, oidExtBasicCons, true, func(b *cryptobyte.Builder) { b.AddBytes(basicConstraintsEEv) })
				addExtension(b, oidExtSubjectKeyID, false, func(b *cryptobyte.Builder) { b.AddASN1OctetString(f.ski) })
				b.AddBytes(p.aki)
				b.AddBytes(p.aia)
				if len(req.DNSNames)+len(req.EmailAddresses)+len(req.IPAddresses) > 0 {
					// RFC 5280 §4.2.1.6: critical when the subject is an empty sequence.
					addExtension(b, oidExtSAN, bytes.Equal(f.subject, emptyName), func(b *cryptobyte.Builder) { addSANs(b, req) })
				}
				if len(f.policies) > 0 {
					addExtension(b, oidExtPolicies, false, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							for _, oid := range f.policies {
								b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
									b.AddASN1ObjectIdentifier(zasn1.ObjectIdentifier(oid))
								})
							}
						})
					})
				}
				b.AddBytes(p.crldp)
				if req.OCSPNoCheck {
					addExtension(b, zasn1.ObjectIdentifier(oidOCSPNoCheck), false, func(b *cryptobyte.Builder) { b.AddASN1NULL() })
				}
			})
		})
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("%w: encode the to-be-signed certificate: %w", ErrLint, err)
	}
	// Many or long names can outgrow the estimate above; assemble needs the tailroom.
	return slices.Grow(der, certTailroom), nil
}

// addKeyUsage writes ku as the KeyUsage BIT STRING: bit n of ku is named bit n, and trailing
// zero bits are left out (DER).
func addKeyUsage(b *cryptobyte.Builder, ku x509.KeyUsage) {
	bits := [2]byte{reverseBits(byte(ku)), reverseBits(byte(ku >> 8))}
	n := 1
	if bits[1] != 0 {
		n = 2
	}
	var unused byte // the trailing zero bits of the last byte (none for a zero ku, which lint refuses)
	for last := bits[n-1]; last != 0 && last&(1<<unused) == 0; {
		unused++
	}
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(unused)
		b.AddBytes(bits[:n])
	})
}

func reverseBits(b byte) byte {
	var r byte
	for n := 0; n < 8; n++ {
		r = r<<1 | b&1
		b >>= 1
	}
	return r
}

// addSANs writes the GeneralNames of req as crypto/x509 orders them: DNS names [2], mailboxes
// [1], IP addresses [7] (an IPv4 address in 4 bytes).
func addSANs(b *cryptobyte.Builder, req *Request) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, s := range req.DNSNames {
			b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(s)) })
		}
		for _, s := range req.EmailAddresses {
			b.AddASN1(cbasn1.Tag(1).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(s)) })
		}
		for _, ip := range req.IPAddresses {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
		}
	})
}

// isIA5 reports whether s is ASCII, as an IA5String must be.
func isIA5(s string) bool {
	for n := 0; n < len(s); n++ {
		if s[n] >= 0x80 {
			return false
		}
	}
	return true
}

// validOID reports whether o can be DER-encoded: two arcs at least, the first 0, 1 or 2, the
// second below 40 under 0 and 1, none negative (x509.OIDFromInts's rule).
func validOID(o asn1.ObjectIdentifier) bool {
	if len(o) < 2 || o[0] > 2 || o[0] < 2 && o[1] >= 40 {
		return false
	}
	for _, a := range o {
		if a < 0 {
			return false
		}
	}
	return true
}

// subjectPublicKeyInfo returns the DER SubjectPublicKeyInfo of pub, as crypto/x509 writes it,
// and its key identifier: the leftmost 160 bits of the SHA-256 of the subjectPublicKey BIT
// STRING (RFC 7093 section 2, method 1), computed without SHA-1.
func subjectPublicKeyInfo(pub crypto.PublicKey) (spki, keyID []byte, err error) {
	switch pub.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, nil, fmt.Errorf("%w: public key of type %T", ErrUnsupportedKey, pub)
	}
	if spki, err = x509.MarshalPKIXPublicKey(pub); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	in := cryptobyte.String(spki)
	var seq cryptobyte.String
	var bits zasn1.BitString
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.SkipASN1(cbasn1.SEQUENCE) || !seq.ReadASN1BitString(&bits) {
		return nil, nil, fmt.Errorf("ca: parse public key: malformed SubjectPublicKeyInfo")
	}
	h := sha256.Sum256(bits.Bytes)
	return spki, h[:20], nil
}

// placeholderSignature returns a signature value of the shape the CA key makes, for zlint to
// read in place of a real one (zlint verifies no signature): for ECDSA the longest DER
// ECDSA-Sig-Value of the curve (r = s = n-1), for RSA n-1 in the modulus length, for Ed25519
// 64 bytes. A lint that tells the curve from the signature's length (CRLs) sees the right one.
func placeholderSignature(pub crypto.PublicKey) ([]byte, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		nm1 := new(big.Int).Sub(k.Curve.Params().N, big.NewInt(1))
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1BigInt(nm1)
			b.AddASN1BigInt(nm1)
		})
		return b.Bytes()
	case *rsa.PublicKey:
		nm1 := new(big.Int).Sub(k.N, big.NewInt(1))
		return nm1.FillBytes(make([]byte, k.Size())), nil
	case ed25519.PublicKey:
		sig := make([]byte, ed25519.SignatureSize)
		for n := range sig {
			sig[n] = 0x5a
		}
		return sig, nil
	}
	return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}
