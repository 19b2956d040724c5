package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zmap/zcrypto/cryptobyte"
	cbasn1 "github.com/zmap/zcrypto/cryptobyte/asn1"
	zasn1 "github.com/zmap/zcrypto/encoding/asn1"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// CRL profile limits.
const (
	// MaxCRLValidity is the longest time from thisUpdate to nextUpdate: the S/MIME Baseline
	// Requirements (§4.9.7) put nextUpdate at most ten days after thisUpdate.
	MaxCRLValidity = 10 * 24 * time.Hour
)

// CRL reason codes (RFC 5280 §5.3.1) that a CRL of subscriber certificates may carry under the
// S/MIME Baseline Requirements (§7.2.2): unspecified (written as no reasonCode at all),
// keyCompromise, affiliationChanged, superseded, cessationOfOperation and privilegeWithdrawn.
// certificateHold (6) is never written: a revocation by keyarc is final.
const (
	CRLReasonUnspecified          = 0
	CRLReasonKeyCompromise        = 1
	CRLReasonAffiliationChanged   = 3
	CRLReasonSuperseded           = 4
	CRLReasonCessationOfOperation = 5
	CRLReasonPrivilegeWithdrawn   = 9
)

// SMIMECRLReason reports whether reason may appear on a CRL of S/MIME subscriber certificates
// (BR §7.2.2): one of the CRLReason* constants above.
func SMIMECRLReason(reason int) bool {
	switch reason {
	case CRLReasonUnspecified, CRLReasonKeyCompromise, CRLReasonAffiliationChanged, CRLReasonSuperseded,
		CRLReasonCessationOfOperation, CRLReasonPrivilegeWithdrawn:
		return true
	}
	return false
}

// CRLEntry is one revoked certificate on a CRL.
type CRLEntry struct {
	Serial    *big.Int
	RevokedAt time.Time // the revocationDate
	// Reason is the CRLReason; [CRLReasonUnspecified] writes no reasonCode extension, any
	// other one a non-critical reasonCode (BR §7.2.2).
	Reason int
}

// CRLRequest is what IssueCRL needs to make one CRL. The caller (the CRL publisher in escrow)
// owns the CRL number sequence and the clock.
type CRLRequest struct {
	// Number is the cRLNumber: positive, at most 20 octets (RFC 5280 §5.2.3), and higher
	// than every number the CA issued before (the caller's job: the store's sequence).
	Number *big.Int
	// ThisUpdate is the issue date; NextUpdate the date by which the next CRL will be issued,
	// after ThisUpdate and at most [MaxCRLValidity] later.
	ThisUpdate time.Time
	NextUpdate time.Time
	// Entries are the revoked certificates, at most one per serial. Their slice is read,
	// never kept nor modified.
	Entries []CRLEntry
}

// IssueCRL lints req, encodes the CRL, has zlint lint it with a placeholder signature (a CRL of
// more than 50,000 entries in slices of its entries under its header, see crlLintChunk), signs
// the to-be-signed bytes with the CA key, and verifies the signature with the CA certificate's
// public key. The CRL is a v2 CRL with the CA's subject as
// issuer, the authority key identifier of the certificates the Issuer signs, the cRLNumber
// req.Number, and one entry per req.Entries, in their order, with a non-critical reasonCode
// unless the reason is unspecified (BR §7.2.2).
//
// The encoding is x509.CreateRevocationList's, byte for byte (a test holds them equal), written
// by a streaming encoder of its own: crypto/x509 builds a CRL through reflection, which for a
// million entries costs seconds twice (the lint's copy and the real one), and the S/MIME BR
// leave a CRL of every revoked, unexpired certificate in one document. zlint's sources for
// CRLs are RFC5280, CABF_BR and Community: zlint has no S/MIME BR lints for CRLs, and the TLS
// Baseline Requirements' CRL profile it checks (reason codes, non-critical reasonCode,
// nextUpdate within ten days, an AKI with keyIdentifier only) is the S/MIME one.
//
// # Errors
//
// [ErrLint] (nothing was signed) when the request breaks the profile: no or a non-positive
// number or one over 20 octets, a zero ThisUpdate or one more than a minute ahead of the
// clock, a NextUpdate not after ThisUpdate or more than [MaxCRLValidity] after it, an entry
// without a serial, with a zero revocation date or one after ThisUpdate, with a reason that
// [SMIMECRLReason] refuses, or a serial listed twice; a *[LintError] (which matches ErrLint)
// when zlint warns or errs. [ErrNotCA] when the CA certificate has a key usage without
// cRLSign. [ErrSelfCheck] when the signature the signer returned does not verify. Anything
// else is an error of the signer (an HSM error, for example), wrapped.
func (i *Issuer) IssueCRL(req CRLRequest) (*SignedCRL, error) {
	if i.cert.KeyUsage != 0 && i.cert.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("%w: %s lacks cRLSign", ErrNotCA, i.cert.Subject)
	}
	if err := i.lintCRL(&req); err != nil {
		return nil, err
	}
	// The TBS is written after room for the CertificateList's header and before room for the
	// signature, and the CRL is assembled around it in place: a CRL of a million entries is
	// one buffer of 45 MB, not two.
	buf, err := i.encodeTBS(&req, crlHeadroom, crlTailroom)
	if err != nil {
		return nil, err
	}
	tbs := buf[crlHeadroom:]
	if err := i.zlintCRL(&req, tbs); err != nil {
		return nil, err
	}
	sig, err := signTBS(i.signer, i.sigAlg, tbs)
	if err != nil {
		return nil, fmt.Errorf("ca: sign CRL: %w", err)
	}
	der, err := assemble(buf, crlHeadroom, i.profile.algID, sig)
	if err != nil {
		return nil, err
	}
	if err := i.selfCheckCRL(der, tbs); err != nil {
		return nil, err
	}
	return &SignedCRL{DER: der, Number: new(big.Int).Set(req.Number), ThisUpdate: req.ThisUpdate.UTC().Truncate(time.Second),
		NextUpdate: req.NextUpdate.UTC().Truncate(time.Second), Entries: len(req.Entries)}, nil
}

// SignedCRL is a CRL signed by [Issuer.IssueCRL].
type SignedCRL struct {
	DER    []byte // the CertificateList, as served
	Number *big.Int
	// ThisUpdate and NextUpdate are the dates as signed (UTC, whole seconds).
	ThisUpdate time.Time
	NextUpdate time.Time
	Entries    int
}

// lintCRL checks req against the CRL profile.
func (i *Issuer) lintCRL(req *CRLRequest) error {
	if req.Number == nil || req.Number.Sign() <= 0 {
		return lintErr("the CRL number must be positive")
	}
	if b := req.Number.Bytes(); len(b) > 20 || len(b) == 20 && b[0]&0x80 != 0 {
		return lintErr("the CRL number exceeds 20 octets")
	}
	if req.ThisUpdate.IsZero() {
		return lintErr("ThisUpdate is not set")
	}
	if now := i.now(); req.ThisUpdate.After(now.Add(MaxClockSkew)) {
		return lintErr("ThisUpdate %s is more than %v in the future", req.ThisUpdate.UTC().Format(time.RFC3339), MaxClockSkew)
	}
	if !req.NextUpdate.After(req.ThisUpdate) {
		return lintErr("NextUpdate must be after ThisUpdate")
	}
	if d := req.NextUpdate.Sub(req.ThisUpdate); d > MaxCRLValidity {
		return lintErr("NextUpdate is %v after ThisUpdate, more than the %v the S/MIME BR allow", d, MaxCRLValidity)
	}
	this := req.ThisUpdate.UTC().Truncate(time.Second)
	// Serials as fixed-size keys: a map without pointers, which the collector does not scan
	// (a million string keys would be a million objects to mark, on every cycle).
	seen := make(map[[20]byte]struct{}, len(req.Entries))
	for n, e := range req.Entries {
		if e.Serial == nil || e.Serial.Sign() <= 0 {
			return lintErr("entry %d has no positive serial", n)
		}
		if b := e.Serial.Bytes(); len(b) > 20 || len(b) == 20 && b[0]&0x80 != 0 {
			return lintErr("serial %x exceeds 20 octets (RFC 5280 §4.1.2.2)", e.Serial)
		}
		if e.RevokedAt.IsZero() {
			return lintErr("serial %x has no revocation date", e.Serial)
		}
		if e.RevokedAt.UTC().Truncate(time.Second).After(this) {
			return lintErr("serial %x is revoked at %s, after ThisUpdate", e.Serial, e.RevokedAt.UTC().Format(time.RFC3339))
		}
		if !SMIMECRLReason(e.Reason) {
			return lintErr("serial %x has reason %d, outside the S/MIME BR set (0, 1, 3, 4, 5, 9)", e.Serial, e.Reason)
		}
		var k [20]byte
		e.Serial.FillBytes(k[:])
		if _, dup := seen[k]; dup {
			return lintErr("serial %x is listed twice", e.Serial)
		}
		seen[k] = struct{}{}
	}
	return nil
}

var (
	oidAKI        = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidCRLNumber  = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidReasonCode = asn1.ObjectIdentifier{2, 5, 29, 21}
)

// sigAlgID returns the DER AlgorithmIdentifier crypto/x509 writes for alg, and the hash
// signed (0 for Ed25519, which signs the message itself).
func sigAlgID(alg x509.SignatureAlgorithm) ([]byte, crypto.Hash, error) {
	var oid asn1.ObjectIdentifier
	var h crypto.Hash
	null := false
	switch alg {
	case x509.ECDSAWithSHA256:
		oid, h = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}, crypto.SHA256
	case x509.ECDSAWithSHA384:
		oid, h = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}, crypto.SHA384
	case x509.ECDSAWithSHA512:
		oid, h = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}, crypto.SHA512
	case x509.SHA256WithRSA:
		oid, h, null = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, crypto.SHA256, true
	case x509.PureEd25519:
		oid = asn1.ObjectIdentifier{1, 3, 101, 112}
	default:
		return nil, 0, fmt.Errorf("%w: signature algorithm %v", ErrUnsupportedKey, alg)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(zasn1.ObjectIdentifier(oid))
		if null {
			b.AddASN1NULL()
		}
	})
	der, err := b.Bytes()
	return der, h, err
}

// addTime writes t as RFC 5280 §4.1.2.5 (and crypto/x509) do: UTCTime through 2049,
// GeneralizedTime from 2050, in UTC with seconds.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1(cbasn1.UTCTime, func(b *cryptobyte.Builder) { b.AddBytes([]byte(t.Format("060102150405Z0700"))) })
		return
	}
	b.AddASN1GeneralizedTime(t)
}

// Room around the TBS for the CertificateList assembled in place (assemble): its header
// (tag and a length of up to 4 bytes), and the signature algorithm and BIT STRING.
const (
	crlHeadroom = 6
	crlTailroom = 640
)

// encodeTBSCertList writes the TBSCertList of a linted request (RFC 5280 §5.1), as
// x509.CreateRevocationList would for the CA certificate.
func (i *Issuer) encodeTBSCertList(req *CRLRequest) ([]byte, error) { return i.encodeTBS(req, 0, 0) }

// encodeTBS is encodeTBSCertList after headroom zero bytes, in a buffer with tailroom spare
// capacity.
func (i *Issuer) encodeTBS(req *CRLRequest, headroom, tailroom int) ([]byte, error) {
	algID, _, err := sigAlgID(i.sigAlg)
	if err != nil {
		return nil, err
	}
	this, next := req.ThisUpdate.UTC().Truncate(time.Second), req.NextUpdate.UTC().Truncate(time.Second)
	b := cryptobyte.NewBuilder(make([]byte, headroom, headroom+256+len(req.Entries)*48+tailroom))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(1) // v2
		b.AddBytes(algID)
		b.AddBytes(i.cert.RawSubject)
		addTime(b, this)
		addTime(b, next)
		if len(req.Entries) > 0 {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, e := range req.Entries {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1BigInt(e.Serial)
						addTime(b, e.RevokedAt.Truncate(time.Second))
						if e.Reason == CRLReasonUnspecified {
							return // BR §7.2.2: no reasonCode for unspecified
						}
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
								b.AddASN1ObjectIdentifier(zasn1.ObjectIdentifier(oidReasonCode))
								// critical is DEFAULT FALSE: left out, so non-critical.
								b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) { b.AddASN1Enum(int64(e.Reason)) })
							})
						})
					})
				}
			})
		}
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(zasn1.ObjectIdentifier(oidAKI))
					b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(i.aki) })
						})
					})
				})
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(zasn1.ObjectIdentifier(oidCRLNumber))
					b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) { b.AddASN1BigInt(req.Number) })
				})
			})
		})
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode CRL: %w", err)
	}
	return der, nil
}

// signTBS signs tbs (a TBSCertificate or TBSCertList) with signer for alg: its digest, or for
// Ed25519 tbs itself.
func signTBS(signer crypto.Signer, alg x509.SignatureAlgorithm, tbs []byte) ([]byte, error) {
	_, h, err := sigAlgID(alg)
	if err != nil {
		return nil, err
	}
	msg := tbs
	if h != 0 {
		d := h.New()
		d.Write(tbs)
		msg = d.Sum(nil)
	}
	return signer.Sign(rand.Reader, msg, h)
}

// appendDERLength appends the DER encoding of a length.
func appendDERLength(b []byte, n int) []byte {
	if n < 0x80 {
		return append(b, byte(n))
	}
	var l []byte
	for ; n > 0; n >>= 8 {
		l = append([]byte{byte(n)}, l...)
	}
	return append(append(b, 0x80|byte(len(l))), l...)
}

// assemble turns buf, headroom bytes then a TBS, into the signed Certificate or
// CertificateList (both SEQUENCE { tbs, signatureAlgorithm, signatureValue BIT STRING }) in
// place: the header goes into the headroom, the signature algorithm algID and the signature
// after the TBS, in buf's spare capacity if it has enough. It returns the signed object, a
// subslice of buf (or of a larger copy). Called again on the same buf, it overwrites the
// header and tail of the first call.
func assemble(buf []byte, headroom int, algID, sig []byte) ([]byte, error) {
	tail := appendDERLength(append(algID[:len(algID):len(algID)], 0x03), len(sig)+1)
	tail = append(append(tail, 0x00), sig...) // BIT STRING, no unused bits
	header := appendDERLength([]byte{0x30}, len(buf)-headroom+len(tail))
	if len(header) > headroom {
		return nil, fmt.Errorf("ca: assemble: %d bytes of header room, %d needed", headroom, len(header))
	}
	start := headroom - len(header)
	copy(buf[start:], header)
	return append(buf, tail...)[start:], nil
}

// certificateList assembles the signed CRL: CertificateList ::= SEQUENCE { tbsCertList,
// signatureAlgorithm, signatureValue BIT STRING }.
func certificateList(tbs []byte, alg x509.SignatureAlgorithm, sig []byte) ([]byte, error) {
	algID, _, err := sigAlgID(alg)
	if err != nil {
		return nil, err
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(sig)+32))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(algID)
		b.AddASN1BitString(sig)
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode CRL: %w", err)
	}
	return der, nil
}

// crlLints is the zlint registry CRLs are linted with, filtered once per process (the global
// registry it comes from is the process's too).
var crlLints struct {
	once sync.Once
	reg  lint.Registry
	err  error
}

// crlLintsChecked are the zlint CRL lints the gate leaves out because keyarc guarantees what
// they check by construction or checks it itself, and each one re-reads every entry of the CRL
// (together five of the seven seconds zlint spends on a CRL of a million entries):
// e_crl_unique_revoked_certificate (lintCRL refuses a serial listed twice),
// e_crl_empty_revoked_certificates (the encoder leaves an empty list out) and
// e_crl_empty_extn_sequence (the encoder writes no empty extension sequence). The tests lint
// signed CRLs with every zlint lint, these included.
var crlLintsChecked = []string{"e_crl_unique_revoked_certificate", "e_crl_empty_revoked_certificates", "e_crl_empty_extn_sequence"}

// crlRegistry filters the zlint registry CRLs are linted with.
func crlRegistry() (lint.Registry, error) {
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{lint.RFC5280, lint.CABFBaselineRequirements, lint.Community},
		ExcludeNames:   crlLintsChecked,
	})
	if err != nil {
		return nil, fmt.Errorf("ca: zlint CRL registry: %w", err)
	}
	return reg, nil
}

// crlLintChunk is the most entries zlint reads at once. zlint parses a whole CRL into
// objects of a few hundred bytes per entry: a CRL of a million entries at once would take
// hundreds of megabytes, far past the appliance's soft memory limit, and the collector's time
// with it. A larger CRL is linted as CRLs of the same header (number, dates, issuer,
// extensions) holding consecutive slices of its entries, each encoded by the same encoder:
// every lint sees every entry and the header, and the lint that needs all entries at once
// (unique serials) is lintCRL's own.
const crlLintChunk = 50_000

// zlintCRL lints the CRL of req, whose encoding is tbs, with the placeholder signature, and
// refuses it if zlint warns or errs.
func (i *Issuer) zlintCRL(req *CRLRequest, tbs []byte) error {
	if i.noZlint {
		return nil
	}
	z := i.z
	if err := z.init(); err != nil {
		return err
	}
	crlLints.once.Do(func() { crlLints.reg, crlLints.err = crlRegistry() })
	if crlLints.err != nil {
		return crlLints.err
	}
	seen := map[string]bool{}
	var f []Finding
	for from := 0; from == 0 || from < len(req.Entries); from += crlLintChunk {
		part := tbs
		if len(req.Entries) > crlLintChunk {
			r := *req
			r.Entries = req.Entries[from:min(from+crlLintChunk, len(req.Entries))]
			var err error
			if part, err = i.encodeTBSCertList(&r); err != nil {
				return err
			}
		}
		der, err := certificateList(part, i.sigAlg, z.placeholder)
		if err != nil {
			return err
		}
		rl, err := zx509.ParseRevocationList(der)
		if err != nil {
			return fmt.Errorf("%w: zlint cannot parse the to-be-signed CRL: %w", ErrLint, err)
		}
		for _, x := range findings(zlint.LintRevocationListEx(rl, crlLints.reg)) {
			if !seen[x.Lint] {
				seen[x.Lint] = true
				f = append(f, x)
			}
		}
	}
	if len(f) == 0 {
		return nil
	}
	slices.SortFunc(f, func(a, b Finding) int { return strings.Compare(a.Lint, b.Lint) })
	if i.onLint != nil {
		for _, x := range f {
			i.onLint(x.Lint)
		}
	}
	return &LintError{Findings: f}
}

// selfCheckCRL verifies that der is the CertificateList of tbs, the bytes zlint passed, with
// a signature by the CA key over them. It does not parse the entries again: zlint's parser
// read the very same TBS bytes before signing (and a test holds the encoder to
// x509.CreateRevocationList byte for byte); a second full parse would double the time and
// memory of a CRL of a million entries for nothing the signature check does not cover.
func (i *Issuer) selfCheckCRL(der, tbs []byte) error {
	in := cryptobyte.String(der)
	var list, gotTBS, alg cryptobyte.String
	var sig zasn1.BitString
	if !in.ReadASN1(&list, cbasn1.SEQUENCE) || !in.Empty() ||
		!list.ReadASN1Element(&gotTBS, cbasn1.SEQUENCE) || !list.ReadASN1Element(&alg, cbasn1.SEQUENCE) ||
		!list.ReadASN1BitString(&sig) || !list.Empty() {
		return fmt.Errorf("%w: the CRL is not a DER CertificateList", ErrSelfCheck)
	}
	if !bytes.Equal(gotTBS, tbs) {
		return fmt.Errorf("%w: the signed CRL is not the one linted", ErrSelfCheck)
	}
	if wantAlg, _, err := sigAlgID(i.sigAlg); err != nil || !bytes.Equal(alg, wantAlg) {
		return fmt.Errorf("%w: CRL signature algorithm", ErrSelfCheck)
	}
	if sig.BitLength%8 != 0 {
		return fmt.Errorf("%w: CRL signature is not whole bytes", ErrSelfCheck)
	}
	if err := i.cert.CheckSignature(i.sigAlg, tbs, sig.Bytes); err != nil {
		return fmt.Errorf("%w: %w", ErrSelfCheck, err)
	}
	return nil
}
