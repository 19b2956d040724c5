package storetest

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// Group commit, as the contract of store.Store allows it: concurrent callers may share a
// transaction, but each sees only its own outcome.
var groupCommitTests = []test{
	{"ConcurrentUpdates", testConcurrentUpdates},
	{"Isolation", testGroupIsolation},
	{"FailureAfterOthersWrote", testFailureAfterOthersWrote},
	{"HandledErrorKeepsWrites", testHandledErrorKeepsWrites},
	{"ViewIsASnapshot", testViewIsASnapshot},
	{"ViewNeverSeesHalfAnUpdate", testViewNeverSeesHalfAnUpdate},
	{"NoDuplicateIDs", testNoDuplicateIDs},
	{"EpochsUnique", testEpochsUnique},
}

// testConcurrentUpdates: many concurrent Updates all succeed, and each is visible to a View as
// soon as its Update has returned.
func testConcurrentUpdates(t *testing.T, h *Harness) {
	s := h.Open(t)
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			serial := fmt.Sprintf("%x", i+1)
			if err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(cert(serial)) }); err != nil {
				t.Errorf("Update %d: %v", i, err)
				return
			}
			if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.GetCertificate(serial); return err }); err != nil {
				t.Errorf("View after Update %d returned: %v", i, err)
			}
		})
	}
	wg.Wait()
	assertCount(t, s, store.Filter{}, n)
}

var errBoom = errors.New("boom")

// testGroupIsolation: among concurrent callers lined up behind one Update, functions that
// fail (with their own error, a store error they return, or a panic) lose all of their own
// writes and get their own error; the others commit everything.
func testGroupIsolation(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("ffff")) })
	before := s.Stats()
	release, wait := hold(t, s)
	type result struct {
		i   int
		err error
	}
	const n = 40
	results := make(chan result, n)
	for i := range n {
		go func() {
			err := s.Update(ctx, func(tx store.Tx) error {
				if err := tx.InsertCertificate(cert(fmt.Sprintf("%x", i+1))); err != nil {
					return err
				}
				if err := tx.InsertCode(code(fmt.Sprint("c", i))); err != nil {
					return err
				}
				switch i % 4 {
				case 1:
					return errBoom
				case 2:
					var m map[string]int
					m["x"] = 1 // nil map write: a runtime panic
				case 3:
					return tx.InsertCertificate(cert("ffff")) // the store's own ErrConflict
				}
				return nil
			})
			results <- result{i, err}
		}()
	}
	h.lineUp(s, n)
	release()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	for range n {
		r := <-results
		var want error
		switch r.i % 4 {
		case 1:
			want = errBoom
		case 2:
			want = store.ErrPanic
		case 3:
			want = store.ErrConflict
		}
		if !is(r.err, want) {
			t.Errorf("update %d = %v, want %v", r.i, r.err, want)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		for i := range n {
			_, errCert := tx.GetCertificate(fmt.Sprintf("%x", i+1))
			_, errCode := tx.GetCode(fmt.Sprint("c", i))
			if i%4 == 0 && (errCert != nil || errCode != nil) {
				t.Errorf("rows of successful update %d: %v, %v", i, errCert, errCode)
			}
			if i%4 != 0 && (!errors.Is(errCert, store.ErrNotFound) || !errors.Is(errCode, store.ErrNotFound)) {
				t.Errorf("rows of failed update %d: %v, %v; want ErrNotFound", i, errCert, errCode)
			}
		}
		return nil
	})
	after := s.Stats()
	if d := after.Updates - before.Updates; d != n+1 {
		t.Errorf("Stats.Updates grew by %d, want %d", d, n+1)
	}
	if d := after.Failed - before.Failed; d != 3*n/4 {
		t.Errorf("Stats.Failed grew by %d, want %d", d, 3*n/4)
	}
	// The store goes on.
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("fffe")) })
	assertCount(t, s, store.Filter{}, 2+n/4)
}

// testFailureAfterOthersWrote: a function that reads what an earlier function of its group
// wrote, then fails, undoes only its own writes: the earlier function's rows stay, including
// the ones the failing function changed.
func testFailureAfterOthersWrote(t *testing.T, h *Harness) {
	s := h.Open(t)
	release, wait := hold(t, s)
	first := make(chan error, 1)
	go func() {
		first <- s.Update(ctx, func(tx store.Tx) error {
			if err := tx.InsertCode(code("shared")); err != nil {
				return err
			}
			return tx.InsertCertificate(cert("01"))
		})
	}()
	h.lineUp(s, 1)
	second := make(chan error, 1)
	go func() {
		second <- s.Update(ctx, func(tx store.Tx) error {
			// Whether or not it shares the first one's transaction, it runs after it.
			if err := tx.ClaimCode("shared", t0); err != nil {
				return err
			}
			if err := tx.FailCertificate("01"); err != nil {
				return err
			}
			if err := tx.InsertCertificate(cert("02")); err != nil {
				return err
			}
			return errBoom
		})
	}()
	h.lineUp(s, 2)
	release()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first update: %v", err)
	}
	if err := <-second; !errors.Is(err, errBoom) && !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second update: %v, want boom (or ErrNotFound had it run first)", err)
	}
	mustView(t, s, func(tx store.Tx) error {
		c, err := tx.GetCode("shared")
		if err != nil {
			return err
		}
		if c.UsedAt != nil {
			t.Errorf("the failed function's claim of the code stayed: %v", c)
		}
		x, err := tx.GetCertificate("01")
		if err != nil {
			return err
		}
		if x.State != store.StatePending {
			t.Errorf("certificate 01 is %s, want pending: the failed function's change stayed", x.State)
		}
		if _, err := tx.GetCertificate("02"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the failed function's insert: %v, want ErrNotFound", err)
		}
		return nil
	})
}

// testHandledErrorKeepsWrites: an error from a Tx method fails only that call. A function that
// handles it and returns nil commits its other writes, before and after the failed call.
func testHandledErrorKeepsWrites(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("02")); err != nil {
			return err
		}
		if err := tx.InsertCertificate(cert("01")); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("duplicate insert: %v, want ErrConflict", err)
		}
		if err := tx.SetCertificateIssued("ff", []byte{1}, t0, t0); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("issue missing: %v, want ErrNotFound", err)
		}
		if err := tx.InsertRecord(record("r", "")); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("record of an unknown epoch: %v, want ErrNotFound", err)
		}
		return tx.InsertCertificate(cert("03"))
	})
	mustView(t, s, func(tx store.Tx) error {
		for _, serial := range []string{"1", "2", "3"} {
			if _, err := tx.GetCertificate(serial); err != nil {
				t.Errorf("certificate %s: %v", serial, err)
			}
		}
		return nil
	})
}

// testViewIsASnapshot: a View that has read once does not see what commits afterwards, on any
// table, until it ends.
func testViewIsASnapshot(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	read := make(chan struct{})
	committed := make(chan struct{})
	viewErr := make(chan error, 1)
	go func() {
		viewErr <- s.View(ctx, func(tx store.Tx) error {
			if l, err := tx.ListCertificates(store.Filter{}); err != nil || len(l) != 1 {
				return fmt.Errorf("first read: %d certificates, %v", len(l), err)
			}
			close(read)
			<-committed
			if l, err := tx.ListCertificates(store.Filter{}); err != nil || len(l) != 1 {
				return fmt.Errorf("after a commit: %d certificates, %v; want the 1 of the snapshot", len(l), err)
			}
			if _, err := tx.GetCertificate("02"); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("a row committed after the snapshot: %v, want ErrNotFound", err)
			}
			if c, err := tx.GetCertificate("01"); err != nil || c.State != store.StatePending {
				return fmt.Errorf("a row changed after the snapshot: %+v, %v; want it pending", c, err)
			}
			if _, err := tx.GetCode("k"); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("a code committed after the snapshot: %v, want ErrNotFound", err)
			}
			return nil
		})
	}()
	select {
	case <-read:
	case err := <-viewErr:
		t.Fatalf("View: %v", err)
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("02")); err != nil {
			return err
		}
		if err := tx.InsertCode(code("k")); err != nil {
			return err
		}
		return tx.FailCertificate("01")
	})
	close(committed)
	if err := <-viewErr; err != nil {
		t.Fatal(err)
	}
	assertCount(t, s, store.Filter{}, 2)
}

// testViewNeverSeesHalfAnUpdate: while writers commit pairs of rows, each pair in one Update,
// Views see both rows of a pair or neither, and the same rows from start to end.
func testViewNeverSeesHalfAnUpdate(t *testing.T, h *Harness) {
	s := h.Open(t)
	const writers, pairs = 4, 25
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range pairs {
				n := 2 * (w*pairs + i)
				err := s.Update(ctx, func(tx store.Tx) error {
					// The second row first, so that a reader going in serial order meets it last.
					if err := tx.InsertCertificate(cert(fmt.Sprintf("%x", 0x10000+n+1))); err != nil {
						return err
					}
					return tx.InsertCertificate(cert(fmt.Sprintf("%x", 0x10000+n)))
				})
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	var readers sync.WaitGroup
	var views atomic.Int64
	for range 2 {
		readers.Go(func() {
			for !stop.Load() {
				err := s.View(ctx, func(tx store.Tx) error {
					first, err := tx.ListCertificates(store.Filter{})
					if err != nil {
						return err
					}
					if len(first)%2 != 0 {
						return fmt.Errorf("a View sees %d certificates: half a pair", len(first))
					}
					// Every row's partner, looked up one by one while commits go on.
					for _, c := range first {
						var n int
						fmt.Sscanf(c.Serial, "%x", &n)
						if _, err := tx.GetCertificate(fmt.Sprintf("%x", n^1)); err != nil {
							return fmt.Errorf("certificate %s without its partner: %w", c.Serial, err)
						}
					}
					last, err := tx.ListCertificates(store.Filter{})
					if err != nil {
						return err
					}
					if len(last) != len(first) {
						return fmt.Errorf("one View saw %d, then %d certificates", len(first), len(last))
					}
					return nil
				})
				views.Add(1)
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	readers.Wait()
	t.Logf("%d views during the writes", views.Load())
	assertCount(t, s, store.Filter{}, 2*writers*pairs)
}

// testNoDuplicateIDs: concurrent writers of the same key never both succeed: one wins, the
// others get ErrConflict (or, for a code, ErrCodeUsed), whatever the spelling of a serial.
func testNoDuplicateIDs(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
			return err
		}
		if err := tx.InsertRecord(record("seed", "")); err != nil {
			return err
		}
		if err := tx.InsertCode(code("claimed")); err != nil {
			return err
		}
		if err := tx.InsertJob(job("j", "enroll", t0)); err != nil {
			return err
		}
		return tx.InsertRecovery(store.Recovery{ID: "q", Requester: "o", RequesterSerial: "1", KeyLabel: "l",
			KeySPKI: []byte{1}, OAEPHash: "SHA-256", ExpiresAt: t0, Records: []string{"seed"}})
	})
	spellings := []string{"d00d", "D00D", "0xd00d", "00:d0:0d", "000d00d"}
	const n = 10
	kinds := []struct {
		name string
		fn   func(tx store.Tx, i int) error
		lose error
	}{
		{"serial", func(tx store.Tx, i int) error { return tx.InsertCertificate(cert(spellings[i%len(spellings)])) }, store.ErrConflict},
		{"code", func(tx store.Tx, i int) error { return tx.InsertCode(code("same")) }, store.ErrConflict},
		{"record", func(tx store.Tx, i int) error { return tx.InsertRecord(record("same", fmt.Sprintf("%x", 0xe000+i))) }, store.ErrConflict},
		{"record serial", func(tx store.Tx, i int) error { return tx.InsertRecord(record(fmt.Sprint("rs", i), "beef")) }, store.ErrConflict},
		{"pending", func(tx store.Tx, i int) error {
			return tx.InsertPending(store.Pending{ID: "same", Template: "kra", Requester: "kra1", CSR: []byte{1}})
		}, store.ErrConflict},
		{"job", func(tx store.Tx, i int) error { return tx.InsertJob(job("same", "enroll", t0)) }, store.ErrConflict},
		{"job item", func(tx store.Tx, i int) error { return tx.ReserveJobItem("j", 1, fmt.Sprintf("%x", 0xf000+i), "") }, store.ErrConflict},
		{"approval", func(tx store.Tx, i int) error { return tx.InsertApproval(approval("q", "kra1", t0)) }, store.ErrConflict},
		{"consume", func(tx store.Tx, i int) error { return tx.CloseRecovery("q", store.RecoveryConsumed, t0) }, store.ErrConflict},
		{"claim", func(tx store.Tx, i int) error { return tx.ClaimCode("claimed", t0) }, store.ErrCodeUsed},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			var wg sync.WaitGroup
			var won atomic.Int32
			for i := range n {
				wg.Go(func() {
					err := s.Update(ctx, func(tx store.Tx) error { return k.fn(tx, i) })
					switch {
					case err == nil:
						won.Add(1)
					case !errors.Is(err, k.lose):
						t.Errorf("writer %d: %v, want nil or %v", i, err, k.lose)
					}
				})
			}
			wg.Wait()
			if won.Load() != 1 {
				t.Errorf("%d writers won, want exactly 1", won.Load())
			}
		})
	}
}

// testEpochsUnique: concurrent recovery sets get distinct epochs, 1 to n.
func testEpochsUnique(t *testing.T, h *Harness) {
	s := h.Open(t)
	const n = 20
	epochs := make(chan uint32, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			var e uint32
			if err := s.Update(ctx, func(tx store.Tx) (err error) { e, err = tx.InsertRecoverySet(recoverySet("a", "b")); return err }); err != nil {
				t.Error(err)
				return
			}
			epochs <- e
		})
	}
	wg.Wait()
	close(epochs)
	seen := map[uint32]bool{}
	for e := range epochs {
		if seen[e] || e < 1 || e > n {
			t.Errorf("epoch %d given twice or out of 1..%d", e, n)
		}
		seen[e] = true
	}
	mustView(t, s, func(tx store.Tx) error {
		if e, err := tx.CurrentEpoch(); err != nil || e != n {
			t.Errorf("CurrentEpoch = %d, %v; want %d", e, err, n)
		}
		return nil
	})
}
