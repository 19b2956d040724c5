package storetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// DrillStates: the rows of the recoverability drills (store.DrillStates) and the count of
// active records per epoch.
var drillTests = []test{
	{"Rows", testDrillRows},
	{"Invalid", testDrillInvalid},
	{"UndoneWithTheFunction", testDrillUndone},
	{"ActiveRecordsByEpoch", testActiveRecordsByEpoch},
}

func drillStates(tx store.Tx) store.DrillStates {
	return tx.(store.DrillStates)
}

func testDrillRows(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustUpdate(t, s, func(tx store.Tx) error {
		d := drillStates(tx)
		if err := d.InsertDrillState("canary", "1", []byte("c1")); err != nil {
			return err
		}
		if err := d.InsertDrillState("canary", "1", []byte("again")); !errors.Is(err, store.ErrConflict) {
			t.Errorf("InsertDrillState twice = %v, want ErrConflict", err)
		}
		if err := d.InsertDrillState("drill", "1", []byte("d1")); err != nil {
			return fmt.Errorf("same key, another kind: %w", err)
		}
		if err := d.PutDrillState("drill", "1", []byte("d1 proven")); err != nil {
			return err
		}
		return d.PutDrillState("drill", "2", []byte("d2"))
	})
	mustView(t, s, func(tx store.Tx) error {
		d := drillStates(tx)
		if got, err := d.GetDrillState("canary", "1"); err != nil || string(got) != "c1" {
			t.Errorf("GetDrillState(canary, 1) = %q, %v; want c1 (not replaced by a refused insert)", got, err)
		}
		if got, err := d.GetDrillState("drill", "1"); err != nil || string(got) != "d1 proven" {
			t.Errorf("GetDrillState(drill, 1) = %q, %v; want the replaced row", got, err)
		}
		if _, err := d.GetDrillState("proof", "1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetDrillState of no row = %v, want ErrNotFound", err)
		}
		rows, err := d.ListDrillState("drill")
		if err != nil {
			return err
		}
		if len(rows) != 2 || string(rows["1"]) != "d1 proven" || string(rows["2"]) != "d2" {
			t.Errorf("ListDrillState(drill) = %q", rows)
		}
		if rows, err := d.ListDrillState("proof"); err != nil || rows == nil || len(rows) != 0 {
			t.Errorf("ListDrillState of an empty kind = %v, %v; want an empty map", rows, err)
		}
		if err := d.PutDrillState("drill", "3", []byte("x")); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("PutDrillState in a View = %v, want ErrReadOnly", err)
		}
		return nil
	})
}

func testDrillInvalid(t *testing.T, h *Harness) {
	s := h.Open(t)
	for _, tt := range []struct {
		name            string
		kind, key, data string
	}{
		{"no kind", "", "k", "d"},
		{"no key", "canary", "", "d"},
		{"no data", "canary", "k", ""},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { return drillStates(tx).InsertDrillState(tt.kind, tt.key, []byte(tt.data)) })
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: InsertDrillState = %v, want ErrInvalid", tt.name, err)
		}
		err = s.Update(ctx, func(tx store.Tx) error { return drillStates(tx).PutDrillState(tt.kind, tt.key, []byte(tt.data)) })
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: PutDrillState = %v, want ErrInvalid", tt.name, err)
		}
	}
}

func testDrillUndone(t *testing.T, h *Harness) {
	s := h.Open(t)
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := drillStates(tx).InsertDrillState("drill", "1", []byte("d1")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	mustView(t, s, func(tx store.Tx) error {
		if _, err := drillStates(tx).GetDrillState("drill", "1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a row of a failed function: %v, want ErrNotFound", err)
		}
		return nil
	})
}

func testActiveRecordsByEpoch(t *testing.T, h *Harness) {
	s := h.Open(t)
	mustView(t, s, func(tx store.Tx) error {
		got, err := drillStates(tx).ActiveRecordsByEpoch()
		if err != nil || len(got) != 0 {
			t.Errorf("ActiveRecordsByEpoch of an empty archive = %v, %v", got, err)
		}
		return nil
	})
	mustUpdate(t, s, func(tx store.Tx) error {
		for range 2 {
			if _, err := tx.InsertRecoverySet(recoverySet("a", "b")); err != nil {
				return err
			}
		}
		// Epoch 1: two active and one pending; epoch 2: one active and one abandoned.
		for i, r := range []struct {
			epoch uint32
			state string
		}{{1, "active"}, {1, "active"}, {1, "pending"}, {2, "active"}, {2, "abandoned"}} {
			rec := record(fmt.Sprintf("r%d", i), fmt.Sprintf("%x", i+1))
			rec.Epoch = r.epoch
			if err := tx.InsertRecord(rec); err != nil {
				return err
			}
			switch r.state {
			case "active":
				if err := tx.ActivateRecord(rec.ID); err != nil {
					return err
				}
			case "abandoned":
				if _, err := tx.SweepPending(t0.Add(1)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	mustView(t, s, func(tx store.Tx) error {
		got, err := drillStates(tx).ActiveRecordsByEpoch()
		if err != nil {
			return err
		}
		if len(got) != 2 || got[1] != 2 || got[2] != 1 {
			t.Errorf("ActiveRecordsByEpoch = %v, want map[1:2 2:1]", got)
		}
		return nil
	})
}
