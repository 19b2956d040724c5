package bulk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/notice/feed"
	"github.com/keyarc/keyarc/escrow/store"
)

// auditOf returns the entries of kind in the audit trail.
func (env *testEnv) auditOf(tb testing.TB, kind audit.Kind) []store.AuditEntry {
	tb.Helper()
	var out []store.AuditEntry
	err := env.db.View(context.Background(), func(tx store.Tx) error {
		entries, err := tx.ListAudit(1, 1_000_000)
		for _, e := range entries {
			if e.Kind == string(kind) {
				out = append(out, e)
			}
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestJobSubmissionAndPasswordsAreAudited: queuing a job and releasing a keygen job's passwords
// each leave one audit entry naming the job and who did it, and the items' entries name the
// job; a refused second release leaves none.
func TestJobSubmissionAndPasswordsAreAudited(t *testing.T) {
	env := newEnv(t)
	ctx := escrow.WithActor(context.Background(), "admin:alice")
	file := jobFile(t, Header{Kind: KindKeygen, Template: "smime-encryption"},
		Item{Email: "a@example.org", Key: "p256"}, Item{Email: "b@example.org", Key: "p256"})
	st, err := env.mgr.Submit(ctx, bytes.NewReader(file), "alice")
	if err != nil {
		t.Fatal(err)
	}
	subs := env.auditOf(t, audit.KindBulkSubmitted)
	if len(subs) != 1 {
		t.Fatalf("%d bulk-submitted entries, want 1", len(subs))
	}
	var d audit.Details
	if err := json.Unmarshal([]byte(subs[0].Details), &d); err != nil {
		t.Fatal(err)
	}
	if subs[0].Actor != "admin:alice" || subs[0].Subject != "job "+st.ID || d.Request != st.ID ||
		d.RequestKind != string(KindKeygen) || d.Template != "smime-encryption" || d.Count != 2 {
		t.Errorf("bulk-submitted entry: actor %q subject %q details %s", subs[0].Actor, subs[0].Subject, subs[0].Details)
	}
	st = env.runUntilDone(t, st.ID)
	if st.Done != 2 {
		t.Fatalf("status %+v", st)
	}
	// The items' entries name the job: the notice feed batches their notices by it.
	items := env.auditOf(t, audit.KindArchive)
	if len(items) != 2 {
		t.Fatalf("%d archive entries, want one per item", len(items))
	}
	for _, e := range items {
		if e.Actor != feed.BulkActorPrefix+st.ID {
			t.Errorf("archive entry of an item: actor %q, want the job", e.Actor)
		}
	}
	if n := len(env.auditOf(t, audit.KindBulkPasswords)); n != 0 {
		t.Fatalf("%d bulk-passwords entries before any release", n)
	}
	var b bytes.Buffer
	if err := env.mgr.Passwords(ctx, st.ID, &b); err != nil {
		t.Fatal(err)
	}
	if err := env.mgr.Passwords(ctx, st.ID, &bytes.Buffer{}); !errors.Is(err, ErrReleased) {
		t.Fatalf("second release: %v, want ErrReleased", err)
	}
	rel := env.auditOf(t, audit.KindBulkPasswords)
	if len(rel) != 1 || rel[0].Actor != "admin:alice" || rel[0].Subject != "job "+st.ID {
		t.Fatalf("bulk-passwords entries %+v, want one by admin:alice for job %s", rel, st.ID)
	}
	dec := json.NewDecoder(&b)
	for dec.More() {
		var pw Password
		if err := dec.Decode(&pw); err != nil {
			t.Fatal(err)
		}
		if pw.Password == "" || bytes.Contains([]byte(rel[0].Details), []byte(pw.Password)) {
			t.Errorf("item %d: empty password, or the audit entry holds it", pw.Seq)
		}
	}
}
