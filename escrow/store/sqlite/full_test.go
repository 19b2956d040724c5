package sqlite

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// smallDisk mounts a tmpfs of size (mount's words: 2m, 8m) on a temporary folder, unmounted
// when t ends. It needs root, which CI has; elsewhere the test is skipped.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the disk-full test needs root (to mount a tmpfs); CI runs as root")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot mount a tmpfs: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

// fill writes a file at path until the file system refuses more.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			return
		}
	}
}

// TestOpenDiskFull: a database that cannot be opened because its file system is full (SQLite
// cannot make its -shm and -wal files, and says only "disk I/O error") gives ErrDiskFull with
// ErrUnavailable, naming where; once there is room, the same Open works. A storage fault with
// room left is not called a full disk.
func TestOpenDiskFull(t *testing.T) {
	mnt := smallDisk(t, "4m")
	path := filepath.Join(mnt, "keyarc.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// A clean close removes the -wal and -shm files: the next Open makes them again.
	filler := filepath.Join(mnt, "filler")
	fill(t, filler)
	_, err = Open(path)
	if !errors.Is(err, store.ErrDiskFull) || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open on a full disk = %v, want ErrDiskFull and ErrUnavailable", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path)
	if err != nil {
		t.Fatalf("Open once there is room again: %v", err)
	}
	db.Close()

	// Not a full disk: the fault stands as it is.
	fault := classify(errors.New("x"))
	if got := explainFull(path, errors.Join(store.ErrUnavailable, fault)); errors.Is(got, store.ErrDiskFull) {
		t.Errorf("explainFull with room left = %v, want no ErrDiskFull", got)
	}
}
