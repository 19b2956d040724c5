package escrow

import (
	"context"
	"fmt"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// actorKey is the context key of the actor recorded in audit entries.
type actorKey struct{}

// WithActor returns a context that names who acts, for the audit entries of the Service calls
// made with it: a role and a name ("admin:alice"), "tls:SERIAL" for a client certificate, or
// "remote:ADDR". Calls that know their principal (approvals, recovery requests, decisions)
// record it instead. Without one, the actor is "local": the command-line tools on the
// appliance itself.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom returns the actor named by [WithActor], or "local". It cannot fail.
func ActorFrom(ctx context.Context) string { return actorFrom(ctx) }

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "local"
}

// AuditObserver learns of the audit entries the Service writes: a checkpointer, metrics. Its
// methods run on the store's writer goroutine and must not block.
type AuditObserver interface {
	// Appended: entry seq was appended; it is committed with its transaction, or rolled back.
	Appended(seq int64)
	// Failed: an entry of kind could not be written, so its operation was refused.
	Failed(kind audit.Kind)
}

// audit appends an entry in tx, the transaction of the change it records: an error refuses
// the change (the caller returns it and its savepoint rolls back). With a Trail, an entry
// that would follow a trail which lost the entries this process wrote is refused too.
func (s *Service) audit(tx store.Tx, kind audit.Kind, actor, subject string, d audit.Details) error {
	if d.Node == "" {
		d.Node = s.Node
	}
	e, err := s.Trail.Append(tx, s.now(), kind, actor, subject, d)
	if err != nil {
		if s.Audit != nil {
			s.Audit.Failed(kind)
		}
		return fmt.Errorf("escrow: %w", err)
	}
	if s.Audit != nil {
		s.Audit.Appended(e.Seq)
	}
	return nil
}

// auditAlone records an event that changes nothing else (a refusal), in its own transaction.
// A failure is logged: the operation was refused anyway.
func (s *Service) auditAlone(ctx context.Context, kind audit.Kind, actor, subject string, d audit.Details) {
	err := s.Store.Update(context.WithoutCancel(ctx), func(tx store.Tx) error {
		return s.audit(tx, kind, actor, subject, d)
	})
	if err != nil {
		s.log().Error("audit entry not written", "kind", kind, "err", err)
	}
}

func principalActor(role, name string) string { return role + ":" + name }

// RecordEvent writes an entry that records no other change (a login failure, a start-up), in
// its own transaction, with the actor of ctx ([WithActor]).
//
// # Errors
//
// Only faults of the appliance: a storage error wrapping [store.ErrUnavailable], or the audit
// trail's ([audit.ErrAppend]), wrapped.
func (s *Service) RecordEvent(ctx context.Context, kind audit.Kind, subject string, d audit.Details) error {
	return s.Store.Update(ctx, func(tx store.Tx) error {
		return s.audit(tx, kind, actorFrom(ctx), subject, d)
	})
}
