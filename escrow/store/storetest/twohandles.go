package storetest

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// Two handles on one database (Harness.OpenSecond), writing concurrently as two processes or
// two nodes would.
var twoHandleTests = []test{
	{"SeeEachOther", testHandlesSeeEachOther},
	{"AuditChain", testHandlesAuditChain},
	{"NoDuplicateIDs", testHandlesNoDuplicateIDs},
	{"ClaimCodeOnce", testHandlesClaimCodeOnce},
	{"Epochs", testHandlesEpochs},
}

func testHandlesSeeEachOther(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	mustUpdate(t, a, func(tx store.Tx) error { return tx.InsertCertificate(cert("0a")) })
	mustView(t, b, func(tx store.Tx) error { _, err := tx.GetCertificate("a"); return err })
	mustUpdate(t, b, func(tx store.Tx) error { return tx.SetCertificateIssued("a", []byte{1}, t0, t0.AddDate(1, 0, 0)) })
	mustView(t, a, func(tx store.Tx) error {
		c, err := tx.GetCertificate("a")
		if err == nil && c.State != store.StateIssued {
			t.Errorf("the first handle sees certificate a %s, want issued", c.State)
		}
		return err
	})
	// A transition the other handle made is a conflict here.
	if err := a.Update(ctx, func(tx store.Tx) error { return tx.SetCertificateIssued("a", []byte{2}, t0, t0) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("issuing again through the first handle: %v, want ErrConflict", err)
	}
}

// testHandlesAuditChain: two handles appending concurrently, each entry in its own Update
// linked with audit.Link, never conflict (the head a transaction reads is the tail it appends
// to) and form one gapless chain; appends that roll back leave no gap.
func testHandlesAuditChain(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	appendN(t, a, 1)
	const goroutines, each = 6, 5
	var wg sync.WaitGroup
	var kept atomic.Int64
	for g := range 2 * goroutines {
		s := []store.Store{a, b}[g%2]
		wg.Go(func() {
			for i := range each {
				rollback := (g+i)%4 == 3
				err := s.Update(ctx, func(tx store.Tx) error {
					if _, err := audit.Link(tx, store.AuditEntry{Kind: "test", Actor: fmt.Sprint("handle", g%2), Subject: fmt.Sprint(g, "/", i)}); err != nil {
						return err
					}
					if rollback {
						return errBoom
					}
					return nil
				})
				switch {
				case rollback && errors.Is(err, errBoom):
				case !rollback && err == nil:
					kept.Add(1)
				default:
					t.Errorf("handle %d, append %d/%d: %v", g%2, g, i, err)
				}
			}
		})
	}
	wg.Wait()
	want := int(1 + kept.Load())
	checkChain(t, a, want)
	checkChain(t, b, want)
	// Both handles append after the other.
	appendN(t, b, 1)
	appendN(t, a, 1)
	checkChain(t, a, want+2)
}

// testHandlesNoDuplicateIDs: the same serial written through both handles at once is stored
// once; the loser gets ErrConflict.
func testHandlesNoDuplicateIDs(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	const serials, writers = 10, 4
	var wg sync.WaitGroup
	won := make([]atomic.Int32, serials)
	for w := range writers {
		s := []store.Store{a, b}[w%2]
		wg.Go(func() {
			for i := range serials {
				err := s.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(cert(fmt.Sprintf("%x", 0x100+i))) })
				switch {
				case err == nil:
					won[i].Add(1)
				case !errors.Is(err, store.ErrConflict):
					t.Errorf("writer %d, serial %d: %v, want nil or ErrConflict", w, i, err)
				}
			}
		})
	}
	wg.Wait()
	for i := range won {
		if n := won[i].Load(); n != 1 {
			t.Errorf("serial %x stored by %d writers, want 1", 0x100+i, n)
		}
	}
	assertCount(t, b, store.Filter{}, serials)
}

func testHandlesClaimCodeOnce(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	mustUpdate(t, a, func(tx store.Tx) error { return tx.InsertCode(code("race")) })
	const n = 10
	var wg sync.WaitGroup
	var won atomic.Int32
	for i := range n {
		s := []store.Store{a, b}[i%2]
		wg.Go(func() {
			err := s.Update(ctx, func(tx store.Tx) error { return tx.ClaimCode("race", t0) })
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, store.ErrCodeUsed):
				t.Errorf("claim = %v, want nil or ErrCodeUsed", err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Errorf("%d claims won, want exactly 1", won.Load())
	}
}

// testHandlesEpochs: recovery sets added through both handles get distinct, consecutive epochs.
func testHandlesEpochs(t *testing.T, h *Harness) {
	a := h.Open(t)
	b := h.second(t, a)
	const n = 10
	epochs := make(chan uint32, n)
	var wg sync.WaitGroup
	for i := range n {
		s := []store.Store{a, b}[i%2]
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
}
