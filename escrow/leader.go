package escrow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// LeaderLease is the name of the lease ([store.Leases]) under which one node of those sharing
// a database runs the singletons: the periodic CRL publication, the OCSP pre-signer's passes
// over everything due, the audit checkpointer and the sweeps.
const LeaderLease = "leader"

// DefaultLeaderTTL is how long the leader lease lasts without renewal: when the leader dies,
// another node leads within about this time.
const DefaultLeaderTTL = 15 * time.Second

// MaxClockOffset is how far this node's clock may be off the database's before [Leader]
// warns. Leases do not depend on it, but what the node signs and records carries its own
// time: certificates' validity, OCSP responses' thisUpdate (backdated a minute), CRLs'
// thisUpdate (which a later CRL never goes back from, and which OpenSSL refuses while it is
// in its future), the expiry of the codes and recovery requests it makes, its audit entries.
const MaxClockOffset = 5 * time.Second

// Leader takes and keeps the leader lease for this node, or waits for it while another node
// holds it. [Leader.Leads] tells the singletons whether to do their periodic work. A nil
// *Leader always leads: one node alone (SQLite) needs no election.
//
// Leading is a matter of efficiency, not of safety: what the singletons store is safe when
// two nodes do it at once (a CRL number is stored once, the newest OCSP response is kept, a
// checkpoint is stored once per entry, a sweep moves a row once). So Leads errs on the side of
// stopping early: a node leads only until three quarters of the lease has passed since its
// last successful renewal began, measured on its own monotonic clock, so a node paused longer
// than that (kill -STOP) stops leading before another node can take the lease. Neither
// depends on the nodes' wall clocks agreeing: the lease is measured on the database's clock
// ([store.Leases.LeaseNow]), and a node measures its own time as leader on its monotonic one,
// which a step of its wall clock (an NTP correction) does not move.
//
// Fill the exported fields, then call Run once; Leads is safe for concurrent use.
type Leader struct {
	Store store.Store
	// Node names this node (the lease's holder).
	Node string
	// TTL is the lease's length (default [DefaultLeaderTTL]); the lease is renewed every
	// quarter of it. Every node should use the same value.
	TTL    time.Duration
	Logger *slog.Logger
	// OnChange, when set, is called when this node starts (true) or stops (false) leading.
	// It must return quickly.
	OnChange func(leading bool)
	// Now is this node's wall clock (default time.Now). The lease is measured on the
	// database's clock ([store.Leases.LeaseNow]): this one serves only where the database is
	// this machine's (SQLite). Tests set it to make a node's clock run ahead or behind.
	Now func() time.Time
	// OnOffset, when set, is called after each read of the database's clock with how far
	// it is ahead of this node's (negative: behind), give or take the read's round trip;
	// always 0 on SQLite. It must return quickly. Beyond [MaxClockOffset] either way, Try
	// logs a warning, once until the clocks agree again.
	OnOffset func(offset time.Duration)

	mu      sync.Mutex
	leading bool
	until   time.Time // monotonic: leading only before this instant
	lease   store.Lease
	skewed  bool // the last offset read was beyond MaxClockOffset
}

func (l *Leader) ttl() time.Duration {
	if l.TTL > 0 {
		return l.TTL
	}
	return DefaultLeaderTTL
}

func (l *Leader) now() time.Time {
	if l.Now != nil {
		return l.Now().UTC()
	}
	return time.Now().UTC()
}

func (l *Leader) log() *slog.Logger {
	if l.Logger != nil {
		return l.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Leads reports whether this node runs the singletons now. A nil Leader always does.
func (l *Leader) Leads() bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading && time.Now().Before(l.until)
}

// Run tries to take the lease at once, then renews it (or tries again to take it) every
// quarter of the TTL until ctx ends, and then gives it up so that another node leads at once.
func (l *Leader) Run(ctx context.Context) {
	t := time.NewTicker(l.ttl() / 4)
	defer t.Stop()
	failing := ""
	for {
		err := l.Try(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil && err.Error() != failing:
			failing = err.Error()
			l.log().Warn("leader lease: cannot renew; the singletons stop here when it runs out", "err", err)
		case err == nil:
			failing = ""
		}
		select {
		case <-ctx.Done():
			l.release()
			return
		case <-t.C:
		}
	}
}

// Try takes or renews the lease once. It returns nil when the outcome is known (this node
// leads, or another node does), and the store's error otherwise (the lease then runs out on
// its own).
func (l *Leader) Try(ctx context.Context) error {
	ttl := l.ttl()
	start := time.Now()
	l.mu.Lock()
	mine := l.lease.Token
	l.mu.Unlock()
	var lease store.Lease
	var offset time.Duration
	read := false
	err := l.Store.Update(ctx, func(tx store.Tx) error {
		local := l.now()
		now, err := tx.LeaseNow(local)
		if err != nil {
			return err
		}
		offset, read = now.Sub(local), true
		cur, twin, err := TwinHolds(tx, LeaderLease, l.Node, now, mine)
		switch {
		case err != nil:
			return err
		case twin:
			return fmt.Errorf("escrow: leader lease held by another process named %s (token %d): %w", l.Node, cur.Token, store.ErrLeaseHeld)
		}
		lease, err = tx.AcquireLease(LeaderLease, l.Node, now, ttl)
		return err
	})
	if read {
		l.noteOffset(offset)
	}
	switch {
	case err == nil:
		l.set(true, start.Add(ttl-ttl/4), lease)
		return nil
	case errors.Is(err, store.ErrLeaseHeld):
		l.set(false, time.Time{}, store.Lease{})
		return nil
	default:
		return err
	}
}

// noteOffset reports offset, the database's clock less this node's, and warns when it
// passes MaxClockOffset either way.
func (l *Leader) noteOffset(offset time.Duration) {
	if l.OnOffset != nil {
		l.OnOffset(offset)
	}
	skewed := offset > MaxClockOffset || offset < -MaxClockOffset
	l.mu.Lock()
	was := l.skewed
	l.skewed = skewed
	l.mu.Unlock()
	switch {
	case skewed && !was:
		l.log().Warn("this node's clock is off the database server's: leases are safe, but the certificates, OCSP responses, CRLs and audit entries this node makes carry its time; fix its time synchronisation (NTP)",
			"database_ahead_by", offset.Round(time.Millisecond).String(), "max", MaxClockOffset.String())
	case was && !skewed:
		l.log().Info("this node's clock agrees with the database server's again", "database_ahead_by", offset.Round(time.Millisecond).String())
	}
}

// TwinHolds reports whether lease name is held, unexpired at now (a reading of
// [store.Leases.LeaseNow]), under node's name with a token other than mine (the token this
// process last took it with, 0 for none), and returns the lease read. Such a lease belongs to another process started with the same node name (a
// copied state folder, a second machine) or to this node before a restart: AcquireLease would
// renew it as the caller's own, and both processes would act on it. It is left to expire.
func TwinHolds(tx store.Tx, name, node string, now time.Time, mine int64) (store.Lease, bool, error) {
	cur, err := tx.GetLease(name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Lease{}, false, nil
	case err != nil:
		return store.Lease{}, false, err
	}
	return *cur, cur.Holder == node && now.Before(cur.Expires) && cur.Token != mine, nil
}

func (l *Leader) set(leading bool, until time.Time, lease store.Lease) {
	l.mu.Lock()
	was := l.leading && time.Now().Before(l.until)
	changed := leading != l.leading || (leading && lease.Token != l.lease.Token)
	l.leading, l.until, l.lease = leading, until, lease
	l.mu.Unlock()
	if !changed {
		return
	}
	if leading {
		l.log().Info("this node leads the singletons (CRL, OCSP passes, audit checkpoints, sweeps)", "lease_token", lease.Token)
	} else if was {
		l.log().Info("this node no longer leads the singletons")
	}
	if l.OnChange != nil && leading != was {
		l.OnChange(leading)
	}
}

// release gives the lease up at shutdown.
func (l *Leader) release() {
	l.mu.Lock()
	lease, leading := l.lease, l.leading
	l.leading = false
	l.mu.Unlock()
	if !leading {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := l.Store.Update(ctx, func(tx store.Tx) error { return tx.ReleaseLease(lease.Name, lease.Holder, lease.Token) })
	if err != nil && !errors.Is(err, store.ErrLeaseLost) {
		l.log().Warn("leader lease: release; it runs out by itself", "err", err)
	}
}

// leads reports whether this node runs the singletons ([Service.Leads]; nil: always).
func (s *Service) leads() bool { return s.Leads == nil || s.Leads() }

// RunSweeps sweeps, every interval until ctx ends and only while this node leads, the
// issuances left pending longer than [Service.SweepAge] (a node that died mid-issuance
// leaves them). One node needs it not: it sweeps at start-up, when nothing is in flight.
func (s *Service) RunSweeps(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.leads() {
			continue
		}
		if n, err := s.Sweep(ctx, s.now()); err != nil && ctx.Err() == nil {
			s.log().Error("sweep pending issuances", "err", err)
		} else if n > 0 {
			s.log().Warn("issuances left pending by a node marked failed", "count", n)
		}
	}
}
