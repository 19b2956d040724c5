package directory_test

import (
	"context"
	"sync"
	"testing"

	"github.com/keyarc/keyarc/escrow/directory"
	"github.com/keyarc/keyarc/escrow/store"
)

type memCursor struct {
	mu  sync.Mutex
	pos int64
}

func (m *memCursor) Position(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pos, nil
}

func (m *memCursor) Advance(_ context.Context, seq int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pos = max(m.pos, seq)
	return nil
}

func newCursor(t *testing.T, db store.Store) directory.Cursor { return &memCursor{} }
