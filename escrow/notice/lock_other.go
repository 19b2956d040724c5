//go:build !unix

package notice

import "os"

// canLock: without flock(2) a folder whose sender is gone cannot be told from one whose
// sender runs, so no folder is adopted ([Adopter]) and a sender runs without a lock.
const canLock = false

// tryLock takes no lock (see canLock): the sender runs as before locks, alone on its folder.
func tryLock(string) (*os.File, error) { return nil, nil }
