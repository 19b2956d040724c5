package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConfigClusterLeases: the lease lengths are optional (the defaults then); when set they
// stay within their bounds, and a wrong one is refused at load with an error naming its field.
func TestConfigClusterLeases(t *testing.T) {
	tests := []struct {
		name            string
		yaml            string
		leader, job     time.Duration
		wantErr         error
		wantErrNamesKey string
	}{
		{name: "defaults", yaml: minimal, leader: DefaultLeaderLease, job: DefaultJobLease},
		{name: "both set", yaml: minimal + "cluster:\n  leader_lease: 30s\n  job_lease: 1m\n", leader: 30 * time.Second, job: time.Minute},
		{name: "one set", yaml: minimal + "cluster:\n  job_lease: 5s\n", leader: DefaultLeaderLease, job: 5 * time.Second},
		{name: "leader too short", yaml: minimal + "cluster:\n  leader_lease: 3s\n", wantErr: ErrLease, wantErrNamesKey: "cluster.leader_lease"},
		{name: "job too short", yaml: minimal + "cluster:\n  job_lease: 2s\n", wantErr: ErrLease, wantErrNamesKey: "cluster.job_lease"},
		{name: "job too long", yaml: minimal + "cluster:\n  job_lease: 11m\n", wantErr: ErrLease, wantErrNamesKey: "cluster.job_lease"},
		{name: "leader negative", yaml: minimal + "cluster:\n  leader_lease: -5s\n", wantErr: ErrLease, wantErrNamesKey: "cluster.leader_lease"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load: %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.wantErrNamesKey) {
					t.Errorf("Load: %v does not name the field %s", err, tt.wantErrNamesKey)
				}
				return
			}
			if got := c.Cluster.Leader(); got != tt.leader {
				t.Errorf("Leader() = %s, want %s", got, tt.leader)
			}
			if got := c.Cluster.Job(); got != tt.job {
				t.Errorf("Job() = %s, want %s", got, tt.job)
			}
		})
	}
}
