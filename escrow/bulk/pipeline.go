package bulk

import (
	"context"
	"crypto"
	"crypto/cipher"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/issue"
	"github.com/keyarc/keyarc/escrow/notice/feed"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// DefaultPFXIterations is the PBKDF2 iteration count of keygen PKCS#12 files. Their passwords
// are random (about 131 bits), so key stretching adds nothing to their strength; the count is
// OpenSSL's own default rather than the 600,000 used for recovered keys (whose cost, paid per
// item, would be several times the key generation itself).
const DefaultPFXIterations = 2048

// work is one item travelling through the pipeline.
type work struct {
	seq   int
	line  []byte
	err   error // set: the item failed; it goes straight to the commit stage
	email string
	pub   crypto.PublicKey
	pkcs8 []byte
	key   crypto.Signer     // keygen: the generated key, for the PKCS#12
	cert  *x509.Certificate // import
	// seal stage
	serial *big.Int
	rec    *escrow.SealedRecord
	// keygen, once signed: the PKCS#12 and its sealed password, stored when the item is done
	p12, sealedPW []byte
}

func (w *work) fail(err error) *work {
	w.err = err
	clear(w.pkcs8)
	w.pkcs8, w.key = nil, nil
	return w
}

// jobRun is one run of one job.
type jobRun struct {
	m      *Manager
	job    *store.Job
	header Header
	tmpl   *policy.Template
	// rs is the recovery set items are sealed for; it is replaced when the issuance pipeline
	// reports that an admin has changed the set (see retake).
	rs     atomic.Pointer[escrow.RecoverySet]
	aead   cipher.AEAD // keygen: seals the PKCS#12 passwords
	prog   *progress
	caCert *x509.Certificate
	iters  int
	// again: in this pass, items were left without an outcome for a fault of the appliance.
	again atomic.Bool
	// lease is the job's lease this node holds; every write of the run checks it (fence).
	lease  store.Lease
	clock  leaseClock // the lease's clock, for the fencing checks
	fenced fencedTx
	// stop ends the run's context with a cause (nil in tests that drive a run by hand).
	stop context.CancelCauseFunc
}

// newRun is a run of job under lease, acquired in a transaction that began at began (this
// process's monotonic clock); stop ends it (when the lease is lost).
func (m *Manager) newRun(job *store.Job, lease store.Lease, began time.Time, stop context.CancelCauseFunc) *jobRun {
	r := &jobRun{m: m, job: job, caCert: m.Service.Issuer.Certificate(), iters: m.PFXIterations, lease: lease, stop: stop}
	r.clock.set(lease, m.leaseTTL(), began)
	if r.iters <= 0 {
		r.iters = DefaultPFXIterations
	}
	return r
}

// lost reports whether err says the run's lease is lost, and if so stops the run: the job
// belongs to another node now, and this node's writes for it are refused.
func (r *jobRun) lost(err error) bool {
	if !errors.Is(err, store.ErrLeaseLost) {
		return false
	}
	if r.stop != nil {
		r.stop(err)
	}
	return true
}

// runJob runs (or resumes) a job to its end, or until ctx ends. It runs passes over the job's
// items without an outcome until every item has one: an item that met a fault of the appliance
// in one pass (and so has no outcome, or a reservation that is undone between passes) is taken
// again by the next.
func (m *Manager) runJob(ctx context.Context, r *jobRun) error {
	job := r.job
	// The items' audit entries name the job, which is also how the notice feed knows them.
	ctx = escrow.WithActor(ctx, feed.BulkActorPrefix+job.ID)
	log := m.log().With("job", job.ID, "lease_token", r.lease.Token)
	p := &progress{id: job.ID, job: *job, total: job.Total, start: time.Now()}
	r.prog = p
	m.mu.Lock()
	m.running = p
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.running = nil
		m.mu.Unlock()
	}()
	if err := r.setup(ctx); err != nil {
		return err
	}
	for pass := 1; ; pass++ {
		seen, done, failed, err := r.prepare(ctx, pass)
		if err != nil {
			return err
		}
		if pass == 1 {
			p.startCount.Store(done + failed)
			log.Info("bulk job running", "kind", r.header.Kind, "items", job.Total, "already", done+failed)
		}
		p.done.Store(done)
		p.failed.Store(failed)
		if done+failed >= int64(job.Total) {
			err := m.finish(ctx, job.ID, store.JobDone, job.Total, r.fence)
			switch cause := m.faultOf(err); {
			case err == nil:
				r.resumed()
				// The outcomes are stored: the file, with what secrets it holds, goes.
				m.removeInput(job)
				// Every batch of the job has queued its notices: they may go, one per mailbox.
				m.Service.FlushNotices()
				log.Info("bulk job done", "done", p.done.Load(), "failed", p.failed.Load(),
					"seconds", time.Since(p.start).Round(time.Millisecond).Seconds())
				return nil
			case errors.Is(err, errIncomplete):
				log.Warn("bulk job: not every item has an outcome yet; another pass", "err", err)
				if !r.pause(ctx, CauseStuck, err) {
					return nil
				}
			case cause != "":
				if !r.pause(ctx, cause, err) {
					return nil
				}
			default:
				return err
			}
			continue
		}
		r.again.Store(false)
		if err := r.pass(ctx, seen); err != nil {
			return err
		}
		if ctx.Err() != nil {
			log.Info("bulk job stopped; it resumes at the next start")
			return nil
		}
		if p.done.Load()+p.failed.Load() == done+failed && !r.again.Load() {
			// A pass that moved nothing for no fault of the appliance: do not spin.
			log.Error("bulk job: a pass left items without an outcome for no known fault; trying again", "pass", pass)
			if !r.pause(ctx, CauseStuck, nil) {
				return nil
			}
		}
	}
}

// setup reads what every pass of the run needs: the header, the template, the recovery set and
// the keygen job key.
func (r *jobRun) setup(ctx context.Context) error {
	m, job := r.m, r.job
	rd, f, err := r.open()
	if err != nil {
		return err
	}
	f.Close()
	r.header = rd.Header()
	if r.header.Kind != KindImport {
		if r.tmpl, err = m.Service.Template(r.header.Template); err != nil {
			return err
		}
	}
	if err := r.refreshSet(ctx); err != nil {
		return err
	}
	if r.header.Kind == KindKeygen {
		if len(job.SecretKey) == 0 {
			return fmt.Errorf("bulk: keygen job %s has no job key", job.ID)
		}
		if r.aead, err = m.openJobKey(job.SecretKey); err != nil {
			return err
		}
	}
	return nil
}

// set is the recovery set to seal items for.
func (r *jobRun) set() *escrow.RecoverySet { return r.rs.Load() }

// refreshSet reads the current recovery set.
func (r *jobRun) refreshSet(ctx context.Context) error {
	rs, err := r.m.Service.CurrentRecoverySet(ctx)
	if err != nil {
		return err
	}
	r.rs.Store(rs)
	return nil
}

// retake leaves an item that the issuance pipeline refused because its record was sealed for a
// recovery set an admin has replaced ([escrow.ErrRecoverySetChanged]) without an outcome, so
// that the next pass takes it again and seals it for the new set; and it reads the new set,
// so that the items sealed from now on are sealed for it. Nothing of the item was stored. This
// is not a fault: the job does not pause. (The pipeline's other choice, sealing the item again
// on the spot, would keep every item's private key in memory until its commit; a set change is
// rare, and a retaken item costs one more envelope opening, or a new key for keygen.)
func (r *jobRun) retake(ctx context.Context, w *work) {
	stale := w.rec
	r.drop(w)
	if cur := r.set(); cur != nil && (stale == nil || stale.Epoch == cur.Epoch) { // not yet read again
		if err := r.refreshSet(ctx); err != nil && ctx.Err() == nil {
			r.m.log().Warn("bulk job: read the new recovery set", "job", r.job.ID, "err", err)
		} else if err == nil && r.set().Epoch != cur.Epoch {
			r.m.log().Info("bulk job: the recovery set changed; items sealed for the old one are taken again",
				"job", r.job.ID, "epoch", r.set().Epoch)
		}
	}
}

// open opens the job file.
func (r *jobRun) open() (*Reader, *os.File, error) {
	f, err := os.Open(r.job.Input)
	if err != nil {
		return nil, nil, fmt.Errorf("bulk: job file: %w", err)
	}
	rd, err := NewReader(f, r.m.Limits)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return rd, f, nil
}

// prepare readies a pass: it marks the job running, undoes the reservations a previous pass or
// run left unfinished (so that those items are issued again), completes the items whose
// certificate was issued, and returns which items already have an outcome (a bitmap, 1 bit per
// item) with the counts. Storage faults pause and retry.
func (r *jobRun) prepare(ctx context.Context, pass int) (seen []uint64, done, failed int64, err error) {
	m, job := r.m, r.job
	var abandoned, released, completed int
	err = r.retry(ctx, func() error {
		return m.Service.Store.Update(ctx, func(tx store.Tx) error {
			if err := r.fence(tx); err != nil {
				return err
			}
			if err := tx.StartJob(job.ID, m.now()); err != nil {
				return err
			}
			var err error
			if abandoned, err = tx.AbandonReservedItems(job.ID); err != nil {
				return err
			}
			if released, err = tx.ReleaseReservedItems(job.ID); err != nil {
				return err
			}
			completed, err = tx.CompleteIssuedItems(job.ID)
			return err
		})
	})
	if err != nil {
		return nil, 0, 0, err
	}
	if released > 0 {
		m.log().Warn("bulk job: interrupted items will be issued again", "job", job.ID, "items", released,
			"undone", abandoned, "pass", pass)
	}
	if completed > 0 {
		m.log().Warn("bulk job: items found issued are marked done", "job", job.ID, "items", completed)
	}
	err = r.retry(ctx, func() error {
		seen = make([]uint64, job.Total/64+1)
		done, failed = 0, 0
		return m.Service.Store.View(ctx, func(tx store.Tx) error {
			return tx.JobItemSeqs(job.ID, func(seq int, state string) error {
				if seq >= 0 && seq/64 < len(seen) {
					seen[seq/64] |= 1 << (seq % 64)
				}
				switch state {
				case store.ItemDone:
					done++
				case store.ItemFailed:
					failed++
				}
				return nil
			})
		})
	})
	return seen, done, failed, err
}

// pass runs the pipeline once over the job's items that have no outcome.
func (r *jobRun) pass(ctx context.Context, seen []uint64) error {
	// The set items are sealed for is read at each pass: the items a set change left without
	// an outcome are sealed for the new set. A storage fault pauses the job, as elsewhere.
	if err := r.retry(ctx, func() error { return r.refreshSet(ctx) }); err != nil {
		return err
	}
	rd, f, err := r.open()
	if err != nil {
		return err
	}
	defer f.Close()
	return r.pipeline(ctx, rd, seen)
}

// retry runs step until it succeeds, fails for a reason that is not the appliance's fault, or
// ctx ends; each fault pauses the job.
func (r *jobRun) retry(ctx context.Context, step func() error) error {
	for {
		err := step()
		cause := r.m.faultOf(err)
		if err == nil || cause == "" || !r.pause(ctx, cause, err) {
			if err == nil {
				r.resumed()
			}
			return err
		}
	}
}

// pause marks the job paused for cause (logging the first fault of a pause), then waits for
// the back-off, and again while [Manager.Cleared] says the fault lasts. It reports false if
// ctx ended meanwhile.
func (r *jobRun) pause(ctx context.Context, cause string, err error) bool {
	d, first := r.prog.pause(cause)
	if first {
		r.m.log().Warn("bulk job paused; it resumes by itself when the fault clears", "job", r.job.ID, "cause", cause, "err", err)
	}
	for {
		if !sleep(ctx, d) {
			return false
		}
		if r.m.Cleared == nil || r.m.Cleared(cause) == nil {
			return true
		}
		d, _ = r.prog.pause(cause)
	}
}

// resumed clears a pause once work succeeds again.
func (r *jobRun) resumed() {
	if r.prog.resume() {
		r.m.log().Info("bulk job resumed", "job", r.job.ID)
	}
}

// pipeline runs the stages and waits for them.
func (r *jobRun) pipeline(ctx context.Context, rd *Reader, seen []uint64) error {
	m := r.m
	nv, ns, ni := m.Verifiers, m.Sealers, m.Issuers
	procs := runtime.GOMAXPROCS(0)
	if nv <= 0 {
		nv = max(4, 2*procs)
	}
	if ns <= 0 {
		ns = procs
	}
	commitQueue := 2 * maxIssueBatch
	if ni <= 0 {
		ni = issueBatchers
	}
	if r.header.Kind == KindImport {
		// Imports are committed in large batches by a few goroutines (see commitImports):
		// the queue holds what arrives while one batch is being committed.
		ni, commitQueue = importCommitters, 2*maxImportBatch
	}
	lines := make(chan *work, 2*nv)
	toSeal := make(chan *work, 2*nv)
	toCommit := make(chan *work, commitQueue)

	var readErr error
	go func() {
		defer close(lines)
		for ctx.Err() == nil {
			seq, line, err := rd.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				readErr = err
				return
			}
			if seq/64 < len(seen) && seen[seq/64]&(1<<(seq%64)) != 0 {
				continue
			}
			w := &work{seq: seq, line: append([]byte(nil), line...)}
			select {
			case lines <- w:
			case <-ctx.Done():
				return
			}
		}
	}()
	var vg, sg, cg sync.WaitGroup
	for range nv {
		vg.Go(func() {
			for w := range lines {
				if ctx.Err() != nil {
					continue // stopping: the item is taken again at the next start
				}
				w = r.verify(w)
				w.line = nil
				if w.err != nil {
					toCommit <- w
				} else {
					toSeal <- w
				}
			}
		})
	}
	for range ns {
		sg.Go(func() {
			for w := range toSeal {
				toCommit <- r.seal(w)
			}
		})
	}
	go func() {
		vg.Wait()
		close(toSeal)
		sg.Wait()
		close(toCommit)
	}()
	for range ni {
		cg.Go(func() {
			if r.header.Kind == KindImport {
				r.commitImports(ctx, toCommit)
				return
			}
			r.issueBatches(ctx, toCommit)
		})
	}
	cg.Wait()
	return readErr
}

// verify parses and checks an item, opening or generating its key.
func (r *jobRun) verify(w *work) *work {
	v, err := ParseItem(r.header, w.line)
	if err != nil {
		return w.fail(err)
	}
	svc := r.m.Service
	switch it := v.(type) {
	case *Enroll:
		mailbox, err := policy.NormalizeMailbox(it.Email)
		if err != nil {
			return w.fail(fmt.Errorf("%w: %w", ErrItem, err))
		}
		if err := r.tmpl.CheckCSR(it.CSR, mailbox); err != nil {
			return w.fail(err)
		}
		pkcs8, err := svc.OpenEnvelope(it.Envelope)
		if err != nil {
			return w.fail(err)
		}
		w.email, w.pub, w.pkcs8 = mailbox, it.CSR.PublicKey, pkcs8
		if err := escrow.CheckKeyPair(pkcs8, it.CSR.PublicKey); err != nil {
			return w.fail(err)
		}
	case *Keygen:
		mailbox, err := policy.NormalizeMailbox(it.Email)
		if err != nil {
			return w.fail(fmt.Errorf("%w: %w", ErrItem, err))
		}
		key, err := generate(it.Key)
		if err != nil {
			return w.fail(err)
		}
		if err := r.tmpl.CheckPublicKey(key.Public()); err != nil {
			return w.fail(err)
		}
		pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return w.fail(fmt.Errorf("bulk: marshal generated key: %w", err))
		}
		w.email, w.pub, w.pkcs8, w.key = mailbox, key.Public(), pkcs8, key
	case *Import:
		w.pkcs8 = it.PKCS8
		if len(it.Cert.EmailAddresses) == 0 {
			return w.fail(fmt.Errorf("%w: certificate %x names no mailbox (rfc822Name)", ErrItem, it.Cert.SerialNumber))
		}
		mailbox, err := policy.NormalizeMailbox(it.Cert.EmailAddresses[0])
		if err != nil {
			return w.fail(fmt.Errorf("%w: %w", ErrItem, err))
		}
		if err := escrow.CheckKeyPair(it.PKCS8, it.Cert.PublicKey); err != nil {
			return w.fail(err)
		}
		w.email, w.cert, w.pub = mailbox, it.Cert, it.Cert.PublicKey
	}
	return w
}

func generate(kind string) (crypto.Signer, error) {
	k, err := escrow.NewKey(kind)
	if errors.Is(err, escrow.ErrKeyType) {
		return nil, fmt.Errorf("%w: key type %q", ErrItem, truncate(kind))
	}
	return k, err
}

// seal picks the serial and seals the escrow record.
func (r *jobRun) seal(w *work) *work {
	svc := r.m.Service
	var err error
	if r.header.Kind == KindImport {
		w.rec, err = svc.SealForImport(r.set(), w.cert, w.pkcs8)
	} else {
		if w.serial, err = ca.NewSerial(); err != nil {
			return w.fail(err)
		}
		w.rec, err = svc.SealForIssue(r.set(), w.serial, w.pub, w.pkcs8)
	}
	if r.header.Kind != KindKeygen {
		clear(w.pkcs8)
		w.pkcs8 = nil
	}
	if err != nil {
		return w.fail(err)
	}
	return w
}

// Issue batching. Each enroll or keygen item is reserved (its record committed) in one
// transaction and finished in another, and those commits, not the items' rows, are most of the
// writer's work: the issuers gather up to maxIssueBatch items, waiting at most issueLinger after
// the first, and issue them together (a batch of the issuance pipeline, escrow/issue), signing on up to
// issueSigners goroutines (the token's sessions). Measured here, an enroll job's writer spent
// about 100 µs per item with one issuance per store function, most of it in commits.
const (
	issueBatchers = 3
	maxIssueBatch = 128
	issueLinger   = 20 * time.Millisecond
	issueSigners  = 8
)

// issueBatches issues the items of in, many at a time.
func (r *jobRun) issueBatches(ctx context.Context, in <-chan *work) {
	gather(in, maxIssueBatch, issueLinger, func(batch []*work) { r.issueBatch(ctx, batch) })
}

func (r *jobRun) issueBatch(ctx context.Context, batch []*work) {
	var (
		reqs  []issue.Request
		ws    []*work
		fault error // an item met a fault of the appliance
	)
	for _, w := range batch {
		switch {
		case w.err != nil && r.m.faultOf(w.err) != "":
			// Not the item's fault (the token did not open its envelope...): left for the
			// next pass.
			fault = w.err
			r.drop(w)
		case w.err != nil:
			r.failItem(ctx, w)
		case ctx.Err() != nil:
			// Not reserved: redone at the next start.
		default:
			ws = append(ws, w)
		}
	}
	rb := &reservation{items: ws}
	for _, w := range ws {
		reqs = append(reqs, r.request(ctx, w, rb))
	}
	if len(reqs) > 0 {
		wait := func(err error) bool { return r.pause(ctx, CauseStorage, err) }
		for k, res := range r.m.Service.Pipeline().Issue(ctx, reqs, issueSigners, wait) {
			if errors.Is(res.Err, issue.ErrRecoverySetChanged) {
				r.retake(ctx, ws[k])
				continue
			}
			if res.Err != nil && r.m.faultOf(res.Err) != "" {
				fault = res.Err
				r.drop(ws[k])
				continue
			}
			r.issued(ctx, ws[k], res.Err)
		}
	}
	if fault != nil && ctx.Err() == nil {
		// Back off before the next batch, so that a fault that lasts pauses the job rather
		// than running every item into it.
		r.pause(ctx, r.m.faultOf(fault), fault)
	}
}

// drop leaves an item without an outcome, for the next pass (or the next start), after a fault
// of the appliance.
func (r *jobRun) drop(w *work) {
	clear(w.pkcs8)
	w.pkcs8, w.key = nil, nil
	r.again.Store(true)
}

// request is the issuance of one enroll or keygen item by the pipeline, with the job's
// bookkeeping in its transactions; rb is the reservation of its batch.
func (r *jobRun) request(ctx context.Context, w *work, rb *reservation) issue.Request {
	rq := r.reserved(w)
	reserve, prepare, finish := rq.Reserve, rq.Prepare, rq.Finish
	rq.Reserve = func(tx store.Tx, serial string) error {
		switch done, err := rb.reserve(tx, r); {
		case err != nil:
			return err
		case done:
			return nil
		}
		return reserve(tx, serial)
	}
	rq.Prepare = func(cert *x509.Certificate) error {
		if prepare != nil {
			if err := prepare(cert); err != nil {
				return err
			}
		}
		rb.signed(w)
		return nil
	}
	rq.Finish = func(tx store.Tx, cert *x509.Certificate) error {
		if err := r.fence(tx); err != nil {
			return err
		}
		switch done, err := rb.finish(tx, r); {
		case err != nil:
			return err
		case done:
			return nil
		}
		return finish(tx, cert)
	}
	return issue.Request{Template: rq.Template, Pub: rq.Pub, Mailbox: rq.Mailbox, Serial: rq.Serial, Record: rq.Record,
		Actor: escrow.ActorFrom(ctx), Reserve: rq.Reserve, Prepare: rq.Prepare, Finish: rq.Finish}
}

// reserved is the issuance of one enroll or keygen item, in the engine's form
// ([escrow.Service.IssueReserved]), with the job's bookkeeping in its transactions.
func (r *jobRun) reserved(w *work) escrow.ReservedIssue {
	jobID := r.job.ID
	req := escrow.ReservedIssue{
		Template: r.tmpl, Pub: w.pub, Mailbox: w.email, Serial: w.serial, Record: w.rec,
		Reserve: func(tx store.Tx, serial string) error {
			if err := r.fence(tx); err != nil {
				return err
			}
			return tx.ReserveJobItem(jobID, w.seq, serial, w.rec.ID)
		},
		// Fenced too: a node that lost the lease while signing never stores the certificate
		// (the issuance is undone; the new holder issues the item again).
		Finish: func(tx store.Tx, cert *x509.Certificate) error {
			if err := r.fence(tx); err != nil {
				return err
			}
			return tx.FinishJobItem(jobID, w.seq, w.p12, w.sealedPW)
		},
	}
	if w.key != nil {
		req.Prepare = func(cert *x509.Certificate) error {
			var err error
			w.p12, w.sealedPW, err = r.pkcs12(w, cert)
			return err
		}
	}
	return req
}

// itemsReserver is a transaction that reserves many job items in one statement (PostgreSQL's
// writer): see [reservation].
type itemsReserver interface {
	ReserveJobItems(jobID string, items []store.DoneItem) error
}

// reservation reserves the job items of one batch together, when the store can: the issuance
// pipeline runs each item's Reserve hook, one after the other in the batch's reservation
// transaction, and on PostgreSQL one row a hook is a round trip an item. The first hook
// reserves the rows of every item of the batch sealed for the recovery set current in that
// transaction (the items the pipeline reserves: it leaves the others out, for the same epoch
// read in the same transaction), fenced as its own; the others find theirs reserved. If that
// transaction fails (an item conflicts, or another write of it), nothing of it is kept and the
// pipeline issues the items one by one, each in a transaction of its own: there the hooks
// reserve their own item, as without a batch.
//
// The finish goes the same way when the store can (PostgreSQL's writer again): the items
// signed (their Prepare hook passed) are those the pipeline finishes, one after the other in
// the batch's last transaction, and the hook of the last of them marks them all done in one
// statement, in that same transaction; the others' hooks leave theirs to it. If that
// transaction fails, nothing of it is kept, and the pipeline finishes the items one by one,
// each hook its own item.
type reservation struct {
	items []*work
	mu    sync.Mutex
	tried bool     // the batch's reservation was tried, in tx
	tx    store.Tx // the transaction that reserved the batch (or tried to)

	resTx   store.Tx // the first transaction a Reserve hook ran in
	resMany bool     // Reserve hooks ran in more than one transaction

	done     []*work  // the items signed, to finish
	finTried bool     // the batch's finish was tried, in finTx
	finTx    store.Tx // the transaction that finishes the batch (or tried to)
	finSeen  int      // the Finish hooks run in finTx
}

// sameTx reports whether a and b are the same transaction: the Tx of one store function. A
// Tx whose type cannot be compared is never the same as another.
func sameTx(a, b store.Tx) bool {
	if !reflect.TypeOf(a).Comparable() || !reflect.TypeOf(b).Comparable() {
		return false
	}
	return a == b
}

// itemsFinisher is a transaction that finishes many job items in one statement (PostgreSQL's
// writer): see [reservation].
type itemsFinisher interface {
	FinishJobItems(jobID string, seqs []int, pkcs12s, passwords [][]byte) error
}

// signed records that w is signed and prepared: the pipeline finishes it.
func (b *reservation) signed(w *work) {
	b.mu.Lock()
	b.done = append(b.done, w)
	b.mu.Unlock()
}

// finish runs in a Finish hook, fenced: done reports that the hook's item is finished (with
// the batch, or left to the batch's last hook in the same transaction); false lets the hook
// finish its item itself.
func (b *reservation) finish(tx store.Tx, r *jobRun) (done bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.finTried {
		b.finTried = true
		if _, ok := tx.(itemsFinisher); !ok || len(b.done) < 2 || b.resMany || !reflect.TypeOf(tx).Comparable() {
			return false, nil
		}
		b.finTx = tx
	}
	if b.finTx == nil || !sameTx(b.finTx, tx) {
		return false, nil
	}
	if b.finSeen++; b.finSeen < len(b.done) {
		return true, nil
	}
	seqs := make([]int, len(b.done))
	p12s := make([][]byte, len(b.done))
	pws := make([][]byte, len(b.done))
	for i, w := range b.done {
		seqs[i], p12s[i], pws[i] = w.seq, w.p12, w.sealedPW
	}
	return true, tx.(itemsFinisher).FinishJobItems(r.job.ID, seqs, p12s, pws)
}

// reserve runs in a Reserve hook: done reports that the hook's item is reserved (with the
// batch); false lets the hook reserve its item itself.
func (b *reservation) reserve(tx store.Tx, r *jobRun) (done bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.resTx == nil:
		b.resTx = tx
	case !sameTx(b.resTx, tx):
		// The batch's items are reserved in several transactions (one by one, after the
		// batch's failed): they are finished one by one too.
		b.resMany = true
	}
	if b.tried {
		return b.tx != nil && sameTx(b.tx, tx), nil
	}
	b.tried = true
	mr, ok := tx.(itemsReserver)
	if !ok || len(b.items) < 2 || !reflect.TypeOf(tx).Comparable() {
		return false, nil
	}
	if err := r.fence(tx); err != nil {
		return false, err
	}
	epoch, err := tx.CurrentEpoch()
	if err != nil {
		return false, err
	}
	items := make([]store.DoneItem, 0, len(b.items))
	for _, w := range b.items {
		if w.rec.Epoch == epoch {
			items = append(items, store.DoneItem{Seq: w.seq, Serial: store.FormatSerial(w.serial), RecordID: w.rec.ID})
		}
	}
	b.tx = tx
	if err := mr.ReserveJobItems(r.job.ID, items); err != nil {
		return false, err
	}
	return true, nil
}

// issued records the outcome of an item's issuance.
func (r *jobRun) issued(ctx context.Context, w *work, err error) {
	clear(w.pkcs8)
	w.pkcs8, w.key = nil, nil
	switch {
	case err == nil:
		r.count(true)
		r.resumed()
	case r.lost(err):
		// Another node owns the job now: the item is its to issue.
		r.drop(w)
	case errors.Is(err, escrow.ErrReserved), errors.Is(err, issue.ErrReserved):
		// Already has an outcome (it cannot happen in one run; a resume skips such items).
	case ctx.Err() != nil:
		// Shutting down: the reservation (if any) is released at the next start.
	default:
		w.err = err
		r.failItem(ctx, w)
	}
}

// pkcs12 makes the keygen item's PKCS#12 with a fresh password and seals that password.
func (r *jobRun) pkcs12(w *work, cert *x509.Certificate) (p12, sealed []byte, err error) {
	pw, err := newPassword()
	if err != nil {
		return nil, nil, err
	}
	defer clear(pw)
	p12, err = pkcs12.Modern2023.WithIterations(r.iters).Encode(w.key, cert, []*x509.Certificate{r.caCert}, string(pw))
	if err != nil {
		return nil, nil, fmt.Errorf("bulk: build PKCS#12: %w", err)
	}
	sealed, err = sealPassword(r.aead, r.job.ID, w.seq, pw)
	if err != nil {
		return nil, nil, err
	}
	return p12, sealed, nil
}

// newPassword returns 22 random characters of a 62-letter alphabet (about 131 bits).
func newPassword() ([]byte, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 22)
	var buf [64]byte
	n := 0
	for n < len(out) {
		if _, err := rand.Read(buf[:]); err != nil {
			return nil, err
		}
		for _, b := range buf {
			if b < 248 && n < len(out) { // 248 = 4*62: no modulo bias
				out[n] = alphabet[int(b)%62]
				n++
			}
		}
	}
	clear(buf[:])
	return out, nil
}

// failItem records an item's failure and its reason.
func (r *jobRun) failItem(ctx context.Context, w *work) {
	reason := reasonOf(w.err)
	err := r.retry(ctx, func() error {
		return r.m.Service.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error {
			if err := r.fence(tx); err != nil {
				return err
			}
			return tx.FailJobItem(r.job.ID, w.seq, reason)
		})
	})
	switch {
	case err == nil:
		r.count(false)
	case r.lost(err):
		// The job belongs to another node now: the item is its to fail again.
	case r.m.faultOf(err) != "":
		// Stopping under a fault: the item has no outcome yet and is taken again.
		r.again.Store(true)
	default:
		r.m.log().Error("bulk: record failed item", "job", r.job.ID, "seq", w.seq, "err", err)
	}
}

func (r *jobRun) count(ok bool) {
	res := "failed"
	if ok {
		r.prog.done.Add(1)
		res = "done"
	} else {
		r.prog.failed.Add(1)
	}
	if r.m.Metrics != nil {
		r.m.Metrics.Item(r.header.Kind, res)
	}
}

// reasonKeyArchivedElsewhere is the reason of an item whose key is already archived for another
// mailbox (by an earlier job, an enrollment, or another item of the same job).
const reasonKeyArchivedElsewhere = "the private key of this item is already archived for another mailbox; a key belongs to one mailbox: use a new key"

// reasonOf is the message stored for a failed item: client errors as they are (they carry
// no secret), anything else generic.
func reasonOf(err error) string {
	var rej *policy.RejectError
	switch {
	case errors.Is(err, escrow.ErrKeyArchivedElsewhere):
		// A fixed text: the store's error names records, never the other mailbox, but the
		// reason is the item's own and must not depend on how deep the error was wrapped.
		return reasonKeyArchivedElsewhere
	case errors.Is(err, ErrItem), errors.Is(err, escrow.ErrInvalidRequest), errors.As(err, &rej),
		errors.Is(err, policy.ErrRejected), errors.Is(err, policy.ErrInvalidMailbox):
		s := err.Error()
		if len(s) > 512 {
			s = s[:512]
		}
		return s
	case errors.Is(err, ca.ErrLint):
		return err.Error()
	}
	return "internal error (see the appliance log)"
}

// Import batching. An imported item costs the writer only its rows, so what bounds an import
// is the work of a transaction itself: every index page an item touches is written to the WAL
// (and later to the database) once per transaction, however many of the transaction's items
// touched it, and a transaction has an fsync. So the committers gather up to maxImportBatch
// items, waiting at most importLinger after the first, and the store group-commits the batches
// of the importCommitters running at once. Measured here, batches of a few dozen items (a 4 ms
// wait) wrote 40% more per item than batches of hundreds; an import is not waited on item by
// item, so the wait costs nothing.
const (
	importCommitters = 2
	maxImportBatch   = 512
	importLinger     = 25 * time.Millisecond
)

// commitImports stores imported items, many per store function.
func (r *jobRun) commitImports(ctx context.Context, in <-chan *work) {
	gather(in, maxImportBatch, importLinger, func(batch []*work) { r.commitImportBatch(ctx, batch) })
}

// gather passes the items of in to f in batches of up to max items, waiting at most linger
// after a batch's first item for the rest.
func gather(in <-chan *work, max int, linger time.Duration, f func([]*work)) {
	batch := make([]*work, 0, max)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for w := range in {
		batch = append(batch[:0], w)
		timer.Reset(linger)
	fill:
		for len(batch) < max {
			select {
			case w2, ok := <-in:
				if !ok {
					break fill
				}
				batch = append(batch, w2)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		f(batch)
	}
}

func (r *jobRun) commitImportBatch(ctx context.Context, batch []*work) {
	jobID := r.job.ID
	items := make([]issue.ImportItem, 0, len(batch))
	done := make([]store.DoneItem, 0, len(batch))
	var good []*work
	for _, w := range batch {
		if w.err != nil {
			r.failItem(ctx, w)
			continue
		}
		good = append(good, w)
		items = append(items, issue.ImportItem{Cert: w.cert, Mailbox: w.email, Record: w.rec})
		done = append(done, store.DoneItem{Seq: w.seq, Serial: store.FormatSerial(w.cert.SerialNumber), RecordID: w.rec.ID})
	}
	if len(items) == 0 {
		return
	}
	pl := r.m.Service.Pipeline()
	var stale []bool
	err := r.retry(ctx, func() (err error) {
		stale, err = pl.Import(context.WithoutCancel(ctx), escrow.ActorFrom(ctx), "job "+jobID, items, func(tx store.Tx, stored []int) error {
			if err := r.fence(tx); err != nil {
				return err
			}
			if len(stored) == len(done) {
				return tx.InsertJobItemsDone(jobID, done)
			}
			some := make([]store.DoneItem, len(stored))
			for k, i := range stored {
				some[k] = done[i]
			}
			return tx.InsertJobItemsDone(jobID, some)
		})
		return err
	})
	if err == nil {
		for i, w := range good {
			if stale[i] {
				r.retake(ctx, w)
				continue
			}
			r.count(true)
		}
		return
	}
	if r.m.faultOf(err) != "" || r.lost(err) {
		// Stopping under a fault, or the job belongs to another node now: nothing was
		// stored; the items are taken again.
		r.again.Store(true)
		return
	}
	// One item spoiled the batch (a serial already archived...): one by one.
	for i, w := range good {
		it, d := items[i], done[i]
		var stale []bool
		err := r.retry(ctx, func() (err error) {
			stale, err = pl.Import(context.WithoutCancel(ctx), escrow.ActorFrom(ctx), "", []issue.ImportItem{it}, func(tx store.Tx, stored []int) error {
				if err := r.fence(tx); err != nil {
					return err
				}
				if len(stored) == 0 {
					return nil
				}
				return tx.InsertJobItemDone(jobID, d.Seq, d.Serial, d.RecordID)
			})
			return err
		})
		switch {
		case r.m.faultOf(err) != "", r.lost(err):
			r.again.Store(true)
		case errors.Is(err, store.ErrConflict):
			w.err = fmt.Errorf("%w: a certificate with serial %s is already in the archive", escrow.ErrInvalidRequest, d.Serial)
			r.failItem(ctx, w)
		case err != nil:
			w.err = err
			r.failItem(ctx, w)
		case stale[0]:
			r.retake(ctx, w)
		default:
			r.count(true)
		}
	}
}
