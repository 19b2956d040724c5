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
// dropped and the token is reconnected, as after a loss, once it answers again. An
// operation gets it when its call finally returns, past the limit (whatever the module
// answered); Ping, a login and Close get it at the limit.
var ErrTokenHung error = hungError{}

// hungError is ErrTokenHung's type: a comparable value whose Is makes it ErrTokenGone too.
type hungError struct{}

func (hungError) Error() string { return "hsm: token did not answer in time" }

func (hungError) Is(target error) bool { return target == ErrTokenGone }

// conn is one connection to the token: a crypto11 context and the raw session, made by one
// login. PKCS#11 calls cannot be cancelled. Every call on a conn is counted in calls: an
// operation runs inline on its caller's goroutine, watched by a timer ([watch]); Ping and
// the key checks of a reconnection run on a goroutine of their own ([conn.run]), so that
// their caller never waits past the limit. A conn whose call did not return in time is
// retired: no new call starts on it, and it is closed (raw session, then crypto11 context)
// only after its last call has returned, so a session is never used by two goroutines and
// never closed under a running call.
type conn struct {
	c11 *crypto11.Context
	raw *rawSession
	gen uint64 // set once, when the Token installs the conn, before any call on it

	calls   sync.WaitGroup
	retired atomic.Bool

	// copies are the session copies of keys made on raw (see sessionKey), destroyed when c
	// closes.
	copiesMu sync.Mutex
	copies   []sessionCopy
}

// enter counts a call about to run on c. The caller holds Token.mu (read or write) and has
// checked that c is the Token's current conn, so that close's Wait never races with it.
func (c *conn) enter() { c.calls.Add(1) }

// run runs f, already counted by enter, on its own goroutine and waits at most limit. On
// time-out it returns an error wrapping [ErrTokenHung]; f goes on running and is uncounted
// when it ends. It is for callers that must never block on the module (Ping, and the key
// checks made under Token.mu); operations run inline instead ([Token.do]).
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
	c.destroyCopies()
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

// hungAfter is the error of a call that did not return within limit.
func hungAfter(limit time.Duration) error {
	return fmt.Errorf("%w: no answer within %v", ErrTokenHung, limit)
}

// Watch states: a watched call is running until its caller or its timer, whichever comes
// first, moves it on; the other then knows it came second.
const (
	watchRunning uint32 = iota
	watchReturned
	watchExpired
)

// watch is the watchdog of one operation running inline on its caller's goroutine: a timer
// that, if the call is still inside the module when it fires, does what a time-out does
// (see [Token.expire]) while the caller stays blocked in the module. A watch and its
// timer are reused through watches; one whose timer has fired is not (its function may
// still be reading it).
type watch struct {
	state atomic.Uint32
	timer *time.Timer

	// Set before the timer is armed, read by expire after it fires.
	t     *Token
	c     *conn
	op    string
	start time.Time
	limit time.Duration
}

var watches sync.Pool

// startWatch arms a watch for the operation op on c, begun at start, with time limit.
func (t *Token) startWatch(c *conn, op string, start time.Time, limit time.Duration) *watch {
	w, _ := watches.Get().(*watch)
	if w == nil {
		w = new(watch)
		w.t, w.c, w.op, w.start, w.limit = t, c, op, start, limit
		w.timer = time.AfterFunc(limit, w.fire)
		return w
	}
	w.state.Store(watchRunning)
	w.t, w.c, w.op, w.start, w.limit = t, c, op, start, limit
	w.timer.Reset(limit)
	return w
}

// stop disarms w when its call has returned. It reports false when the timer fired first:
// the call is then reported as hung, whatever it returned.
func (w *watch) stop() (inTime bool) {
	if !w.state.CompareAndSwap(watchRunning, watchReturned) {
		return false
	}
	if w.timer.Stop() {
		// The timer had not fired, so fire never reads w again: w can serve another call.
		w.t, w.c = nil, nil
		watches.Put(w)
	}
	return true
}

// fire runs on the timer's goroutine when w's limit passes.
func (w *watch) fire() {
	if w.state.CompareAndSwap(watchRunning, watchExpired) {
		w.t.expire(w.c, w.op, w.start, w.limit)
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
		return hungAfter(limit)
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
