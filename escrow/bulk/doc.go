// Package bulk runs keyarc's bulk jobs: many enrollments (CSR + encrypted key), server-side key
// generations, or imports of key pairs from another CA, submitted as one streamed job file (see
// [NewReader] for the format) and processed at the speed of the cryptography.
//
// # Pipeline
//
// A job runs as parallel stages joined by bounded channels:
//
//	read  ->  parse + verify (N workers)  ->  seal (S workers)  ->  commit + sign + commit (C workers)
//
// The verify stage parses each line, checks the CSR against the template and the item's
// mailbox, opens the CMS envelope with the transport key (in the token), parses and pair-checks
// the PKCS#8 key, or generates the key. The seal stage picks the serial and seals the escrow
// record (software only) for the job's recovery set. The last stage hands batches to the one
// issuance pipeline, escrow/issue ([escrow.Service.Pipeline]): the job item is reserved in the
// same transaction as the serial and the record, the certificate is signed, then the item is
// marked done in the same transaction that stores the certificate and activates the record.
// Many commit workers call the store at once, so the store's group commit makes one fsync serve
// many items. A store whose transaction reserves and finishes many job items in one statement
// each (PostgreSQL's writer) gets a batch's reservations together and its finishes together
// (see reservation in pipeline.go), and each transaction reads the job's lease once (see
// jobRun.fence): on PostgreSQL every statement of the one writer is a round trip, and those
// round trips, not the rows, bound an enroll job. Imports are stored, not signed ([issue.Pipeline.Import]), hundreds of items per
// transaction.
//
// # A change of the recovery set
//
// The pipeline commits no record sealed for a recovery set an admin has replaced: it refuses
// such items with [escrow.ErrRecoverySetChanged] and commits the rest of their batch. The job
// then reads the new set, seals the items that come next for it, and leaves the refused items
// without an outcome, so that the next pass takes them again (their envelope is opened again,
// or, for keygen, a new key is made) and seals them for the new set. This is not a fault: the
// job does not pause. Resealing on the spot would keep each item's private key in memory until
// its batch commits; a set change is rare, and this way the key is cleared as soon as it is
// sealed.
//
// # Audit
//
// Queuing a job and releasing a keygen job's passwords each append an audit entry
// (bulk-submitted, bulk-passwords) in the transaction of the change ([escrow.Service.Audited]);
// the items' certificates and records are audited by the pipeline (one entry per item, or one
// per import batch).
//
// # Subscriber notices
//
// The items' audit entries name the job as their actor ("job" and its ID): the notice feed
// (escrow/notice/feed) reads them from the trail and queues their notices as batches, so the
// subscriber of every item that committed is told, and those of failed, refused or retaken items
// are not. When the job is done, [escrow.Service.FlushNotices] lets them be sent at once, merged
// into one mail per mailbox. A queue or relay that fails is the feed's and the notifier's to
// retry, count and log: it never pauses nor fails the job.
//
// # Crash and resume
//
// Every item's outcome is durable in job_items, keyed by (job, seq). At start-up the appliance
// sweeps issuances left pending (certificate failed, record abandoned); [Manager.Run] then
// releases the reservations whose certificate was never issued and resumes the job from its
// items that have no row (the resume bitmap skips the others, so their envelopes are not even
// opened again): nothing is issued twice (an item is done in the very transaction that stores
// its certificate, and a reservation whose certificate is pending or issued is never released)
// and every certificate in the results has an active record.
//
// # Several nodes
//
// Nodes sharing one database each run a Manager ([Manager.Node] names it). A node runs a job
// only under the job's lease ([store.JobLease]) and renews it while it works; when the node
// dies (kill -9 included), another node claims the job once the lease expires and resumes it as
// above. Every write of a run (starting a pass, reserving, finishing or failing an item,
// finishing the job) checks the lease and its fencing token in the same transaction, so a node
// paused longer than the lease (kill -STOP, then kill -CONT) writes nothing more for the job:
// its writes fail with [store.ErrLeaseLost], its signed certificates are never stored as
// issued, and its run stops. See [DefaultLeaseTTL].
//
// # Faults of the appliance
//
// An item fails only for its own fault (a bad CSR, a key that is not the CSR's...). A fault of
// the appliance, the storage ([store.ErrUnavailable]) or the token ([Manager.Fault]), never
// fails an item: the job pauses (its status says "paused" with a reason; the appliance exports
// a metric), backs off and tries again, and goes on by itself when the fault clears. A batch
// whose certificates are signed keeps them and commits them once the storage is back. A job
// runs in passes until every item has an outcome: between passes the reservations left
// unfinished are undone and their items issued again, and a job is done only when done +
// failed == total. On a stop, the items in flight commit (or are left for the next start)
// before [Manager.Run] returns; [Manager.Wait] lets the caller close the store after that.
//
// # Secrets
//
// keygen items produce a PKCS#12 per user, encrypted with its own random password. The
// PKCS#12 is kept with the item; the password is sealed (AES-256-GCM) under a per-job key that
// is itself wrapped to the appliance's transport key in the token, so the database never holds a
// password in clear. The passwords are released once, as a separate file, after the job is
// done; the job key is then forgotten. Nothing secret is logged or put in an error.
//
// A job's file, which for an import holds private keys and PKCS#12 passwords in clear, is kept
// only while the job is queued or running (a resumed job reads it again), and removed once the
// job is done or cancelled; [Manager.Run] removes the files of no job (an upload the appliance
// died in) when it starts and every minute. See files.go.
//
// # Imports and concurrency
//
// bulk uses escrow, escrow/issue, escrow/audit, escrow/store and policy; it never imports hsm,
// a database driver or database/sql. Its certificates and records are committed only through
// escrow/issue; it writes no issuance transaction of its own (its own transactions keep the job
// bookkeeping: job rows, item outcomes, status).
// A [Manager] is safe for concurrent use; it runs one job at a time.
package bulk
