package bulk

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// Errors of job management.
var (
	// ErrNotFound: no such job.
	ErrNotFound = errors.New("bulk: no such job")
	// ErrNotDone: the job has not finished yet.
	ErrNotDone = errors.New("bulk: job not finished")
	// ErrReleased: the job's passwords were already released (or it has none).
	ErrReleased = errors.New("bulk: passwords already released")
)

// Metrics receives counts of bulk items. A nil Metrics is allowed.
type Metrics interface {
	// Item counts one item of kind with result "done" or "failed".
	Item(kind Kind, result string)
}

// Manager accepts, runs and reports bulk jobs. Fill the exported fields, then call [Manager.Run]
// in a goroutine.
type Manager struct {
	Service *escrow.Service
	// Dir is where job files are kept (created 0700 if missing).
	Dir     string
	Logger  *slog.Logger
	Metrics Metrics
	Limits  Limits
	// Verifiers, Sealers and Issuers size the pipeline's stages (defaults: 2 x GOMAXPROCS, at
	// least 4; GOMAXPROCS; 3 issuers of batches of up to 128 items).
	Verifiers, Sealers, Issuers int
	// PFXIterations is the PBKDF2 iteration count of keygen PKCS#12 files (default
	// [DefaultPFXIterations]).
	PFXIterations int
	// Fault tells the faults of the appliance from the faults of an item: it returns the
	// cause (such as [CauseToken]) of an error that is the appliance's fault, or "". Faults of
	// the storage ([store.ErrUnavailable]) are recognised without it. An item never fails for
	// the appliance's fault: the job pauses and tries again (see [Manager.Run]).
	Fault func(err error) string
	// Cleared, when set, reports whether the fault of cause has cleared (nil) or lasts (its
	// error). A paused job tries its work again only once it has: the step that resumes a
	// job may not need what failed (a read of the store does not need the token), and a job
	// that resumed on it would only pause again, reading as running while nothing moves.
	// Nil: the job tries again after each back-off.
	Cleared func(cause string) error
	// Node names this node when several share the database: it holds the leases of the jobs
	// it runs (default [DefaultNode]).
	Node string
	// LeaseTTL is how long a job's lease lasts without renewal (default [DefaultLeaseTTL]);
	// the running node renews it every third of that. Every node of a cluster should use the
	// same value.
	LeaseTTL time.Duration

	wake    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	running *progress
	runs    sync.WaitGroup // calls of Run in progress
	noInput sync.Map       // IDs of the jobs this node cannot run (file, template), warned about once
	tokens  sync.Map       // job lease name -> the fencing token this Manager last took it with
	foreign sync.Map       // job lease names held under this node's name by another process, warned about once
}

// Causes of a paused job, for [Status.Reason] and metrics.
const (
	// CauseStorage: the store fails (a full disk, an I/O error...).
	CauseStorage = "storage"
	// CauseToken: the token does not answer.
	CauseToken = "token"
	// CauseStuck: items make no progress for no known fault (see the appliance log).
	CauseStuck = "stuck"
)

// Pause back-off: the first retry after a fault waits pauseMin, each next one twice as long,
// up to pauseMax.
const (
	pauseMin = 50 * time.Millisecond
	pauseMax = 2 * time.Second
)

// faultOf returns the cause of err if it is a fault of the appliance, else "".
func (m *Manager) faultOf(err error) string {
	if err == nil {
		return ""
	}
	if m.Fault != nil {
		if c := m.Fault(err); c != "" {
			return c
		}
	}
	if errors.Is(err, store.ErrUnavailable) {
		return CauseStorage
	}
	return ""
}

// progress is the live state of the running job.
type progress struct {
	id           string
	job          store.Job // as it was when the run started
	total        int
	done, failed atomic.Int64
	start        time.Time
	startCount   atomic.Int64 // items with an outcome when the run started

	mu      sync.Mutex
	cause   string        // why the job is paused; "" when it runs
	backoff time.Duration // the next pause
}

// pause records a fault of cause and returns how long to wait before trying again, and
// whether the job was running until now.
func (p *progress) pause(cause string) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	first := p.cause == ""
	p.cause = cause
	d := max(p.backoff, pauseMin)
	p.backoff = min(2*d, pauseMax)
	return d, first
}

// resume clears the pause and reports whether the job was paused.
func (p *progress) resume() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := p.cause != ""
	p.cause, p.backoff = "", 0
	return was
}

func (p *progress) paused() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cause
}

// reasonText is the status's explanation of a pause.
func reasonText(cause string) string {
	switch cause {
	case CauseStorage:
		return "storage unavailable: the job resumes by itself when the storage works again"
	case CauseToken:
		return "token unavailable: the job resumes by itself when the token answers again"
	case CauseStuck:
		return "items make no progress; see the appliance log"
	}
	return cause + ": the job resumes by itself when the fault clears"
}

// Paused returns the cause of the running job's pause ([CauseStorage]...), or "" when no job
// is paused.
func (m *Manager) Paused() string {
	m.mu.Lock()
	p := m.running
	m.mu.Unlock()
	if p == nil {
		return ""
	}
	return p.paused()
}

// Wait waits until every [Manager.Run] has returned (after its context ended: the batches in
// flight have committed or been undone), or until ctx ends.
func (m *Manager) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		m.runs.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bulk: wait for the running job: %w", ctx.Err())
	}
}

func (m *Manager) init() {
	m.once.Do(func() { m.wake = make(chan struct{}, 1) })
}

func (m *Manager) log() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// now reads this node's wall clock: its Service's.
func (m *Manager) now() time.Time {
	if m.Service.Now != nil {
		return m.Service.Now().UTC()
	}
	return time.Now().UTC()
}

// StatePaused is the state a running job reports while it waits for a fault of the appliance
// to clear; it is never stored.
const StatePaused = "paused"

// Status is a job's progress.
type Status struct {
	ID       string `json:"id"`
	Kind     Kind   `json:"kind"`
	Template string `json:"template"`
	// State is queued, running, paused (running, but waiting for a fault of the appliance to
	// clear), done or cancelled.
	State string `json:"state"`
	// Reason says why a paused job waits.
	Reason      string    `json:"reason,omitempty"`
	SubmittedBy string    `json:"submitted_by"`
	Total       int       `json:"total"`
	Done        int       `json:"done"`
	Failed      int       `json:"failed"`
	Rate        float64   `json:"rate"`        // items per second, this run
	ETASeconds  float64   `json:"eta_seconds"` // 0 when unknown or finished
	CreatedAt   time.Time `json:"created_at"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
}

func newID() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// jobFileWriter writes the job file of an upload. Its errors (a full disk, an I/O error) are
// the appliance's storage faults, not faults of the file sent: they wrap store.ErrUnavailable.
type jobFileWriter struct{ f *os.File }

func (w jobFileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: bulk: job file: %w", store.ErrUnavailable, err)
	}
	return n, err
}

// Submit streams a job file into Dir (mode 0600), checking its header, its framing and its
// limits as it goes, and queues the job. The header's template must exist and fit the kind.
// The file is locked while it is written, so that no sweep removes it before its job is
// queued; a refused file is removed at once (see files.go for when a job's file goes).
func (m *Manager) Submit(ctx context.Context, body io.Reader, submittedBy string) (*Status, error) {
	m.init()
	f, id, err := m.createJobFile()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	path := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(path)
		}
		// Closing the file releases its lock: once the job is queued, the sweep finds it.
		f.Close()
	}()
	rd, err := NewReader(io.TeeReader(body, jobFileWriter{f}), m.Limits)
	if err != nil {
		return nil, err
	}
	h := rd.Header()
	if err := m.checkTemplate(h); err != nil {
		return nil, err
	}
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		_, _, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		total++
	}
	if total == 0 {
		return nil, fmt.Errorf("%w: the file holds no items", ErrFormat)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("%w: bulk: job file: %w", store.ErrUnavailable, err)
	}
	var wrapped []byte
	if h.Kind == KindKeygen {
		if wrapped, err = m.newJobKey(); err != nil {
			return nil, err
		}
	}
	tmpl := h.Template
	if tmpl == "" {
		tmpl = escrow.TemplateImport
	}
	job := store.Job{ID: id, Kind: string(h.Kind), Template: tmpl, SubmittedBy: submittedBy, Input: path, State: store.JobQueued,
		SecretKey: wrapped, Total: total, CreatedAt: m.now()}
	// The job and its audit entry commit together: a job nobody can trace is never queued.
	d := audit.Details{Request: id, RequestKind: string(h.Kind), Template: tmpl, Count: total}
	if err := m.Service.Audited(ctx, audit.KindBulkSubmitted, "job "+id, d, func(tx store.Tx) error { return tx.InsertJob(job) }); err != nil {
		return nil, fmt.Errorf("bulk: queue job: %w", err)
	}
	ok = true
	m.log().Info("bulk job queued", "job", id, "kind", h.Kind, "template", tmpl, "items", total, "by", submittedBy)
	m.Wake()
	return m.statusOf(&job), nil
}

// checkTemplate checks that the header's template exists and suits the job's kind.
func (m *Manager) checkTemplate(h Header) error {
	if h.Kind == KindImport {
		if h.Template != "" && h.Template != escrow.TemplateImport {
			return fmt.Errorf("%w: header: an import job stores certificates as they are; omit template", ErrFormat)
		}
		return nil
	}
	t, err := m.Service.Template(h.Template)
	if err != nil {
		return err
	}
	switch {
	case t.ManualApproval:
		return fmt.Errorf("%w: template %q needs an admin's approval per request; it cannot be used in a bulk job", escrow.ErrInvalidRequest, t.Name)
	case !t.Archive:
		return fmt.Errorf("%w: template %q does not archive keys; bulk jobs are for archiving templates", escrow.ErrInvalidRequest, t.Name)
	case h.Kind == KindKeygen && !t.ServerKeygen:
		return fmt.Errorf("%w: template %q does not allow server-side key generation", escrow.ErrInvalidRequest, t.Name)
	}
	return nil
}

// Wake makes the scheduler look for queued jobs now.
func (m *Manager) Wake() {
	m.init()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run runs jobs until ctx ends: first the jobs a previous run left running (here or on a node
// that died), then queued jobs in submission order, one at a time, each under its lease (see
// [DefaultLeaseTTL]; jobs other nodes hold are left to them). Call it after
// [escrow.Service.Sweep]. When ctx ends it stops taking items and returns once the items in
// flight are committed (or left for the next start); [Manager.Wait] waits for that. A job that
// meets a fault of the appliance (storage, token) pauses and goes on when the fault clears; it
// is never cancelled for it. A job whose lease another node took stops here at once.
func (m *Manager) Run(ctx context.Context) {
	m.init()
	m.runs.Add(1)
	defer m.runs.Done()
	// Job files no job needs (an upload the appliance died in, a finished job's file a stop
	// left behind) go before any job runs, then every fileSweepEvery.
	m.sweepFilesNow(ctx)
	swept := time.Now()
	// Jobs whose node died are looked for at least twice per lease.
	t := time.NewTicker(min(5*time.Second, m.leaseTTL()/2))
	defer t.Stop()
	for {
		if time.Since(swept) >= fileSweepEvery {
			m.sweepFilesNow(ctx)
			swept = time.Now()
		}
		for ctx.Err() == nil {
			job, lease, began, err := m.claimJob(ctx)
			if err != nil {
				if ctx.Err() == nil {
					m.log().Error("bulk: look for jobs", "err", err)
				}
				break
			}
			if job == nil {
				break
			}
			err = m.runLeased(ctx, job, lease, began)
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, store.ErrLeaseLost):
				m.log().Warn("bulk job taken over by another node; stopped here", "job", job.ID, "err", err)
			case m.faultOf(err) != "":
				// The appliance's fault, not the job's: try again shortly.
				m.log().Warn("bulk job waits for the appliance", "job", job.ID, "err", err)
				sleep(ctx, time.Second)
			default:
				sleep(ctx, time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-t.C:
		}
	}
}

// runLeased runs a job under its lease: it renews the lease while the job runs, stops the run
// as soon as the lease is lost, cancels a job that cannot run (its file is gone...) rather
// than retrying it forever, and gives the lease up at the end.
func (m *Manager) runLeased(ctx context.Context, job *store.Job, lease store.Lease, began time.Time) error {
	jctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	r := m.newRun(job, lease, began, stop)
	renewing := make(chan struct{})
	go func() { defer close(renewing); r.keepLease(jctx, stop) }()
	err := m.runJob(jctx, r)
	if cause := context.Cause(jctx); err == nil && errors.Is(cause, store.ErrLeaseLost) {
		err = cause
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, store.ErrLeaseLost) && m.faultOf(err) == "" {
		m.log().Error("bulk job stopped", "job", job.ID, "err", err)
		if err := m.finish(context.Background(), job.ID, store.JobCancelled, 0, r.fence); err != nil {
			m.log().Error("bulk: cancel job", "job", job.ID, "err", err)
		} else {
			m.removeInput(job)
		}
	}
	stop(nil)
	<-renewing
	if !errors.Is(err, store.ErrLeaseLost) {
		m.releaseLease(lease)
	}
	return err
}

// errIncomplete: a job cannot be done while some of its items have no outcome.
var errIncomplete = errors.New("bulk: items without an outcome")

// finish sets a job's final state with its counts, if fence (the job's lease check) passes
// in the same transaction. A job is done only when every one of its total items is done or
// failed ([errIncomplete] otherwise).
func (m *Manager) finish(ctx context.Context, id, state string, total int, fence func(store.Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return m.Service.Store.Update(ctx, func(tx store.Tx) error {
		if err := fence(tx); err != nil {
			return err
		}
		done, failed, _, err := tx.JobCounts(id)
		if err != nil {
			return err
		}
		if state == store.JobDone && done+failed != total {
			return fmt.Errorf("%w: job %s has %d done and %d failed of %d", errIncomplete, id, done, failed, total)
		}
		return tx.FinishJob(id, state, done, failed, m.now())
	})
}

// sleep waits for d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Status reports a job's progress.
func (m *Manager) Status(ctx context.Context, id string) (*Status, error) {
	var job *store.Job
	var done, failed int
	m.mu.Lock()
	p := m.running
	m.mu.Unlock()
	err := m.Service.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if job, err = tx.GetJob(id); err != nil {
			return err
		}
		if p != nil && p.id == id && job.State == store.JobQueued {
			job.State = store.JobRunning // started by a transaction that is not yet committed
		}
		switch {
		case job.State == store.JobDone || job.State == store.JobCancelled:
			done, failed = job.Done, job.Failed
			return nil
		case p != nil && p.id == id:
			// Running here: its live counters (below) are the count, and a poll does not
			// scan the job's items (which, every few milliseconds, slowed the job itself).
			return nil
		}
		done, failed, _, err = tx.JobCounts(id)
		return err
	})
	if err != nil && p != nil && p.id == id && m.faultOf(err) != "" {
		// The store cannot be read: the running job's live state is all there is to report.
		j := p.job
		job, err = &j, nil
		job.State = store.JobRunning
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, truncate(id))
	}
	if err != nil {
		return nil, err
	}
	job.Done, job.Failed = done, failed
	return m.statusWith(job, p), nil
}

// statusWith is the status of job, whose Done and Failed are its counts in the store, and p
// the job running here (or nil): a job running here reports its live state, counters and
// rate; a finished job its rate over its run.
func (m *Manager) statusWith(job *store.Job, p *progress) *Status {
	st := m.statusOf(job)
	if p != nil && p.id == job.ID {
		if cause := p.paused(); cause != "" && st.State == store.JobRunning {
			st.State, st.Reason = StatePaused, reasonText(cause)
		}
		d, f := int(p.done.Load()), int(p.failed.Load())
		if d+f > st.Done+st.Failed {
			st.Done, st.Failed = d, f
		}
		el := time.Since(p.start).Seconds()
		if n := float64(int64(d+f) - p.startCount.Load()); el > 0 && n > 0 {
			st.Rate = n / el
			st.ETASeconds = float64(st.Total-st.Done-st.Failed) / st.Rate
		}
	} else if !job.StartedAt.IsZero() && !job.FinishedAt.IsZero() {
		if el := job.FinishedAt.Sub(job.StartedAt).Seconds(); el > 0 {
			st.Rate = float64(job.Done+job.Failed) / el
		}
	}
	return st
}

func (m *Manager) statusOf(j *store.Job) *Status {
	return &Status{ID: j.ID, Kind: Kind(j.Kind), Template: j.Template, State: j.State, SubmittedBy: j.SubmittedBy,
		Total: j.Total, Done: j.Done, Failed: j.Failed, CreatedAt: j.CreatedAt, StartedAt: j.StartedAt, FinishedAt: j.FinishedAt}
}

// List returns the status of every job, oldest first, as [Manager.Status] reports each: the
// store keeps a job's counts only once it ends, so a job that has not ended has its items
// counted (the one running here reports its live counters instead).
func (m *Manager) List(ctx context.Context) ([]Status, error) {
	m.mu.Lock()
	p := m.running
	m.mu.Unlock()
	var jobs []store.Job
	if err := m.Service.Store.View(ctx, func(tx store.Tx) (err error) {
		if jobs, err = tx.ListJobs(""); err != nil {
			return err
		}
		for i := range jobs {
			j := &jobs[i]
			if p != nil && p.id == j.ID {
				if j.State == store.JobQueued {
					j.State = store.JobRunning // started by a transaction that is not yet committed
				}
				continue
			}
			if j.State == store.JobDone || j.State == store.JobCancelled {
				continue
			}
			if j.Done, j.Failed, _, err = tx.JobCounts(j.ID); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(jobs))
	for i := range jobs {
		out = append(out, *m.statusWith(&jobs[i], p))
	}
	return out, nil
}

// CountByState counts jobs per state, for metrics.
func (m *Manager) CountByState(ctx context.Context) (map[string]int, error) {
	var jobs []store.Job
	if err := m.Service.Store.View(ctx, func(tx store.Tx) (err error) {
		jobs, err = tx.ListJobs("")
		return err
	}); err != nil {
		return nil, err
	}
	out := map[string]int{store.JobQueued: 0, store.JobRunning: 0, store.JobDone: 0, store.JobCancelled: 0}
	for _, j := range jobs {
		out[j.State]++
	}
	return out, nil
}

// Result is one line of a job's results.
type Result struct {
	Seq         int    `json:"seq"`
	State       string `json:"state"`
	Serial      string `json:"serial,omitempty"`
	RecordID    string `json:"record_id,omitempty"`
	Certificate string `json:"certificate,omitempty"` // base64 DER
	PKCS12      string `json:"pkcs12,omitempty"`      // base64; keygen only
	Error       string `json:"error,omitempty"`
}

// Results writes a job's per-item results as JSON Lines, in seq order: its status first, then
// one [Result] per item that has an outcome. It never writes a password.
func (m *Manager) Results(ctx context.Context, id string, w io.Writer) error {
	st, err := m.Status(ctx, id)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	if err := enc.Encode(st); err != nil {
		return err
	}
	return m.eachItem(ctx, id, func(it store.JobItem) error {
		if it.State == store.ItemReserved {
			return nil
		}
		r := Result{Seq: it.Seq, State: it.State, Serial: it.Serial, RecordID: it.RecordID, Error: it.Error}
		if len(it.Result) > 0 {
			r.Certificate = base64.StdEncoding.EncodeToString(it.Result)
		}
		if len(it.PKCS12) > 0 {
			r.PKCS12 = base64.StdEncoding.EncodeToString(it.PKCS12)
		}
		return enc.Encode(r)
	})
}

// eachItem pages through a job's items so that no read transaction lasts long.
func (m *Manager) eachItem(ctx context.Context, id string, fn func(store.JobItem) error) error {
	const page = 1000
	from := 0
	for {
		var items []store.JobItem
		err := m.Service.Store.View(ctx, func(tx store.Tx) error {
			return tx.JobItems(id, from, page, func(it store.JobItem) error {
				items = append(items, it)
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, it := range items {
			if err := fn(it); err != nil {
				return err
			}
		}
		if len(items) < page {
			return nil
		}
		from = items[len(items)-1].Seq + 1
	}
}

// Password is one line of a keygen job's passwords file.
type Password struct {
	Seq      int    `json:"seq"`
	Serial   string `json:"serial"`
	Password string `json:"password"`
}

// Passwords writes, once, the passwords of a finished keygen job's PKCS#12 files as JSON Lines,
// then forgets the job key that sealed them: a second call gives [ErrReleased]. If writing fails
// before the end, the passwords stay available.
func (m *Manager) Passwords(ctx context.Context, id string, w io.Writer) error {
	var job *store.Job
	err := m.Service.Store.View(ctx, func(tx store.Tx) (err error) {
		job, err = tx.GetJob(id)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %q", ErrNotFound, truncate(id))
	}
	if err != nil {
		return err
	}
	if job.Kind != string(KindKeygen) || len(job.SecretKey) == 0 {
		return fmt.Errorf("%w: job %s", ErrReleased, id)
	}
	if job.State != store.JobDone {
		return fmt.Errorf("%w: job %s is %s; passwords are released once the job is done", ErrNotDone, id, job.State)
	}
	aead, err := m.openJobKey(job.SecretKey)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	err = m.eachItem(ctx, id, func(it store.JobItem) error {
		if it.State != store.ItemDone || len(it.Password) == 0 {
			return nil
		}
		pw, err := openPassword(aead, id, it.Seq, it.Password)
		if err != nil {
			return err
		}
		err = enc.Encode(Password{Seq: it.Seq, Serial: it.Serial, Password: string(pw)})
		clear(pw)
		return err
	})
	if err != nil {
		return err
	}
	// Forgetting the job key and the audit entry of the release commit together.
	d := audit.Details{Request: id, RequestKind: string(KindKeygen), Template: job.Template, Count: job.Total}
	err = m.Service.Audited(ctx, audit.KindBulkPasswords, "job "+id, d, func(tx store.Tx) error {
		cleared, err := tx.ClearJobSecret(id)
		if err == nil && !cleared {
			// Another call released them at the same time.
			err = fmt.Errorf("%w: job %s", ErrReleased, id)
		}
		return err
	})
	if errors.Is(err, ErrReleased) {
		return err
	}
	if err != nil {
		return fmt.Errorf("bulk: forget job key: %w", err)
	}
	m.log().Info("bulk job passwords released", "job", id)
	return nil
}

// newJobKey makes a job's password key and returns it wrapped (RSA-OAEP) to the transport
// certificate: only the token can unwrap it.
func (m *Manager) newJobKey() ([]byte, error) {
	tr := m.Service.Transport
	if tr == nil {
		return nil, fmt.Errorf("%w: no transport key configured", escrow.ErrNoRecoverySet)
	}
	pub, ok := tr.Cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("bulk: the transport key is %T; keygen jobs need an RSA transport key", tr.Cert.PublicKey)
	}
	key := make([]byte, 32)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	wrapped, err := rsa.EncryptOAEP(m.Service.ShareHash().New(), rand.Reader, pub, key, nil)
	if err != nil {
		return nil, fmt.Errorf("bulk: wrap job key: %w", err)
	}
	return wrapped, nil
}

// openJobKey unwraps a job key in the token and returns its AES-GCM.
func (m *Manager) openJobKey(wrapped []byte) (cipher.AEAD, error) {
	tr := m.Service.Transport
	if tr == nil {
		return nil, fmt.Errorf("%w: no transport key configured", escrow.ErrNoRecoverySet)
	}
	key, err := tr.Key.Decrypt(rand.Reader, wrapped, &rsa.OAEPOptions{Hash: m.Service.ShareHash()})
	if err != nil {
		return nil, fmt.Errorf("bulk: unwrap job key: %w", err)
	}
	defer clear(key)
	if len(key) != 32 {
		return nil, errors.New("bulk: unwrap job key: wrong length")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func passwordAD(job string, seq int) []byte {
	ad := binary.BigEndian.AppendUint64([]byte("keyarc bulk password\x00"+job+"\x00"), uint64(seq))
	return ad
}

func sealPassword(aead cipher.AEAD, job string, seq int, pw []byte) ([]byte, error) {
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(pw)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, pw, passwordAD(job, seq)), nil
}

func openPassword(aead cipher.AEAD, job string, seq int, sealed []byte) ([]byte, error) {
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("bulk: sealed password too short")
	}
	pw, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], passwordAD(job, seq))
	if err != nil {
		return nil, fmt.Errorf("bulk: open sealed password of item %d: %w", seq, err)
	}
	return pw, nil
}
