package store

import "time"

// Job and job-item states.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobDone      = "done"
	JobCancelled = "cancelled"

	ItemReserved = "reserved" // serial reserved, certificate not yet issued
	ItemDone     = "done"
	ItemFailed   = "failed"
)

// Job is a bulk job: a file of many enrollments, key generations or imports.
type Job struct {
	ID          string
	Kind        string // enroll, keygen or import
	Template    string
	SubmittedBy string
	State       string // queued, running, done or cancelled; "" on insert means queued
	Input       string // path of the job file
	// SecretKey is the job's password key wrapped to the transport key (keygen jobs), or nil
	// once the passwords have been released.
	SecretKey  []byte
	Total      int
	Done       int
	Failed     int
	CreatedAt  time.Time // zero on insert means now
	StartedAt  time.Time
	FinishedAt time.Time
}

// JobItem is the outcome of one item of a job.
type JobItem struct {
	JobID    string
	Seq      int
	State    string // reserved, done or failed
	Serial   string
	RecordID string
	Error    string
	Result   []byte // the certificate (DER), read from the certificates table
	PKCS12   []byte // keygen: the user's PKCS#12, encrypted with its own password
	Password []byte // keygen: that password, sealed with the job's secret key
}

// DoneItem is an item of a job finished in one transaction, for [Tx.InsertJobItemsDone].
type DoneItem struct {
	Seq              int
	Serial, RecordID string
}

// JobLease is the name of the lease ([Leases]) under which one node runs job id. Every write
// of the job's run (starting it, reserving, finishing and failing items, finishing the job)
// checks that lease in its transaction ([Leases.CheckLease]), so that a node that lost it
// writes nothing more for the job.
func JobLease(id string) string { return "job:" + id }
