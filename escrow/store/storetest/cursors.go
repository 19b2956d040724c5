package storetest

import (
	"errors"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// Cursors: named positions in the audit trail (store.Cursors), moving forward only, durable,
// and the same through a second handle.
var cursorTests = []test{
	{"ForwardOnly", testCursorForwardOnly},
	{"Invalid", testCursorInvalid},
	{"SecondHandle", testCursorSecondHandle},
}

func cursorAt(t *testing.T, s store.Store, name string) int64 {
	t.Helper()
	var pos int64
	mustView(t, s, func(tx store.Tx) error {
		var err error
		pos, err = tx.Cursor(name)
		return err
	})
	return pos
}

func advance(s store.Store, name string, pos int64) error {
	return s.Update(ctx, func(tx store.Tx) error { return tx.AdvanceCursor(name, pos) })
}

func testCursorForwardOnly(t *testing.T, h *Harness) {
	s := h.Open(t)
	if got := cursorAt(t, s, "directory"); got != 0 {
		t.Fatalf("Cursor before the first advance = %d, want 0", got)
	}
	for _, step := range []struct{ to, want int64 }{{0, 0}, {5, 5}, {3, 5}, {5, 5}, {9, 9}} {
		if err := advance(s, "directory", step.to); err != nil {
			t.Fatalf("AdvanceCursor(%d): %v", step.to, err)
		}
		if got := cursorAt(t, s, "directory"); got != step.want {
			t.Fatalf("after AdvanceCursor(%d): %d, want %d", step.to, got, step.want)
		}
	}
	if got := cursorAt(t, s, "other"); got != 0 {
		t.Fatalf("another cursor = %d, want 0: cursors are independent", got)
	}
	// An advance undone with its function's error leaves the cursor where it was.
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.AdvanceCursor("directory", 20); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	if got := cursorAt(t, s, "directory"); got != 9 {
		t.Fatalf("after an undone advance: %d, want 9", got)
	}
	// In a View, a write is refused.
	err = s.View(ctx, func(tx store.Tx) error { return tx.AdvanceCursor("directory", 30) })
	if !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("AdvanceCursor in a View = %v, want ErrReadOnly", err)
	}
}

func testCursorInvalid(t *testing.T, h *Harness) {
	s := h.Open(t)
	for _, tc := range []struct {
		name string
		pos  int64
	}{{"", 1}, {"directory", -1}} {
		if err := advance(s, tc.name, tc.pos); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("AdvanceCursor(%q, %d) = %v, want ErrInvalid", tc.name, tc.pos, err)
		}
	}
	mustView(t, s, func(tx store.Tx) error {
		if _, err := tx.Cursor(""); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Cursor(\"\") = %v, want ErrInvalid", err)
		}
		return nil
	})
}

func testCursorSecondHandle(t *testing.T, h *Harness) {
	s := h.Open(t)
	other := h.second(t, s)
	if err := advance(s, "directory", 7); err != nil {
		t.Fatal(err)
	}
	if got := cursorAt(t, other, "directory"); got != 7 {
		t.Fatalf("the second handle reads %d, want 7", got)
	}
	if err := advance(other, "directory", 4); err != nil {
		t.Fatal(err)
	}
	if got := cursorAt(t, s, "directory"); got != 7 {
		t.Fatalf("after a stale advance by the second handle: %d, want 7", got)
	}
}
