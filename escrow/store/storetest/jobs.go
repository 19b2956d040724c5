package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Bulk jobs and their items.
var jobTests = []test{
	{"Jobs", testJobs},
	{"JobItems", testJobItems},
	{"JobRecovery", testJobRecovery},
}

func job(id, kind string, at time.Time) store.Job {
	return store.Job{ID: id, Kind: kind, Template: "smime-encryption", SubmittedBy: "admin", Input: "/var/lib/keyarc/jobs/" + id,
		Total: 10, CreatedAt: at}
}

func testJobs(t *testing.T, h *Harness) {
	s := h.Open(t)
	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"insert", func(tx store.Tx) error {
			j := job("j1", "keygen", t0)
			j.SecretKey = []byte("wrapped")
			return tx.InsertJob(j)
		}, nil},
		{"insert second", func(tx store.Tx) error { return tx.InsertJob(job("j2", "import", t0.Add(time.Second))) }, nil},
		{"insert third", func(tx store.Tx) error { return tx.InsertJob(job("j3", "enroll", t0.Add(2*time.Second))) }, nil},
		{"duplicate", func(tx store.Tx) error { return tx.InsertJob(job("j1", "enroll", t0)) }, store.ErrConflict},
		{"bad kind", func(tx store.Tx) error { return tx.InsertJob(job("j9", "frobnicate", t0)) }, store.ErrInvalid},
		{"bad state", func(tx store.Tx) error { j := job("j9", "enroll", t0); j.State = "x"; return tx.InsertJob(j) }, store.ErrInvalid},
		{"no input", func(tx store.Tx) error { j := job("j9", "enroll", t0); j.Input = ""; return tx.InsertJob(j) }, store.ErrInvalid},
		{"get missing", func(tx store.Tx) error { _, err := tx.GetJob("nope"); return err }, store.ErrNotFound},
		{"start", func(tx store.Tx) error { return tx.StartJob("j1", t0.Add(time.Minute)) }, nil},
		{"start running", func(tx store.Tx) error { return tx.StartJob("j1", t0.Add(2*time.Minute)) }, nil},
		{"finish bad state", func(tx store.Tx) error { return tx.FinishJob("j1", store.JobRunning, 0, 0, t0) }, store.ErrInvalid},
		{"finish", func(tx store.Tx) error { return tx.FinishJob("j1", store.JobDone, 8, 2, t0.Add(time.Hour)) }, nil},
		{"finish again", func(tx store.Tx) error { return tx.FinishJob("j1", store.JobCancelled, 0, 0, t0.Add(time.Hour)) }, store.ErrConflict},
		{"start finished", func(tx store.Tx) error { return tx.StartJob("j1", t0) }, store.ErrConflict},
		{"cancel queued", func(tx store.Tx) error { return tx.FinishJob("j2", store.JobCancelled, 0, 0, t0.Add(time.Hour)) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Update(ctx, tt.fn); !is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	mustView(t, s, func(tx store.Tx) error {
		j, err := tx.GetJob("j1")
		if err != nil {
			return err
		}
		if j.State != store.JobDone || j.Kind != "keygen" || j.Done != 8 || j.Failed != 2 || j.Total != 10 ||
			!j.StartedAt.Equal(t0.Add(time.Minute)) || !j.FinishedAt.Equal(t0.Add(time.Hour)) || !j.CreatedAt.Equal(t0) ||
			string(j.SecretKey) != "wrapped" || j.SubmittedBy != "admin" || j.Input != "/var/lib/keyarc/jobs/j1" {
			t.Errorf("GetJob(j1) = %+v", j)
		}
		for state, want := range map[string]string{"": "[j1 j2 j3]", store.JobQueued: "[j3]", store.JobDone: "[j1]",
			store.JobCancelled: "[j2]", store.JobRunning: "[]"} {
			l, err := tx.ListJobs(state)
			if err != nil {
				return err
			}
			ids := []string{}
			for _, j := range l {
				ids = append(ids, j.ID)
			}
			if fmt.Sprint(ids) != want {
				t.Errorf("ListJobs(%q) = %v, want %s", state, ids, want)
			}
		}
		return nil
	})
}

func testJobItems(t *testing.T, h *Harness) {
	s := h.Open(t)
	der := []byte("der-of-a")
	mustUpdate(t, s, func(tx store.Tx) error {
		j := job("j", "keygen", t0)
		j.SecretKey = []byte("wrapped")
		if err := tx.InsertJob(j); err != nil {
			return err
		}
		c := cert("0a")
		c.State, c.DER, c.NotBefore, c.NotAfter = store.StateIssued, der, t0, t0.AddDate(1, 0, 0)
		return tx.InsertCertificate(c)
	})
	tests := []struct {
		name    string
		fn      func(store.Tx) error
		wantErr error
	}{
		{"reserve", func(tx store.Tx) error { return tx.ReserveJobItem("j", 1, "0x0A", "r1") }, nil},
		{"reserve again", func(tx store.Tx) error { return tx.ReserveJobItem("j", 1, "0b", "r2") }, store.ErrConflict},
		{"reserve bad serial", func(tx store.Tx) error { return tx.ReserveJobItem("j", 9, "xyz", "") }, store.ErrInvalid},
		{"finish", func(tx store.Tx) error { return tx.FinishJobItem("j", 1, []byte("p12"), []byte("sealed-password")) }, nil},
		{"finish again", func(tx store.Tx) error { return tx.FinishJobItem("j", 1, []byte("p12"), nil) }, store.ErrConflict},
		{"finish unreserved", func(tx store.Tx) error { return tx.FinishJobItem("j", 2, []byte("p12"), nil) }, store.ErrConflict},
		{"fail new", func(tx store.Tx) error { return tx.FailJobItem("j", 2, "bad CSR") }, nil},
		{"fail done", func(tx store.Tx) error { return tx.FailJobItem("j", 1, "late") }, store.ErrConflict},
		{"fail failed", func(tx store.Tx) error { return tx.FailJobItem("j", 2, "again") }, store.ErrConflict},
		{"reserve then fail", func(tx store.Tx) error {
			if err := tx.ReserveJobItem("j", 3, "0c", ""); err != nil {
				return err
			}
			return tx.FailJobItem("j", 3, "token fault")
		}, nil},
		{"done at once", func(tx store.Tx) error { return tx.InsertJobItemDone("j", 4, "0d", "r4") }, nil},
		{"done at once again", func(tx store.Tx) error { return tx.InsertJobItemDone("j", 4, "0d", "r4") }, store.ErrConflict},
		{"many done", func(tx store.Tx) error {
			return tx.InsertJobItemsDone("j", []store.DoneItem{{Seq: 5, Serial: "0e"}, {Seq: 6, Serial: "0f", RecordID: "r6"}})
		}, nil},
		{"reserve more", func(tx store.Tx) error { return tx.ReserveJobItem("j", 7, "10", "") }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Update(ctx, tt.fn); !is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	mustView(t, s, func(tx store.Tx) error {
		done, failed, reserved, err := tx.JobCounts("j")
		if err != nil || done != 4 || failed != 2 || reserved != 1 {
			t.Errorf("JobCounts = %d done, %d failed, %d reserved, %v; want 4, 2, 1", done, failed, reserved, err)
		}
		var seqs []string
		if err := tx.JobItemSeqs("j", func(seq int, state string) error {
			seqs = append(seqs, fmt.Sprintf("%d:%s", seq, state))
			return nil
		}); err != nil {
			return err
		}
		if want := "[1:done 2:failed 3:failed 4:done 5:done 6:done 7:reserved]"; fmt.Sprint(seqs) != want {
			t.Errorf("JobItemSeqs = %v, want %s", seqs, want)
		}
		var items []store.JobItem
		if err := tx.JobItems("j", 1, 3, func(it store.JobItem) error { items = append(items, it); return nil }); err != nil {
			return err
		}
		if len(items) != 3 {
			t.Fatalf("JobItems(from 1, limit 3) = %d items", len(items))
		}
		if it := items[0]; it.JobID != "j" || it.Seq != 1 || it.State != store.ItemDone || it.Serial != "a" || it.RecordID != "r1" ||
			string(it.Result) != string(der) || string(it.PKCS12) != "p12" || string(it.Password) != "sealed-password" {
			t.Errorf("item 1 = %+v", it)
		}
		if it := items[1]; it.Seq != 2 || it.State != store.ItemFailed || it.Error != "bad CSR" || it.Result != nil {
			t.Errorf("item 2 = %+v", it)
		}
		if it := items[2]; it.Seq != 3 || it.State != store.ItemFailed || it.Error != "token fault" || it.Serial != "c" {
			t.Errorf("item 3 = %+v", it)
		}
		items = nil
		if err := tx.JobItems("j", 6, 0, func(it store.JobItem) error { items = append(items, it); return nil }); err != nil {
			return err
		}
		if len(items) != 2 || items[0].Seq != 6 || items[0].RecordID != "r6" || items[0].Serial != "f" || items[1].Seq != 7 {
			t.Errorf("JobItems(from 6, no limit) = %+v", items)
		}
		return nil
	})
	var cleared bool
	mustUpdate(t, s, func(tx store.Tx) (err error) { cleared, err = tx.ClearJobSecret("j"); return err })
	if !cleared {
		t.Error("ClearJobSecret of a job with a secret = false")
	}
	mustUpdate(t, s, func(tx store.Tx) (err error) { cleared, err = tx.ClearJobSecret("j"); return err })
	if cleared {
		t.Error("second ClearJobSecret = true")
	}
	mustView(t, s, func(tx store.Tx) error {
		j, err := tx.GetJob("j")
		if err != nil {
			return err
		}
		if j.SecretKey != nil {
			t.Errorf("secret key %q after ClearJobSecret", j.SecretKey)
		}
		return tx.JobItems("j", 1, 1, func(it store.JobItem) error {
			if it.Password != nil || string(it.PKCS12) != "p12" {
				t.Errorf("item 1 after ClearJobSecret: password %q, pkcs12 %q; want no password, the PKCS#12 kept", it.Password, it.PKCS12)
			}
			return nil
		})
	})
}

// testJobRecovery: after a crash, reserved items are sorted out by their certificates: never
// issued ones are released to be issued again, issued ones (with an active record) completed,
// pending ones abandoned first and then released; none is ever issued twice.
func testJobRecovery(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		if err := tx.InsertJob(job("j", "enroll", t0)); err != nil {
			return err
		}
		// 1: certificate pending, record pending (the issuer gave up).
		// 2: certificate issued, record active (the item's own update was lost).
		// 3: no certificate (a crash before it was stored).
		// 4: certificate failed by a sweep.
		// 5: certificate issued, record still pending: not complete.
		for _, c := range []struct {
			seq            int
			serial, record string
			state, rstate  string
		}{
			{1, "71", "r1", store.StatePending, store.StatePending},
			{2, "72", "r2", store.StateIssued, store.StateActive},
			{3, "73", "", "", ""},
			{4, "74", "", store.StateFailed, ""},
			{5, "75", "r5", store.StateIssued, store.StatePending},
		} {
			if c.record != "" {
				r := record(c.record, c.serial)
				r.State = c.rstate
				if err := tx.InsertRecord(r); err != nil {
					return err
				}
			}
			if c.state != "" {
				x := cert(c.serial)
				x.State, x.RecordID = c.state, c.record
				if c.state == store.StateIssued {
					x.DER, x.NotBefore, x.NotAfter = []byte("der"), t0, t0.AddDate(1, 0, 0)
				}
				if err := tx.InsertCertificate(x); err != nil {
					return err
				}
			}
			if err := tx.ReserveJobItem("j", c.seq, c.serial, c.record); err != nil {
				return err
			}
		}
		return nil
	})
	var n int
	mustUpdate(t, s, func(tx store.Tx) (err error) { n, err = tx.CompleteIssuedItems("j"); return err })
	if n != 1 {
		t.Errorf("CompleteIssuedItems = %d, want 1", n)
	}
	mustUpdate(t, s, func(tx store.Tx) (err error) { n, err = tx.ReleaseReservedItems("j"); return err })
	if n != 2 {
		t.Errorf("ReleaseReservedItems before abandoning = %d, want 2 (items 3 and 4)", n)
	}
	mustUpdate(t, s, func(tx store.Tx) (err error) { n, err = tx.AbandonReservedItems("j"); return err })
	if n != 1 {
		t.Errorf("AbandonReservedItems = %d, want 1", n)
	}
	mustUpdate(t, s, func(tx store.Tx) (err error) { n, err = tx.ReleaseReservedItems("j"); return err })
	if n != 1 {
		t.Errorf("ReleaseReservedItems after abandoning = %d, want 1 (item 1)", n)
	}
	mustView(t, s, func(tx store.Tx) error {
		var seqs []string
		if err := tx.JobItemSeqs("j", func(seq int, state string) error {
			seqs = append(seqs, fmt.Sprintf("%d:%s", seq, state))
			return nil
		}); err != nil {
			return err
		}
		if want := "[2:done 5:reserved]"; fmt.Sprint(seqs) != want {
			t.Errorf("items left = %v, want %s", seqs, want)
		}
		c, err := tx.GetCertificate("71")
		if err != nil {
			return err
		}
		r, err := tx.GetRecord("r1")
		if err != nil {
			return err
		}
		if c.State != store.StateFailed || r.State != store.StateAbandoned {
			t.Errorf("abandoned issuance: certificate %s, record %s; want failed, abandoned", c.State, r.State)
		}
		if r5, err := tx.GetRecord("r5"); err != nil || r5.State != store.StatePending {
			t.Errorf("record of an issued certificate: %+v, %v; want it left pending", r5, err)
		}
		return nil
	})
	// A released item is issued again under a new serial.
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.ReserveJobItem("j", 1, "81", "") }); err != nil {
		t.Errorf("reserving a released item: %v", err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.ReserveJobItem("j", 2, "82", "") }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("reserving a completed item: %v, want ErrConflict", err)
	}
}
