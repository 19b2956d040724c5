package escrow

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDestroyStaleKeys: a per-request key left in the token by a request that ended (a crash
// between the end's commit and the key's destruction) is destroyed by the next sweep; a key of
// no request at all only once it has been seen so for orphanGrace; the key of an open request
// stays.
func TestDestroyStaleKeys(t *testing.T) {
	r := newRecoveryEnv(t)
	// The appliance token of the package's recovery tests: keys other tests left there are
	// swept too, so only this test's keys are counted.
	keys := r.keys
	tok := keys.tok
	clock := time.Now().UTC()
	r.svc.Now = func() time.Time { return clock }
	ctx := context.Background()

	open := r.request(t)
	cancelled := r.request(t)
	if err := r.svc.CancelRecovery(ctx, r.officer, cancelled.ID); err != nil {
		t.Fatal(err)
	}
	// The cancelled request's key, as a crash before its destruction would have left it; and
	// keys of no request (their requests never committed).
	orphans := []string{recoveryKeyLabel("0123456789abcdef0123456789abcdef"), drillKeyLabel("0123456789abcdef")}
	for _, label := range append([]string{cancelled.KeyLabel}, orphans...) {
		if _, err := keys.Generate(label); err != nil {
			t.Fatal(err)
		}
	}
	mine := []string{open.KeyLabel, cancelled.KeyLabel, orphans[0], orphans[1]}
	inToken := func() string { // which of this test's keys the token holds
		t.Helper()
		var all []string
		for _, p := range []string{"recovery-", "drill-"} {
			l, err := tok.KeyLabels(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, label := range l {
				if slices.Contains(mine, label) {
					all = append(all, label)
				}
			}
		}
		return strings.Join(all, " ")
	}

	if n, err := r.svc.DestroyStaleKeys(ctx); err != nil || n < 1 {
		t.Fatalf("first sweep: %d destroyed, %v; want the cancelled request's key at least", n, err)
	}
	if got, want := inToken(), open.KeyLabel+" "+orphans[0]+" "+orphans[1]; !sameWords(got, want) {
		t.Fatalf("after the first sweep the token holds %q, want %q", got, want)
	}
	clock = clock.Add(orphanGrace - time.Second)
	if _, err := r.svc.DestroyStaleKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := inToken(), open.KeyLabel+" "+orphans[0]+" "+orphans[1]; !sameWords(got, want) {
		t.Fatalf("within the grace the token holds %q, want %q", got, want)
	}
	clock = clock.Add(2 * time.Second)
	if n, err := r.svc.DestroyStaleKeys(ctx); err != nil || n < 2 {
		t.Fatalf("sweep after the grace: %d destroyed, %v; want the two keys of no request at least", n, err)
	}
	if got := inToken(); got != open.KeyLabel {
		t.Fatalf("the token holds %q, want only the open request's key %q", got, open.KeyLabel)
	}
	// The open request still works to its end, which destroys its key.
	if err := r.svc.CancelRecovery(ctx, r.officer, open.ID); err != nil {
		t.Fatal(err)
	}
	if got := inToken(); got != "" {
		t.Fatalf("the token holds %q after every request ended", got)
	}
}

func sameWords(a, b string) bool {
	x, y := strings.Fields(a), strings.Fields(b)
	if len(x) != len(y) {
		return false
	}
	seen := map[string]int{}
	for _, w := range x {
		seen[w]++
	}
	for _, w := range y {
		if seen[w]--; seen[w] < 0 {
			return false
		}
	}
	return true
}
