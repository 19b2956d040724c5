package sqlite

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/keyarc/keyarc/escrow/store"
)

// fullBelow is the free space under which a storage fault is put down to a full disk: SQLite
// needs a page for the -wal file and 32 KiB for the -shm file to open a WAL database, and a
// few pages for any write.
const fullBelow = 1 << 20

// explainFull adds [store.ErrDiskFull] to err, a storage fault ([store.ErrUnavailable]) met
// with the database at path, when the file system that holds it has less than fullBelow bytes
// free, and says where that is and what to do. Other errors, and storage faults on a file
// system with room (or whose room cannot be read), are returned unchanged.
func explainFull(path string, err error) error {
	if err == nil || !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrDiskFull) {
		return err
	}
	abs, aerr := filepath.Abs(path)
	if aerr != nil {
		return err
	}
	dir := filepath.Dir(abs)
	free, ok := freeBytes(dir)
	if !ok || free >= fullBelow {
		return err
	}
	base := filepath.Base(abs)
	return fmt.Errorf("%w: %s is on a file system with %d bytes free (%s): SQLite needs room for %s-wal and %s-shm beside it even to read it; free some space there, then try again: %w",
		store.ErrDiskFull, abs, free, dir, base, base, err)
}
