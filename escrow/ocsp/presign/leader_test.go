package presign

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestRunFollower: a node that does not lead signs only the serials given to Revoked on it,
// at once, and leaves the passes over everything due to the leader; once it leads, it signs
// everything due.
func TestRunFollower(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	serials := e.addCerts(t, 0xa000, 20)
	s := e.signer(e.responder)
	s.Interval = 50 * time.Millisecond
	var leading atomic.Bool
	s.Leads = leading.Load
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.Run(ctx); close(stopped) }()
	defer func() { cancel(); <-stopped }()
	time.Sleep(10 * s.Interval)
	if n := e.due(t); n != len(serials) {
		t.Fatalf("%d due after a follower's passes, want all %d (the leader's work)", n, len(serials))
	}
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(serials[3], store.ReasonKeyCompromise, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	s.Revoked([]string{serials[3]})
	waitFor(t, func() bool { return e.due(t) == len(serials)-1 })
	if r := e.status(t, serials[3]); r.Status != xocsp.Revoked || r.RevocationReason != xocsp.KeyCompromise {
		t.Fatalf("the follower's revocation: status %d reason %d", r.Status, r.RevocationReason)
	}
	leading.Store(true)
	waitFor(t, func() bool { return e.due(t) == 0 })
}
