package ocsp

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// referenceResponse is the DER OCSPResponse of st with signature sig, written field by field
// with cryptobyte as the RFC 6960 ASN.1 reads: the encoding the prepared one of Sign must
// equal, byte for byte.
func referenceResponse(t *testing.T, r *Responder, st Status, sig []byte) (tbs, resp []byte) {
	t.Helper()
	var tb cryptobyte.Builder
	tb.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1OctetString(r.keyHash)
		})
		b.AddASN1GeneralizedTime(r.now().UTC().Truncate(time.Second))
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, h := range r.hashes {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					if err := addCertID(b, r.issuer.CertID(h, st.Serial)); err != nil {
						t.Fatal(err)
					}
					if st.Revoked {
						b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							b.AddASN1GeneralizedTime(st.RevokedAt.UTC().Truncate(time.Second))
							if st.Reason != 0 {
								b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
									b.AddASN1Enum(int64(st.Reason))
								})
							}
						})
					} else {
						b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(*cryptobyte.Builder) {})
					}
					b.AddASN1GeneralizedTime(st.ThisUpdate.UTC().Truncate(time.Second))
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
						b.AddASN1GeneralizedTime(st.NextUpdate.UTC().Truncate(time.Second))
					})
				})
			}
		})
	})
	tbs = tb.BytesOrPanic()
	var basic cryptobyte.Builder
	basic.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(r.sigAlg)
			if r.sigAlg.Equal(oidRSASHA256) {
				b.AddASN1NULL()
			}
		})
		b.AddASN1BitString(sig)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddBytes(r.cert.Raw) })
		})
	})
	var out cryptobyte.Builder
	out.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Enum(int64(Successful))
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidOCSPBasic)
				b.AddASN1OctetString(basic.BytesOrPanic())
			})
		})
	})
	return tbs, out.BytesOrPanic()
}

// TestSignEncoding: Sign's prepared encoding equals the field-by-field one for good and
// revoked statuses, serials of every shape (zero, high bit set, 20 octets, negative), one or
// two CertID hashes, and signature algorithms with (RSA) and without (Ed25519) parameters.
// Both keys sign deterministically, so whole responses compare.
func TestSignEncoding(t *testing.T) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	produced := time.Date(2026, 12, 1, 10, 0, 0, 999, time.FixedZone("x", 3600))
	this := produced.Add(-time.Minute)
	next := this.Add(7 * 24 * time.Hour)
	revokedAt := this.Add(-36*time.Hour + 500*time.Millisecond)
	big20, _ := new(big.Int).SetString("ff"+"0102030405060708090a0b0c0d0e0f10111213", 16)
	serials := []*big.Int{big.NewInt(0), big.NewInt(1), big.NewInt(0x80), big.NewInt(0x7fffffff), big20, big.NewInt(-129)}
	for _, key := range []crypto.Signer{edKey, rsaKey} {
		p := newPKI(t, key)
		for _, hashes := range [][]crypto.Hash{nil, {crypto.SHA256}} {
			r, err := NewResponder(p.ca, p.responder, p.respKey, hashes)
			if err != nil {
				t.Fatal(err)
			}
			r = r.WithClock(func() time.Time { return produced })
			for _, serial := range serials {
				for _, st := range []Status{
					{Serial: serial, ThisUpdate: this, NextUpdate: next},
					{Serial: serial, Revoked: true, RevokedAt: revokedAt, ThisUpdate: this, NextUpdate: next},
					{Serial: serial, Revoked: true, RevokedAt: revokedAt, Reason: 1, ThisUpdate: this, NextUpdate: next},
					{Serial: serial, Revoked: true, RevokedAt: revokedAt, Reason: 9, ThisUpdate: this, NextUpdate: next},
				} {
					got, err := r.Sign(st)
					if err != nil {
						t.Fatalf("%T, serial %v: %v", key, serial, err)
					}
					tbs, _ := referenceResponse(t, r, st, nil)
					digest := tbs
					if r.hash != 0 {
						h := r.hash.New()
						h.Write(tbs)
						digest = h.Sum(nil)
					}
					sig, err := key.Sign(rand.Reader, digest, r.opts)
					if err != nil {
						t.Fatal(err)
					}
					if _, want := referenceResponse(t, r, st, sig); !bytes.Equal(got, want) {
						t.Errorf("%T, %d hashes, serial %v, revoked %v reason %d:\n got %x\nwant %x",
							key, len(r.hashes), serial, st.Revoked, st.Reason, got, want)
					}
				}
			}
		}
	}
}

// TestSignRefusesYears: a time that GeneralizedTime cannot hold is refused, not encoded.
func TestSignRefusesYears(t *testing.T) {
	p := newPKI(t, nil)
	r, err := NewResponder(p.ca, p.responder, p.respKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	this := time.Now()
	for _, st := range []Status{
		{Serial: big.NewInt(1), ThisUpdate: this, NextUpdate: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Serial: big.NewInt(1), Revoked: true, RevokedAt: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), ThisUpdate: this, NextUpdate: this.Add(time.Hour)},
	} {
		if der, err := r.Sign(st); err == nil {
			t.Errorf("Sign(%+v) = %x, want an error", st, der)
		}
	}
}

// TestAppendGeneralizedTime: the digits written directly are AppendFormat's, in UTC, for
// times across the years a response can hold, and for a zone other than UTC.
func TestAppendGeneralizedTime(t *testing.T) {
	zone := time.FixedZone("east", 5*3600+30*60)
	times := []time.Time{
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(2026, 12, 6, 7, 8, 9, 0, zone),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for i := range 1000 {
		times = append(times, time.Unix(int64(i)*7_919_993_561%253_402_300_800, 0).In(zone))
	}
	for _, tm := range times {
		want := tm.UTC().AppendFormat([]byte{byte(cbasn1.GeneralizedTime), 15}, "20060102150405Z")
		if got := appendGeneralizedTime(nil, tm); !bytes.Equal(got, want) {
			t.Errorf("%v: %q, want %q", tm, got, want)
		}
	}
}
