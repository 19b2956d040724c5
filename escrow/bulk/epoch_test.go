package bulk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
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
				err := env.db.View(ctx, func(tx store.Tx) error {
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
				err := env.db.View(ctx, func(tx store.Tx) error {
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

// setChanger changes the recovery set once, when the job has counted `after` items, and
// records which records were committed by then.
type setChanger struct {
	t       *testing.T
	env     *testEnv
	total   int
	after   int64
	n       atomic.Int64
	once    sync.Once
	epoch   uint32          // the new set's epoch
	already map[string]bool // record IDs committed when the change had committed
}

func (c *setChanger) Item(Kind, string) {
	if c.n.Add(1) != c.after {
		return
	}
	c.once.Do(func() {
		ctx := context.Background()
		var serials []string
		for _, k := range c.env.kraCerts {
			serials = append(serials, store.FormatSerial(k.SerialNumber))
		}
		rs, err := c.env.svc.SetRecoverySet(ctx, 2, serials, "admin")
		if err != nil {
			c.t.Error(err)
			return
		}
		c.epoch = rs.Epoch
		c.already = map[string]bool{}
		err = c.env.db.View(ctx, func(tx store.Tx) error {
			for i := range c.total {
				recs, err := tx.ListRecords(fmt.Sprintf("live%d@example.org", i+1))
				if err != nil {
					return err
				}
				for _, r := range recs {
					c.already[r.ID] = true
				}
			}
			return nil
		})
		if err != nil {
			c.t.Error(err)
		}
	})
}

// TestRecoverySetChangeDuringRunningJob changes the recovery set while a job runs (after some
// of its items are done): no record sealed for the old set is committed after the change, the
// job does not pause, and every item ends done. On both backends: PostgreSQL reserves a batch's
// items together, leaving out those sealed for the old set.
func TestRecoverySetChangeDuringRunningJob(t *testing.T) {
	for _, kind := range []Kind{KindEnroll, KindImport} {
		t.Run(string(kind), func(t *testing.T) {
			backends(t, func(t *testing.T, env *testEnv) {
				log := env.logTo()
				total := 300
				if kind == KindEnroll {
					// More than the issuers reserve at once (issueBatchers × maxIssueBatch): a
					// loaded machine may reserve every item of a smaller job before the 20th is
					// done, and the change would then come after the last reservation.
					total = issueBatchers*maxIssueBatch + 116
				}
				ch := &setChanger{t: t, env: env, total: total, after: 20}
				env.mgr.Metrics = ch
				old := newOtherCA(t)
				h := Header{Kind: kind, Template: "smime-encryption"}
				var items []any
				for i := 1; i <= total; i++ {
					mailbox := fmt.Sprintf("live%d@example.org", i)
					if kind == KindEnroll {
						items = append(items, env.enrollItem(t, mailbox))
						continue
					}
					h.Template = ""
					k := p256(t)
					c := old.issue(t, k.Public(), mailbox)
					items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(t, k))})
				}
				wantFailed := 0
				if kind == KindImport {
					// An import's items are few batches; a bad first item makes the change come
					// while the first batch is being committed (its failure is counted first).
					items[0] = "not json"
					ch.after, wantFailed = 1, 1
				}
				cur, err := env.svc.CurrentRecoverySet(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				oldEpoch := cur.Epoch
				st := submit(t, env, jobFile(t, h, items...))
				st = env.runUntilDone(t, st.ID)
				if st.State != store.JobDone || st.Done != total-wantFailed || st.Failed != wantFailed {
					t.Fatalf("final status %+v, want %d done, %d failed", st, total-wantFailed, wantFailed)
				}
				if ch.epoch == 0 {
					t.Fatal("the recovery set was never changed")
				}
				res := env.results(t, st.ID)
				env.checkInvariant(t, res)
				newer := 0
				for seq, it := range res {
					if it.State != store.ItemDone {
						continue
					}
					err := env.db.View(context.Background(), func(tx store.Tx) error {
						rec, err := tx.GetRecord(it.RecordID)
						if err != nil {
							return err
						}
						switch {
						case rec.Epoch == ch.epoch:
							newer++
						case rec.Epoch == oldEpoch && !ch.already[rec.ID]:
							return fmt.Errorf("item %d: record %s sealed for the old set (epoch %d) committed after the change to epoch %d",
								seq, rec.ID, rec.Epoch, ch.epoch)
						case rec.Epoch != oldEpoch:
							return fmt.Errorf("item %d: record of epoch %d", seq, rec.Epoch)
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				if newer == 0 {
					t.Errorf("no record sealed for the new set")
				}
				if strings.Contains(log.String(), "paused") {
					t.Errorf("the job paused for a recovery-set change:\n%s", log.String())
				}
			})
		})
	}
}
