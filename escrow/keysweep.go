package escrow

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// orphanGrace is how long a per-request key of no request at all stays in the token: a
// request's key is made just before its row is committed, on this node or another.
const orphanGrace = 10 * time.Minute

// orphanKeys remembers when each per-request key of no request was first seen.
type orphanKeys struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

// DestroyStaleKeys destroys the per-request keys (recovery and drill keys) that outlived their
// request. Each is destroyed when its request ends, but a crash or a token fault between the
// end's commit and the destruction leaves it in the token, where it would decrypt its
// request's shares for as long as it stays. A key whose request has ended is destroyed at
// once; a key of no request (one whose request was never committed) once it has been seen so
// for orphanGrace. Keys of open requests and drills are kept. It returns how many it destroyed.
//
// # Errors
//
// The token's or the store's, when the keys cannot be listed or their requests read; a key
// that cannot be destroyed is logged and tried again on the next call.
func (s *Service) DestroyStaleKeys(ctx context.Context) (int, error) {
	if s.RecoveryKeys == nil {
		return 0, nil
	}
	var labels []string
	for _, prefix := range []string{recoveryKeyLabel(""), drillKeyLabel("")} {
		l, err := s.RecoveryKeys.Labels(prefix)
		if err != nil {
			return 0, fmt.Errorf("escrow: list per-request keys: %w", err)
		}
		labels = append(labels, l...)
	}
	if len(labels) == 0 {
		return 0, nil
	}
	open := map[string]bool{}    // label: its request or drill is open
	unknown := map[string]bool{} // label: no request or drill has it
	err := s.Store.View(ctx, func(tx store.Tx) error {
		for _, label := range labels {
			live, known, err := keyRequestOpen(tx, label)
			if err != nil {
				return err
			}
			open[label], unknown[label] = live, !known
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("escrow: read the requests of per-request keys: %w", err)
	}

	now := s.now()
	s.orphans.mu.Lock()
	if s.orphans.seen == nil {
		s.orphans.seen = map[string]time.Time{}
	}
	var stale []string
	for _, label := range labels {
		switch {
		case open[label]:
			delete(s.orphans.seen, label)
		case !unknown[label]:
			stale = append(stale, label)
		default:
			first, ok := s.orphans.seen[label]
			if !ok {
				s.orphans.seen[label] = now
			} else if now.Sub(first) >= orphanGrace {
				stale = append(stale, label)
			}
		}
	}
	for label := range s.orphans.seen {
		if !unknown[label] {
			delete(s.orphans.seen, label) // gone from the token, or its request committed
		}
	}
	s.orphans.mu.Unlock()

	destroyed := 0
	for _, label := range stale {
		if err := s.RecoveryKeys.Destroy(label); err != nil {
			s.log().Error("destroy a per-request key left by an ended request", "label", label, "err", err)
			continue
		}
		destroyed++
		s.orphans.mu.Lock()
		delete(s.orphans.seen, label)
		s.orphans.mu.Unlock()
		s.log().Warn("destroyed a per-request key its request had left in the token", "label", label)
	}
	return destroyed, nil
}

// keyRequestOpen reports whether the request or drill whose key is labelled label is open, and
// whether there is one at all.
func keyRequestOpen(tx store.Tx, label string) (open, known bool, err error) {
	if id, ok := strings.CutPrefix(label, recoveryKeyLabel("")); ok {
		r, err := tx.GetRecovery(id)
		if errors.Is(err, store.ErrNotFound) {
			return false, false, nil
		}
		if err != nil {
			return false, false, err
		}
		return r.State == store.RecoveryOpen && r.KeyLabel == label, true, nil
	}
	id, _ := strings.CutPrefix(label, drillKeyLabel(""))
	d, err := getDrill(tx, id)
	if errors.Is(err, ErrNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	return d.State == DrillOpen && d.KeyLabel == label, true, nil
}
