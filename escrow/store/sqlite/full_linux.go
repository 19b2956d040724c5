package sqlite

import "syscall"

// freeBytes is the space left to an unprivileged user on the file system that holds dir;
// ok is false when it cannot be read.
func freeBytes(dir string) (free uint64, ok bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}
