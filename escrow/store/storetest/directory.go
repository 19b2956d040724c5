package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// DirectorySkips: the serials the directory publisher retries (store.DirectorySkips): recorded
// once, listed in pages in order, forgotten, undone with their transaction, the same through a
// second handle.
var directorySkipTests = []test{
	{"Pages", testDirectorySkipPages},
	{"Invalid", testDirectorySkipInvalid},
	{"SecondHandle", testDirectorySkipSecondHandle},
}

// skipped reads every skipped serial, in pages of step.
func skipped(t *testing.T, s store.Store, step int) []string {
	t.Helper()
	var all []string
	mustView(t, s, func(tx store.Tx) error {
		for after := ""; ; {
			page, err := tx.DirectorySkipped(after, step)
			if err != nil {
				return err
			}
			if len(page) > step {
				return fmt.Errorf("DirectorySkipped(%q, %d) returned %d serials", after, step, len(page))
			}
			all = append(all, page...)
			if len(page) < step {
				return nil
			}
			after = page[len(page)-1]
		}
	})
	return all
}

func testDirectorySkipPages(t *testing.T, h *Harness) {
	s := h.Open(t)
	if got := skipped(t, s, 10); len(got) != 0 {
		t.Fatalf("skipped serials of a new store: %v, want none", got)
	}
	want := []string{"0a", "0b", "10", "1f", "2c", "ff01"}
	mustUpdate(t, s, func(tx store.Tx) error {
		for _, serial := range []string{"1f", "0b", "ff01", "0a", "2c", "10", "0b"} { // 0b twice
			if err := tx.SkipDirectory(serial); err != nil {
				return err
			}
		}
		return nil
	})
	for _, step := range []int{1, 2, 4, 100} {
		if got := skipped(t, s, step); !slices.Equal(got, want) {
			t.Fatalf("skipped serials in pages of %d: %v, want %v", step, got, want)
		}
	}
	mustUpdate(t, s, func(tx store.Tx) error {
		if err := tx.UnskipDirectory("10"); err != nil {
			return err
		}
		return tx.UnskipDirectory("not-recorded")
	})
	want = slices.DeleteFunc(want, func(s string) bool { return s == "10" })
	if got := skipped(t, s, 2); !slices.Equal(got, want) {
		t.Fatalf("after UnskipDirectory(10): %v, want %v", got, want)
	}
	// Undone with the transaction's error.
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.SkipDirectory("77"); err != nil {
			return err
		}
		if err := tx.UnskipDirectory("0a"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	if got := skipped(t, s, 3); !slices.Equal(got, want) {
		t.Fatalf("after an undone Update: %v, want %v", got, want)
	}
	err = s.View(ctx, func(tx store.Tx) error { return tx.SkipDirectory("78") })
	if !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("SkipDirectory in a View = %v, want ErrReadOnly", err)
	}
}

func testDirectorySkipInvalid(t *testing.T, h *Harness) {
	s := h.Open(t)
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.SkipDirectory("") }); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("SkipDirectory(\"\") = %v, want ErrInvalid", err)
	}
	err := s.View(ctx, func(tx store.Tx) error {
		_, err := tx.DirectorySkipped("", 0)
		return err
	})
	if !errors.Is(err, store.ErrInvalid) {
		t.Errorf("DirectorySkipped with limit 0 = %v, want ErrInvalid", err)
	}
}

func testDirectorySkipSecondHandle(t *testing.T, h *Harness) {
	s := h.Open(t)
	other := h.second(t, s)
	mustUpdate(t, s, func(tx store.Tx) error { return tx.SkipDirectory("abc1") })
	if got := skipped(t, other, 5); !slices.Equal(got, []string{"abc1"}) {
		t.Fatalf("the second handle reads %v, want [abc1]", got)
	}
	mustUpdate(t, other, func(tx store.Tx) error { return tx.UnskipDirectory("abc1") })
	if got := skipped(t, s, 5); len(got) != 0 {
		t.Fatalf("after the second handle forgot it: %v, want none", got)
	}
}
