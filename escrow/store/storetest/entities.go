package storetest

import (
	"github.com/keyarc/keyarc/escrow/store"

	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// State transitions of codes, certificates, recovery sets, records and pending requests,
// with their conflict, not-found and invalid sentinels.
var entityTests = []test{
	{"Codes", testCodes},
	{"ClaimCodeRace", testClaimCodeRace},
	{"InsertCertificateClaiming", testInsertCertificateClaiming},
	{"CertificateStatuses", testCertificateStatuses},
	{"Certificates", testCertificates},
	{"RecoverySets", testRecoverySets},
	{"Records", testRecords},
	{"Pending", testPending},
	{"SweepPending", testSweepPending},
	{"FailCertificateReleasesCodeAndRecord", testFailCertificateReleasesCodeAndRecord},
	{"FailSignedCertificate", testFailSignedCertificate},
	{"InsertMany", testInsertMany},
	{"HeaderFingerprint", testHeaderFingerprint},
	{"InsertRecordKeyOwner", testInsertRecordKeyOwner},
	{"SerialSpellings", testSerialSpellings},
}

func testCodes(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		for _, id := range []string{"c1", "c2", "old"} {
			c := code(id)
			if id == "old" {
				c.ExpiresAt = t0.Add(-time.Minute)
			}
			if err := tx.InsertCode(c); err != nil {
				return err
			}
		}
		return nil
	})
	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"insert duplicate", func(tx store.Tx) error { return tx.InsertCode(code("c1")) }, store.ErrConflict},
		{"insert without hash", func(tx store.Tx) error { c := code("x"); c.Hash = nil; return tx.InsertCode(c) }, store.ErrInvalid},
		{"insert without expiry", func(tx store.Tx) error { c := code("x"); c.ExpiresAt = time.Time{}; return tx.InsertCode(c) }, store.ErrInvalid},
		{"insert without id", func(tx store.Tx) error { return tx.InsertCode(code("")) }, store.ErrInvalid},
		{"get missing", func(tx store.Tx) error { _, err := tx.GetCode("nope"); return err }, store.ErrNotFound},
		{"claim", func(tx store.Tx) error { return tx.ClaimCode("c1", t0) }, nil},
		{"claim again", func(tx store.Tx) error { return tx.ClaimCode("c1", t0.Add(time.Second)) }, store.ErrCodeUsed},
		{"claim expired", func(tx store.Tx) error { return tx.ClaimCode("old", t0) }, store.ErrCodeExpired},
		{"claim at expiry", func(tx store.Tx) error { return tx.ClaimCode("c2", t0.Add(24*time.Hour)) }, store.ErrCodeExpired},
		{"claim missing", func(tx store.Tx) error { return tx.ClaimCode("nope", t0) }, store.ErrNotFound},
		{"release", func(tx store.Tx) error { return tx.ReleaseCode("c1") }, nil},
		{"claim after release", func(tx store.Tx) error { return tx.ClaimCode("c1", t0.Add(time.Minute)) }, nil},
		{"release missing", func(tx store.Tx) error { return tx.ReleaseCode("nope") }, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, tt.fn)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	err := s.View(ctx, func(tx store.Tx) error {
		c, err := tx.GetCode("c1")
		if err != nil {
			return err
		}
		if c.UsedAt == nil || !c.UsedAt.Equal(t0.Add(time.Minute)) || !bytes.Equal(c.Hash, []byte("h-c1")) ||
			!c.CreatedAt.Equal(t0) || !c.ExpiresAt.Equal(t0.Add(24*time.Hour)) || c.Email != "alice@example.com" {
			t.Errorf("GetCode = %+v", *c)
		}
		c2, err := tx.GetCode("c2")
		if err != nil {
			return err
		}
		if c2.UsedAt != nil {
			t.Errorf("c2 used: %v", c2)
		}
		for _, s := range []string{c.String(), c.GoString(), fmt.Sprintf("%v %+v %#v", c, *c, *c)} {
			if strings.Contains(s, "h-c1") || strings.Contains(s, fmt.Sprint(c.Hash)) {
				t.Errorf("code formatting shows the hash: %s", s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testClaimCodeRace(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCode(code("race")) })
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			errs <- s.Update(ctx, func(tx store.Tx) error { return tx.ClaimCode("race", t0) })
		})
	}
	wg.Wait()
	close(errs)
	won := 0
	for err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrCodeUsed):
			t.Errorf("claim = %v, want nil or ErrCodeUsed", err)
		}
	}
	if won != 1 {
		t.Errorf("%d claims won, want exactly 1", won)
	}
}

// testInsertCertificateClaiming: an enrollment's certificate and the code it spends. The code's
// errors come first; a serial that exists is ErrConflict, and the function's error leaves the
// code unclaimed; the certificate stored is issued, due for its first OCSP response, and its
// code is used with its serial.
func testInsertCertificateClaiming(t *testing.T, h *Harness) {
	s := h.Open(t)
	der := []byte{0x30, 0x03, 0x02, 0x01, 0x01}
	cert := func(serial, code string) store.Certificate {
		return store.Certificate{Serial: serial, Template: "smime-signature", Email: "alice@example.com", Subject: "CN=alice",
			State: store.StateIssued, DER: der, NotBefore: t0, NotAfter: t0.Add(24 * time.Hour), CreatedAt: t0, CodeID: code}
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		for _, id := range []string{"k1", "k2", "k3", "old"} {
			c := code(id)
			if id == "old" {
				c.ExpiresAt = t0.Add(-time.Minute)
			}
			if err := tx.InsertCode(c); err != nil {
				return err
			}
		}
		return tx.InsertCertificate(store.Certificate{Serial: "1e", Template: "smime-signature", Email: "bob@example.com"})
	})
	tests := []struct {
		name    string
		c       store.Certificate
		wantErr error
	}{
		{"no code", cert("10", ""), store.ErrInvalid},
		{"unknown code", cert("10", "nope"), store.ErrNotFound},
		{"expired code", cert("10", "old"), store.ErrCodeExpired},
		{"serial exists", cert("1E", "k2"), store.ErrConflict},
		{"bad certificate", func() store.Certificate { c := cert("10", "k2"); c.Template = ""; return c }(), store.ErrInvalid},
		{"claim", cert("1A", "k1"), nil},
		{"code used", cert("1b", "k1"), store.ErrCodeUsed},
		{"serial exists, code used", cert("1a", "k1"), store.ErrCodeUsed},
		{"pending", func() store.Certificate { c := cert("1c", "k3"); c.State, c.DER = store.StatePending, nil; return c }(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificateClaiming(tt.c, t0) })
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	err := s.View(ctx, func(tx store.Tx) error {
		for id, serial := range map[string]string{"k1": "1a", "k3": "1c"} {
			c, err := tx.GetCode(id)
			if err != nil {
				return err
			}
			if c.UsedAt == nil || !c.UsedAt.Equal(t0) || c.Serial != serial {
				t.Errorf("code %s: used %v, serial %q; want used at %v with serial %s", id, c.UsedAt, c.Serial, t0, serial)
			}
		}
		if c, err := tx.GetCode("k2"); err != nil || c.UsedAt != nil || c.Serial != "" {
			t.Errorf("code k2 of the refused certificate: %+v, %v; want unused", c, err)
		}
		for serial, state := range map[string]string{"1a": store.StateIssued, "1c": store.StatePending} {
			c, err := tx.GetCertificate(serial)
			if err != nil {
				return err
			}
			if c.State != state || c.CodeID != map[string]string{"1a": "k1", "1c": "k3"}[serial] {
				t.Errorf("certificate %s: %+v", serial, c)
			}
		}
		if _, err := tx.GetCertificate("10"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("certificate 10 of the refused calls: %v, want ErrNotFound", err)
		}
		due, err := tx.OCSPDue(t0, t0, "", 10)
		if err != nil {
			return err
		}
		if len(due) != 1 || due[0].Serial != "1a" {
			t.Errorf("due for OCSP: %+v, want 1a alone", due)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// testCertificateStatuses: the statuses of the issued and revoked certificates of a list, in
// its order, each once; pending, failed and unknown serials and bad spellings left out; lists
// longer than one statement's.
func testCertificateStatuses(t *testing.T, h *Harness) {
	s := h.Open(t)
	der := []byte{0x30, 0x03, 0x02, 0x01, 0x01}
	na := t0.Add(24 * time.Hour)
	var many []string
	mustUpdate(t, s, func(tx store.Tx) error {
		for i, state := range []string{store.StateIssued, store.StateRevoked, store.StatePending, store.StateFailed} {
			c := store.Certificate{Serial: fmt.Sprintf("%x", 0x10+i), Template: "t", Email: "a@example.com", State: state,
				NotBefore: t0, NotAfter: na}
			if state == store.StateIssued || state == store.StateRevoked {
				c.DER = der
			}
			if state == store.StateRevoked {
				c.RevokedAt, c.RevocationReason = t0.Add(time.Hour), 1
			}
			if err := tx.InsertCertificate(c); err != nil {
				return err
			}
		}
		for i := range 300 {
			serial := fmt.Sprintf("%x", 0x1000+i)
			many = append(many, serial)
			if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "t", Email: "a@example.com",
				State: store.StateIssued, DER: der, NotBefore: t0, NotAfter: na}); err != nil {
				return err
			}
		}
		return nil
	})
	err := s.View(ctx, func(tx store.Tx) error {
		got, err := tx.CertificateStatuses([]string{"11", "12", "nope!", "99", "10", "13", "0x11", "10"})
		if err != nil {
			return err
		}
		want := []store.CertStatus{
			{Serial: "11", Revoked: true, RevokedAt: t0.Add(time.Hour), Reason: 1, NotAfter: na},
			{Serial: "10", NotAfter: na},
		}
		if len(got) != len(want) {
			t.Fatalf("statuses %+v, want %+v", got, want)
		}
		for i := range want {
			if g, w := got[i], want[i]; g.Serial != w.Serial || g.Revoked != w.Revoked || !g.RevokedAt.Equal(w.RevokedAt) ||
				g.Reason != w.Reason || !g.NotAfter.Equal(w.NotAfter) {
				t.Errorf("status %d: %+v, want %+v", i, g, w)
			}
		}
		got, err = tx.CertificateStatuses(append([]string{"12"}, many...))
		if err != nil {
			return err
		}
		if len(got) != len(many) {
			t.Fatalf("%d statuses of %d issued certificates", len(got), len(many))
		}
		for i, st := range got {
			if st.Serial != many[i] || st.Revoked {
				t.Fatalf("status %d: %+v, want %s good", i, st, many[i])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testCertificates(t *testing.T, h *Harness) {
	s := h.Open(t)
	der := []byte{0x30, 0x03, 0x02, 0x01, 0x01}
	nb, na := t0, t0.Add(365*24*time.Hour)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCode(code("k1")); err != nil {
			return err
		}
		for i, c := range []store.Certificate{
			{Serial: "0A", Template: "smime-encryption", Email: "alice@example.com", CodeID: "k1", RecordID: "r1"},
			{Serial: "0b", Template: "smime-signature", Email: "alice@example.com"},
			{Serial: "0c", Template: "smime-encryption", Email: "bob@example.com"},
			{Serial: "0d", Template: "kra", Email: "kra1@example.com", KRA: "kra1", State: store.StateIssued, DER: der,
				NotBefore: nb, NotAfter: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
		} {
			c.Subject = "CN=" + c.Email
			c.CreatedAt = t0.Add(time.Duration(i) * time.Second)
			if err := tx.InsertCertificate(c); err != nil {
				return err
			}
		}
		return nil
	})

	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"duplicate serial", func(tx store.Tx) error { return tx.InsertCertificate(cert("a")) }, store.ErrConflict},
		{"duplicate serial other spelling", func(tx store.Tx) error { return tx.InsertCertificate(cert("00:0A")) }, store.ErrConflict},
		{"bad serial", func(tx store.Tx) error { return tx.InsertCertificate(cert("xyz")) }, store.ErrInvalid},
		{"bad state", func(tx store.Tx) error { c := cert("e1"); c.State = "weird"; return tx.InsertCertificate(c) }, store.ErrInvalid},
		{"issued without der", func(tx store.Tx) error { c := cert("e2"); c.State = store.StateIssued; return tx.InsertCertificate(c) }, store.ErrInvalid},
		{"no template", func(tx store.Tx) error { c := cert("e3"); c.Template = ""; return tx.InsertCertificate(c) }, store.ErrInvalid},
		{"unknown code", func(tx store.Tx) error { c := cert("e4"); c.CodeID = "nope"; return tx.InsertCertificate(c) }, store.ErrNotFound},
		{"get missing", func(tx store.Tx) error { _, err := tx.GetCertificate("ff"); return err }, store.ErrNotFound},
		{"issue", func(tx store.Tx) error { return tx.SetCertificateIssued("A", der, nb, na) }, nil},
		{"issue again", func(tx store.Tx) error { return tx.SetCertificateIssued("a", der, nb, na) }, store.ErrConflict},
		{"issue missing", func(tx store.Tx) error { return tx.SetCertificateIssued("ff", der, nb, na) }, store.ErrNotFound},
		{"issue without der", func(tx store.Tx) error { return tx.SetCertificateIssued("b", nil, nb, na) }, store.ErrInvalid},
		{"fail issued", func(tx store.Tx) error { return tx.FailCertificate("a") }, store.ErrConflict},
		{"fail pending", func(tx store.Tx) error { return tx.FailCertificate("b") }, nil},
		{"fail missing", func(tx store.Tx) error { return tx.FailCertificate("ff") }, store.ErrNotFound},
		{"revoke pending", func(tx store.Tx) error { return tx.RevokeCertificate("c", store.ReasonUnspecified, t0) }, store.ErrConflict},
		{"revoke issued", func(tx store.Tx) error { return tx.RevokeCertificate("d", store.ReasonSuperseded, t0.Add(time.Hour)) }, nil},
		{"list bad state", func(tx store.Tx) error { _, err := tx.ListCertificates(store.Filter{State: "x"}); return err }, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, tt.fn)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}

	err := s.View(ctx, func(tx store.Tx) error {
		c, err := tx.GetCertificate("0x0A")
		if err != nil {
			return err
		}
		if c.Serial != "a" || c.State != store.StateIssued || !bytes.Equal(c.DER, der) || !c.NotBefore.Equal(nb) ||
			!c.NotAfter.Equal(na) || c.CodeID != "k1" || c.RecordID != "r1" || !c.CreatedAt.Equal(t0) {
			t.Errorf("GetCertificate(a) = %+v", c)
		}
		k, err := tx.GetCode("k1")
		if err != nil {
			return err
		}
		if k.Serial != "a" {
			t.Errorf("code serial %q, want a", k.Serial)
		}
		d, err := tx.GetCertificate("d")
		if err != nil {
			return err
		}
		if d.State != store.StateRevoked || !d.RevokedAt.Equal(t0.Add(time.Hour)) || d.NotAfter.Year() != 9999 || d.KRA != "kra1" {
			t.Errorf("GetCertificate(d) = %+v", d)
		}
		b, err := tx.GetCertificate("b")
		if err != nil {
			return err
		}
		if b.State != store.StateFailed || b.DER != nil || !b.NotBefore.IsZero() {
			t.Errorf("GetCertificate(b) = %+v", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	lists := []struct {
		name string
		f    store.Filter
		want []string
	}{
		{"all", store.Filter{}, []string{"a", "b", "c", "d"}},
		{"by email", store.Filter{Email: "alice@example.com"}, []string{"a", "b"}},
		{"by template", store.Filter{Template: "smime-encryption"}, []string{"a", "c"}},
		{"by state", store.Filter{State: store.StatePending}, []string{"c"}},
		{"combined", store.Filter{Email: "alice@example.com", Template: "smime-encryption", State: store.StateIssued}, []string{"a"}},
		{"limit", store.Filter{Limit: 3}, []string{"a", "b", "c"}},
		{"none", store.Filter{Email: "nobody@example.com"}, nil},
	}
	for _, tt := range lists {
		t.Run("list "+tt.name, func(t *testing.T) {
			err := s.View(ctx, func(tx store.Tx) error {
				l, err := tx.ListCertificates(tt.f)
				var got []string
				for _, c := range l {
					got = append(got, c.Serial)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("ListCertificates(%+v) = %v, want %v", tt.f, got, tt.want)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func testRecoverySets(t *testing.T, h *Harness) {
	s := h.Open(t)
	err := s.View(ctx, func(tx store.Tx) error { _, err := tx.CurrentRecoverySet(); return err })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("CurrentRecoverySet on an empty store = %v, want ErrNotFound", err)
	}
	tests := []struct {
		name      string
		rs        store.RecoverySet
		wantEpoch uint32
		wantErr   error
	}{
		{name: "first", rs: recoverySet("0A", "b", "c"), wantEpoch: 1},
		{name: "second", rs: recoverySet("c", "d"), wantEpoch: 2},
		{name: "quorum too high", rs: store.RecoverySet{Quorum: 3, KRASerials: []string{"a", "b"}, CreatedBy: "x"}, wantErr: store.ErrInvalid},
		{name: "quorum zero", rs: store.RecoverySet{Quorum: 0, KRASerials: []string{"a"}, CreatedBy: "x"}, wantErr: store.ErrInvalid},
		{name: "no KRAs", rs: store.RecoverySet{Quorum: 1, CreatedBy: "x"}, wantErr: store.ErrInvalid},
		{name: "KRA twice", rs: recoverySet("a", "0A"), wantErr: store.ErrInvalid},
		{name: "bad serial", rs: recoverySet("a", "zz"), wantErr: store.ErrInvalid},
		{name: "no creator", rs: store.RecoverySet{Quorum: 1, KRASerials: []string{"a"}}, wantErr: store.ErrInvalid},
		{name: "third", rs: store.RecoverySet{Quorum: 1, KRASerials: []string{"e"}, CreatedBy: "x"}, wantEpoch: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var epoch uint32
			err := s.Update(ctx, func(tx store.Tx) (err error) {
				epoch, err = tx.InsertRecoverySet(tt.rs)
				return err
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if epoch != tt.wantEpoch {
				t.Errorf("epoch %d, want %d", epoch, tt.wantEpoch)
			}
		})
	}
	err = s.View(ctx, func(tx store.Tx) error {
		cur, err := tx.CurrentRecoverySet()
		if err != nil {
			return err
		}
		if cur.Epoch != 3 || cur.Quorum != 1 || fmt.Sprint(cur.KRASerials) != "[e]" {
			t.Errorf("current = %+v", cur)
		}
		first, err := tx.GetRecoverySet(1)
		if err != nil {
			return err
		}
		if first.Epoch != 1 || first.Quorum != 2 || fmt.Sprint(first.KRASerials) != "[a b c]" ||
			!first.CreatedAt.Equal(t0) || first.CreatedBy != "admin" {
			t.Errorf("epoch 1 = %+v", first)
		}
		if _, err := tx.GetRecoverySet(9); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetRecoverySet(9) = %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testRecords(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		return tx.InsertRecord(record("r1", "0AB"))
	})
	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"insert second", func(tx store.Tx) error {
			r := record("r2", "")
			r.CreatedAt = t0.Add(time.Second)
			return tx.InsertRecord(r)
		}, nil},
		{"insert third no serial", func(tx store.Tx) error {
			r := record("r3", "")
			r.CreatedAt = t0.Add(2 * time.Second)
			return tx.InsertRecord(r)
		}, nil},
		{"duplicate id", func(tx store.Tx) error { return tx.InsertRecord(record("r1", "ff")) }, store.ErrConflict},
		{"duplicate serial", func(tx store.Tx) error { return tx.InsertRecord(record("r9", "ab")) }, store.ErrConflict},
		{"unknown epoch", func(tx store.Tx) error { r := record("r9", "f1"); r.Epoch = 5; return tx.InsertRecord(r) }, store.ErrNotFound},
		{"epoch zero", func(tx store.Tx) error { r := record("r9", "f1"); r.Epoch = 0; return tx.InsertRecord(r) }, store.ErrInvalid},
		{"empty blob", func(tx store.Tx) error { r := record("r9", "f1"); r.Blob = nil; return tx.InsertRecord(r) }, store.ErrInvalid},
		{"bad state", func(tx store.Tx) error { r := record("r9", "f1"); r.State = "x"; return tx.InsertRecord(r) }, store.ErrInvalid},
		{"get missing", func(tx store.Tx) error { _, err := tx.GetRecord("nope"); return err }, store.ErrNotFound},
		{"get by missing serial", func(tx store.Tx) error { _, err := tx.GetRecordBySerial("f00"); return err }, store.ErrNotFound},
		{"activate", func(tx store.Tx) error { return tx.ActivateRecord("r1") }, nil},
		{"activate again", func(tx store.Tx) error { return tx.ActivateRecord("r1") }, nil},
		{"activate missing", func(tx store.Tx) error { return tx.ActivateRecord("nope") }, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, tt.fn)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	err := s.View(ctx, func(tx store.Tx) error {
		r, err := tx.GetRecordBySerial("00:AB")
		if err != nil {
			return err
		}
		if r.ID != "r1" || r.State != store.StateActive || r.Epoch != 1 || string(r.Blob) != "sealed-r1" || !r.CreatedAt.Equal(t0) {
			t.Errorf("GetRecordBySerial = %+v", r)
		}
		r2, err := tx.GetRecord("r2")
		if err != nil {
			return err
		}
		if r2.Serial != "" || r2.State != store.StatePending {
			t.Errorf("GetRecord(r2) = %+v", r2)
		}
		l, err := tx.ListRecords("alice@example.com")
		if err != nil {
			return err
		}
		if len(l) != 3 || l[0].ID != "r1" || l[2].ID != "r3" {
			t.Errorf("ListRecords = %+v", l)
		}
		if l, _ := tx.ListRecords("nobody@example.com"); len(l) != 0 {
			t.Errorf("ListRecords(nobody) = %v", l)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testPending(t *testing.T, h *Harness) {
	s := h.Open(t)
	p := func(id string, at time.Time) store.Pending {
		return store.Pending{ID: id, Template: "kra", Email: "kra@example.com", Requester: "kra1", CSR: []byte("csr-" + id), CreatedAt: at}
	}
	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"insert p1", func(tx store.Tx) error { return tx.InsertPending(p("p1", t0)) }, nil},
		{"insert p2", func(tx store.Tx) error { return tx.InsertPending(p("p2", t0.Add(time.Second))) }, nil},
		{"insert p3", func(tx store.Tx) error { return tx.InsertPending(p("p3", t0.Add(2*time.Second))) }, nil},
		{"duplicate", func(tx store.Tx) error { return tx.InsertPending(p("p1", t0)) }, store.ErrConflict},
		{"no csr", func(tx store.Tx) error { x := p("p9", t0); x.CSR = nil; return tx.InsertPending(x) }, store.ErrInvalid},
		{"get missing", func(tx store.Tx) error { _, err := tx.GetPending("nope"); return err }, store.ErrNotFound},
		{"issue", func(tx store.Tx) error {
			return tx.DecidePendingAt("p1", store.StateIssued, "admin", "0x0F", t0.Add(time.Hour))
		}, nil},
		{"decide again", func(tx store.Tx) error { return tx.DecidePending("p1", store.StateDenied, "admin", "") }, store.ErrConflict},
		{"deny", func(tx store.Tx) error { return tx.DecidePending("p2", store.StateDenied, "admin", "") }, nil},
		{"issue without serial", func(tx store.Tx) error { return tx.DecidePending("p3", store.StateIssued, "admin", "") }, store.ErrInvalid},
		{"deny with serial", func(tx store.Tx) error { return tx.DecidePending("p3", store.StateDenied, "admin", "ab") }, store.ErrInvalid},
		{"decide to pending", func(tx store.Tx) error { return tx.DecidePending("p3", store.StatePending, "admin", "") }, store.ErrInvalid},
		{"decide without decider", func(tx store.Tx) error { return tx.DecidePending("p3", store.StateDenied, "", "") }, store.ErrInvalid},
		{"decide missing", func(tx store.Tx) error { return tx.DecidePending("nope", store.StateDenied, "admin", "") }, store.ErrNotFound},
		{"list bad state", func(tx store.Tx) error { _, err := tx.ListPending("x"); return err }, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, tt.fn)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	err := s.View(ctx, func(tx store.Tx) error {
		got, err := tx.GetPending("p1")
		if err != nil {
			return err
		}
		if got.State != store.StateIssued || got.Serial != "f" || got.DecidedBy != "admin" ||
			!got.DecidedAt.Equal(t0.Add(time.Hour)) || string(got.CSR) != "csr-p1" || !got.CreatedAt.Equal(t0) {
			t.Errorf("GetPending(p1) = %+v", got)
		}
		for state, want := range map[string]string{"": "[p1 p2 p3]", store.StatePending: "[p3]", store.StateDenied: "[p2]", store.StateIssued: "[p1]"} {
			l, err := tx.ListPending(state)
			if err != nil {
				return err
			}
			var ids []string
			for _, x := range l {
				ids = append(ids, x.ID)
			}
			if fmt.Sprint(ids) != want {
				t.Errorf("ListPending(%q) = %v, want %s", state, ids, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testSweepPending(t *testing.T, h *Harness) {
	s := h.Open(t)
	old, recent := t0.Add(-time.Hour), t0.Add(time.Minute)
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		for _, id := range []string{"k-old", "k-new", "k-moved"} {
			if err := tx.InsertCode(code(id)); err != nil {
				return err
			}
			if err := tx.ClaimCode(id, t0); err != nil {
				return err
			}
		}
		for _, c := range []store.Certificate{
			{Serial: "1", CodeID: "k-old", RecordID: "r-old", CreatedAt: old},
			{Serial: "2", CodeID: "k-new", RecordID: "r-new", CreatedAt: recent},
			{Serial: "3", CodeID: "k-moved", CreatedAt: old}, // its code then moves on to certificate 4
			{Serial: "4", CodeID: "k-moved", CreatedAt: old, State: store.StateIssued, DER: []byte{1}},
		} {
			c.Template, c.Email = "smime-encryption", "alice@example.com"
			if err := tx.InsertCertificate(c); err != nil {
				return err
			}
		}
		for _, r := range []store.Record{record("r-old", "1"), record("r-new", "2")} {
			if r.ID == "r-old" {
				r.CreatedAt = old
			} else {
				r.CreatedAt = recent
			}
			if err := tx.InsertRecord(r); err != nil {
				return err
			}
		}
		return nil
	})
	var sw store.Swept
	mustUpdate(t, s, func(tx store.Tx) (err error) { sw, err = tx.SweepPending(t0); return err })
	if want := (store.Swept{Certificates: 2, Codes: 1, Records: 1}); sw != want {
		t.Errorf("SweepPending = %+v, want %+v", sw, want)
	}
	err := s.View(ctx, func(tx store.Tx) error {
		for serial, want := range map[string]string{"1": store.StateFailed, "2": store.StatePending, "3": store.StateFailed, "4": store.StateIssued} {
			c, err := tx.GetCertificate(serial)
			if err != nil {
				return err
			}
			if c.State != want {
				t.Errorf("certificate %s is %s, want %s", serial, c.State, want)
			}
		}
		for id, wantUsed := range map[string]bool{"k-old": false, "k-new": true, "k-moved": true} {
			c, err := tx.GetCode(id)
			if err != nil {
				return err
			}
			if (c.UsedAt != nil) != wantUsed {
				t.Errorf("code %s used = %v, want %v", id, c.UsedAt != nil, wantUsed)
			}
		}
		for id, want := range map[string]string{"r-old": store.StateAbandoned, "r-new": store.StatePending} {
			r, err := tx.GetRecord(id)
			if err != nil {
				return err
			}
			if r.State != want {
				t.Errorf("record %s is %s, want %s", id, r.State, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A swept record can no longer be activated.
	err = s.Update(ctx, func(tx store.Tx) error { return tx.ActivateRecord("r-old") })
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("ActivateRecord(abandoned) = %v, want ErrConflict", err)
	}
}

func testFailCertificateReleasesCodeAndRecord(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		if err := tx.InsertCode(code("k")); err != nil {
			return err
		}
		if err := tx.ClaimCode("k", t0); err != nil {
			return err
		}
		if err := tx.InsertRecord(record("r", "5")); err != nil {
			return err
		}
		c := cert("5")
		c.CodeID, c.RecordID = "k", "r"
		if err := tx.InsertCertificate(c); err != nil {
			return err
		}
		return tx.FailCertificate("5")
	})
	err := s.View(ctx, func(tx store.Tx) error {
		k, err := tx.GetCode("k")
		if err != nil {
			return err
		}
		r, err := tx.GetRecord("r")
		if err != nil {
			return err
		}
		if k.UsedAt != nil || k.Serial != "" || r.State != store.StateAbandoned {
			t.Errorf("after FailCertificate: code %v serial %q, record %s", k, k.Serial, r.State)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// testInsertMany: rows inserted many at a time land whole, for every size around the ways a
// backend may split them into statements (none, one, a few, 31 to 33, many), and a duplicate
// anywhere in a batch gives a conflict and, returned by the function, stores none of it.
func testInsertMany(t *testing.T, h *Harness) {
	s := h.Open(t)
	next := 0
	for _, n := range []int{0, 1, 2, 31, 32, 33, 77} {
		certs := make([]store.Certificate, n)
		for i := range certs {
			next++
			certs[i] = cert(fmt.Sprintf("%x", 0x1000+next))
			certs[i].Email = fmt.Sprintf("u%d@example.com", next)
		}
		err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificates(certs) })
		if err != nil {
			t.Fatalf("%d rows: %v", n, err)
		}
		for _, c := range certs {
			var got *store.Certificate
			err := s.View(ctx, func(tx store.Tx) (err error) {
				got, err = tx.GetCertificate(c.Serial)
				return err
			})
			if err != nil || got.Email != c.Email || got.State != store.StatePending {
				t.Fatalf("%d rows: certificate %s: %v %+v", n, c.Serial, err, got)
			}
		}
	}
	var all []store.Certificate
	err := s.View(ctx, func(tx store.Tx) (err error) {
		all, err = tx.ListCertificates(store.Filter{})
		return err
	})
	if err != nil || len(all) != next {
		t.Fatalf("%d certificates stored (%v), want %d", len(all), err, next)
	}

	dup := []store.Certificate{cert("aaaa01"), cert("aaaa02"), cert(fmt.Sprintf("%x", 0x1000+5)), cert("aaaa03")}
	err = s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificates(dup) })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("batch with a stored serial: %v, want a conflict", err)
	}
	err = s.View(ctx, func(tx store.Tx) error {
		_, err := tx.GetCertificate("aaaa01")
		return err
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused batch left a row: %v", err)
	}
}

// testSerialSpellings: every method that takes a serial normalises it, so any accepted spelling
// reaches the same row, and what comes back is the canonical form.
func testSerialSpellings(t *testing.T, h *Harness) {
	s := h.Open(t)
	der := []byte{0x30, 0x03, 0x02, 0x01, 0xab}
	steps := []struct {
		name string
		fn   func(store.Tx) error
	}{
		{"insert", func(tx store.Tx) error { c := cert("0x00AB"); c.CodeID = "k"; return tx.InsertCertificate(c) }},
		{"insert pending 2", func(tx store.Tx) error { return tx.InsertCertificate(cert("00:CD")) }},
		{"issue", func(tx store.Tx) error { return tx.SetCertificateIssued("00:ab", der, t0, t0.AddDate(1, 0, 0)) }},
		{"revoke", func(tx store.Tx) error {
			return tx.RevokeCertificate("AB", store.ReasonKeyCompromise, t0.Add(time.Hour))
		}},
		{"fail", func(tx store.Tx) error { return tx.FailCertificate("0XCD") }},
		{"record", func(tx store.Tx) error { return tx.InsertRecord(record("r", "0x0ab")) }},
		{"pending", func(tx store.Tx) error {
			return tx.InsertPending(store.Pending{ID: "p", Template: "kra", Requester: "kra1", CSR: []byte{1}})
		}},
		{"decide", func(tx store.Tx) error { return tx.DecidePendingAt("p", store.StateIssued, "admin", "00:AB", t0) }},
		{"job", func(tx store.Tx) error {
			return tx.InsertJob(store.Job{ID: "j", Kind: "enroll", Template: "t", SubmittedBy: "a", Input: "f"})
		}},
		{"reserve", func(tx store.Tx) error { return tx.ReserveJobItem("j", 1, "0x00EF", "") }},
		{"done", func(tx store.Tx) error { return tx.InsertJobItemDone("j", 2, "0:0:F:0", "") }},
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCode(code("k")); err != nil {
			return err
		}
		_, err := tx.InsertRecoverySet(recoverySet("0x0A", "00:0b"))
		return err
	})
	for _, st := range steps {
		if err := s.Update(ctx, st.fn); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(cert("0:A:b")) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("insert of a serial stored under another spelling: %v, want ErrConflict", err)
	}
	mustView(t, s, func(tx store.Tx) error {
		for _, spelling := range []string{"ab", "AB", "0xab", "0X00AB", "00:ab", " ab\n"} {
			c, err := tx.GetCertificate(spelling)
			if err != nil || c.Serial != "ab" || c.State != store.StateRevoked {
				t.Errorf("GetCertificate(%q) = %+v, %v; want ab, revoked", spelling, c, err)
			}
			r, err := tx.GetRecordBySerial(spelling)
			if err != nil || r.Serial != "ab" {
				t.Errorf("GetRecordBySerial(%q) = %+v, %v", spelling, r, err)
			}
		}
		if c, err := tx.GetCertificate("cd"); err != nil || c.State != store.StateFailed {
			t.Errorf("GetCertificate(cd) = %+v, %v; want failed", c, err)
		}
		if k, err := tx.GetCode("k"); err != nil || k.Serial != "ab" {
			t.Errorf("code serial = %+v, %v; want ab", k, err)
		}
		if p, err := tx.GetPending("p"); err != nil || p.Serial != "ab" {
			t.Errorf("pending serial = %+v, %v; want ab", p, err)
		}
		if rs, err := tx.GetRecoverySet(1); err != nil || fmt.Sprint(rs.KRASerials) != "[a b]" {
			t.Errorf("recovery set serials = %+v, %v; want [a b]", rs, err)
		}
		var serials []string
		err := tx.JobItems("j", 0, 0, func(it store.JobItem) error { serials = append(serials, it.Serial); return nil })
		if err != nil || fmt.Sprint(serials) != "[ef f0]" {
			t.Errorf("job item serials = %v, %v; want [ef f0]", serials, err)
		}
		for _, bad := range []string{"", "xyz", "-1", "0x"} {
			if _, err := tx.GetCertificate(bad); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("GetCertificate(%q) = %v, want ErrInvalid", bad, err)
			}
		}
		return nil
	})
}
