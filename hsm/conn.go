package hsm

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
)

// ErrTokenHung: a call into the PKCS#11 module did not return within its time limit
// ([Options.CallTimeout]): the token or its module stopped answering without reporting an
// error (a network HSM whose server froze, for example). It also matches [ErrTokenGone], so
// callers that answer 503 to a lost token answer it to a hung one too. The connection is
// dropped and the token is reconnected, as after a loss, once it answers again.
var ErrTokenHung error = hungError{}

// hungError is ErrTokenHung's type: a comparable value whose Is makes it ErrTokenGone too.
type hungError struct{}

func (hungError) Error() string { return "hsm: token did not answer in time" }

func (hungError) Is(target error) bool { return target == ErrTokenGone }

// conn is one connection to the token: a crypto11 context and the raw session, made by one
// login. PKCS#11 calls cannot be cancelled, so every call on a conn runs on a goroutine of
// its own, counted in calls, and its caller waits at most a time limit. A conn whose call
// did not return in time is retired: no new call starts on it, and it is closed (raw
// session, then crypto11 context) only after its last call has returned, so a session is
// never used by two goroutines and never closed under a running call.
type conn struct {
	c11 *crypto11.Context
	raw *rawSession
	gen uint64 // set once, when the Token installs the conn, before any call on it

	calls   sync.WaitGroup
	retired atomic.Bool
}

// enter counts a call about to run on c. The caller holds Token.mu (read or write) and has
// checked that c is the Token's current conn, so that close's Wait never races with it.
func (c *conn) enter() { c.calls.Add(1) }

// run runs f, already counted by enter, on its own goroutine and waits at most limit. On
// time-out it returns an error wrapping [ErrTokenHung]; f goes on running and is uncounted
// when it ends.
func (c *conn) run(limit time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() {
		defer c.calls.Done()
		done <- f()
	}()
	return waitErr(done, limit)
}

// close waits for the calls running on c, then closes the raw session and the crypto11
// context (which finalises the module when no other context uses it). It may block as long
// as a hung call does: callers run it on a goroutine and wait for it with a limit.
func (c *conn) close() error {
	c.retired.Store(true)
	c.calls.Wait()
	c.raw.close()
	if c.c11 != nil {
		return c.c11.Close()
	}
	return nil
}

// closeAsync runs c.close on its own goroutine.
func (c *conn) closeAsync() *closing {
	cl := &closing{done: make(chan struct{})}
	go func() {
		defer close(cl.done)
		cl.err = c.close()
	}()
	return cl
}

// closing is the close of a retired connection, which may take as long as a hung call.
type closing struct {
	done chan struct{}
	err  error
}

// wait waits at most limit for the close to end (limit <= 0: only looks) and returns its
// error, or one wrapping [ErrTokenHung] when it has not ended.
func (cl *closing) wait(limit time.Duration) error {
	if limit <= 0 {
		select {
		case <-cl.done:
			return cl.err
		default:
			return fmt.Errorf("%w: a call into the module has not returned", ErrTokenHung)
		}
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-cl.done:
		return cl.err
	case <-t.C:
		return fmt.Errorf("%w: no answer within %v", ErrTokenHung, limit)
	}
}

// waitErr waits at most limit for an error from done.
func waitErr(done <-chan error, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w: no answer within %v", ErrTokenHung, limit)
	}
}

// dialing is a connection attempt (login) that may outlive the caller who started it: if
// it does not finish in time, the Token keeps it and a later Ping adopts its result, or Close
// closes it when it ends.
type dialing struct {
	done chan struct{}
	c    *conn
	err  error
}

// dial starts a login on its own goroutine.
func dial(module, label, pinSource string, maxSessions int, wait time.Duration, met *metrics) *dialing {
	d := &dialing{done: make(chan struct{})}
	go func() {
		defer close(d.done)
		c11, raw, err := connect(module, label, pinSource, maxSessions, wait, met)
		if err != nil {
			d.err = err
			return
		}
		d.c = &conn{c11: c11, raw: raw}
	}()
	return d
}

// await waits at most limit for the attempt to end; ok is false on time-out.
func (d *dialing) await(limit time.Duration) (ok bool) {
	if limit <= 0 {
		select {
		case <-d.done:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-d.done:
		return true
	case <-t.C:
		return false
	}
}

// abandon closes the attempt's connection, if it makes one, once it ends. It does not
// block.
func (d *dialing) abandon() {
	go func() {
		<-d.done
		if d.c != nil {
			_ = d.c.close()
		}
	}()
}
