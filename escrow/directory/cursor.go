package directory

import (
	"context"

	"github.com/keyarc/keyarc/escrow/store"
)

// CursorName is the name of the LDAP publisher's cursor in the store.
const CursorName = "directory-ldap"

// StoreCursor is a [Cursor] kept in the store ([store.Cursors]): durable, and shared by the
// nodes of one database, so that the node that leads next goes on where the last one stopped.
type StoreCursor struct {
	Store store.Store
	Name  string
}

var _ Cursor = StoreCursor{}

// Position reads the cursor.
func (c StoreCursor) Position(ctx context.Context) (int64, error) {
	var pos int64
	err := c.Store.View(ctx, func(tx store.Tx) error {
		var err error
		pos, err = tx.Cursor(c.Name)
		return err
	})
	return pos, err
}

// Advance moves the cursor forward to seq, durably.
func (c StoreCursor) Advance(ctx context.Context, seq int64) error {
	return c.Store.Update(ctx, func(tx store.Tx) error { return tx.AdvanceCursor(c.Name, seq) })
}
