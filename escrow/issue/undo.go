package issue

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// DefaultUndoBacklog bounds the undos an [Undoer] holds when its Max is zero.
const DefaultUndoBacklog = 10000

// Undoer finishes, in the background, the undos of failed issuances that the storage refused
// (a fault wrapping [store.ErrUnavailable]): it retries them, with a back-off, until the storage
// answers. Without it such an issuance would stay pending, its enrollment code used, until the
// start-up sweep; with it, the code is free again as soon as the storage is, which is what the
// enrollee's "503, retry later" promised.
//
// Each undo is the compensating transaction of the package documentation: a row still pending
// becomes failed, its code is released and its record abandoned. A row that is no longer
// pending (issued after all, or failed by a sweep) is left as it is: an undo never touches an
// issued certificate, so no certificate that was returned loses its record.
//
// Memory is bounded: at most Max undos wait (a serial and, when signed, its certificate: a
// few kilobytes each); beyond that an undo is left to the start-up sweep, which is logged once
// per backlog. Each deferral is logged once, never each retry.
// After the store is closed, what is left is logged and dropped (the sweep at the next start
// finishes it).
//
// An Undoer is safe for concurrent use; its zero value, with Store set, is ready. It runs at
// most one goroutine, and only while it holds undos.
type Undoer struct {
	Store  store.Store
	Logger *slog.Logger
	// Max bounds the serials held; zero means [DefaultUndoBacklog].
	Max int
	// MinWait and MaxWait bound the pause between two attempts (it doubles after each
	// failure); zero means 100ms and 2s.
	MinWait, MaxWait time.Duration

	mu       sync.Mutex
	queue    []undoItem
	queued   map[string]bool // by serial
	running  bool
	overflow bool // the overflow of the current backlog was logged
	// update replaces Store.Update in tests.
	update func(ctx context.Context, fn func(store.Tx) error) error
}

// undoItem is one undo waiting: the serial, and the certificate when the CA signed it.
type undoItem struct {
	serial string
	cert   *x509.Certificate
}

func (u *Undoer) log() *slog.Logger {
	if u.Logger != nil {
		return u.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Defer takes over the undo of the issuance of serialHex, to retry it until the storage
// answers; cert is the certificate when the CA signed it (it is kept on the failed row, see
// [store.Tx.FailSignedCertificate]), else nil; cause is the fault that stopped the undo. It
// reports whether the undo was taken (false: the backlog is full, the start-up sweep will
// finish it; the certificate is then logged with its serial only).
func (u *Undoer) Defer(serialHex string, cert *x509.Certificate, cause error) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.queued[serialHex] {
		return true
	}
	max := u.Max
	if max <= 0 {
		max = DefaultUndoBacklog
	}
	if len(u.queue) >= max {
		if !u.overflow {
			u.overflow = true
			u.log().Error("undo backlog full: failed issuances stay pending until the start-up sweep", "max", max, "serial", serialHex)
		}
		return false
	}
	if u.queued == nil {
		u.queued = map[string]bool{}
	}
	u.queued[serialHex] = true
	u.queue = append(u.queue, undoItem{serialHex, cert})
	u.log().Warn("undo of a failed issuance deferred until the storage answers", "serial", serialHex, "err", cause)
	if !u.running {
		u.running = true
		go u.run()
	}
	return true
}

// Holds reports whether the undo of serialHex waits for the storage.
func (u *Undoer) Holds(serialHex string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queued[serialHex]
}

// Len is the number of undos waiting.
func (u *Undoer) Len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.queue)
}

// run retries the waiting undos, all in one transaction, until none is left.
func (u *Undoer) run() {
	wait := u.MinWait
	if wait <= 0 {
		wait = 100 * time.Millisecond
	}
	maxWait := u.MaxWait
	if maxWait <= 0 {
		maxWait = 2 * time.Second
	}
	update := u.update
	if update == nil {
		update = u.Store.Update
	}
	for {
		time.Sleep(wait)
		u.mu.Lock()
		batch := append([]undoItem(nil), u.queue...)
		u.mu.Unlock()
		err := update(context.Background(), func(tx store.Tx) error {
			for _, it := range batch {
				// Not pending any more (issued after all, or swept) or unknown: nothing to undo.
				if err := failIssuance(tx, it.serial, it.cert); err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			}
			return nil
		})
		drop := false
		switch {
		case err == nil:
		case errors.Is(err, store.ErrClosed):
			u.log().Warn("store closed: deferred undos left to the start-up sweep", "count", u.Len())
			drop = true
		case errors.Is(err, store.ErrUnavailable):
			wait = min(2*wait, maxWait)
			continue
		default:
			// Not a fault of the storage: an undo this transaction cannot make. Leave them all to
			// the start-up sweep rather than retry for ever.
			u.log().Error("deferred undo failed: the issuances stay pending until the start-up sweep", "count", u.Len(), "err", err)
			drop = true
		}
		u.mu.Lock()
		for _, it := range batch {
			delete(u.queued, it.serial)
		}
		u.queue = u.queue[len(batch):]
		if drop {
			u.queue, u.queued = nil, nil
		} else {
			u.log().Info("deferred undo done: failed issuances released", "count", len(batch))
		}
		if len(u.queue) == 0 {
			u.running, u.overflow = false, false
			u.mu.Unlock()
			return
		}
		u.mu.Unlock()
	}
}
