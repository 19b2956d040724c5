package bulk

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keyarc/keyarc/escrow/store"
)

// TestRecoverySetChangeDuringJob: an admin replaces the recovery set while a job's items are
// sealed for the old one and not yet committed. No record sealed for the old set may be
// committed after the change: those items are taken again, sealed for the new set, and the job
// ends with every item done and every record of the new epoch.
func TestRecoverySetChangeDuringJob(t *testing.T) {
	for _, kind := range []Kind{KindEnroll, KindKeygen, KindImport} {
		t.Run(string(kind), func(t *testing.T) {
			env := newEnv(t)
			ctx := context.Background()
			const total = 8
			var items []any
			h := Header{Kind: kind, Template: "smime-encryption"}
			old := newOtherCA(t)
			for i := 1; i <= total; i++ {
				mailbox := fmt.Sprintf("epoch%d@example.org", i)
				switch kind {
				case KindEnroll:
					items = append(items, env.enrollItem(t, mailbox))
				case KindKeygen:
					items = append(items, Item{Email: mailbox, Key: "p256"})
				case KindImport:
					k := p256(t)
					c := old.issue(t, k.Public(), mailbox)
					items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(t, k))})
				}
			}
			if kind == KindImport {
				h.Template = ""
			}
			st := submit(t, env, jobFile(t, h, items...))
			r, lines := crashRun(t, env, st.ID)
			oldEpoch := r.set().Epoch

			// Every item is sealed for the current set, as the pipeline's seal stage does...
			var batch []*work
			for seq := 1; seq <= total; seq++ {
				batch = append(batch, r.prepared(t, lines, seq))
			}
			// ...then an admin replaces the set before they are committed.
			var serials []string
			for _, c := range env.kraCerts {
				serials = append(serials, store.FormatSerial(c.SerialNumber))
			}
			rs, err := env.svc.SetRecoverySet(ctx, 2, serials, "admin")
			if err != nil {
				t.Fatal(err)
			}
			if rs.Epoch == oldEpoch {
				t.Fatalf("the new set has the old epoch %d", oldEpoch)
			}
			if kind == KindImport {
				r.commitImportBatch(ctx, batch)
			} else {
				r.issueBatch(ctx, batch)
			}
			for _, w := range batch {
				err := env.db.View(ctx, func(tx *store.Tx) error {
					rec, err := tx.GetRecord(w.rec.ID)
					if err == nil {
						return fmt.Errorf("record %s of item %d, sealed for epoch %d, committed (%s) after the set changed to epoch %d",
							rec.ID, w.seq, rec.Epoch, rec.State, rs.Epoch)
					}
					if errors.Is(err, store.ErrNotFound) {
						return nil
					}
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}

			// The job's run takes those items again, for the new set.
			st = env.runUntilDone(t, st.ID)
			if st.State != store.JobDone || st.Done != total || st.Failed != 0 {
				t.Fatalf("final status %+v, want %d done", st, total)
			}
			res := env.results(t, st.ID)
			env.checkInvariant(t, res)
			for seq, it := range res {
				err := env.db.View(ctx, func(tx *store.Tx) error {
					rec, err := tx.GetRecord(it.RecordID)
					if err != nil {
						return err
					}
					if rec.Epoch != rs.Epoch {
						return fmt.Errorf("item %d: record sealed for epoch %d, want the new set's %d", seq, rec.Epoch, rs.Epoch)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
