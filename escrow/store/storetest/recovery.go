package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Recovery requests, KRA approvals and their rate limit, and resealing records to a newer
// recovery set.
var recoveryTests = []test{
	{"Recoveries", testRecoveries},
	{"ExpireRecoveries", testExpireRecoveries},
	{"Approvals", testApprovals},
	{"ApprovalFailures", testApprovalFailures},
	{"Reseal", testReseal},
}

func recovery(id string, records ...string) store.Recovery {
	return store.Recovery{ID: id, Requester: "officer", RequesterSerial: "0A", RequesterMailbox: "officer@example.com",
		Reason: "lost laptop", KeyLabel: "recovery-" + id, KeySPKI: []byte("spki-" + id), OAEPHash: "SHA-256",
		CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), Records: records}
}

// withRecords stores recovery set 1 and active records of the given IDs.
func withRecords(t *testing.T, s store.Store, ids ...string) {
	t.Helper()
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		for i, id := range ids {
			r := record(id, "")
			r.State, r.CreatedAt = store.StateActive, t0.Add(time.Duration(i)*time.Second)
			if err := tx.InsertRecord(r); err != nil {
				return err
			}
		}
		return nil
	})
}

func testRecoveries(t *testing.T, h *Harness) {
	s := h.Open(t)
	withRecords(t, s, "r1", "r2", "r3")
	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"insert", func(tx store.Tx) error { return tx.InsertRecovery(recovery("q1", "r3", "r1")) }, nil},
		{"insert reseal", func(tx store.Tx) error {
			q := recovery("q2", "r2")
			q.Kind, q.CreatedAt = store.KindReseal, t0.Add(time.Minute)
			return tx.InsertRecovery(q)
		}, nil},
		{"duplicate", func(tx store.Tx) error { return tx.InsertRecovery(recovery("q1", "r2")) }, store.ErrConflict},
		{"unknown record", func(tx store.Tx) error { return tx.InsertRecovery(recovery("q9", "r1", "nope")) }, store.ErrNotFound},
		{"no records", func(tx store.Tx) error { return tx.InsertRecovery(recovery("q9")) }, store.ErrInvalid},
		{"no key label", func(tx store.Tx) error { q := recovery("q9", "r1"); q.KeyLabel = ""; return tx.InsertRecovery(q) }, store.ErrInvalid},
		{"no recovery key", func(tx store.Tx) error { q := recovery("q9", "r1"); q.KeySPKI = nil; return tx.InsertRecovery(q) }, store.ErrInvalid},
		{"no expiry", func(tx store.Tx) error {
			q := recovery("q9", "r1")
			q.ExpiresAt = time.Time{}
			return tx.InsertRecovery(q)
		}, store.ErrInvalid},
		{"get missing", func(tx store.Tx) error { _, err := tx.GetRecovery("nope"); return err }, store.ErrNotFound},
		{"close", func(tx store.Tx) error { return tx.CloseRecovery("q1", store.RecoveryConsumed, t0.Add(2*time.Minute)) }, nil},
		{"consume again", func(tx store.Tx) error { return tx.CloseRecovery("q1", store.RecoveryConsumed, t0.Add(3*time.Minute)) }, store.ErrConflict},
		{"cancel consumed", func(tx store.Tx) error { return tx.CloseRecovery("q1", store.RecoveryCancelled, t0) }, store.ErrConflict},
		{"close to open", func(tx store.Tx) error { return tx.CloseRecovery("q2", store.RecoveryOpen, t0) }, store.ErrInvalid},
		{"close missing", func(tx store.Tx) error { return tx.CloseRecovery("nope", store.RecoveryCancelled, t0) }, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Update(ctx, tt.fn); !is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	mustView(t, s, func(tx store.Tx) error {
		q, err := tx.GetRecovery("q1")
		if err != nil {
			return err
		}
		want := recovery("q1", "r3", "r1")
		if q.Kind != store.KindRecover || q.State != store.RecoveryConsumed || fmt.Sprint(q.Records) != "[r3 r1]" ||
			!q.ClosedAt.Equal(t0.Add(2*time.Minute)) || !q.CreatedAt.Equal(t0) || !q.ExpiresAt.Equal(want.ExpiresAt) ||
			q.Requester != want.Requester || q.RequesterSerial != want.RequesterSerial || q.RequesterMailbox != want.RequesterMailbox ||
			q.Reason != want.Reason || q.KeyLabel != want.KeyLabel || string(q.KeySPKI) != string(want.KeySPKI) || q.OAEPHash != want.OAEPHash {
			t.Errorf("GetRecovery(q1) = %+v", q)
		}
		q2, err := tx.GetRecovery("q2")
		if err != nil {
			return err
		}
		if q2.Kind != store.KindReseal || q2.State != store.RecoveryOpen || !q2.ClosedAt.IsZero() {
			t.Errorf("GetRecovery(q2) = %+v", q2)
		}
		for state, want := range map[string]string{"": "[q2 q1]", store.RecoveryOpen: "[q2]", store.RecoveryConsumed: "[q1]", store.RecoveryExpired: "[]"} {
			l, err := tx.ListRecoveries(state)
			if err != nil {
				return err
			}
			ids := []string{}
			for _, q := range l {
				ids = append(ids, q.ID)
			}
			if fmt.Sprint(ids) != want {
				t.Errorf("ListRecoveries(%q) = %v, want %s (newest first)", state, ids, want)
			}
		}
		return nil
	})
}

// testExpireRecoveries: open requests whose expiry is at or before now expire, once; closed
// ones stay as they are.
func testExpireRecoveries(t *testing.T, h *Harness) {
	s := h.Open(t)
	withRecords(t, s, "r1")
	mustUpdate(t, s, func(tx store.Tx) error {
		for i, id := range []string{"early", "at", "late", "closed"} {
			q := recovery(id, "r1")
			q.ExpiresAt = t0.Add(time.Duration(i) * time.Hour)
			if id == "closed" {
				q.ExpiresAt = t0
			}
			if err := tx.InsertRecovery(q); err != nil {
				return err
			}
		}
		return tx.CloseRecovery("closed", store.RecoveryCancelled, t0)
	})
	var expired []store.Recovery
	mustUpdate(t, s, func(tx store.Tx) (err error) { expired, err = tx.ExpireRecoveries(t0.Add(time.Hour)); return err })
	got := map[string]bool{}
	for _, q := range expired {
		got[q.ID] = true
		if q.KeyLabel != "recovery-"+q.ID {
			t.Errorf("expired request %s: key label %q (the caller destroys the key by it)", q.ID, q.KeyLabel)
		}
	}
	if len(expired) != 2 || !got["early"] || !got["at"] {
		t.Errorf("ExpireRecoveries = %v, want early and at", got)
	}
	mustUpdate(t, s, func(tx store.Tx) (err error) { expired, err = tx.ExpireRecoveries(t0.Add(time.Hour)); return err })
	if len(expired) != 0 {
		t.Errorf("second ExpireRecoveries = %d requests, want none", len(expired))
	}
	mustView(t, s, func(tx store.Tx) error {
		for id, want := range map[string]string{"early": store.RecoveryExpired, "at": store.RecoveryExpired,
			"late": store.RecoveryOpen, "closed": store.RecoveryCancelled} {
			q, err := tx.GetRecovery(id)
			if err != nil {
				return err
			}
			if q.State != want {
				t.Errorf("request %s is %s, want %s", id, q.State, want)
			}
		}
		return nil
	})
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.CloseRecovery("early", store.RecoveryConsumed, t0) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("consuming an expired request = %v, want ErrConflict", err)
	}
}

func approval(recoveryID, kra string, at time.Time) store.Approval {
	return store.Approval{RecoveryID: recoveryID, KRA: kra, SignerSerial: "5" + kra[len(kra)-1:], Shares: []byte("shares-" + kra),
		Signature: []byte("sig-" + kra), CreatedAt: at}
}

func testApprovals(t *testing.T, h *Harness) {
	s := h.Open(t)
	withRecords(t, s, "r1")
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertRecovery(recovery("q1", "r1")); err != nil {
			return err
		}
		return tx.InsertRecovery(recovery("q2", "r1"))
	})
	tests := []struct {
		name    string
		a       store.Approval
		wantErr error
	}{
		{"first", approval("q1", "kra2", t0), nil},
		{"second", approval("q1", "kra1", t0.Add(time.Minute)), nil},
		{"same KRA on another request", approval("q2", "kra1", t0), nil},
		{"same KRA again", approval("q1", "kra2", t0.Add(2*time.Minute)), store.ErrConflict},
		{"unknown request", approval("nope", "kra1", t0), store.ErrNotFound},
		{"no shares", store.Approval{RecoveryID: "q1", KRA: "kra3", SignerSerial: "53", Signature: []byte("s")}, store.ErrInvalid},
		{"no signature", store.Approval{RecoveryID: "q1", KRA: "kra3", SignerSerial: "53", Shares: []byte("s")}, store.ErrInvalid},
		{"no KRA", store.Approval{RecoveryID: "q1", SignerSerial: "53", Shares: []byte("s"), Signature: []byte("s")}, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertApproval(tt.a) }); !is(err, tt.wantErr) {
				t.Fatalf("InsertApproval = %v, want %v", err, tt.wantErr)
			}
		})
	}
	mustView(t, s, func(tx store.Tx) error {
		l, err := tx.ListApprovals("q1")
		if err != nil {
			return err
		}
		if len(l) != 2 || l[0].KRA != "kra2" || l[1].KRA != "kra1" {
			t.Fatalf("ListApprovals(q1) = %+v, want kra2 then kra1", l)
		}
		want := approval("q1", "kra2", t0)
		if a := l[0]; a.RecoveryID != "q1" || a.SignerSerial != want.SignerSerial || string(a.Shares) != string(want.Shares) ||
			string(a.Signature) != string(want.Signature) || !a.CreatedAt.Equal(t0) {
			t.Errorf("approval %+v, want %+v", a, want)
		}
		if l, err := tx.ListApprovals("nope"); err != nil || len(l) != 0 {
			t.Errorf("ListApprovals(nope) = %v, %v", l, err)
		}
		return nil
	})
}

// testApprovalFailures: refused approvals are counted per KRA from a time on, and those before
// forgetBefore are forgotten when the next is added.
func testApprovalFailures(t *testing.T, h *Harness) {
	s := h.Open(t)
	for i := range 3 {
		mustUpdate(t, s, func(tx store.Tx) error {
			return tx.AddApprovalFailure("kra1", t0.Add(time.Duration(i)*time.Minute), t0.Add(-time.Hour))
		})
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.AddApprovalFailure("kra2", t0, t0.Add(-time.Hour)) })
	count := func(kra string, since time.Time) int {
		var n int
		mustView(t, s, func(tx store.Tx) (err error) { n, err = tx.ApprovalFailures(kra, since); return err })
		return n
	}
	if n := count("kra1", t0.Add(time.Minute)); n != 2 {
		t.Errorf("failures of kra1 since t0+1m = %d, want 2", n)
	}
	if n := count("kra1", t0.Add(-time.Hour)); n != 3 {
		t.Errorf("failures of kra1 since t0-1h = %d, want 3", n)
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		return tx.AddApprovalFailure("kra1", t0.Add(3*time.Minute), t0.Add(90*time.Second))
	})
	if n := count("kra1", t0.Add(-time.Hour)); n != 2 {
		t.Errorf("failures of kra1 after forgetting those before t0+90s = %d, want 2", n)
	}
	if n := count("kra2", t0.Add(-time.Hour)); n != 1 {
		t.Errorf("failures of kra2 = %d, want 1 (another KRA's are not forgotten)", n)
	}
	if n := count("kra3", t0.Add(-time.Hour)); n != 0 {
		t.Errorf("failures of kra3 = %d, want 0", n)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddApprovalFailure("", t0, t0) }); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("AddApprovalFailure without a KRA = %v, want ErrInvalid", err)
	}
}

// testReseal: the active records of older epochs are found oldest first, and each is resealed
// once, from the epoch it is sealed to.
func testReseal(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustView(t, s, func(tx store.Tx) error {
		if _, err := tx.CurrentRecoverySet(); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("CurrentRecoverySet of none = %v, want ErrNotFound", err)
		}
		if e, err := tx.CurrentEpoch(); err != nil || e != 0 {
			t.Errorf("CurrentEpoch of none = %d, %v; want 0, nil", e, err)
		}
		return nil
	})
	mustUpdate(t, s, func(tx store.Tx) error {
		for range 3 {
			if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
				return err
			}
		}
		// Inserted in another order than created: "old" was created first.
		for _, r := range []struct {
			id, state string
			epoch     uint32
			at        int
		}{{"new", store.StateActive, 2, 1}, {"old", store.StateActive, 1, 0}, {"pending", store.StatePending, 1, 3},
			{"current", store.StateActive, 3, 4}, {"abandoned", store.StateAbandoned, 1, 5}, {"older", store.StateActive, 1, 2}} {
			rec := record(r.id, "")
			rec.State, rec.Epoch, rec.CreatedAt = r.state, r.epoch, t0.Add(time.Duration(r.at)*time.Second)
			if err := tx.InsertRecord(rec); err != nil {
				return err
			}
		}
		return nil
	})
	idsOf := func(epoch, only uint32, limit int) string {
		var l []store.Record
		mustView(t, s, func(tx store.Tx) (err error) { l, err = tx.RecordsBeforeEpoch(epoch, only, limit); return err })
		out := []string{}
		for _, r := range l {
			out = append(out, r.ID)
		}
		return fmt.Sprint(out)
	}
	ids := func(epoch uint32, limit int) string { return idsOf(epoch, 0, limit) }
	mustView(t, s, func(tx store.Tx) error {
		if e, err := tx.CurrentEpoch(); err != nil || e != 3 {
			t.Errorf("CurrentEpoch = %d, %v; want 3", e, err)
		}
		return nil
	})
	if got := ids(3, 10); got != "[old new older]" {
		t.Errorf("RecordsBeforeEpoch(3, 10) = %s, want [old new older]", got)
	}
	if got := ids(3, 2); got != "[old new]" {
		t.Errorf("RecordsBeforeEpoch(3, 2) = %s, want [old new]", got)
	}
	if got := ids(2, 10); got != "[old older]" {
		t.Errorf("RecordsBeforeEpoch(2, 10) = %s, want [old older]", got)
	}
	for _, tt := range []struct {
		only  uint32
		limit int
		want  string
	}{{2, 10, "[new]"}, {1, 10, "[old older]"}, {1, 1, "[old]"}, {3, 10, "[]"}, {7, 10, "[]"}} {
		if got := idsOf(3, tt.only, tt.limit); got != tt.want {
			t.Errorf("RecordsBeforeEpoch(3, only %d, %d) = %s, want %s", tt.only, tt.limit, got, tt.want)
		}
	}
	tests := []struct {
		name     string
		id       string
		from, to uint32
		blob     []byte
		wantErr  error
	}{
		{"reseal", "old", 1, 3, []byte("resealed-old"), nil},
		{"reseal again", "old", 1, 3, []byte("resealed-old-2"), store.ErrConflict},
		{"from the wrong epoch", "new", 1, 3, []byte("x"), store.ErrConflict},
		{"pending record", "pending", 1, 3, []byte("x"), store.ErrConflict},
		{"abandoned record", "abandoned", 1, 3, []byte("x"), store.ErrConflict},
		{"unknown record", "nope", 1, 3, []byte("x"), store.ErrConflict},
		{"to an older epoch", "new", 2, 1, []byte("x"), store.ErrInvalid},
		{"no blob", "new", 2, 3, nil, store.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(ctx, func(tx store.Tx) error { return tx.ResealRecord(tt.id, tt.from, tt.to, tt.blob) })
			if !is(err, tt.wantErr) {
				t.Fatalf("ResealRecord = %v, want %v", err, tt.wantErr)
			}
		})
	}
	mustView(t, s, func(tx store.Tx) error {
		r, err := tx.GetRecord("old")
		if err != nil {
			return err
		}
		if r.Epoch != 3 || string(r.Blob) != "resealed-old" || r.State != store.StateActive {
			t.Errorf("resealed record = %+v", r)
		}
		return nil
	})
	if got := ids(3, 10); got != "[new older]" {
		t.Errorf("RecordsBeforeEpoch(3, 10) after a reseal = %s, want [new older]", got)
	}
}
