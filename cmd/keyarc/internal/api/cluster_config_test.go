package api

import (
	"testing"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/bulk"
)

// TestClusterLeaseDefaults: the lease lengths a configuration without a cluster section gives
// the nodes are those the escrow and bulk packages use by themselves, so that the README's
// defaults hold whichever side a reader looks at.
func TestClusterLeaseDefaults(t *testing.T) {
	var c config.ClusterConfig
	if c.Leader() != escrow.DefaultLeaderTTL {
		t.Errorf("leader lease default %s, escrow uses %s", c.Leader(), escrow.DefaultLeaderTTL)
	}
	if c.Job() != bulk.DefaultLeaseTTL {
		t.Errorf("job lease default %s, bulk uses %s", c.Job(), bulk.DefaultLeaseTTL)
	}
}
