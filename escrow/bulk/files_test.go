package bulk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// jobFiles lists the names in the job folder.
func jobFiles(tb testing.TB, env *testEnv) []string {
	tb.Helper()
	entries, err := os.ReadDir(env.mgr.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// importItems makes n import items of keys in clear: PEM PKCS#8, and a PKCS#12 with its
// password.
func importItems(tb testing.TB, n int) []any {
	tb.Helper()
	old := newOtherCA(tb)
	var items []any
	for i := range n {
		k := p256(tb)
		c := old.issue(tb, k.Public(), "imp"+strconv.Itoa(i)+"@example.org")
		if i%2 == 0 {
			items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(tb, k))})
		} else {
			items = append(items, Item{PKCS12: b64(p12(tb, k, c, "secret-pw")), Password: "secret-pw"})
		}
	}
	return items
}

// TestJobFileRemovedWhenDone: a job's file (an import's holds private keys and PKCS#12
// passwords in clear) is removed once the job is done; the job's status, the listing, the
// results and a keygen job's passwords come from the database and still work.
func TestJobFileRemovedWhenDone(t *testing.T) {
	env := newEnv(t)
	jobs := map[Kind][]byte{
		KindImport: jobFile(t, Header{Kind: KindImport}, importItems(t, 4)...),
		KindKeygen: jobFile(t, Header{Kind: KindKeygen, Template: "smime-encryption", Key: "p256"}, Item{Email: "g1@example.org"}, Item{Email: "g2@example.org"}),
		KindEnroll: jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, env.enrollItem(t, "e1@example.org"), env.enrollItem(t, "e2@example.org")),
	}
	for _, kind := range []Kind{KindImport, KindKeygen, KindEnroll} {
		t.Run(string(kind), func(t *testing.T) {
			st := submit(t, env, jobs[kind])
			path := filepath.Join(env.mgr.Dir, st.ID+jobFileExt)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("queued job's file: %v", err)
			}
			st = env.runUntilDone(t, st.ID)
			if st.State != store.JobDone || st.Done != st.Total {
				t.Fatalf("status %+v, want every item done", st)
			}
			if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the file of a done job: %v, want it removed", err)
			}
			if names := jobFiles(t, env); len(names) != 0 {
				t.Fatalf("job folder holds %v after the job, want nothing", names)
			}
			got, err := env.mgr.Status(context.Background(), st.ID)
			if err != nil || got.State != store.JobDone || got.Done != st.Total {
				t.Fatalf("status without the file: %+v, %v", got, err)
			}
			list, err := env.mgr.List(context.Background())
			if err != nil || !slices.ContainsFunc(list, func(s Status) bool { return s.ID == st.ID && s.State == store.JobDone }) {
				t.Fatalf("list without the file: %+v, %v", list, err)
			}
			res := env.results(t, st.ID)
			wantStates(t, res, st.Total)
			if strings.Contains(resultsText(t, env, st.ID), "secret-pw") {
				t.Fatal("the results hold an imported PKCS#12's password")
			}
			if kind == KindKeygen {
				var pw bytes.Buffer
				if err := env.mgr.Passwords(context.Background(), st.ID, &pw); err != nil || strings.Count(pw.String(), "\n") != 2 {
					t.Fatalf("passwords without the file: %q, %v", pw.String(), err)
				}
				if err := env.mgr.Passwords(context.Background(), st.ID, io.Discard); !errors.Is(err, ErrReleased) {
					t.Fatalf("second Passwords: %v, want ErrReleased", err)
				}
			}
		})
	}
}

// TestJobFileRemovedWhenCancelled: a job that cannot run is cancelled, and its file goes.
func TestJobFileRemovedWhenCancelled(t *testing.T) {
	env := newEnv(t)
	st := submit(t, env, jobFile(t, Header{Kind: KindImport}, importItems(t, 2)...))
	path := filepath.Join(env.mgr.Dir, st.ID+jobFileExt)
	// The file damaged behind the appliance's back: the job cannot run.
	if err := os.WriteFile(path, []byte("-----BEGIN PRIVATE KEY-----\nnot a header\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if st = env.runUntilDone(t, st.ID); st.State != store.JobCancelled {
		t.Fatalf("status %+v, want cancelled", st)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the file of a cancelled job: %v, want it removed", err)
	}
}

// TestSweepJobFiles: the job files no job needs are removed when the scheduler starts (an
// upload the appliance was killed in, a finished job's file left behind); those of queued jobs,
// an upload in progress and files that are not job files stay.
func TestSweepJobFiles(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	keys := jobFile(t, Header{Kind: KindImport}, importItems(t, 2)...)

	// A job done, whose file is back (as a stop between the job's end and the removal, or a
	// version that kept files, leaves it).
	done := submit(t, env, keys)
	env.runUntilDone(t, done.ID)
	donePath := filepath.Join(env.mgr.Dir, done.ID+jobFileExt)
	// The rest of an upload the appliance died in: half a file, of no job.
	orphan := filepath.Join(env.mgr.Dir, "0123456789abcdef01234567"+jobFileExt)
	other := filepath.Join(env.mgr.Dir, "notes.txt")
	for path, data := range map[string][]byte{donePath: keys, orphan: keys[:len(keys)/2], other: []byte("an operator's notes\n")} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	queued := submit(t, env, keys)
	queuedPath := filepath.Join(env.mgr.Dir, queued.ID+jobFileExt)

	// An upload in progress: its file exists and belongs to no job yet.
	pr, pw := io.Pipe()
	submitted := make(chan error, 1)
	go func() {
		_, err := env.mgr.Submit(ctx, pr, "admin")
		submitted <- err
	}()
	half := len(keys) / 2
	if _, err := pw.Write(keys[:half]); err != nil {
		t.Fatal(err)
	}
	var uploading string
	for deadline := time.Now().Add(10 * time.Second); uploading == ""; {
		for _, name := range jobFiles(t, env) {
			if p := filepath.Join(env.mgr.Dir, name); !slices.Contains([]string{donePath, orphan, other, queuedPath}, p) {
				uploading = p
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload's file does not appear")
		}
		time.Sleep(5 * time.Millisecond)
	}

	n, err := env.mgr.sweepFiles(ctx)
	if err != nil || n != 2 {
		t.Fatalf("sweep removed %d files (%v), want 2", n, err)
	}
	for path, want := range map[string]bool{donePath: false, orphan: false, other: true, queuedPath: true, uploading: true} {
		if _, err := os.Stat(path); (err == nil) != want {
			t.Errorf("%s after the sweep: %v, want kept %v", filepath.Base(path), err, want)
		}
	}

	// The upload ends and its job is queued with its whole file.
	if _, err := pw.Write(keys[half:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-submitted; err != nil {
		t.Fatalf("the upload swept past: %v", err)
	}
	if b, err := os.ReadFile(uploading); err != nil || !bytes.Equal(b, keys) {
		t.Fatalf("the uploaded file: %d bytes, %v; want the whole file", len(b), err)
	}

	// A scheduler that starts sweeps before it runs anything: an orphan goes; the queued jobs
	// run, and their files go when they are done.
	if err := os.WriteFile(orphan, keys, 0o600); err != nil {
		t.Fatal(err)
	}
	env.runUntilDone(t, queued.ID)
	if _, err := os.Stat(orphan); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an upload of no job after the scheduler started: %v, want it removed", err)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		names := jobFiles(t, env)
		if slices.Equal(names, []string{"notes.txt"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job folder holds %v, want only notes.txt", names)
		}
		env.runUntilDone(t, filepath.Base(strings.TrimSuffix(uploading, jobFileExt)))
	}
}

// TestSubmitDiskFull: a job file that cannot be written (the disk is full) is the appliance's
// storage fault, not a fault of the file sent: the error wraps store.ErrUnavailable (a 503
// "storage unavailable", not a 500 or a 400), and nothing of the upload is left.
func TestSubmitDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the disk-full test needs root (to mount a tmpfs); CI runs as root")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	env := newEnv(t)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	env.mgr.Dir = mnt
	file := jobFile(t, Header{Kind: KindImport}, importItems(t, 120)...)
	if len(file) < 128<<10 {
		t.Fatalf("the job file is %d bytes, too small to fill the disk", len(file))
	}
	_, err := env.mgr.Submit(context.Background(), bytes.NewReader(file), "admin")
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("submit onto a full disk: %v, want a storage fault (store.ErrUnavailable)", err)
	}
	if names := jobFiles(t, env); len(names) != 0 {
		t.Errorf("a refused upload left %v", names)
	}
}
