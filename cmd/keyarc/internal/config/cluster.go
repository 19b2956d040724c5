package config

import (
	"errors"
	"fmt"
	"time"
)

// ClusterConfig tunes how nodes sharing one PostgreSQL database hand work to each other: the
// lengths of the leader lease (the singletons: CRL, OCSP passes, audit checkpoints, sweeps)
// and of a bulk job's lease. A lease is renewed long before it runs out (the leader's every
// quarter of its length, a job's every third), so its length is how long the cluster waits
// for a node that died or stopped answering before another takes its work over. Every node of
// a cluster should use the same values. Zero means the default.
type ClusterConfig struct {
	// LeaderLease is the leader lease's length (default [DefaultLeaderLease]).
	LeaderLease Duration `yaml:"leader_lease,omitempty"`
	// JobLease is a bulk job's lease length (default [DefaultJobLease]).
	JobLease Duration `yaml:"job_lease,omitempty"`
}

// The defaults of [ClusterConfig]: the values the escrow and bulk packages use when given
// none (escrow.DefaultLeaderTTL, bulk.DefaultLeaseTTL).
const (
	DefaultLeaderLease = 15 * time.Second
	DefaultJobLease    = 20 * time.Second
)

// Bounds of the lease lengths. The shortest still leaves a second between two renewals (a
// database round trip, a busy node's scheduling); the longest bounds how long work waits for
// a dead node, and stays far below the age at which the leader sweeps issuances a node left
// pending (an hour), so that a live node's issuance is never swept.
const (
	minLeaderLease = 4 * time.Second  // renewed every quarter: at least every second
	minJobLease    = 3 * time.Second  // renewed every third: at least every second
	maxLease       = 10 * time.Minute // a dead node's work waits at most this long
)

// ErrLease is returned (wrapped) for a lease length outside its bounds.
var ErrLease = errors.New("config: lease length out of bounds")

// Leader is the leader lease's length: the configured one, else the default.
func (c ClusterConfig) Leader() time.Duration {
	if c.LeaderLease.Duration > 0 {
		return c.LeaderLease.Duration
	}
	return DefaultLeaderLease
}

// Job is a bulk job's lease length: the configured one, else the default.
func (c ClusterConfig) Job() time.Duration {
	if c.JobLease.Duration > 0 {
		return c.JobLease.Duration
	}
	return DefaultJobLease
}

// Validate checks the lease lengths and names the wrong field. The error wraps [ErrLease].
func (c ClusterConfig) Validate() error {
	for _, f := range []struct {
		field    string
		v, min   time.Duration
		renewals int
	}{
		{"cluster.leader_lease", c.LeaderLease.Duration, minLeaderLease, 4},
		{"cluster.job_lease", c.JobLease.Duration, minJobLease, 3},
	} {
		switch {
		case f.v == 0:
		case f.v < f.min:
			return fmt.Errorf("%w: %s: %s is shorter than %s (it is renewed every 1/%d of its length, which must leave at least a second for the database)", ErrLease, f.field, f.v, f.min, f.renewals)
		case f.v > maxLease:
			return fmt.Errorf("%w: %s: %s is longer than %s (a dead node's work would wait that long)", ErrLease, f.field, f.v, maxLease)
		}
	}
	return nil
}
