package cli

import (
	"errors"
	"fmt"
	"os"
)

// outFile is a file a command writes its answer to, and the mode it gets.
type outFile struct {
	path string
	mode os.FileMode
}

// errNamedTwice: two of the files to prepare are one path.
var errNamedTwice = errors.New("named twice")

// preparedFiles are the files of an answer that cannot be asked for again (an enrollment
// spends its code, a recovery fetch consumes its request): each is made empty before the
// request, refusing one that exists, so that nothing is left to fail after it but the writes.
type preparedFiles struct {
	open   map[string]*os.File // made and not yet filled
	filled map[string]bool
	dir    string // the folder made for them, "" when it existed
}

// prepareFiles makes dir when it is given and missing (mode 0700), then each file, empty and
// of its mode, refusing one that exists. If one cannot be made, everything made is removed,
// and the error is a *os.PathError naming the file (wrapping os.ErrExist when it exists) or
// errNamedTwice wrapped with the path.
func prepareFiles(dir string, files []outFile) (*preparedFiles, error) {
	pf := &preparedFiles{open: make(map[string]*os.File, len(files)), filled: make(map[string]bool, len(files))}
	if dir != "" {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			pf.dir = dir
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	for _, o := range files {
		if _, dup := pf.open[o.path]; dup {
			pf.remove()
			return nil, fmt.Errorf("%s is %w", o.path, errNamedTwice)
		}
		f, err := os.OpenFile(o.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, o.mode)
		if err != nil {
			pf.remove()
			return nil, err
		}
		pf.open[o.path] = f
	}
	return pf, nil
}

// fill writes data to the file made for path, syncs and closes it; a path that was not made
// before is made now (mode 0600), if it does not exist.
func (pf *preparedFiles) fill(path string, data []byte) error {
	f, ok := pf.open[path]
	if !ok {
		var err error
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return err
		}
	}
	delete(pf.open, path)
	pf.filled[path] = true
	_, err := f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeUnfilled removes the files that were made but not filled.
func (pf *preparedFiles) removeUnfilled() {
	for p, f := range pf.open {
		f.Close()
		os.Remove(p)
		delete(pf.open, p)
	}
}

// remove removes every file made, and the folder made for them: the request was not made,
// or failed.
func (pf *preparedFiles) remove() {
	pf.removeUnfilled()
	for p := range pf.filled {
		os.Remove(p)
	}
	if pf.dir != "" {
		os.Remove(pf.dir)
	}
}
