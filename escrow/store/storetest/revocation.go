package storetest

import (
	"context"
	"github.com/keyarc/keyarc/escrow/store"

	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// Revocation, key identities, CRLs and OCSP responses.
var revocationTests = []test{
	{"Revoke", testRevoke},
	{"KeyCompromise", testKeyCompromise},
	{"CertificatesByKey", testCertificatesByKey},
	{"CompromisedKeys", testCompromisedKeys},
	{"RevokedCertificates", testRevokedCertificates},
	{"RevokedCertificatesStop", testRevokedCertificatesStop},
	{"CRLNumbers", testCRLNumbers},
	{"OCSPLookups", testOCSPLookups},
	{"OCSPDue", testOCSPDue},
	{"OCSPDueStoredRevoked", testOCSPDueStoredRevoked},
	{"OCSPDuePages", testOCSPDuePages},
	{"OCSPDueLifecycle", testOCSPDueLifecycle},
	{"OCSPDueInFlight", testOCSPDueInFlight},
	{"OCSPDueMany", testOCSPDueMany},
	{"Indexed", testIndexed},
	{"IndexNewCertificates", testIndexNewCertificates},
	{"OCSPStatusOverClock", testOCSPStatusOverClock},
	{"ForeignCertificates", testForeignCertificates},
}

// issued returns an issued certificate of serial with a fake DER, valid from t0 to notAfter.
func issued(serial string, notAfter time.Time) store.Certificate {
	c := cert(serial)
	c.State, c.DER, c.NotBefore, c.NotAfter = store.StateIssued, []byte{0x30, 0x03, 0x02, 0x01, 0x01}, t0, notAfter
	return c
}

// realCert returns the DER of a certificate of key k (signed by k itself) and k's key
// identity, computed here from what crypto/x509 parses.
func realCert(t *testing.T, k *ecdsa.PrivateKey, serial int64) (der []byte, keyID string) {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "test"},
		NotBefore: t0, NotAfter: t0.AddDate(1, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return der, hex.EncodeToString(sum[:])
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testRevoke: only an issued certificate is revoked, with a reason of the S/MIME BR set; the
// reason and date are stored, and a refused revocation changes nothing.
func testRevoke(t *testing.T, h *Harness) {
	s := h.Open(t)
	na := t0.AddDate(1, 0, 0)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificates([]store.Certificate{issued("a", na), issued("b", na), cert("c0"), cert("f0")}); err != nil {
			return err
		}
		return tx.FailCertificate("f0")
	})
	at := t0.Add(time.Hour)
	for _, tc := range []struct {
		name    string
		serial  string
		reason  int
		at      time.Time
		wantErr error
	}{
		{name: "unknown serial", serial: "ff", reason: store.ReasonSuperseded, at: at, wantErr: store.ErrNotFound},
		{name: "bad serial", serial: "xyz", reason: store.ReasonSuperseded, at: at, wantErr: store.ErrInvalid},
		{name: "pending", serial: "c0", reason: store.ReasonSuperseded, at: at, wantErr: store.ErrConflict},
		{name: "failed", serial: "f0", reason: store.ReasonSuperseded, at: at, wantErr: store.ErrConflict},
		{name: "cACompromise is not a BR reason", serial: "a", reason: 2, at: at, wantErr: store.ErrInvalid},
		{name: "certificateHold is not a BR reason", serial: "a", reason: 6, at: at, wantErr: store.ErrInvalid},
		{name: "unused reason 7", serial: "a", reason: 7, at: at, wantErr: store.ErrInvalid},
		{name: "aACompromise is not a BR reason", serial: "a", reason: 10, at: at, wantErr: store.ErrInvalid},
		{name: "negative reason", serial: "a", reason: -1, at: at, wantErr: store.ErrInvalid},
		{name: "zero time", serial: "a", reason: store.ReasonSuperseded, wantErr: store.ErrInvalid},
		{name: "issued", serial: "0A", reason: store.ReasonSuperseded, at: at, wantErr: nil},
		{name: "revoked already", serial: "a", reason: store.ReasonSuperseded, at: at.Add(time.Hour), wantErr: store.ErrConflict},
		{name: "revoked already, now keyCompromise", serial: "a", reason: store.ReasonKeyCompromise, at: at.Add(time.Hour), wantErr: store.ErrConflict},
		{name: "unspecified", serial: "b", reason: store.ReasonUnspecified, at: at, wantErr: nil},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { return tx.RevokeCertificate(tc.serial, tc.reason, tc.at) })
		if !is(err, tc.wantErr) {
			t.Errorf("%s: RevokeCertificate: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		for serial, want := range map[string]struct {
			state  string
			reason int
			at     time.Time
		}{
			"a":  {store.StateRevoked, store.ReasonSuperseded, at},
			"b":  {store.StateRevoked, store.ReasonUnspecified, at},
			"c0": {store.StatePending, 0, time.Time{}},
			"f0": {store.StateFailed, 0, time.Time{}},
		} {
			c, err := tx.GetCertificate(serial)
			if err != nil {
				return err
			}
			if c.State != want.state || c.RevocationReason != want.reason || !c.RevokedAt.Equal(want.at) {
				t.Errorf("%s: state %s, reason %d, revoked at %v; want %s, %d, %v", serial, c.State, c.RevocationReason,
					c.RevokedAt, want.state, want.reason, want.at)
			}
		}
		return nil
	})
	// A revoked certificate inserted as such (a migration) keeps any reason of RFC 5280, and
	// only a revoked one has a reason.
	for _, tc := range []struct {
		name    string
		state   string
		reason  int
		wantErr error
	}{
		{name: "revoked cACompromise", state: store.StateRevoked, reason: 2, wantErr: nil},
		{name: "revoked unused reason", state: store.StateRevoked, reason: 7, wantErr: store.ErrInvalid},
		{name: "revoked reason 11", state: store.StateRevoked, reason: 11, wantErr: store.ErrInvalid},
		{name: "issued with a reason", state: store.StateIssued, reason: 1, wantErr: store.ErrInvalid},
		{name: "revoked without a date", state: store.StateRevoked, reason: 3, wantErr: store.ErrInvalid},
	} {
		c := issued(fmt.Sprintf("c%d", tc.reason), na)
		c.State, c.RevocationReason, c.RevokedAt = tc.state, tc.reason, at
		if tc.reason == 3 {
			c.RevokedAt = time.Time{}
		}
		err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(c) })
		if !is(err, tc.wantErr) {
			t.Errorf("%s: InsertCertificate: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		c, err := tx.GetCertificate("c2")
		if err == nil && (c.State != store.StateRevoked || c.RevocationReason != 2) {
			t.Errorf("inserted revoked certificate: %s, reason %d", c.State, c.RevocationReason)
		}
		return err
	})
}

// testKeyCompromise: a revoked certificate's reason moves to keyCompromise once, its
// revocation date kept; nothing else moves.
func testKeyCompromise(t *testing.T, h *Harness) {
	s := h.Open(t)
	na := t0.AddDate(1, 0, 0)
	first := t0.Add(time.Hour)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificates([]store.Certificate{issued("a", na), issued("b", na), issued("cb", na), cert("c0")}); err != nil {
			return err
		}
		if err := tx.RevokeCertificate("a", store.ReasonSuperseded, first); err != nil {
			return err
		}
		return tx.RevokeCertificate("cb", store.ReasonKeyCompromise, first)
	})
	for _, tc := range []struct {
		name    string
		serial  string
		wantErr error
	}{
		{name: "unknown", serial: "ff", wantErr: store.ErrNotFound},
		{name: "issued", serial: "b", wantErr: store.ErrConflict},
		{name: "pending", serial: "c0", wantErr: store.ErrConflict},
		{name: "keyCompromise already", serial: "cb", wantErr: store.ErrConflict},
		{name: "superseded", serial: "0a", wantErr: nil},
		{name: "again", serial: "a", wantErr: store.ErrConflict},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { return tx.SetKeyCompromise(tc.serial) })
		if !is(err, tc.wantErr) {
			t.Errorf("%s: SetKeyCompromise: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		a, err := tx.GetCertificate("a")
		if err != nil {
			return err
		}
		if a.State != store.StateRevoked || a.RevocationReason != store.ReasonKeyCompromise || !a.RevokedAt.Equal(first) {
			t.Errorf("after SetKeyCompromise: %s, reason %d, revoked at %v; want revoked, 1, %v", a.State, a.RevocationReason, a.RevokedAt, first)
		}
		for serial, want := range map[string]string{"b": store.StateIssued, "c0": store.StatePending} {
			c, err := tx.GetCertificate(serial)
			if err != nil {
				return err
			}
			if c.State != want || c.RevocationReason != 0 {
				t.Errorf("%s after a refused SetKeyCompromise: %s, reason %d", serial, c.State, c.RevocationReason)
			}
		}
		return nil
	})
}

// testCertificatesByKey: every path that stores a DER sets its key identity, so a key's
// certificates are found across mailboxes and states, oldest first; a DER that is not a
// certificate is stored without one.
func testCertificatesByKey(t *testing.T, h *Harness) {
	s := h.Open(t)
	ka, kb := ecKey(t), ecKey(t)
	derA1, idA := realCert(t, ka, 1)
	derA2, _ := realCert(t, ka, 2)
	derA3, _ := realCert(t, ka, 3)
	derB, idB := realCert(t, kb, 4)
	na := t0.AddDate(1, 0, 0)
	mustUpdate(t, s, func(tx store.Tx) error {
		a1 := issued("a1", na)
		a1.DER, a1.KeyID = derA1, idB // a caller's KeyID is ignored
		a2, a3, b, p, fake := cert("a2"), cert("a3"), issued("b", na), cert("c0"), issued("fa4e", na)
		a2.Email, a3.Email = "bob@example.com", "carol@example.com"
		a2.CreatedAt, a3.CreatedAt = t0.Add(time.Minute), t0.Add(2*time.Minute)
		b.DER = derB
		if err := tx.InsertCertificates([]store.Certificate{a3, a1, a2, b, p, fake}); err != nil {
			return err
		}
		if err := tx.SetCertificateIssued("a2", derA2, t0, na); err != nil {
			return err
		}
		if err := tx.FailSignedCertificate("a3", derA3, t0, na); err != nil {
			return err
		}
		return tx.RevokeCertificate("a2", store.ReasonKeyCompromise, t0.Add(time.Hour))
	})
	mustView(t, s, func(tx store.Tx) error {
		got, err := tx.CertificatesByKey(idA)
		if err != nil {
			return err
		}
		var serials []string
		for _, c := range got {
			serials = append(serials, c.Serial+":"+c.State)
			if c.KeyID != idA {
				t.Errorf("certificate %s: KeyID %q, want %q", c.Serial, c.KeyID, idA)
			}
		}
		if want := "[a1:issued a2:revoked a3:failed]"; fmt.Sprint(serials) != want {
			t.Errorf("CertificatesByKey(A) = %v, want %s", serials, want)
		}
		if got, err := tx.CertificatesByKey(idB); err != nil || len(got) != 1 || got[0].Serial != "b" {
			t.Errorf("CertificatesByKey(B) = %+v, %v; want b", got, err)
		}
		if got, err := tx.CertificatesByKey(strings.Repeat("0", 64)); err != nil || len(got) != 0 {
			t.Errorf("CertificatesByKey(unknown) = %+v, %v; want none", got, err)
		}
		for _, bad := range []string{"", "abc", strings.ToUpper(idA), idA + "00"} {
			if _, err := tx.CertificatesByKey(bad); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("CertificatesByKey(%q) = %v, want ErrInvalid", bad, err)
			}
		}
		for serial, want := range map[string]string{"fa4e": "", "c0": "", "b": idB} {
			c, err := tx.GetCertificate(serial)
			if err != nil {
				return err
			}
			if c.KeyID != want {
				t.Errorf("certificate %s: KeyID %q, want %q", serial, c.KeyID, want)
			}
		}
		return nil
	})
}

// testCompromisedKeys: a key is compromised once a certificate of it is revoked for
// keyCompromise, whatever its mailbox, and its oldest such certificate is named; a revocation
// for another reason, an expired certificate of the key or a failed one do not count. Many
// keys are answered at once, beyond one statement's worth.
func testCompromisedKeys(t *testing.T, h *Harness) {
	s := h.Open(t)
	ka, kb, kc := ecKey(t), ecKey(t), ecKey(t)
	derA1, idA := realCert(t, ka, 1)
	derA2, _ := realCert(t, ka, 2)
	derB, idB := realCert(t, kb, 3)
	derC, idC := realCert(t, kc, 4)
	na := t0.AddDate(1, 0, 0)
	mustUpdate(t, s, func(tx store.Tx) error {
		a1, a2, b, c := issued("a1", na), issued("a2", na), issued("b", na), issued("c", na)
		a1.DER, a2.DER, b.DER, c.DER = derA1, derA2, derB, derC
		a2.Email, a2.CreatedAt = "bob@example.com", t0.Add(time.Minute)
		if err := tx.InsertCertificates([]store.Certificate{a2, a1, b, c}); err != nil {
			return err
		}
		if err := tx.InsertCode(store.Code{ID: "code1", Email: "alice@example.com", Template: "t", Hash: []byte("h"),
			CreatedAt: t0, ExpiresAt: t0.AddDate(0, 0, 7)}); err != nil {
			return err
		}
		for _, r := range []struct {
			serial string
			reason int
		}{{"a2", store.ReasonKeyCompromise}, {"a1", store.ReasonKeyCompromise}, {"b", store.ReasonSuperseded}} {
			if err := tx.RevokeCertificate(r.serial, r.reason, t0.Add(time.Hour)); err != nil {
				return err
			}
		}
		return nil
	})
	unknown := strings.Repeat("0", 64)
	many := []string{idB, idC, unknown}
	for i := range 300 {
		many = append(many, fmt.Sprintf("%064x", i+1))
	}
	many = append(many, idA, idA)
	mustView(t, s, func(tx store.Tx) error {
		got, err := tx.CompromisedKeys(many)
		if err != nil {
			return err
		}
		if want := map[string]string{idA: "a1"}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("CompromisedKeys = %v, want %v", got, want)
		}
		if got, err := tx.CompromisedKeys(nil); err != nil || len(got) != 0 {
			t.Errorf("CompromisedKeys(none) = %v, %v; want none", got, err)
		}
		for _, bad := range []string{"", "abc", strings.ToUpper(idA)} {
			if _, err := tx.CompromisedKeys([]string{idB, bad}); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("CompromisedKeys(%q) = %v, want ErrInvalid", bad, err)
			}
			if _, _, err := tx.GetCodeCheckingKey("code1", bad); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("GetCodeCheckingKey(code1, %q) = %v, want ErrInvalid", bad, err)
			}
		}
		checkCodeKeys(t, tx, map[string]string{idA: "a1", idB: "", idC: "", unknown: ""})
		if _, _, err := tx.GetCodeCheckingKey("nocode", idA); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetCodeCheckingKey of an unknown code = %v, want ErrNotFound", err)
		}
		return nil
	})
	// Moving b's reason to keyCompromise makes its key compromised.
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SetKeyCompromise("b") })
	mustView(t, s, func(tx store.Tx) error {
		got, err := tx.CompromisedKeys([]string{idB, idC})
		if err != nil {
			return err
		}
		if want := map[string]string{idB: "b"}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("CompromisedKeys after SetKeyCompromise = %v, want %v", got, want)
		}
		checkCodeKeys(t, tx, map[string]string{idB: "b", idC: ""})
		return nil
	})
}

// checkCodeKeys checks that GetCodeCheckingKey reads code1 (of alice@example.com) with each
// key of want and finds it compromised by the serial want gives ("" for none).
func checkCodeKeys(t *testing.T, tx store.Tx, want map[string]string) {
	t.Helper()
	for key, serial := range want {
		c, bad, err := tx.GetCodeCheckingKey("code1", key)
		switch {
		case err != nil:
			t.Errorf("GetCodeCheckingKey(code1, %s): %v", key, err)
		case c.ID != "code1" || c.Email != "alice@example.com" || c.UsedAt != nil:
			t.Errorf("GetCodeCheckingKey(code1, %s) read code %+v", key, c)
		case bad != serial:
			t.Errorf("GetCodeCheckingKey(code1, %s) found the key compromised by %q, want %q", key, bad, serial)
		}
	}
}

// testRevokedCertificates: the stream holds every revoked certificate not expired at now and
// nothing else, once each, in serial byte order, with its date and reason.
func testRevokedCertificates(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustView(t, s, func(tx store.Tx) error {
		if at, err := tx.LatestRevocation(); err != nil || !at.IsZero() {
			t.Errorf("LatestRevocation of an empty store = %v, %v; want the zero time", at, err)
		}
		return nil
	})
	now := t0.AddDate(0, 6, 0)
	want := map[string]store.CertStatus{}
	reasons := []int{store.ReasonUnspecified, store.ReasonKeyCompromise, store.ReasonAffiliationChanged,
		store.ReasonSuperseded, store.ReasonCessationOfOperation, store.ReasonPrivilegeWithdrawn}
	mustUpdate(t, s, func(tx store.Tx) error {
		var cs []store.Certificate
		for i := range 300 {
			na := t0.AddDate(1, 0, 0)
			if i%7 == 0 {
				na = now // expires at now: off the CRL
			}
			if i%11 == 0 {
				na = now.Add(time.Microsecond)
			}
			cs = append(cs, issued(fmt.Sprintf("%x", i*4099+1), na))
		}
		mig := issued("d00d", t0) // revoked, inserted without NotAfter: kept on the CRL
		mig.NotAfter, mig.State, mig.RevokedAt, mig.RevocationReason = time.Time{}, store.StateRevoked, t0, 2
		cs = append(cs, mig, cert("beef"))
		want["d00d"] = store.CertStatus{Serial: "d00d", Revoked: true, RevokedAt: t0, Reason: 2}
		if err := tx.InsertCertificates(cs); err != nil {
			return err
		}
		for i, c := range cs[:300] {
			if i%3 == 0 {
				continue // stays issued
			}
			at := t0.Add(time.Duration(i) * time.Minute)
			r := reasons[i%len(reasons)]
			if err := tx.RevokeCertificate(c.Serial, r, at); err != nil {
				return err
			}
			if c.NotAfter.After(now) {
				want[c.Serial] = store.CertStatus{Serial: c.Serial, Revoked: true, RevokedAt: at, Reason: r, NotAfter: c.NotAfter}
			}
		}
		return nil
	})
	if len(want) < 150 {
		t.Fatalf("only %d certificates to list", len(want))
	}
	mustView(t, s, func(tx store.Tx) error {
		var got []store.CertStatus
		if err := tx.RevokedCertificates(now, func(c store.CertStatus) error { got = append(got, c); return nil }); err != nil {
			return err
		}
		if !sort.SliceIsSorted(got, func(i, j int) bool { return got[i].Serial < got[j].Serial }) {
			t.Errorf("entries not in serial order")
		}
		seen := map[string]bool{}
		for _, c := range got {
			w, ok := want[c.Serial]
			switch {
			case seen[c.Serial]:
				t.Errorf("%s listed twice", c.Serial)
			case !ok:
				t.Errorf("%s listed, not revoked or expired", c.Serial)
			case c.Revoked != w.Revoked || !c.RevokedAt.Equal(w.RevokedAt) || c.Reason != w.Reason || !c.NotAfter.Equal(w.NotAfter):
				t.Errorf("%s = %+v, want %+v", c.Serial, c, w)
			}
			seen[c.Serial] = true
		}
		if len(seen) != len(want) {
			t.Errorf("%d entries listed, want %d", len(seen), len(want))
		}
		// The newest revocation, expired certificates included: certificate 299's.
		if at, err := tx.LatestRevocation(); err != nil || !at.Equal(t0.Add(299*time.Minute)) {
			t.Errorf("LatestRevocation = %v, %v; want %v", at, err, t0.Add(299*time.Minute))
		}
		if err := tx.RevokedCertificates(time.Time{}, func(store.CertStatus) error { return nil }); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("zero time: %v, want ErrInvalid", err)
		}
		return nil
	})
}

// testRevokedCertificatesStop: an error of fn stops the walk at once and comes back as it is.
func testRevokedCertificatesStop(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		for i := range 5 {
			serial := fmt.Sprintf("%x", i+1)
			if err := tx.InsertCertificate(issued(serial, t0.AddDate(1, 0, 0))); err != nil {
				return err
			}
			if err := tx.RevokeCertificate(serial, store.ReasonSuperseded, t0); err != nil {
				return err
			}
		}
		return nil
	})
	stop := errors.New("stop here")
	calls := 0
	err := s.View(ctx, func(tx store.Tx) error {
		return tx.RevokedCertificates(t0, func(store.CertStatus) error { calls++; return stop })
	})
	if err != stop || calls != 1 {
		t.Errorf("RevokedCertificates with a failing fn: %v after %d calls; want the error itself after 1", err, calls)
	}
}

// testCRLNumbers: CRL numbers only go up, also once older CRLs are deleted, and the latest is
// the highest number stored.
func testCRLNumbers(t *testing.T, h *Harness) {
	s := h.Open(t)
	crl := func(n int64) store.CRL {
		this := t0.Add(time.Duration(n) * time.Hour)
		return store.CRL{Number: n, ThisUpdate: this, NextUpdate: this.AddDate(0, 0, 7), DER: []byte(fmt.Sprintf("crl-%d", n)), CreatedAt: this}
	}
	if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.LatestCRL(); return err }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LatestCRL of an empty store: %v, want ErrNotFound", err)
	}
	steps := []struct {
		name    string
		crl     store.CRL
		wantErr error
	}{
		{name: "number 0", crl: crl(0), wantErr: store.ErrInvalid},
		{name: "no der", crl: func() store.CRL { c := crl(1); c.DER = nil; return c }(), wantErr: store.ErrInvalid},
		{name: "no thisUpdate", crl: func() store.CRL { c := crl(1); c.ThisUpdate = time.Time{}; return c }(), wantErr: store.ErrInvalid},
		{name: "nextUpdate = thisUpdate", crl: func() store.CRL { c := crl(1); c.NextUpdate = c.ThisUpdate; return c }(), wantErr: store.ErrInvalid},
		{name: "first", crl: crl(1), wantErr: nil},
		{name: "same number", crl: crl(1), wantErr: store.ErrConflict},
		{name: "skip ahead", crl: crl(3), wantErr: nil},
		{name: "back", crl: crl(2), wantErr: store.ErrConflict},
	}
	for _, st := range steps {
		err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCRL(st.crl) })
		if !is(err, st.wantErr) {
			t.Errorf("%s: InsertCRL: %v, want %v", st.name, err, st.wantErr)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		c, err := tx.LatestCRL()
		if err != nil {
			return err
		}
		w := crl(3)
		if c.Number != 3 || !bytes.Equal(c.DER, w.DER) || !c.ThisUpdate.Equal(w.ThisUpdate) || !c.NextUpdate.Equal(w.NextUpdate) || !c.CreatedAt.Equal(w.CreatedAt) {
			t.Errorf("LatestCRL = %+v, want %+v", c, w)
		}
		return nil
	})
	// Many more: the older ones may be deleted, the numbers still only go up.
	for n := int64(4); n <= 3+3*store.CRLsKept; n++ {
		mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCRL(crl(n)) })
	}
	last := int64(3 + 3*store.CRLsKept)
	for _, n := range []int64{1, 4, last - 1, last} {
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCRL(crl(n)) }); !errors.Is(err, store.ErrConflict) {
			t.Errorf("InsertCRL(%d) after %d: %v, want ErrConflict", n, last, err)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		c, err := tx.LatestCRL()
		if err == nil && c.Number != last {
			t.Errorf("LatestCRL is number %d, want %d", c.Number, last)
		}
		return err
	})
}

// ocspResp returns a response for serial signed at this with status c.
func ocspResp(serial string, this time.Time, revoked bool, reason int) store.OCSPResponse {
	return store.OCSPResponse{Serial: serial, DER: []byte("ocsp-" + strings.TrimPrefix(strings.ToLower(serial), "0x") + "-" + this.Format(time.RFC3339)),
		ThisUpdate: this, NextUpdate: this.AddDate(0, 0, 7), Revoked: revoked, Reason: reason}
}

// ocspSetup stores an issued (a1), a revoked (a2), a pending (a3), a failed (a4) and an
// expired (a5) certificate; now is t0 + 30 days.
func ocspSetup(t *testing.T, s store.Store) (now time.Time) {
	now = t0.AddDate(0, 0, 30)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificates([]store.Certificate{issued("a1", t0.AddDate(1, 0, 0)), issued("a2", t0.AddDate(1, 0, 0)),
			cert("a3"), cert("a4"), issued("a5", now)}); err != nil {
			return err
		}
		if err := tx.FailCertificate("a4"); err != nil {
			return err
		}
		return tx.RevokeCertificate("a2", store.ReasonSuperseded, t0.Add(time.Hour))
	})
	return now
}

// testOCSPLookups: a response is stored only for an issued or revoked certificate, and its
// lookup tells an unknown serial, a serial never issued and a certificate without a response
// apart.
func testOCSPLookups(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := ocspSetup(t, s)
	get := func(serial string) (*store.OCSPResponse, error) {
		var r *store.OCSPResponse
		err := s.View(ctx, func(tx store.Tx) (err error) { r, err = tx.GetOCSPResponse(serial); return err })
		return r, err
	}
	for _, tc := range []struct {
		serial    string
		want, not []error
	}{
		{serial: "ff", want: []error{store.ErrNotFound}, not: []error{store.ErrNotIssued, store.ErrNoResponse}},
		{serial: "a3", want: []error{store.ErrNotFound, store.ErrNotIssued}, not: []error{store.ErrNoResponse}},
		{serial: "a4", want: []error{store.ErrNotFound, store.ErrNotIssued}, not: []error{store.ErrNoResponse}},
		{serial: "a1", want: []error{store.ErrNoResponse}, not: []error{store.ErrNotFound, store.ErrNotIssued}},
		{serial: "a2", want: []error{store.ErrNoResponse}, not: []error{store.ErrNotFound, store.ErrNotIssued}},
		{serial: "xyz", want: []error{store.ErrInvalid}},
	} {
		_, err := get(tc.serial)
		for _, w := range tc.want {
			if !errors.Is(err, w) {
				t.Errorf("GetOCSPResponse(%s) = %v, want %v", tc.serial, err, w)
			}
		}
		for _, n := range tc.not {
			if errors.Is(err, n) {
				t.Errorf("GetOCSPResponse(%s) = %v, must not be %v", tc.serial, err, n)
			}
		}
	}
	signed := now.Add(-time.Hour)
	for _, tc := range []struct {
		name    string
		rs      []store.OCSPResponse
		wantErr error
	}{
		{name: "unknown", rs: []store.OCSPResponse{ocspResp("ff", signed, false, 0)}, wantErr: store.ErrNotFound},
		{name: "pending", rs: []store.OCSPResponse{ocspResp("a1", signed, false, 0), ocspResp("a3", signed, false, 0)}, wantErr: store.ErrNotIssued},
		{name: "failed", rs: []store.OCSPResponse{ocspResp("a4", signed, false, 0)}, wantErr: store.ErrConflict},
		{name: "no der", rs: []store.OCSPResponse{func() store.OCSPResponse { r := ocspResp("a1", signed, false, 0); r.DER = nil; return r }()}, wantErr: store.ErrInvalid},
		{name: "nextUpdate before thisUpdate", rs: []store.OCSPResponse{func() store.OCSPResponse {
			r := ocspResp("a1", signed, false, 0)
			r.NextUpdate = signed.Add(-time.Second)
			return r
		}()}, wantErr: store.ErrInvalid},
		{name: "good with a reason", rs: []store.OCSPResponse{ocspResp("a1", signed, false, 1)}, wantErr: store.ErrInvalid},
		{name: "reason 7", rs: []store.OCSPResponse{ocspResp("a2", signed, true, 7)}, wantErr: store.ErrInvalid},
		{name: "issued and revoked", rs: []store.OCSPResponse{ocspResp("0xA1", signed, false, 0), ocspResp("a2", signed, true, store.ReasonSuperseded)}},
		{name: "older response", rs: []store.OCSPResponse{ocspResp("a1", signed.Add(-time.Minute), false, 0)}},
		{name: "expired certificate", rs: []store.OCSPResponse{ocspResp("a5", signed, false, 0)}},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { return tx.UpsertOCSPResponses(tc.rs) })
		if !is(err, tc.wantErr) {
			t.Errorf("%s: UpsertOCSPResponses: %v, want %v", tc.name, err, tc.wantErr)
		}
	}
	for serial, want := range map[string]store.OCSPResponse{
		"a1": ocspResp("a1", signed, false, 0), // the older one did not replace it
		"a2": ocspResp("a2", signed, true, store.ReasonSuperseded),
	} {
		r, err := get(serial)
		if err != nil {
			t.Fatalf("GetOCSPResponse(%s): %v", serial, err)
		}
		if r.Serial != serial || !bytes.Equal(r.DER, want.DER) || !r.ThisUpdate.Equal(want.ThisUpdate) ||
			!r.NextUpdate.Equal(want.NextUpdate) || r.Revoked != want.Revoked || r.Reason != want.Reason || r.UpdatedAt.IsZero() {
			t.Errorf("GetOCSPResponse(%s) = %+v, want %+v", serial, r, want)
		}
	}
	if _, err := get("a3"); !errors.Is(err, store.ErrNotIssued) {
		t.Errorf("a refused batch stored a response for a pending serial: %v", err)
	}
	// A newer response replaces the stored one.
	newer := ocspResp("a1", signed.Add(time.Minute), false, 0)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.UpsertOCSPResponses([]store.OCSPResponse{newer}) })
	if r, err := get("a1"); err != nil || !bytes.Equal(r.DER, newer.DER) {
		t.Errorf("after a newer response: %+v, %v", r, err)
	}
}

// due lists what OCSPDue returns as serial:revoked:reason, after checking that each status
// has its certificate's expiry and revocation time and reason as stored.
func due(t *testing.T, s store.Store, now, signedBefore time.Time) string {
	t.Helper()
	var got []store.CertStatus
	mustView(t, s, func(tx store.Tx) (err error) {
		if got, err = tx.OCSPDue(now, signedBefore, "", 100); err != nil {
			return err
		}
		for _, st := range got {
			c, err := tx.GetCertificate(st.Serial)
			if err != nil {
				return err
			}
			if st.Revoked != (c.State == store.StateRevoked) || !st.RevokedAt.Equal(c.RevokedAt) ||
				st.Reason != c.RevocationReason || !st.NotAfter.Equal(c.NotAfter) {
				t.Errorf("OCSPDue: %s: revoked %v at %v (reason %d), expires %v; the certificate is %s at %v (reason %d), expires %v",
					st.Serial, st.Revoked, st.RevokedAt, st.Reason, st.NotAfter, c.State, c.RevokedAt, c.RevocationReason, c.NotAfter)
			}
		}
		return nil
	})
	var out []string
	for _, c := range got {
		out = append(out, fmt.Sprintf("%s:%v:%d", c.Serial, c.Revoked, c.Reason))
	}
	return strings.Join(out, " ")
}

// testOCSPDueStoredRevoked: a certificate stored already revoked is due with its revocation
// time and reason, as one revoked after it was stored.
func testOCSPDueStoredRevoked(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := t0.AddDate(0, 0, 30)
	c := issued("b1", t0.AddDate(1, 0, 0))
	c.State, c.RevokedAt, c.RevocationReason = store.StateRevoked, t0.Add(90*time.Minute), store.ReasonCessationOfOperation
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.InsertCertificates([]store.Certificate{c, issued("b2", t0.AddDate(1, 0, 0))})
	})
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.RevokeCertificate("b2", store.ReasonAffiliationChanged, t0.Add(2*time.Hour))
	})
	want := fmt.Sprintf("b1:true:%d b2:true:%d", store.ReasonCessationOfOperation, store.ReasonAffiliationChanged)
	if got := due(t, s, now, now); got != want {
		t.Errorf("due: %q, want %q", got, want)
	}
}

// testOCSPDue: a certificate is due when it has no response, when its response is older than
// the refresh age, or when it was revoked (or its reason changed) after its response was
// signed, whatever the clocks say; serials never issued and expired certificates never are.
func testOCSPDue(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := ocspSetup(t, s)
	fresh := now.AddDate(0, 0, -3) // responses signed before this are due
	if got, want := due(t, s, now, fresh), "a1:false:0 a2:true:4"; got != want {
		t.Errorf("due with no responses: %q, want %q", got, want)
	}
	signed := now.Add(-time.Hour)
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("a1", signed, false, 0), ocspResp("a2", signed, true, store.ReasonSuperseded)})
	})
	if got := due(t, s, now, fresh); got != "" {
		t.Errorf("due with fresh responses: %q, want none", got)
	}
	if got, want := due(t, s, now, signed.Add(time.Microsecond)), "a1:false:0 a2:true:4"; got != want {
		t.Errorf("due once the responses are older than the refresh age: %q, want %q", got, want)
	}
	if got := due(t, s, now, signed); got != "" {
		t.Errorf("due with responses signed at the refresh age exactly: %q, want none", got)
	}
	// Revoked with a date before the response's thisUpdate (the revocation was recorded
	// while the response was being signed), and with reason unspecified, the reason of a good
	// response: due all the same.
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.RevokeCertificate("a1", store.ReasonUnspecified, signed.Add(-time.Hour))
	})
	if got, want := due(t, s, now, fresh), "a1:true:0"; got != want {
		t.Errorf("due after a revocation: %q, want %q", got, want)
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SetKeyCompromise("a2") })
	if got, want := due(t, s, now, fresh), "a1:true:0 a2:true:1"; got != want {
		t.Errorf("due after a reason change: %q, want %q", got, want)
	}
	// A response signed with a stale status (good, while the revocation committed) is stored
	// and still due.
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("a1", now, false, 0), ocspResp("a2", now, true, store.ReasonKeyCompromise)})
	})
	if got, want := due(t, s, now, fresh), "a1:true:0"; got != want {
		t.Errorf("due after a response with a stale status: %q, want %q", got, want)
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("a1", now.Add(time.Second), true, store.ReasonUnspecified)})
	})
	if got := due(t, s, now, fresh); got != "" {
		t.Errorf("due once re-signed: %q, want none", got)
	}
	// Once expired, a certificate is never due.
	if got := due(t, s, t0.AddDate(1, 0, 0), t0.AddDate(2, 0, 0)); got != "" {
		t.Errorf("due after every certificate expired: %q, want none", got)
	}
	mustView(t, s, func(tx store.Tx) error {
		for _, tc := range []struct {
			name        string
			now, before time.Time
			after       string
			limit       int
		}{
			{"zero now", time.Time{}, fresh, "", 10},
			{"zero signedBefore", now, time.Time{}, "", 10},
			{"limit 0", now, fresh, "", 0},
			{"bad after", now, fresh, "xyz", 10},
		} {
			if _, err := tx.OCSPDue(tc.now, tc.before, tc.after, tc.limit); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("OCSPDue %s: %v, want ErrInvalid", tc.name, err)
			}
		}
		return nil
	})
}

// indexingStore indexes the new certificates ([store.OCSPResponses.IndexNewCertificates]),
// two to a transaction, before every View.
type indexingStore struct {
	store.Store
	t testing.TB
}

func (s indexingStore) View(ctx context.Context, fn func(store.Tx) error) error {
	for more, n := true, 0; more; n++ {
		if n > 100_000 {
			s.t.Fatal("IndexNewCertificates reports more left for ever")
		}
		if err := s.Store.Update(ctx, func(tx store.Tx) (err error) {
			more, err = tx.IndexNewCertificates(2)
			return err
		}); err != nil {
			return err
		}
	}
	return s.Store.View(ctx, fn)
}

// testIndexed runs the tests of OCSPDue and of the lookups by key again on a store whose new
// certificates are indexed before every read: their answers do not depend on when the indexes
// catch up, whether a certificate was issued, revoked, signed or failed before or after it was
// indexed.
func testIndexed(t *testing.T, h *Harness) {
	indexing := *h
	indexing.Open = func(t *testing.T) store.Store { return indexingStore{h.Open(t), t} }
	for _, tt := range []test{
		{"OCSPDue", testOCSPDue},
		{"OCSPDueStoredRevoked", testOCSPDueStoredRevoked},
		{"OCSPDuePages", testOCSPDuePages},
		{"OCSPDueLifecycle", testOCSPDueLifecycle},
		{"OCSPDueInFlight", testOCSPDueInFlight},
		{"OCSPDueMany", testOCSPDueMany},
		{"ForeignCertificates", testForeignCertificates},
		{"KeyCompromise", testKeyCompromise},
		{"CertificatesByKey", testCertificatesByKey},
		{"CompromisedKeys", testCompromisedKeys},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, &indexing) })
	}
}

// testIndexNewCertificates: the indexing of new certificates ends, a page at a time, changes
// nothing OCSPDue lists, and refuses a bad limit and a read-only transaction.
func testIndexNewCertificates(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := t0.AddDate(0, 1, 0)
	var cs []store.Certificate
	for i := range 7 {
		cs = append(cs, issued(fmt.Sprintf("%02x", 0x20+i), t0.AddDate(1, 0, 0)))
	}
	cs[2].State, cs[2].DER = store.StatePending, nil
	cs[4].Template = store.TemplateImport
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificates(cs) })
	mustUpdate(t, s, func(tx store.Tx) error { return tx.RevokeCertificate("25", store.ReasonSuperseded, now) })
	want := "20:false:0 21:false:0 23:false:0 25:true:4 26:false:0"
	if got := due(t, s, now, now); got != want {
		t.Fatalf("due before indexing: %q, want %q", got, want)
	}
	calls := 0
	for more := true; more; calls++ {
		if calls > len(cs) {
			t.Fatalf("IndexNewCertificates(3) still reports more after %d calls for %d certificates", calls, len(cs))
		}
		mustUpdate(t, s, func(tx store.Tx) (err error) { more, err = tx.IndexNewCertificates(3); return err })
		if got := due(t, s, now, now); got != want {
			t.Errorf("due after %d pages of indexing: %q, want %q", calls+1, got, want)
		}
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		if more, err := tx.IndexNewCertificates(1); more || err != nil {
			t.Errorf("IndexNewCertificates with nothing new: %v, %v; want false, nil", more, err)
		}
		if _, err := tx.IndexNewCertificates(0); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("IndexNewCertificates(0): %v, want ErrInvalid", err)
		}
		return nil
	})
	mustView(t, s, func(tx store.Tx) error {
		if _, err := tx.IndexNewCertificates(10); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("IndexNewCertificates in a View: %v, want ErrReadOnly", err)
		}
		return nil
	})
	// The pending certificate, passed by, is due once issued, and found by its key.
	der, keyID := realCert(t, ecKey(t), 0x22)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SetCertificateIssued("22", der, t0, t0.AddDate(1, 0, 0)) })
	if got, want := due(t, s, now, now), "20:false:0 21:false:0 22:false:0 23:false:0 25:true:4 26:false:0"; got != want {
		t.Errorf("due once the pending certificate is issued: %q, want %q", got, want)
	}
	mustView(t, s, func(tx store.Tx) error {
		cs, err := tx.CertificatesByKey(keyID)
		if err != nil || len(cs) != 1 || cs[0].Serial != "22" {
			t.Errorf("CertificatesByKey of the certificate issued after indexing: %v, %v; want 22 alone", cs, err)
		}
		return nil
	})
}

// testOCSPDuePages: paging with the last serial returned visits every due certificate once,
// in serial order.
func testOCSPDuePages(t *testing.T, h *Harness) {
	s := h.Open(t)
	var want []string
	mustUpdate(t, s, func(tx store.Tx) error {
		var cs []store.Certificate
		for i := range 57 {
			serial := fmt.Sprintf("%x", i*977+5)
			cs = append(cs, issued(serial, t0.AddDate(1, 0, 0)))
			want = append(want, serial)
		}
		return tx.InsertCertificates(cs)
	})
	slices.Sort(want)
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		var page []store.CertStatus
		mustView(t, s, func(tx store.Tx) (err error) { page, err = tx.OCSPDue(t0, t0, after, 10); return err })
		for _, c := range page {
			got = append(got, c.Serial)
		}
		if len(page) < 10 {
			break
		}
		after = page[len(page)-1].Serial
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pages gave %v, want %v", got, want)
	}
}

// allDue pages through OCSPDue with limit, checking that the pages come in serial order with
// no serial twice, and returns "serial:revoked:reason" of each.
func allDue(t *testing.T, s store.Store, now, signedBefore time.Time, limit int) []string {
	t.Helper()
	var out []string
	after := ""
	for {
		var page []store.CertStatus
		mustView(t, s, func(tx store.Tx) (err error) { page, err = tx.OCSPDue(now, signedBefore, after, limit); return err })
		if len(page) > limit {
			t.Fatalf("OCSPDue returned %d, limit %d", len(page), limit)
		}
		for _, c := range page {
			if c.Serial <= after {
				t.Fatalf("OCSPDue after %q returned %q: not in serial order", after, c.Serial)
			}
			after = c.Serial
			out = append(out, fmt.Sprintf("%s:%v:%d", c.Serial, c.Revoked, c.Reason))
		}
		if len(page) < limit {
			return out
		}
	}
}

// testOCSPDueLifecycle follows certificates through every write that moves them in or out of
// the due list: issued (by SetCertificateIssued or inserted so) or revoked means due at once;
// failed or pending never; signed with its status, not due until the refresh age; an older
// response that does not replace the stored one changes nothing; a revocation or a reason
// change makes it due at once; expired, never again, also once later responses are stored.
func testOCSPDueLifecycle(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := t0.AddDate(0, 1, 0)
	year := t0.AddDate(1, 0, 0)
	soon := now.Add(2 * time.Hour) // b5 expires then
	mustUpdate(t, s, func(tx store.Tx) error {
		b4 := issued("b4", year)
		b4.State, b4.RevokedAt, b4.RevocationReason = store.StateRevoked, t0, store.ReasonAffiliationChanged
		return tx.InsertCertificates([]store.Certificate{cert("b1"), cert("b2"), issued("b3", year), b4, issued("b5", soon),
			issued("b6", now.Add(-time.Hour))})
	})
	fresh := now.AddDate(0, 0, -3)
	check := func(name string, now, signedBefore time.Time, want string) {
		t.Helper()
		if got := strings.Join(allDue(t, s, now, signedBefore, 2), " "); got != want {
			t.Errorf("%s: due %q, want %q", name, got, want)
		}
	}
	check("inserted issued and revoked, pending", now, fresh, "b3:false:0 b4:true:3 b5:false:0")
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.SetCertificateIssued("b1", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, t0, year); err != nil {
			return err
		}
		return tx.FailCertificate("b2")
	})
	check("just issued", now, fresh, "b1:false:0 b3:false:0 b4:true:3 b5:false:0")
	signed := now.Add(-time.Minute)
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("b1", signed, false, 0), ocspResp("b3", signed, false, 0),
			ocspResp("b4", signed, true, store.ReasonAffiliationChanged), ocspResp("b5", signed, false, 0)})
	})
	check("signed", now, fresh, "")
	check("signed at the refresh age exactly", now, signed, "")
	check("older than the refresh age", now, signed.Add(time.Microsecond), "b1:false:0 b3:false:0 b4:true:3 b5:false:0")
	// A response older than the stored one is not stored, whatever its status.
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("b4", signed.Add(-time.Hour), false, 0)})
	})
	check("after an older response", now, fresh, "")
	mustUpdate(t, s, func(tx store.Tx) error { return tx.RevokeCertificate("b1", store.ReasonSuperseded, now) })
	check("revoked after signing", now, fresh, "b1:true:4")
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SetKeyCompromise("b4") })
	check("reason changed", now, fresh, "b1:true:4 b4:true:1")
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("b1", now, true, store.ReasonSuperseded),
			ocspResp("b4", now, true, store.ReasonKeyCompromise)})
	})
	check("re-signed", now, fresh, "")
	// b5 expires at soon: due while its response ages before that, never from then on, also
	// after responses signed later are stored.
	check("aged, before expiry", soon.Add(-time.Microsecond), now.Add(time.Microsecond), "b1:true:4 b3:false:0 b4:true:1 b5:false:0")
	check("aged, expired", soon, now.Add(time.Microsecond), "b1:true:4 b3:false:0 b4:true:1")
	later := soon.Add(time.Hour)
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("b3", later, false, 0)})
	})
	check("after a later response", later, later.Add(time.Microsecond), "b1:true:4 b3:false:0 b4:true:1")
	check("all expired", year, year.AddDate(1, 0, 0), "")
}

// testOCSPDueInFlight: a revocation that commits while a pass is signing, between the page
// that listed the certificate as good and the store of its good response, leaves it due with
// its revoked status; one that commits before its page is read is listed revoked and signed
// so. Paging goes on undisturbed.
func testOCSPDueInFlight(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := t0.AddDate(0, 1, 0)
	var serials []string
	mustUpdate(t, s, func(tx store.Tx) error {
		var cs []store.Certificate
		for i := range 30 {
			serials = append(serials, fmt.Sprintf("%02x", 0x10+i))
			cs = append(cs, issued(serials[i], t0.AddDate(1, 0, 0)))
		}
		return tx.InsertCertificates(cs)
	})
	const limit = 10
	after := ""
	var listed []string
	for page := 0; ; page++ {
		var due []store.CertStatus
		mustView(t, s, func(tx store.Tx) (err error) {
			due, err = tx.OCSPDue(now, now.AddDate(0, 0, -3), after, limit)
			return err
		})
		if page == 0 {
			// Committed after page 0 was read, before its responses are stored: one of page
			// 0 and one of page 2.
			mustUpdate(t, s, func(tx store.Tx) error {
				if err := tx.RevokeCertificate(serials[3], store.ReasonKeyCompromise, now); err != nil {
					return err
				}
				return tx.RevokeCertificate(serials[25], store.ReasonSuperseded, now)
			})
		}
		var rs []store.OCSPResponse
		for _, c := range due {
			listed = append(listed, fmt.Sprintf("%s:%v:%d", c.Serial, c.Revoked, c.Reason))
			rs = append(rs, ocspResp(c.Serial, now, c.Revoked, c.Reason))
		}
		mustUpdate(t, s, func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) })
		if len(due) < limit {
			break
		}
		after = due[len(due)-1].Serial
	}
	if len(listed) != 30 || listed[3] != serials[3]+":false:0" || listed[25] != serials[25]+":true:4" {
		t.Errorf("the pass listed %d: %v; want all 30, %s good (read before its revocation), %s revoked", len(listed), listed, serials[3], serials[25])
	}
	if got, want := strings.Join(allDue(t, s, now, now.AddDate(0, 0, -3), limit), " "), serials[3]+":true:1"; got != want {
		t.Errorf("due after the pass: %q, want %q", got, want)
	}
}

// testOCSPDueMany: with thousands of certificates in every state (more than a backend might
// look at before choosing how to read a page), paging lists exactly the due ones in serial
// order, whether most of them are due or few.
func testOCSPDueMany(t *testing.T, h *Harness) {
	s := h.Open(t)
	const n = 12000
	now := t0.AddDate(0, 1, 0)
	fresh, old := now.Add(-time.Hour), now.AddDate(0, 0, -4)
	signedBefore := now.AddDate(0, 0, -3)
	want := map[string]string{}
	var rs []store.OCSPResponse
	var revoke []string
	mustUpdate(t, s, func(tx store.Tx) error {
		var cs []store.Certificate
		for i := range n {
			// Serials in no particular order against i.
			serial := fmt.Sprintf("%x", (i*7919)%200003+0x100)
			c := issued(serial, t0.AddDate(1, 0, 0))
			switch {
			case i%13 == 0:
				c = cert(serial) // pending: never due
			case i%7 == 0:
				c.NotAfter = now // expired at now: never due
				rs = append(rs, ocspResp(serial, old, false, 0))
			case i%5 == 0:
				rs = append(rs, ocspResp(serial, old, false, 0))
				want[serial] = serial + ":false:0"
			case i%11 == 0:
				rs = append(rs, ocspResp(serial, fresh, false, 0))
				revoke = append(revoke, serial)
				want[serial] = serial + ":true:5"
			case i%3 != 0:
				rs = append(rs, ocspResp(serial, fresh, false, 0))
			default:
				want[serial] = serial + ":false:0" // never signed
			}
			cs = append(cs, c)
		}
		if err := tx.InsertCertificates(cs); err != nil {
			return err
		}
		if err := tx.UpsertOCSPResponses(rs); err != nil {
			return err
		}
		for _, serial := range revoke {
			if err := tx.RevokeCertificate(serial, store.ReasonCessationOfOperation, now); err != nil {
				return err
			}
		}
		return nil
	})
	var wantList []string
	for _, v := range want {
		wantList = append(wantList, v)
	}
	// Serial order: "1000" before "10008", which "1000:" would not be.
	slices.SortFunc(wantList, func(a, b string) int {
		return strings.Compare(strings.SplitN(a, ":", 2)[0], strings.SplitN(b, ":", 2)[0])
	})
	if len(wantList) < 4500 {
		t.Fatalf("only %d due: the test needs many", len(wantList))
	}
	for _, limit := range []int{1000, 97} {
		if got := allDue(t, s, now, signedBefore, limit); !slices.Equal(got, wantList) {
			t.Errorf("limit %d: %d due, want %d (first %v)", limit, len(got), len(wantList), got[:min(5, len(got))])
		}
	}
	// Signed but a few: those few only.
	var sign []store.OCSPResponse
	for i, v := range wantList {
		if i%500 == 0 {
			continue
		}
		f := strings.Split(v, ":")
		sign = append(sign, ocspResp(f[0], now, f[1] == "true", map[string]int{"0": 0, "5": 5}[f[2]]))
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.UpsertOCSPResponses(sign) })
	var few []string
	for i := 0; i < len(wantList); i += 500 {
		few = append(few, wantList[i])
	}
	if got := allDue(t, s, now, signedBefore, 3); !slices.Equal(got, few) {
		t.Errorf("few due: %v, want %v", got, few)
	}
}

// testForeignCertificates: a certificate of another CA whose key a bulk import archived
// (template import, stored as issued) is never this CA's to speak for: it is never due for an
// OCSP response, its status is not read for one, no response for it is stored or found, and
// it cannot be revoked here, so no CRL lists it.
func testForeignCertificates(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := ocspSetup(t, s)
	foreign := issued("f1", t0.AddDate(1, 0, 0))
	foreign.Template = store.TemplateImport
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificates([]store.Certificate{foreign}) })
	if got, want := due(t, s, now, now), "a1:false:0 a2:true:4"; got != want {
		t.Errorf("due: %q, want %q (never the imported f1)", got, want)
	}
	mustView(t, s, func(tx store.Tx) error {
		sts, err := tx.CertificateStatuses([]string{"f1", "a1"})
		if err != nil || len(sts) != 1 || sts[0].Serial != "a1" {
			t.Errorf("CertificateStatuses(f1, a1) = %+v, %v; want a1's alone", sts, err)
		}
		if _, err := tx.GetOCSPResponse("f1"); !errors.Is(err, store.ErrNotFound) || !errors.Is(err, store.ErrNotIssued) {
			t.Errorf("GetOCSPResponse(f1) = %v, want ErrNotIssued and ErrNotFound", err)
		}
		return nil
	})
	err := s.Update(ctx, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("f1", now, false, 0)})
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("a response stored for f1: %v, want ErrConflict", err)
	}
	err = s.Update(ctx, func(tx store.Tx) error { return tx.RevokeCertificate("f1", store.ReasonKeyCompromise, now) })
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("RevokeCertificate(f1) = %v, want ErrConflict", err)
	}
	var listed []string
	mustView(t, s, func(tx store.Tx) error {
		return tx.RevokedCertificates(now, func(c store.CertStatus) error { listed = append(listed, c.Serial); return nil })
	})
	if slices.Contains(listed, "f1") {
		t.Errorf("the CRL's entries %v list the imported f1", listed)
	}
	if got, want := due(t, s, now, now), "a1:false:0 a2:true:4"; got != want {
		t.Errorf("due after the refusals: %q, want %q", got, want)
	}
}

// testOCSPStatusOverClock: a response of the certificate's current status replaces a stored
// one of an older status even when that one has a later thisUpdate, and never the other way
// round. The later thisUpdate comes from a signer whose clock is ahead (another node, or this
// one before its clock was stepped back): before, the revoked response was kept out until the
// clocks caught up, minutes in which the responder could only answer tryLater and the
// pre-signer signed the certificate again at every pass.
func testOCSPStatusOverClock(t *testing.T, h *Harness) {
	s := h.Open(t)
	now := t0.AddDate(0, 1, 0)
	ahead := now.Add(5 * time.Minute)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificates([]store.Certificate{issued("c1", t0.AddDate(1, 0, 0)), issued("c2", t0.AddDate(1, 0, 0))}); err != nil {
			return err
		}
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("c1", ahead, false, 0), ocspResp("c2", ahead, false, 0)})
	})
	stored := func(step, serial string, want store.OCSPResponse) {
		t.Helper()
		var r *store.OCSPResponse
		mustView(t, s, func(tx store.Tx) (err error) { r, err = tx.GetOCSPResponse(serial); return err })
		if !r.ThisUpdate.Equal(want.ThisUpdate) || r.Revoked != want.Revoked || r.Reason != want.Reason {
			t.Errorf("%s: %s stored %v revoked %v reason %d, want %v revoked %v reason %d", step, serial,
				r.ThisUpdate, r.Revoked, r.Reason, want.ThisUpdate, want.Revoked, want.Reason)
		}
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.RevokeCertificate("c1", store.ReasonSuperseded, now); err != nil {
			return err
		}
		return tx.RevokeCertificate("c2", store.ReasonSuperseded, now)
	})
	revoked := ocspResp("c1", now, true, store.ReasonSuperseded)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.UpsertOCSPResponses([]store.OCSPResponse{revoked}) })
	stored("revoked signed after the good one, with an earlier clock", "c1", revoked)
	if got := allDue(t, s, now, now.AddDate(0, 0, -3), 10); len(got) != 1 || got[0] != "c2:true:4" {
		t.Errorf("due after c1's revoked response: %v, want c2 alone", got)
	}
	// A slow signer's good response, with a clock further ahead still, does not replace it.
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("c1", ahead.Add(time.Minute), false, 0)})
	})
	stored("a good one after it, with a later clock", "c1", revoked)
	// Nor does a revoked one of the former reason once the reason became keyCompromise, and
	// the keyCompromise one replaces it whatever its thisUpdate.
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SetKeyCompromise("c1") })
	compromised := ocspResp("c1", now.Add(-time.Minute), true, store.ReasonKeyCompromise)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.UpsertOCSPResponses([]store.OCSPResponse{compromised}) })
	stored("keyCompromise, with an earlier clock", "c1", compromised)
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("c1", ahead.Add(2*time.Minute), true, store.ReasonSuperseded)})
	})
	stored("the former reason after it, with a later clock", "c1", compromised)
	// Of two responses of the current status, the later thisUpdate is kept, as before.
	later := ocspResp("c1", now, true, store.ReasonKeyCompromise)
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{later, ocspResp("c2", now, true, store.ReasonSuperseded)})
	})
	stored("the current status, later", "c1", later)
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.UpsertOCSPResponses([]store.OCSPResponse{ocspResp("c1", now.Add(-2*time.Minute), true, store.ReasonKeyCompromise)})
	})
	stored("the current status, earlier", "c1", later)
	if got := allDue(t, s, now, now.AddDate(0, 0, -3), 10); len(got) != 0 {
		t.Errorf("due at the end: %v, want none", got)
	}
}
