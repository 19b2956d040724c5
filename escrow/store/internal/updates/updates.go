// Package updates is the queue of a backend's Update calls and the loop of its single writer
// goroutine, shared by the SQLite and PostgreSQL backends: callers queue their functions and
// wait; the writer takes them in turn, as many as are waiting, into one transaction of its
// own making (its group commit, which stays the backend's: BEGIN, savepoints, COMMIT) and
// answers each caller once.
//
// It imports only the standard library and package store. A [Queue] is safe for concurrent
// use; its [Request]s belong to the writer goroutine once [Queue.Next] has claimed them.
package updates

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// Request states, owned by the writer goroutine once claimed.
const (
	reqQueued int32 = iota
	reqClaimed
	reqCancelled
)

// Request is one queued Update call.
type Request struct {
	Fn  func(store.Tx) error
	Err error // Fn's own result, set by the writer

	state atomic.Int32
	res   chan error // buffered (1): the final answer
}

// Answer gives the caller its final answer. The writer calls it once per request it claimed.
func (r *Request) Answer(err error) { r.res <- err }

// Queue is the queue of Update calls of one backend handle.
type Queue struct {
	mu      sync.Mutex
	queue   []*Request
	closing bool
	wake    chan struct{} // capacity 1
	done    chan struct{} // closed when Run returns
}

// New returns an empty queue; the backend starts its writer with go q.Run(batch).
func New() *Queue {
	return &Queue{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Submit queues fn and returns its final answer, as the writer gave it.
//
// If ctx ends before fn is claimed by the writer, fn never runs and Submit returns ctx.Err();
// once it is claimed, Submit waits for the answer whatever ctx does (fn's statements are never
// interrupted: interrupting a write would roll back the whole shared transaction). Submit
// after [Queue.Close] returns [store.ErrClosed].
func (q *Queue) Submit(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &Request{Fn: fn, res: make(chan error, 1)}
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return store.ErrClosed
	}
	q.queue = append(q.queue, r)
	q.mu.Unlock()
	q.signal()

	select {
	case err := <-r.res:
		return err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqQueued, reqCancelled) {
			return ctx.Err() // the writer will skip it
		}
		return <-r.res
	}
}

// Len reports the number of queued (possibly cancelled) requests.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}

// Closing reports whether [Queue.Close] has begun.
func (q *Queue) Closing() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closing
}

// Next pops the next live request and claims it for the writer, or returns nil when the queue
// is empty.
func (q *Queue) Next() *Request {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.queue) > 0 {
		r := q.queue[0]
		q.queue[0] = nil
		q.queue = q.queue[1:]
		if r.state.CompareAndSwap(reqQueued, reqClaimed) {
			return r
		}
	}
	q.queue = nil
	return nil
}

// Run is the writer goroutine, the only one that writes: it calls batch whenever requests are
// queued (batch takes them with [Queue.Next] and answers each), and returns once Close has
// begun and the queue is drained.
func (q *Queue) Run(batch func()) {
	defer close(q.done)
	for {
		q.mu.Lock()
		for len(q.queue) == 0 && !q.closing {
			q.mu.Unlock()
			<-q.wake
			q.mu.Lock()
		}
		if len(q.queue) == 0 && q.closing {
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		batch()
	}
}

// Close stops accepting requests and waits for Run to finish every queued one. Call it once,
// after Run has started.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closing = true
	q.mu.Unlock()
	q.signal()
	<-q.done
}

// Call runs fn with tx, turning a panic into an error wrapping [store.ErrPanic]. The panic
// value is not included (it might carry data); only its type, or the message of a runtime
// error, is.
func Call(fn func(store.Tx) error, tx store.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if re, ok := p.(runtime.Error); ok {
				err = fmt.Errorf("%w: %s", store.ErrPanic, re.Error())
			} else {
				err = fmt.Errorf("%w: panic value of type %T", store.ErrPanic, p)
			}
		}
	}()
	return fn(tx)
}
