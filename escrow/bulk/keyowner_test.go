package bulk

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
)

// enrollItemKey is an enroll item for mailbox with the given key.
func (env *testEnv) enrollItemKey(tb testing.TB, mailbox string, k crypto.Signer) Item {
	tb.Helper()
	envl, err := cms.Encrypt(pkcs8(tb, k), env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256)
	if err != nil {
		tb.Fatal(err)
	}
	return Item{Email: mailbox, CSR: b64(csrFor(tb, k, mailbox)), EncryptedKey: b64(envl)}
}

// logTo sends the manager's log to a buffer, to tell afterwards whether the job paused.
func (env *testEnv) logTo() *bytes.Buffer {
	var b bytes.Buffer
	env.mgr.Logger = slog.New(slog.NewTextHandler(&b, nil))
	return &b
}

// wantKeyOwnerRefusals checks the outcome of a job whose items at seqs `elsewhere` reuse a key
// archived for another mailbox before the job, and whose items `pair` share one key between two
// mailboxes: each item of elsewhere fails, exactly one of pair is done, every other item is
// done, every failure says why without naming the other mailbox, and the job never paused.
func wantKeyOwnerRefusals(t *testing.T, env *testEnv, st *Status, log *bytes.Buffer, total int, elsewhere []int, pair [2]int, owners ...string) {
	t.Helper()
	if st.State != store.JobDone || st.Done+st.Failed != total || st.Total != total {
		t.Fatalf("final status %+v, want done with done+failed == %d", st, total)
	}
	if st.Failed != len(elsewhere)+1 {
		t.Fatalf("final status %+v, want %d failed", st, len(elsewhere)+1)
	}
	res := env.results(t, st.ID)
	if len(res) != total {
		t.Fatalf("%d results, want %d", len(res), total)
	}
	refused := func(seq int) {
		t.Helper()
		r := res[seq]
		if r.State != store.ItemFailed {
			t.Fatalf("item %d: %s, want failed", seq, r.State)
		}
		if !strings.Contains(r.Error, "already archived for another mailbox") {
			t.Errorf("item %d: reason %q does not say the key is archived for another mailbox", seq, r.Error)
		}
		for _, o := range owners {
			if strings.Contains(r.Error, o) {
				t.Errorf("item %d: reason %q names the other mailbox %s", seq, r.Error, o)
			}
		}
	}
	bad := map[int]bool{}
	for _, seq := range elsewhere {
		refused(seq)
		bad[seq] = true
	}
	a, b := res[pair[0]], res[pair[1]]
	switch {
	case a.State == store.ItemDone && b.State == store.ItemFailed:
		refused(pair[1])
	case a.State == store.ItemFailed && b.State == store.ItemDone:
		refused(pair[0])
	default:
		t.Fatalf("items %d and %d share a key between two mailboxes: %s (%s) and %s (%s), want one done, one failed",
			pair[0], pair[1], a.State, a.Error, b.State, b.Error)
	}
	bad[pair[0]], bad[pair[1]] = true, true
	for seq := 1; seq <= total; seq++ {
		if r, ok := res[seq]; !ok || (!bad[seq] && r.State != store.ItemDone) {
			t.Fatalf("item %d: %+v, want done", seq, r)
		}
	}
	env.checkInvariant(t, res)
	if strings.Contains(log.String(), "paused") {
		t.Errorf("the job paused for a refused item (not a fault of the appliance):\n%s", log.String())
	}
}

// TestEnrollJobKeyArchivedElsewhere: in a bulk enroll job, an item whose key is archived for
// another mailbox (before the job, or by another item of the same batch) fails alone, with a
// reason that says so; the rest of its batch is issued and the job does not pause. On
// PostgreSQL the batch's reservation (its items reserved together) fails with it, and its
// items are issued one by one.
func TestEnrollJobKeyArchivedElsewhere(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		log := env.logTo()
		taken := p256(t)
		if _, err := env.svc.IssueArchivedKey(context.Background(), "alice@example.org", "smime-encryption", taken.Public(), pkcs8(t, taken)); err != nil {
			t.Fatal(err)
		}
		shared := p256(t)
		const total = 12
		var items []any
		for i := 1; i <= total; i++ {
			mailbox := fmt.Sprintf("user%d@example.org", i)
			switch i {
			case 3, 9:
				items = append(items, env.enrollItemKey(t, mailbox, taken))
			case 5, 6:
				items = append(items, env.enrollItemKey(t, mailbox, shared))
			default:
				items = append(items, env.enrollItem(t, mailbox))
			}
		}
		st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
		st = env.runUntilDone(t, st.ID)
		wantKeyOwnerRefusals(t, env, st, log, total, []int{3, 9}, [2]int{5, 6}, "alice@example.org", "user5@example.org", "user6@example.org")
	})
}

// TestImportJobKeyArchivedElsewhere is TestEnrollJobKeyArchivedElsewhere for an import job.
func TestImportJobKeyArchivedElsewhere(t *testing.T) {
	env := newEnv(t)
	log := env.logTo()
	old := newOtherCA(t)
	taken := p256(t)
	if _, err := env.svc.ImportArchived(context.Background(), old.issue(t, taken.Public(), "alice@example.org"), pkcs8(t, taken)); err != nil {
		t.Fatal(err)
	}
	shared := p256(t)
	const total = 12
	var items []any
	for i := 1; i <= total; i++ {
		var k *ecdsa.PrivateKey
		switch i {
		case 3, 9:
			k = taken
		case 5, 6:
			k = shared
		default:
			k = p256(t)
		}
		c := old.issue(t, k.Public(), fmt.Sprintf("user%d@example.org", i))
		items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(t, k))})
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindImport}, items...))
	st = env.runUntilDone(t, st.ID)
	wantKeyOwnerRefusals(t, env, st, log, total, []int{3, 9}, [2]int{5, 6}, "alice@example.org", "user5@example.org", "user6@example.org")
}
