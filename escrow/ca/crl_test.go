package ca

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

func crlRequest(number int64, entries ...CRLEntry) CRLRequest {
	return CRLRequest{Number: big.NewInt(number), ThisUpdate: t0, NextUpdate: t0.Add(7 * day), Entries: entries}
}

func TestIssueCRL(t *testing.T) {
	rsaKeys(t)
	for _, tc := range []struct {
		name string
		iss  *Issuer
	}{{"P-256", newIssuer(t, p256(t))}, {"RSA-2048", newIssuer(t, caRSA)}} {
		t.Run(tc.name, func(t *testing.T) {
			entries := []CRLEntry{
				{Serial: big.NewInt(0x1001), RevokedAt: t0.Add(-time.Hour), Reason: CRLReasonUnspecified},
				{Serial: big.NewInt(0x1002), RevokedAt: t0.Add(-2 * time.Hour), Reason: CRLReasonKeyCompromise},
				{Serial: big.NewInt(0x1003), RevokedAt: t0.Add(-3 * time.Hour), Reason: CRLReasonSuperseded},
				{Serial: big.NewInt(0x1004), RevokedAt: t0.Add(-4 * time.Hour), Reason: CRLReasonPrivilegeWithdrawn},
			}
			signed, err := tc.iss.IssueCRL(crlRequest(42, entries...))
			if err != nil {
				t.Fatalf("IssueCRL: %v", err)
			}
			if signed.Number.Int64() != 42 || !signed.ThisUpdate.Equal(t0) || !signed.NextUpdate.Equal(t0.Add(7*day)) || signed.Entries != len(entries) {
				t.Fatalf("SignedCRL %+v", signed)
			}
			// What a relying party reads: parse the DER, from scratch.
			got, err := x509.ParseRevocationList(signed.DER)
			if err != nil {
				t.Fatal(err)
			}
			if err := got.CheckSignatureFrom(tc.iss.Certificate()); err != nil {
				t.Fatalf("signature: %v", err)
			}
			if got.Number.Int64() != 42 || !got.ThisUpdate.Equal(t0) || !got.NextUpdate.Equal(t0.Add(7*day)) {
				t.Fatalf("number %v thisUpdate %v nextUpdate %v", got.Number, got.ThisUpdate, got.NextUpdate)
			}
			if !bytes.Equal(got.AuthorityKeyId, tc.iss.Certificate().SubjectKeyId) {
				t.Fatalf("AKI %x, want the CA's SKI %x", got.AuthorityKeyId, tc.iss.Certificate().SubjectKeyId)
			}
			if n := zlintSignedCRL(t, signed.DER); n < 15 {
				t.Errorf("only %d zlint CRL lints applied", n)
			}
			if !bytes.Equal(got.RawIssuer, tc.iss.Certificate().RawSubject) {
				t.Fatal("issuer is not the CA subject")
			}
			if len(got.RevokedCertificateEntries) != len(entries) {
				t.Fatalf("%d entries, want %d", len(got.RevokedCertificateEntries), len(entries))
			}
			for n, e := range got.RevokedCertificateEntries {
				want := entries[n]
				if e.SerialNumber.Cmp(want.Serial) != 0 || !e.RevocationTime.Equal(want.RevokedAt) || e.ReasonCode != want.Reason {
					t.Errorf("entry %d = %x %v %d, want %x %v %d", n, e.SerialNumber, e.RevocationTime, e.ReasonCode, want.Serial, want.RevokedAt, want.Reason)
				}
				var rc *struct{ critical bool }
				for _, x := range e.Extensions {
					if x.Id.Equal(oidReasonCode) {
						rc = &struct{ critical bool }{x.Critical}
					}
				}
				switch {
				case want.Reason == CRLReasonUnspecified && rc != nil:
					t.Errorf("entry %d: unspecified carries a reasonCode (BR §7.2.2: omit it)", n)
				case want.Reason != CRLReasonUnspecified && rc == nil:
					t.Errorf("entry %d: reason %d has no reasonCode", n, want.Reason)
				case rc != nil && rc.critical:
					t.Errorf("entry %d: reasonCode is critical", n)
				}
			}
		})
	}
}

func TestIssueCRLEmpty(t *testing.T) {
	iss := newIssuer(t, p256(t))
	signed, err := iss.IssueCRL(crlRequest(1))
	if err != nil {
		t.Fatalf("IssueCRL: %v", err)
	}
	rl, err := x509.ParseRevocationList(signed.DER)
	if err != nil {
		t.Fatal(err)
	}
	if len(rl.RevokedCertificateEntries) != 0 {
		t.Fatal("entries in an empty CRL")
	}
	// zlint's e_crl_empty_revoked_certificates: an empty list is left out, not written empty.
	zlintSignedCRL(t, signed.DER)
}

// zlintSignedCRL lints the CRL the CA key signed, with every zlint CRL lint (all sources), as
// an auditor running zlint on the published CRL would, and fails on a warning or worse. It
// returns how many lints applied, to show the gate is not vacuous.
func zlintSignedCRL(t *testing.T, der []byte) int {
	t.Helper()
	rl, err := zx509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	for name, r := range zlint.LintRevocationList(rl).Results {
		if r.Status >= lint.Warn {
			t.Errorf("zlint %s: %s %s", name, r.Status, r.Details)
		}
		if r.Status >= lint.Pass {
			applied++
		}
	}
	return applied
}

func TestIssueCRLLint(t *testing.T) {
	key := p256(t)
	base := newIssuer(t, key)
	cs := &countingSigner{Signer: key}
	iss, err := New(cs, base.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	iss = iss.WithClock(func() time.Time { return t0 })
	ok := CRLEntry{Serial: big.NewInt(7), RevokedAt: t0.Add(-time.Minute), Reason: CRLReasonKeyCompromise}
	huge := new(big.Int).Lsh(big.NewInt(1), 160)
	tests := []struct {
		name string
		mod  func(*CRLRequest)
	}{
		{"no number", func(r *CRLRequest) { r.Number = nil }},
		{"zero number", func(r *CRLRequest) { r.Number = big.NewInt(0) }},
		{"number over 20 octets", func(r *CRLRequest) { r.Number = huge }},
		{"no thisUpdate", func(r *CRLRequest) { r.ThisUpdate = time.Time{} }},
		{"thisUpdate in the future", func(r *CRLRequest) {
			r.ThisUpdate = t0.Add(time.Hour)
			r.NextUpdate = r.ThisUpdate.Add(day)
		}},
		{"nextUpdate before thisUpdate", func(r *CRLRequest) { r.NextUpdate = t0.Add(-time.Second) }},
		{"nextUpdate equal", func(r *CRLRequest) { r.NextUpdate = t0 }},
		{"nextUpdate over 10 days", func(r *CRLRequest) { r.NextUpdate = t0.Add(10*day + time.Second) }},
		{"certificateHold", func(r *CRLRequest) { r.Entries[0].Reason = 6 }},
		{"cACompromise", func(r *CRLRequest) { r.Entries[0].Reason = 2 }},
		{"removeFromCRL", func(r *CRLRequest) { r.Entries[0].Reason = 8 }},
		{"negative reason", func(r *CRLRequest) { r.Entries[0].Reason = -1 }},
		{"no serial", func(r *CRLRequest) { r.Entries[0].Serial = nil }},
		{"zero serial", func(r *CRLRequest) { r.Entries[0].Serial = big.NewInt(0) }},
		{"serial over 20 octets", func(r *CRLRequest) { r.Entries[0].Serial = huge }},
		{"serial of 20 octets with the high bit", func(r *CRLRequest) {
			r.Entries[0].Serial = new(big.Int).Sub(huge, big.NewInt(1)) // 21 octets in DER
		}},
		{"no revocation date", func(r *CRLRequest) { r.Entries[0].RevokedAt = time.Time{} }},
		{"revoked after thisUpdate", func(r *CRLRequest) { r.Entries[0].RevokedAt = t0.Add(time.Second) }},
		{"serial twice", func(r *CRLRequest) { r.Entries = append(r.Entries, r.Entries[0]) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := crlRequest(3, ok)
			req.Entries = append([]CRLEntry(nil), req.Entries...)
			tt.mod(&req)
			if _, err := iss.IssueCRL(req); !errors.Is(err, ErrLint) {
				t.Fatalf("IssueCRL = %v, want ErrLint", err)
			}
			if cs.n != 0 {
				t.Fatalf("the CA key signed %d times for a CRL that failed lint", cs.n)
			}
		})
	}
	// Exactly ten days is allowed (BR §4.9.7: "MUST NOT be greater than ten days").
	req := crlRequest(3, ok)
	req.NextUpdate = t0.Add(10 * day)
	if _, err := iss.IssueCRL(req); err != nil {
		t.Fatalf("nextUpdate at ten days: %v", err)
	}
}

func TestIssueCRLNotCRLSigner(t *testing.T) {
	key := p256(t)
	base := newIssuer(t, key)
	c := *base.Certificate()
	c.KeyUsage = x509.KeyUsageCertSign // no cRLSign
	iss, err := New(key, &c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iss.WithClock(func() time.Time { return t0 }).IssueCRL(crlRequest(1)); !errors.Is(err, ErrNotCA) {
		t.Fatalf("IssueCRL by a CA without cRLSign = %v, want ErrNotCA", err)
	}
}

func TestIssueCRLSelfCheck(t *testing.T) {
	key := p256(t)
	good := newIssuer(t, key)
	bad, err := New(badSigner{key}, good.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	failing, err := New(errSigner{key}, good.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return t0 }
	if _, err := bad.WithClock(clock).IssueCRL(crlRequest(1)); !errors.Is(err, ErrSelfCheck) {
		t.Fatalf("bad signature: %v, want ErrSelfCheck", err)
	}
	if _, err := failing.WithClock(clock).IssueCRL(crlRequest(1)); !errors.Is(err, errHSM) || errors.Is(err, ErrLint) {
		t.Fatalf("signer error: %v, want the signer's error", err)
	}
	signed, err := good.IssueCRL(crlRequest(9, CRLEntry{Serial: big.NewInt(0x77), RevokedAt: t0, Reason: 1}))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := x509.ParseRevocationList(signed.DER)
	if err != nil {
		t.Fatal(err)
	}
	tbs := rl.RawTBSRevocationList
	if err := good.selfCheckCRL(signed.DER, tbs); err != nil {
		t.Fatalf("selfCheckCRL(good) = %v", err)
	}
	// The entry's serial changed after linting; the signature's last byte changed; the DER
	// cut short; trailing bytes.
	tampered := bytes.Clone(signed.DER)
	i := bytes.Index(tampered, []byte{0x02, 0x01, 0x77})
	tampered[i+2] ^= 1
	badSig := bytes.Clone(signed.DER)
	badSig[len(badSig)-1] ^= 1
	for name, der := range map[string][]byte{"tampered entry": tampered, "bad signature": badSig,
		"truncated": signed.DER[:len(signed.DER)-3], "trailing": append(bytes.Clone(signed.DER), 0)} {
		if err := good.selfCheckCRL(der, tbs); !errors.Is(err, ErrSelfCheck) {
			t.Errorf("selfCheckCRL(%s) = %v, want ErrSelfCheck", name, err)
		}
	}
	// The tampered entry also fails against its own TBS: the signature does not cover it.
	trl, err := x509.ParseRevocationList(tampered)
	if err != nil {
		t.Fatal(err)
	}
	if err := good.selfCheckCRL(tampered, trl.RawTBSRevocationList); !errors.Is(err, ErrSelfCheck) {
		t.Errorf("selfCheckCRL(tampered, its TBS) = %v, want ErrSelfCheck", err)
	}
}

// TestIssueCRLOpenSSL has openssl read and verify the CRL: `openssl crl -verify` and the
// text form, which names the reasons as relying parties will see them.
func TestIssueCRLOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	iss := newIssuer(t, p256(t)).WithClock(time.Now)
	now := time.Now()
	signed, err := iss.IssueCRL(CRLRequest{Number: big.NewInt(5), ThisUpdate: now, NextUpdate: now.Add(7 * day), Entries: []CRLEntry{
		{Serial: big.NewInt(0xabc1), RevokedAt: now.Add(-time.Hour), Reason: CRLReasonKeyCompromise},
		{Serial: big.NewInt(0xabc2), RevokedAt: now.Add(-time.Hour)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crl, caf := filepath.Join(dir, "ca.crl"), filepath.Join(dir, "ca.der")
	if err := os.WriteFile(crl, signed.DER, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caf, iss.Certificate().Raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "x509", "-inform", "DER", "-in", caf, "-out", caf+".pem").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	out, err = exec.Command("openssl", "crl", "-inform", "DER", "-in", crl, "-noout", "-text", "-CAfile", caf+".pem").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"X509v3 CRL Number: \n                5", "Key Compromise", "ABC1", "ABC2"} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl crl -text lacks %q:\n%s", want, text)
		}
	}
	if strings.Count(text, "CRL Reason Code") != 1 {
		t.Errorf("want exactly one reasonCode (the unspecified entry has none):\n%s", text)
	}
}

// BenchmarkIssueCRLMillion lints, signs and self-checks a CRL of 1,000,000 entries (P-256
// software key): the CA side of the issue's "1,000,000 entries in under 15 s".
func BenchmarkIssueCRLMillion(b *testing.B) {
	iss := newIssuer(b, p256(b))
	entries := make([]CRLEntry, 1_000_000)
	for n := range entries {
		s := new(big.Int).Lsh(big.NewInt(int64(n)+1), 96)
		entries[n] = CRLEntry{Serial: s.Add(s, big.NewInt(0x5a5a5a5a)), RevokedAt: t0.Add(-time.Duration(n) * time.Second), Reason: []int{0, 1, 4, 5}[n%4]}
	}
	b.ResetTimer()
	for range b.N {
		signed, err := iss.IssueCRL(crlRequest(1, entries...))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(signed.DER))/1e6, "MB")
	}
}

// TestCRLEncodingIsCreateRevocationList holds the streaming encoder to crypto/x509: the
// to-be-signed part IssueCRL writes is byte for byte what x509.CreateRevocationList writes for
// the same CRL (entries with and without reasons, times before and after 2050, big serials
// and numbers), for each key type the Issuer signs with.
func TestCRLEncodingIsCreateRevocationList(t *testing.T) {
	rsaKeys(t)
	big20 := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 159), big.NewInt(1))
	serial := new(big.Int).Lsh(big.NewInt(0xff), 120)
	for _, key := range []crypto.Signer{p256(t), mustEC(t, elliptic.P384()), caRSA} {
		iss := newIssuer(t, key)
		for _, req := range []CRLRequest{
			crlRequest(1),
			{Number: big20, ThisUpdate: t0, NextUpdate: t0.Add(10 * day), Entries: []CRLEntry{
				{Serial: serial, RevokedAt: t0.Add(-time.Hour)},
				{Serial: big.NewInt(1), RevokedAt: time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC), Reason: CRLReasonCessationOfOperation},
				{Serial: big.NewInt(128), RevokedAt: t0.Add(-1500 * time.Millisecond), Reason: CRLReasonAffiliationChanged},
			}},
		} {
			tbs, err := iss.encodeTBSCertList(&req)
			if err != nil {
				t.Fatal(err)
			}
			tmpl := &x509.RevocationList{Number: req.Number, ThisUpdate: req.ThisUpdate, NextUpdate: req.NextUpdate, SignatureAlgorithm: iss.sigAlg}
			for _, e := range req.Entries {
				tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
					SerialNumber: e.Serial, RevocationTime: e.RevokedAt.Truncate(time.Second), ReasonCode: e.Reason})
			}
			der, err := x509.CreateRevocationList(rand.Reader, tmpl, iss.Certificate(), key)
			if err != nil {
				t.Fatal(err)
			}
			rl, err := x509.ParseRevocationList(der)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tbs, rl.RawTBSRevocationList) {
				t.Fatalf("%T: the encoder differs from x509.CreateRevocationList\n got %x\nwant %x", key, tbs, rl.RawTBSRevocationList)
			}
		}
	}
	// After 2049, GeneralizedTime, as RFC 5280 §5.1.2.4 asks.
	late := time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC)
	iss := newIssuer(t, p256(t)).WithClock(func() time.Time { return late })
	signed, err := iss.IssueCRL(CRLRequest{Number: big.NewInt(2), ThisUpdate: late, NextUpdate: late.Add(day)})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := x509.ParseRevocationList(signed.DER)
	if err != nil {
		t.Fatal(err)
	}
	if !rl.ThisUpdate.Equal(late) || !bytes.Contains(rl.RawTBSRevocationList, []byte("20510101000000Z")) {
		t.Fatalf("thisUpdate %v not written as GeneralizedTime", rl.ThisUpdate)
	}
}

// TestCRLRegistry pins what the pre-signing gate runs: the BR and RFC 5280 CRL lints, without
// the three whose properties keyarc holds itself.
func TestCRLRegistry(t *testing.T) {
	reg, err := crlRegistry()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, n := range reg.RevocationListLints().Names() {
		names[n] = true
	}
	for _, want := range []string{"e_crl_next_update_invalid", "e_cab_crl_reason_code_not_critical", "e_cab_crl_has_valid_reason_code",
		"e_crl_auth_key_id_only_contains_keyid", "e_crl_has_authority_key_identifier", "e_crl_missing_crl_number", "e_crl_has_next_update"} {
		if !names[want] {
			t.Errorf("the CRL gate lacks %s", want)
		}
	}
	for _, skipped := range crlLintsChecked {
		if names[skipped] {
			t.Errorf("the CRL gate runs %s, which it means to leave out", skipped)
		}
		if lint.GlobalRegistry().RevocationListLints().ByName(skipped) == nil {
			t.Errorf("%s is no zlint CRL lint: the exclusion is stale", skipped)
		}
	}
}

// TestIssueCRLLintedInSlices: a CRL larger than one lint slice is linted slice by slice and
// signed whole; every entry is on it.
func TestIssueCRLLintedInSlices(t *testing.T) {
	iss := newIssuer(t, p256(t))
	n := 2*crlLintChunk + 7
	entries := make([]CRLEntry, n)
	for i := range entries {
		entries[i] = CRLEntry{Serial: big.NewInt(int64(i) + 1000), RevokedAt: t0.Add(-time.Minute), Reason: []int{0, 1, 3, 4, 5, 9}[i%6]}
	}
	signed, err := iss.IssueCRL(crlRequest(11, entries...))
	if err != nil {
		t.Fatalf("IssueCRL: %v", err)
	}
	rl, err := x509.ParseRevocationList(signed.DER)
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.CheckSignatureFrom(iss.Certificate()); err != nil {
		t.Fatal(err)
	}
	if len(rl.RevokedCertificateEntries) != n || rl.RevokedCertificateEntries[n-1].SerialNumber.Int64() != int64(n-1)+1000 {
		t.Fatalf("%d entries, want %d", len(rl.RevokedCertificateEntries), n)
	}
}
