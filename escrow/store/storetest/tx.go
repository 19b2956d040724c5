package storetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// The rules of Update, View and Tx themselves.
var txTests = []test{
	{"ViewSeesCommittedAndIsReadOnly", testViewSeesCommittedAndIsReadOnly},
	{"ViewConcurrentWithUpdate", testViewConcurrentWithUpdate},
	{"TxUsedAfterFn", testTxUsedAfterFn},
	{"PanicAlone", testPanicAlone},
	{"ErrorAlone", testErrorAlone},
	{"ReadOwnWrites", testReadOwnWrites},
	{"NilFunction", testNilFunction},
	{"Closed", testClosed},
}

func testViewSeesCommittedAndIsReadOnly(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	err := s.View(ctx, func(tx store.Tx) error {
		if _, err := tx.GetCertificate("1"); err != nil {
			return err
		}
		if err := tx.InsertCertificate(cert("02")); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("insert in View = %v, want ErrReadOnly", err)
		}
		if err := tx.FailCertificate("01"); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("fail in View = %v, want ErrReadOnly", err)
		}
		if err := tx.InsertCode(code("c")); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("insert code in View = %v, want ErrReadOnly", err)
		}
		if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("insert recovery set in View = %v, want ErrReadOnly", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	assertCount(t, s, store.Filter{}, 1)
}

// testViewConcurrentWithUpdate: a View does not wait for an Update in progress.
func testViewConcurrentWithUpdate(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	release, wait := hold(t, s) // an Update is inside its function
	if err := s.View(ctx, func(tx store.Tx) error { _, err := tx.GetCertificate("01"); return err }); err != nil {
		t.Fatal(err)
	}
	release()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
}

func testTxUsedAfterFn(t *testing.T, h *Harness) {
	s := h.Open(t)
	var kept store.Tx
	mustUpdate(t, s, func(tx store.Tx) error { kept = tx; return nil })
	if _, err := kept.GetCertificate("01"); !errors.Is(err, store.ErrTxDone) {
		t.Errorf("GetCertificate on a finished Tx = %v, want ErrTxDone", err)
	}
	if err := kept.InsertCertificate(cert("01")); !errors.Is(err, store.ErrTxDone) {
		t.Errorf("InsertCertificate on a finished Tx = %v, want ErrTxDone", err)
	}
	if err := s.View(ctx, func(tx store.Tx) error { kept = tx; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := kept.GetCertificate("01"); !errors.Is(err, store.ErrTxDone) {
		t.Errorf("GetCertificate on a finished View Tx = %v, want ErrTxDone", err)
	}
	assertCount(t, s, store.Filter{}, 0)
}

// testPanicAlone: a panicking function gets ErrPanic, loses its writes, and the panic value
// (which might carry a secret) is not in the error.
func testPanicAlone(t *testing.T, h *Harness) {
	s := h.Open(t)
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("01")); err != nil {
			return err
		}
		panic("secret-looking panic value")
	})
	if !errors.Is(err, store.ErrPanic) {
		t.Fatalf("Update = %v, want ErrPanic", err)
	}
	if strings.Contains(err.Error(), "secret-looking") {
		t.Errorf("the panic error %q shows the panic value", err)
	}
	err = s.View(ctx, func(tx store.Tx) error { _, err := tx.GetCertificate("01"); return err })
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("row of a panicking update: %v, want ErrNotFound", err)
	}
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) }) // the store goes on
}

// testErrorAlone: a function that fails gets its own error back, unchanged for errors.Is,
// and loses its writes.
func testErrorAlone(t *testing.T, h *Harness) {
	s := h.Open(t)
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("01")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	assertCount(t, s, store.Filter{}, 0)
	if st := s.Stats(); st.Updates != 1 || st.Failed != 1 {
		t.Errorf("stats %+v, want 1 update, 1 failed", st)
	}
}

// testReadOwnWrites: a function reads its own writes, and once Update returns every View
// sees them.
func testReadOwnWrites(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.InsertCertificate(cert("0a")); err != nil {
			return err
		}
		c, err := tx.GetCertificate("A")
		if err != nil {
			return err
		}
		if c.Serial != "a" || c.State != store.StatePending {
			t.Errorf("own write read back as %+v", c)
		}
		return nil
	})
	mustView(t, s, func(tx store.Tx) error { _, err := tx.GetCertificate("a"); return err })
}

func testNilFunction(t *testing.T, h *Harness) {
	s := h.Open(t)
	if err := s.Update(ctx, nil); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Update(nil) = %v, want ErrInvalid", err)
	}
	if err := s.View(ctx, nil); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("View(nil) = %v, want ErrInvalid", err)
	}
}

// testClosed: a closed store gives ErrClosed, and a second Close is harmless.
func testClosed(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.InsertCertificate(cert("01")) })
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Update(ctx, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Update after Close = %v, want ErrClosed", err)
	}
	if err := s.View(ctx, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("View after Close = %v, want ErrClosed", err)
	}
}
