//go:build unix

package notice

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// canLock: flock(2) is there, so that folders can be adopted ([Adopter]).
const canLock = true

// tryLock opens the lock file ([LockFile]) of the queue folder dir, making it if it is
// missing, and takes its exclusive flock(2) without waiting: [errLocked] when another open
// file (another process, or another open of it in this one) holds it. The lock lasts until
// the returned file is closed, or the process ends in any way, kill -9 included: the kernel
// releases it, which is what tells a sender that is gone from one that runs.
func tryLock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("notice: queue folder lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		switch {
		case errors.Is(err, syscall.EWOULDBLOCK):
			return nil, errLocked
		case errors.Is(err, syscall.ENOLCK), errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.ENOSYS):
			return nil, fmt.Errorf("%w: %w", errNoLocks, err)
		}
		return nil, fmt.Errorf("notice: queue folder lock: %w", err)
	}
	return f, nil
}
