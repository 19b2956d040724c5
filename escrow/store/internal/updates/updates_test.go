package updates

import (
	"github.com/keyarc/keyarc/escrow/store"

	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// batchOf answers every queued request with its function's result, called with a nil Tx.
func batchOf(q *Queue) func() {
	return func() {
		for r := q.Next(); r != nil; r = q.Next() {
			r.Err = Call(r.Fn, nil)
			r.Answer(r.Err)
		}
	}
}

// TestQueue: every submitted function runs once and its caller gets its answer; a panic comes
// back as ErrPanic without its value; Close drains the queue, and Submit after it is refused.
func TestQueue(t *testing.T) {
	q := New()
	go q.Run(batchOf(q))
	var (
		mu  sync.Mutex
		ran int
		wg  sync.WaitGroup
	)
	errBad := errors.New("bad")
	for i := range 50 {
		wg.Go(func() {
			err := q.Submit(context.Background(), func(store.Tx) error {
				mu.Lock()
				ran++
				mu.Unlock()
				if i%2 == 1 {
					return errBad
				}
				return nil
			})
			var want error
			if i%2 == 1 {
				want = errBad
			}
			if err != want {
				t.Errorf("submit %d = %v, want %v", i, err, want)
			}
		})
	}
	wg.Wait()
	if ran != 50 {
		t.Errorf("%d functions ran, want 50", ran)
	}
	err := q.Submit(context.Background(), func(store.Tx) error { panic("secret") })
	if !errors.Is(err, store.ErrPanic) {
		t.Errorf("a panic: %v, want ErrPanic", err)
	}
	if err != nil && strings.Contains(err.Error(), "secret") {
		t.Errorf("a panic's error %q carries its value", err)
	}
	q.Close()
	if !q.Closing() {
		t.Error("Closing() = false after Close")
	}
	if err := q.Submit(context.Background(), func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("submit after Close = %v, want ErrClosed", err)
	}
}

// TestCancelled: a function whose context ends while it is queued never runs, and its caller
// gets the context's error; the writer skips it.
func TestCancelled(t *testing.T) {
	q := New()
	hold, held := make(chan struct{}), make(chan struct{})
	go q.Run(batchOf(q))
	go q.Submit(context.Background(), func(store.Tx) error { close(held); <-hold; return nil })
	<-held // the writer is busy with the first function
	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	done := make(chan error, 1)
	go func() { done <- q.Submit(ctx, func(store.Tx) error { ran = true; return nil }) }()
	for q.Len() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled submit = %v, want context.Canceled", err)
	}
	close(hold)
	q.Close()
	if ran {
		t.Error("the cancelled function ran")
	}
	if err := q.Submit(ctx, func(store.Tx) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("submit with an ended context = %v, want context.Canceled", err)
	}
}
