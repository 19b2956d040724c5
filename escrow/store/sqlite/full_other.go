//go:build !linux

package sqlite

// freeBytes cannot read the free space here: a full disk is not told from other faults.
func freeBytes(string) (uint64, bool) { return 0, false }
