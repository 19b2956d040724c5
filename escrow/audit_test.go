package escrow

import (
	"context"
	"crypto"
	"database/sql"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/policy"
)

func (env *testEnv) trail(tb testing.TB) []store.AuditEntry {
	tb.Helper()
	var out []store.AuditEntry
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.ListAudit(1, 10000)
		return err
	})
	if err != nil {
		tb.Fatalf("ListAudit: %v", err)
	}
	return out
}

func details(tb testing.TB, e store.AuditEntry) audit.Details {
	tb.Helper()
	var d audit.Details
	if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
		tb.Fatalf("entry %d: details %q: %v", e.Seq, e.Details, err)
	}
	return d
}

// TestAuditEnrollment: an archiving enrollment writes its entry with the certificate, the
// code's creation writes one too, neither carries the code, and the chain verifies.
func TestAuditEnrollment(t *testing.T) {
	env := newTestService(t)
	obs := &observer{}
	env.svc.Audit = obs
	before := len(env.trail(t))
	issued, _ := env.enrollArchived(t, "alice@example.org")

	entries := env.trail(t)[before:]
	if len(entries) != 2 {
		t.Fatalf("%d entries for a code and an enrollment, want 2: %+v", len(entries), entries)
	}
	if e := entries[0]; e.Kind != string(audit.KindCodeCreated) || e.Subject != "alice@example.org" || e.Actor != "local" {
		t.Errorf("first entry %+v, want code-created for alice by local", e)
	}
	e := entries[1]
	d := details(t, e)
	if e.Kind != string(audit.KindArchive) || e.Actor != "enrollee:alice@example.org" || d.Serial != issued.Serial ||
		d.Record != issued.RecordID || d.Template != policy.TemplateSMIMEEncryption || d.Epoch != 1 {
		t.Errorf("enrollment entry %+v %+v", e, d)
	}
	if len(obs.seqs) < 2 || obs.seqs[len(obs.seqs)-1] != e.Seq {
		t.Errorf("the observer saw %v, want it to end with %d", obs.seqs, e.Seq)
	}
	for _, secret := range env.secrets {
		for _, x := range env.trail(t) {
			if strings.Contains(x.Details+x.Subject+x.Actor, secret) || strings.Contains(x.Details, secret[:8]) {
				t.Errorf("entry %d carries the enrollment code or its ID", x.Seq)
			}
		}
	}

	key := newP256(t)
	cp := &audit.Checkpointer{DB: env.svc.Store, Signer: key}
	if _, err := cp.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(context.Background(), env.svc.Store, key.Public(), nil)
	if err != nil || rep.Entries != int64(len(env.trail(t))) {
		t.Errorf("Verify: %+v, %v", rep, err)
	}
}

type observer struct {
	seqs   []int64
	failed []audit.Kind
}

func (o *observer) Appended(seq int64)     { o.seqs = append(o.seqs, seq) }
func (o *observer) Failed(kind audit.Kind) { o.failed = append(o.failed, kind) }

// disableAudit makes every audit insert fail, as a full or read-only trail would.
func disableAudit(tb testing.TB, db store.Store) {
	tb.Helper()
	raw, err := sql.Open("sqlite", "file:"+db.(*sqlite.DB).Path())
	if err != nil {
		tb.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`CREATE TRIGGER audit_off BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit disabled'); END`); err != nil {
		tb.Fatal(err)
	}
}

// TestAuditFailureRefuses: when the entry cannot be written, the operation it records is
// refused and leaves nothing behind.
func TestAuditFailureRefuses(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	who := env.enrollee(t, "bob@example.org", policy.TemplateSMIMEEncryption)
	rs, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disableAudit(t, env.svc.Store)
	obs := &observer{}
	env.svc.Audit = obs
	before := len(env.trail(t))

	key := newP256(t)
	_, err = env.svc.EnrollArchived(ctx, who, EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: newCSR(t, key, who.Mailbox)},
		envelope(t, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256))
	if !errors.Is(err, audit.ErrAppend) {
		t.Fatalf("EnrollArchived with the audit trail disabled: %v, want audit.ErrAppend", err)
	}
	env.assertNothingLeft(t, who)

	tests := []struct {
		name string
		op   func() error
	}{
		{"code", func() error {
			_, err := env.svc.CreateCode(ctx, "carol@example.org", policy.TemplateSMIMEEncryption, 3600e9)
			return err
		}},
		{"recovery set", func() error {
			serials := []string{store.FormatSerial(rs.KRAs[0].SerialNumber), store.FormatSerial(rs.KRAs[1].SerialNumber)}
			_, err := env.svc.SetRecoverySet(ctx, 1, serials, "admin")
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, audit.ErrAppend) {
				t.Errorf("got %v, want audit.ErrAppend", err)
			}
		})
	}
	if cur, err := env.svc.CurrentRecoverySet(ctx); err != nil || cur.Epoch != rs.Epoch {
		t.Errorf("recovery set after a refused change: %+v, %v", cur, err)
	}
	if n := len(env.trail(t)); n != before {
		t.Errorf("trail grew from %d to %d entries", before, n)
	}
	if len(obs.failed) < 3 || obs.failed[0] != audit.KindArchive {
		t.Errorf("the observer saw failures %v, want archive first and one per refused operation", obs.failed)
	}
}

// TestAuditTailDeletedWhileRunning: an approval's entry deleted from the database (sqlite3
// on the file while the appliance runs) before any checkpoint covers it makes the next
// audited operation fail, and no checkpoint signs the shortened trail.
func TestAuditTailDeletedWhileRunning(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	db := r.svc.Store
	w := &audit.Witness{}
	if err := w.Start(ctx, db); err != nil {
		t.Fatal(err)
	}
	r.svc.Store, r.svc.Trail = w.Track(db), w
	key := newP256(t)
	headPath := filepath.Join(t.TempDir(), "audit-head.json")
	cp := &audit.Checkpointer{DB: db, Signer: key, HeadPath: headPath, Witness: w}
	if _, err := cp.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	id := r.request(t).ID
	r.approve(t, 0, id)
	last := r.trail(t)[len(r.trail(t))-1]
	if last.Kind != string(audit.KindApproval) {
		t.Fatalf("last entry is %s, want the approval", last.Kind)
	}
	raw, err := sql.Open("sqlite", "file:"+db.(*sqlite.DB).Path()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit) AND kind = 'approval'`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	shares, sig := r.approval(t, 1, id)
	_, err = r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 1), id, shares, sig)
	if !errors.Is(err, audit.ErrTruncated) || !errors.Is(err, audit.ErrAppend) {
		t.Fatalf("SubmitApproval after the first approval's entry was deleted: %v, want audit.ErrTruncated", err)
	}
	if _, err := r.svc.CreateCode(ctx, "carol@example.org", policy.TemplateSMIMEEncryption, 3600e9); !errors.Is(err, audit.ErrTruncated) {
		t.Errorf("CreateCode: %v, want audit.ErrTruncated", err)
	}
	if got, err := cp.Checkpoint(ctx); !errors.Is(err, audit.ErrTruncated) {
		t.Errorf("Checkpoint: %+v, %v; want it refused with audit.ErrTruncated", got, err)
	}
	head, err := audit.ReadHead(headPath)
	if err != nil {
		t.Fatal(err)
	}
	if head.Seq != last.Seq || string(head.Hash) != string(last.Hash) {
		t.Errorf("head file records entry %d, want the deleted approval %d", head.Seq, last.Seq)
	}
	if _, err := audit.Verify(ctx, db, key.Public(), head); !errors.Is(err, audit.ErrTruncated) {
		t.Errorf("Verify: %v, want audit.ErrTruncated", err)
	}
}
