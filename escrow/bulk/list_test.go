package bulk

import (
	"context"
	"crypto"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
)

// limitedDecrypter answers its first n calls, then fails with errTokenDown until up is set.
type limitedDecrypter struct {
	crypto.Decrypter
	n  atomic.Int64
	up atomic.Bool
}

func (d *limitedDecrypter) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	if d.n.Add(-1) < 0 && !d.up.Load() {
		return nil, errTokenDown
	}
	return d.Decrypter.Decrypt(r, msg, opts)
}

// listed is job id as List reports it.
func listed(tb testing.TB, env *testEnv, id string) Status {
	tb.Helper()
	list, err := env.mgr.List(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range list {
		if s.ID == id {
			return s
		}
	}
	tb.Fatalf("job %s not in List: %+v", id, list)
	return Status{}
}

// TestListReportsProgress: `keyarc bulk list` (List) reports a job as `bulk status` (Status)
// does: a running job paused by a token fault is paused, with the items that have an outcome
// counted, and a finished job carries its rate.
func TestListReportsProgress(t *testing.T) {
	env := newEnv(t)
	dec := &limitedDecrypter{Decrypter: env.svc.Transport.Key}
	dec.n.Store(3)
	env.svc.Transport = &escrow.Transport{Cert: env.svc.Transport.Cert, Key: dec}
	env.mgr.Fault = func(err error) string {
		if errors.Is(err, errTokenDown) {
			return CauseToken
		}
		return ""
	}
	const total = 10
	var items []any
	for i := 1; i <= total; i++ {
		items = append(items, env.enrollItem(t, resumeMailbox(i)))
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { env.mgr.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(time.Minute)
	for {
		s, err := env.mgr.Status(context.Background(), st.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == StatePaused && s.Done == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %+v, want it paused with 3 items done", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	l := listed(t, env, st.ID)
	if l.State != StatePaused || !strings.Contains(l.Reason, "token") || l.Done != 3 || l.Failed != 0 || l.Total != total {
		t.Errorf("List while paused: %+v; want paused by the token, 3 of %d done", l, total)
	}
	dec.up.Store(true)
	for {
		s, err := env.mgr.Status(context.Background(), st.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == store.JobDone {
			st = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %+v, want it done once the token answers", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Once the job has left the manager, Status and List give the rate over its run.
	cancel()
	<-done
	st, err := env.mgr.Status(context.Background(), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	l = listed(t, env, st.ID)
	if l.State != store.JobDone || l.Done != total || l.Rate <= 0 || l.Rate != st.Rate {
		t.Errorf("List of the finished job: %+v; want done, %d items, the rate Status gives (%v)", l, total, st.Rate)
	}
}
