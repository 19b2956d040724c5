package escrow

import (
	"context"
	"maps"
	"sync"

	"github.com/keyarc/keyarc/escrow/store"
)

// memDrillStore wraps a store whose Tx lacks [DrillTx] with drill state kept in memory:
// enough for the engine's tests of drills, not a backend (its writes are not undone when a
// transaction fails).
type memDrillStore struct {
	store.Store
	mu   sync.Mutex
	rows map[string]map[string][]byte
}

type memDrillTx struct {
	store.Tx
	s *memDrillStore
}

func withMemDrills(s store.Store) store.Store {
	return &memDrillStore{Store: s, rows: map[string]map[string][]byte{}}
}

func (m *memDrillStore) wrap(fn func(store.Tx) error) func(store.Tx) error {
	return func(tx store.Tx) error {
		if _, ok := tx.(DrillTx); ok {
			return fn(tx)
		}
		return fn(memDrillTx{Tx: tx, s: m})
	}
}

func (m *memDrillStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	return m.Store.Update(ctx, m.wrap(fn))
}

func (m *memDrillStore) View(ctx context.Context, fn func(store.Tx) error) error {
	return m.Store.View(ctx, m.wrap(fn))
}

func (t memDrillTx) InsertDrillState(kind, key string, data []byte) error {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if _, ok := t.s.rows[kind][key]; ok {
		return store.ErrConflict
	}
	if t.s.rows[kind] == nil {
		t.s.rows[kind] = map[string][]byte{}
	}
	t.s.rows[kind][key] = append([]byte(nil), data...)
	return nil
}

func (t memDrillTx) PutDrillState(kind, key string, data []byte) error {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if t.s.rows[kind] == nil {
		t.s.rows[kind] = map[string][]byte{}
	}
	t.s.rows[kind][key] = append([]byte(nil), data...)
	return nil
}

func (t memDrillTx) GetDrillState(kind, key string) ([]byte, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	d, ok := t.s.rows[kind][key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return append([]byte(nil), d...), nil
}

func (t memDrillTx) ListDrillState(kind string) (map[string][]byte, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	return maps.Clone(t.s.rows[kind]), nil
}

func (t memDrillTx) ActiveRecordsByEpoch() (map[uint32]int, error) {
	cur, err := t.Tx.CurrentEpoch()
	if err != nil {
		return nil, err
	}
	out := map[uint32]int{}
	below := 0
	for e := uint32(1); e <= cur; e++ {
		rs, err := t.Tx.RecordsBeforeEpoch(e+1, 1<<30)
		if err != nil {
			return nil, err
		}
		if n := len(rs) - below; n > 0 {
			out[e] = n
		}
		below = len(rs)
	}
	return out, nil
}
