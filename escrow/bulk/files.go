package bulk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Job files. A job's file is its input as the admin sent it: an import job's holds private keys
// and PKCS#12 passwords in clear, an enroll job's the keys in envelopes to the transport key. It
// is kept (0600, in [Manager.Dir]) only while the job may still need it: while the job is queued
// or running, since a resumed job reads it again for the items without an outcome. Once the job
// is done or cancelled its items' outcomes are in the database (the status, the results and a
// keygen job's passwords come from there), and the file is removed (unlinked: its blocks are
// not overwritten).
//
// A file whose upload never finished (the appliance killed during a slow upload) belongs to no
// job. [Manager.Run] removes such files, and those of finished jobs a stop left behind, when it
// starts and then every [fileSweepEvery]. An upload in progress holds an exclusive flock on its
// file until its job is queued (or its file removed), so that a sweep, of this process or of
// another node sharing the state folder on the same machine, never removes a file that is being
// written; the sweep looks the file's job up only once it holds that lock itself.

// fileSweepEvery is how often a running Manager looks for job files no job needs.
const fileSweepEvery = time.Minute

// jobFileExt ends the name of every job file: the job's ID then this.
const jobFileExt = ".jsonl"

// jobFileID returns the job ID a job file's name carries, and whether name is the name of a job
// file at all (what [newID] makes, then [jobFileExt]); the sweep leaves other files alone.
func jobFileID(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, jobFileExt)
	if !ok || len(id) != 24 {
		return "", false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return id, true
}

// lockFile takes the exclusive flock of f, waiting for it when wait is true. Without wait, a
// lock another holder has gives an error wrapping [syscall.EWOULDBLOCK].
func lockFile(f *os.File, wait bool) error {
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bulk: lock job file: %w", err)
		}
		return nil
	}
}

// createJobFile creates the file of a new job in Dir, exclusively and mode 0600, and returns it
// locked (see the sweep above) with the job's ID. A sweep that removed the file between its
// creation and the lock (it found no job for it) makes it try again with a new ID.
func (m *Manager) createJobFile() (*os.File, string, error) {
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("bulk: job folder: %w", err)
	}
	for range 3 {
		id, err := newID()
		if err != nil {
			return nil, "", err
		}
		path := filepath.Join(m.Dir, id+jobFileExt)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, "", fmt.Errorf("bulk: job file: %w", err)
		}
		if err := lockFile(f, true); err != nil {
			f.Close()
			os.Remove(path)
			return nil, "", err
		}
		if same, err := linked(f, path); err != nil || !same {
			f.Close()
			if err != nil {
				return nil, "", fmt.Errorf("bulk: job file: %w", err)
			}
			continue
		}
		return f, id, nil
	}
	return nil, "", errors.New("bulk: job file: removed by a sweep as it was made, three times; try again")
}

// linked reports whether path still names the open file f.
func linked(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// removeInput removes the file of job, which is done or cancelled and so needs it no more. A
// file that cannot be removed is logged and left to the next sweep.
func (m *Manager) removeInput(job *store.Job) {
	if job.Input == "" || filepath.Base(job.Input) != job.ID+jobFileExt {
		return // not a file Submit made
	}
	err := os.Remove(job.Input)
	switch {
	case err == nil:
		m.log().Info("bulk job file removed", "job", job.ID)
	case errors.Is(err, fs.ErrNotExist):
		// Removed already, or on another node's copy of the state folder.
	default:
		m.log().Warn("bulk: remove the file of a finished job; the next sweep tries again", "job", job.ID, "err", err)
	}
}

// sweepFiles removes the files in Dir that no job needs: uploads that belong to no job and the
// files of done or cancelled jobs. It keeps the files of queued and running jobs, files being
// uploaded (locked), and any file whose name is not a job file's. It returns how many it
// removed.
func (m *Manager) sweepFiles(ctx context.Context) (int, error) {
	entries, err := os.ReadDir(m.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bulk: read the job folder: %w", err)
	}
	removed := 0
	var errs []error
	for _, e := range entries {
		id, ok := jobFileID(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		gone, err := m.sweepFile(ctx, filepath.Join(m.Dir, e.Name()), id)
		if err != nil {
			errs = append(errs, err)
		}
		if gone {
			removed++
		}
	}
	return removed, errors.Join(errs...)
}

// sweepFile removes the file at path, of job id, if no job needs it, and reports whether it did.
func (m *Manager) sweepFile(ctx context.Context, path, id string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("bulk: job file %s: %w", id, err)
	}
	defer f.Close()
	if err := lockFile(f, false); errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil // being uploaded
	} else if err != nil {
		return false, err
	}
	if same, err := linked(f, path); err != nil || !same {
		return false, err // removed meanwhile
	}
	var job *store.Job
	err = m.Service.Store.View(ctx, func(tx store.Tx) (err error) {
		job, err = tx.GetJob(id)
		return err
	})
	why := ""
	switch {
	case errors.Is(err, store.ErrNotFound):
		why = "an upload that belongs to no job"
	case err != nil:
		return false, fmt.Errorf("bulk: job file %s: %w", id, err)
	case job.State == store.JobDone || job.State == store.JobCancelled:
		why = "the file of a " + job.State + " job"
	default:
		return false, nil // queued or running: needed
	}
	if err := os.Remove(path); err != nil {
		return false, fmt.Errorf("bulk: remove job file %s: %w", id, err)
	}
	m.log().Info("bulk: job file removed", "job", id, "what", why)
	return true, nil
}

// sweepFilesNow runs a sweep and logs its failure; it never stops the scheduler.
func (m *Manager) sweepFilesNow(ctx context.Context) {
	if _, err := m.sweepFiles(ctx); err != nil && ctx.Err() == nil {
		m.log().Warn("bulk: remove the job files no job needs; the next sweep tries again", "err", err)
	}
}
