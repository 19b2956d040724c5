package escrow

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
)

// faultKeys is the appliance token's drill keys with faults injected: fail, when set, is what
// the token answers to each decryption (a token gone mid-drill); hook, when set, runs before
// each key lookup ("find") and each decryption ("decrypt") with the key's label.
type faultKeys struct {
	RecoveryKeys
	fail     atomic.Pointer[error]
	failOnce atomic.Pointer[error] // the next decryption only
	hook     func(stage, label string)
}

func (k *faultKeys) Decrypter(label string) (crypto.Decrypter, error) {
	if k.hook != nil {
		k.hook("find", label)
	}
	d, err := k.RecoveryKeys.Decrypter(label)
	if err != nil {
		return nil, err
	}
	return faultDecrypter{d, k, label}, nil
}

type faultDecrypter struct {
	crypto.Decrypter
	k     *faultKeys
	label string
}

func (d faultDecrypter) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	if d.k.hook != nil {
		d.k.hook("decrypt", d.label)
	}
	if err := d.k.fail.Load(); err != nil {
		return nil, *err
	}
	if err := d.k.failOnce.Swap(nil); err != nil {
		return nil, *err
	}
	return d.Decrypter.Decrypt(r, msg, opts)
}

// faultStore fails every write transaction at its commit, after fn ran in it, when failing:
// what a disk that refuses the commit does. Nothing fn wrote may remain.
type faultStore struct {
	store.Store
	failing atomic.Bool
}

func (f *faultStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	return f.Store.Update(ctx, func(tx store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		if f.failing.Load() {
			return fmt.Errorf("%w: injected: disk I/O error at commit", store.ErrUnavailable)
		}
		return nil
	})
}

// drillAftermath is what a refused or failed proof may have left behind.
type drillAftermath struct {
	state            string // the drill's
	proofs, refusals int    // drill-proof and drill-refused audit entries
	failures         int    // refused approvals counted against the KRA
	proven           bool   // the KRA's proof of epoch 1 recorded
	keyLive          bool   // the drill key still in the token
}

func (d *drillEnv) aftermath(t *testing.T, i int, id string) drillAftermath {
	t.Helper()
	var out drillAftermath
	err := d.svc.Store.View(context.Background(), func(tx store.Tx) error {
		dtx := store.DrillStates(tx)
		dr, err := getDrill(dtx, id)
		if err != nil {
			return err
		}
		out.state = dr.State
		es, err := tx.AuditOfKindsFrom([]string{string(KindDrillProof)}, 1, 100)
		out.proofs = len(es)
		if err != nil {
			return err
		}
		es, err = tx.AuditOfKindsFrom([]string{string(KindDrillRefused), string(audit.KindApprovalRefused)}, 1, 100)
		out.refusals = len(es)
		if err != nil {
			return err
		}
		if out.failures, err = tx.ApprovalFailures(d.kras[i].name, t0.Add(-time.Hour)); err != nil {
			return err
		}
		_, err = dtx.GetDrillState(drillKindProof, proofKey(1, d.kras[i].name))
		out.proven = err == nil
		if errors.Is(err, store.ErrNotFound) {
			err = nil
		}
		return err
	})
	if err != nil {
		t.Fatalf("read the drill's aftermath: %v", err)
	}
	d.keys.mu.Lock()
	out.keyLive = d.keys.labels[drillKeyLabel(id)]
	d.keys.mu.Unlock()
	return out
}

// TestDrillProofFaults: a proof that arrives while the appliance's token or its storage fails
// is a fault of the appliance: the error says so (a 503 class: the token's or the storage's
// sentinel, never ErrBadDrillProof), no refusal is audited or counted against the KRA, nothing
// of the proof remains, and the drill stays answerable: the same proof passes once the fault
// is gone.
func TestDrillProofFaults(t *testing.T) {
	gone := fmt.Errorf("%w: pkcs11: 0x32: CKR_DEVICE_REMOVED", hsm.ErrTokenGone)
	for _, tt := range []struct {
		name    string
		inject  func(k *faultKeys, s *faultStore)
		wantErr error
	}{
		{"token gone at the decryption", func(k *faultKeys, _ *faultStore) { k.fail.Store(&gone) }, hsm.ErrTokenGone},
		{"storage refuses the commit", func(_ *faultKeys, s *faultStore) { s.failing.Store(true) }, store.ErrUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDrillEnv(t)
			fk := &faultKeys{RecoveryKeys: d.svc.RecoveryKeys}
			d.svc.RecoveryKeys = fk
			fs := &faultStore{Store: d.svc.Store}
			d.svc.Store = fs
			ctx := context.Background()
			id := d.campaign(t)["kra-0"]
			_, shares, sig := d.answer(t, 0, id)

			tt.inject(fk, fs)
			_, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), id, shares, sig)
			if !errors.Is(err, tt.wantErr) || errors.Is(err, ErrBadDrillProof) {
				t.Fatalf("proof during the fault: %v; want %v, not ErrBadDrillProof", err, tt.wantErr)
			}
			fk.fail.Store(nil)
			fs.failing.Store(false)
			got := d.aftermath(t, 0, id)
			if got.state != DrillOpen || got.proofs != 0 || got.refusals != 0 || got.failures != 0 || got.proven || !got.keyLive {
				t.Fatalf("after the fault: %+v; want the drill open, its key live, no proof, no refusal, nothing counted", got)
			}
			if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), id, shares, sig); err != nil {
				t.Fatalf("the same proof once the fault is gone: %v", err)
			}
			if got := d.aftermath(t, 0, id); got.state != DrillProven || got.proofs != 1 || !got.proven || got.keyLive {
				t.Fatalf("after the proof: %+v", got)
			}
		})
	}
}

// TestDrillProofRace: two submissions of one drill's proof at once (a KRA's retry, a replay):
// one is recorded; the other finds the drill closed (ErrDrillClosed, 409), and is neither a
// fault of the appliance nor a refusal counted against the KRA. The first pauses after the
// checks, at the drill key's lookup or at its decryption; the second is given up to 2 s to
// run meanwhile: if it could, it would destroy the key under the first one. Afterwards the
// token still answers (a key destroyed under a decryption reads as a lost token).
func TestDrillProofRace(t *testing.T) {
	for _, stage := range []string{"find", "decrypt"} {
		t.Run("paused at "+stage, func(t *testing.T) {
			d := newDrillEnv(t)
			fk := &faultKeys{RecoveryKeys: d.svc.RecoveryKeys}
			d.svc.RecoveryKeys = fk
			ctx := context.Background()
			id := d.campaign(t)["kra-0"]
			_, shares, sig := d.answer(t, 0, id)
			paused, resume := make(chan struct{}), make(chan struct{})
			var once sync.Once
			fk.hook = func(s, label string) {
				if s == stage && label == drillKeyLabel(id) {
					first := false
					once.Do(func() { first = true })
					if first {
						close(paused)
						<-resume
					}
				}
			}
			submit := func(errc chan<- error) {
				_, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), id, shares, sig)
				errc <- err
			}
			first, second := make(chan error, 1), make(chan error, 1)
			go submit(first)
			<-paused
			go submit(second)
			var errs []error
			select {
			case err := <-second:
				errs = append(errs, err)
			case <-time.After(2 * time.Second):
			}
			close(resume)
			errs = append(errs, <-first)
			if len(errs) == 1 {
				errs = append(errs, <-second)
			}
			var ok, closed int
			for _, err := range errs {
				switch {
				case err == nil:
					ok++
				case errors.Is(err, ErrDrillClosed):
					closed++
				default:
					t.Errorf("a submission: %v; want success or ErrDrillClosed", err)
				}
			}
			if ok != 1 || closed != 1 {
				t.Fatalf("%d recorded, %d found the drill closed; want one of each", ok, closed)
			}
			if got := d.aftermath(t, 0, id); got.state != DrillProven || got.proofs != 1 || got.refusals != 0 || got.failures != 0 {
				t.Fatalf("after the race: %+v; want one proof, no refusal", got)
			}
			if _, err := d.svc.OpenDrill(ctx, d.kraPrincipal(t, 0), "", time.Hour); err != nil {
				t.Fatalf("the token after the race: %v", err)
			}
		})
	}
}

// TestDrillIDForm: a drill ID is 16 hex digits, as the appliance makes them; anything else
// (a path, a huge or non-hex string) is refused as the client's error before the archive is
// read, without echoing it back, and without an audit entry even for a KRA locked out.
func TestDrillIDForm(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	kra := d.kraPrincipal(t, 0)
	for _, id := range []string{"", "../../etc/passwd", "0123456789ABCDEF", "0123456789abcdeg", "0123456789abcdef0",
		strings.Repeat("a", 30000), "0123456789abcde\x00"} {
		short := id
		if len(short) > 20 {
			short = short[:20] + "..."
		}
		if _, _, err := d.svc.DrillFor(ctx, kra, id); !errors.Is(err, ErrInvalidRequest) || len(err.Error()) > 200 {
			t.Errorf("DrillFor(%q): %.200v; want ErrInvalidRequest, short", short, err)
		}
		if _, err := d.svc.SubmitDrillProof(ctx, kra, id, nil, nil); !errors.Is(err, ErrInvalidRequest) || len(err.Error()) > 200 {
			t.Errorf("SubmitDrillProof(%q): %.200v; want ErrInvalidRequest, short", short, err)
		}
	}
	if _, _, err := d.svc.DrillFor(ctx, kra, "0123456789abcdef"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a well-formed ID of no drill: %v, want ErrNotFound", err)
	}
	if got := d.aftermath(t, 0, d.campaign(t)["kra-0"]); got.refusals != 0 || got.failures != 0 {
		t.Errorf("malformed IDs were audited or counted: %+v", got)
	}
}

// TestDrillSelfOpenBounded: a KRA opens a drill for itself only while it has none open (each
// drill is a key generated in the appliance token and kept until the drill ends: a KRA's
// credential must not be able to fill the token); the refusal names the open drill. An
// admin's campaign is not bounded by it.
func TestDrillSelfOpenBounded(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	first, err := d.svc.OpenDrill(ctx, d.kraPrincipal(t, 1), "", time.Hour)
	if err != nil || len(first) != 1 {
		t.Fatalf("a KRA opens its drill: %v, %v", first, err)
	}
	live := d.keys.live()
	_, err = d.svc.OpenDrill(ctx, d.kraPrincipal(t, 1), "", time.Hour)
	if !errors.Is(err, ErrDrillPending) || !strings.Contains(err.Error(), first[0].ID) {
		t.Fatalf("a second drill while one is open: %v; want ErrDrillPending naming %s", err, first[0].ID)
	}
	if d.keys.live() != live {
		t.Errorf("the refused drill left %d token keys", d.keys.live()-live)
	}
	if ids := d.campaign(t); len(ids) != 3 {
		t.Fatalf("an admin's campaign beside the KRA's drill: %v", ids)
	}
	// Once its drills are answered, the KRA opens another.
	for _, dr := range must(d.svc.ListDrills(ctx, "", "kra-1", true)) {
		d.prove(t, 1, dr.ID)
	}
	if _, err := d.svc.OpenDrill(ctx, d.kraPrincipal(t, 1), "", time.Hour); err != nil {
		t.Fatalf("a drill after the open ones were answered: %v", err)
	}
	// Two at once, by a KRA with none open: one drill, one refusal, one key.
	for _, dr := range must(d.svc.ListDrills(ctx, "", "kra-2", true)) {
		d.prove(t, 2, dr.ID)
	}
	live = d.keys.live()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := d.svc.OpenDrill(ctx, d.kraPrincipal(t, 2), "", time.Hour)
			errs <- err
		}()
	}
	var opened, pending int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			opened++
		case errors.Is(err, ErrDrillPending):
			pending++
		default:
			t.Errorf("a concurrent self-open: %v", err)
		}
	}
	if opened != 1 || pending != 1 || d.keys.live() != live+1 {
		t.Errorf("two self-opens at once: %d opened, %d refused, %d keys made; want 1, 1, 1", opened, pending, d.keys.live()-live)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestDrillRefusalBounded: a refused proof is audited, but what the client sent is bounded
// there: a 200 KB signature is refused for its size and the refusal's entry records no more
// than a KRA's signature can be; five refusals lock the KRA out.
func TestDrillRefusalBounded(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	id := d.campaign(t)["kra-0"]
	_, shares, _ := d.answer(t, 0, id)
	_, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), id, shares, make([]byte, 200<<10))
	if !errors.Is(err, ErrBadDrillProof) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("a 200 KB signature: %.200v; want ErrBadDrillProof naming the signature", err)
	}
	var details int
	d.svc.Store.View(ctx, func(tx store.Tx) error {
		es, err := tx.AuditOfKindsFrom([]string{string(audit.KindApprovalRefused)}, 1, 10)
		for _, e := range es {
			details += len(e.Details)
		}
		return err
	})
	if details == 0 || details > 4<<10 {
		t.Fatalf("the refusal's audit entry holds %d bytes of details; want one entry of at most 4 KiB", details)
	}
}

// TestDrillOpenFaults: a campaign whose drill keys the token stops making part way, or whose
// drills the storage does not commit, is the appliance's fault, and leaves neither a drill
// nor a key in the token.
func TestDrillOpenFaults(t *testing.T) {
	gone := fmt.Errorf("%w: pkcs11: 0x32: CKR_DEVICE_REMOVED", hsm.ErrTokenGone)
	for _, tt := range []struct {
		name    string
		inject  func(k *genFaultKeys, s *faultStore)
		wantErr error
	}{
		{"token gone at the third key", func(k *genFaultKeys, _ *faultStore) { k.failAt, k.err = 3, gone }, hsm.ErrTokenGone},
		{"storage refuses the commit", func(_ *genFaultKeys, s *faultStore) { s.failing.Store(true) }, store.ErrUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDrillEnv(t)
			ctx := context.Background()
			if _, err := d.svc.EnsureCanaries(ctx); err != nil {
				t.Fatal(err)
			}
			gk := &genFaultKeys{RecoveryKeys: d.svc.RecoveryKeys}
			d.svc.RecoveryKeys = gk
			fs := &faultStore{Store: d.svc.Store}
			d.svc.Store = fs
			live := d.keys.live()
			tt.inject(gk, fs)
			if _, err := d.svc.OpenDrill(ctx, d.admin, "", time.Hour); !errors.Is(err, tt.wantErr) {
				t.Fatalf("OpenDrill: %v; want %v", err, tt.wantErr)
			}
			fs.failing.Store(false)
			if n := d.keys.live() - live; n != 0 {
				t.Errorf("%d drill keys left in the token", n)
			}
			if drills, err := d.svc.ListDrills(ctx, "", "", false); err != nil || len(drills) != 0 {
				t.Errorf("drills stored: %v, %v", drills, err)
			}
		})
	}
}

// genFaultKeys fails the failAt-th key generation (1-based) with err.
type genFaultKeys struct {
	RecoveryKeys
	n, failAt int
	err       error
}

func (k *genFaultKeys) Generate(label string) (crypto.PublicKey, error) {
	if k.n++; k.n == k.failAt {
		return nil, k.err
	}
	return k.RecoveryKeys.Generate(label)
}

// TestHealthAdviceSpans: the advice names the window and the margin as configured, also when
// they are not whole days (recovery.drill_window: 12h is allowed, and is not "0 days").
func TestHealthAdviceSpans(t *testing.T) {
	d := newDrillEnv(t)
	hs, err := d.svc.RecoveryHealth(context.Background(), 12*time.Hour, 36*time.Hour)
	if err != nil || len(hs) != 1 {
		t.Fatalf("RecoveryHealth: %v, %v", hs, err)
	}
	if a := hs[0].Advice; !strings.Contains(a, "in the last 12h") {
		t.Errorf("advice %q does not name the 12h window", a)
	}
	d.clock.Set(d.kras[0].cert.NotAfter.Add(-time.Hour))
	hs, _ = d.svc.RecoveryHealth(context.Background(), 90*24*time.Hour, 36*time.Hour)
	if a := hs[0].Advice; !strings.Contains(a, "in the last 90 days") || !strings.Contains(a, "valid beyond 36h") {
		t.Errorf("advice %q does not name the 90-day window and the 36h margin", a)
	}
}

// TestDrillRemovedKRA: a KRA left out of a new set is drilled for the older epochs that still
// hold records sealed to it, and for nothing else; once they are resealed it is in no live
// epoch, and a drill for it is refused as the client's error naming it. Its drill opened
// before is still answered (the proof is of an epoch no longer live, and counts nowhere).
func TestDrillRemovedKRA(t *testing.T) {
	d := newDrillEnv(t)
	ctx := context.Background()
	e2 := d.reuseSet(t, 0, 1) // kra-2 left out
	drills, err := d.svc.OpenDrill(ctx, d.admin, "kra-2", time.Hour)
	if err != nil || len(drills) != 1 || len(drills[0].Epochs) != 1 || drills[0].Epochs[0] != 1 {
		t.Fatalf("kra-2's drill under a set without it: %+v, %v; want epoch 1 only", drills, err)
	}
	d.reseal(t)
	if _, err := d.svc.OpenDrill(ctx, d.admin, "kra-2", time.Hour); !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "kra-2") {
		t.Fatalf("a drill for kra-2, in no live epoch: %v; want ErrInvalidRequest naming it", err)
	}
	d.prove(t, 2, drills[0].ID)
	h := d.health(t)
	if _, ok := h[1]; ok || len(h[e2].KRAs) != 2 {
		t.Fatalf("health after kra-2's late proof: %+v; want epoch %d only, of kra-0 and kra-1", h, e2)
	}
}

// TestDrillUnknownKRAShort: an admin's drill for a KRA name that is in no live set is refused
// naming it, bounded: the name is the client's, of any size, and the refusal goes to the log.
func TestDrillUnknownKRAShort(t *testing.T) {
	d := newDrillEnv(t)
	_, err := d.svc.OpenDrill(context.Background(), d.admin, strings.Repeat("x", 100000), time.Hour)
	if !errors.Is(err, ErrInvalidRequest) || len(err.Error()) > 300 || !strings.Contains(err.Error(), "xxxx") {
		t.Fatalf("a drill for a 100,000-character KRA name: %.300v (%d bytes); want ErrInvalidRequest naming it, short", err, len(err.Error()))
	}
}

// TestDrillProofPassingFault: a token fault that passes (a session pool that timed out once)
// at the decryption of a good share is neither a refused proof nor a failure: the drill key
// works when probed, the share is decrypted again, and the proof is recorded.
func TestDrillProofPassingFault(t *testing.T) {
	d := newDrillEnv(t)
	fk := &faultKeys{RecoveryKeys: d.svc.RecoveryKeys}
	d.svc.RecoveryKeys = fk
	ctx := context.Background()
	id := d.campaign(t)["kra-0"]
	_, shares, sig := d.answer(t, 0, id)
	busy := fmt.Errorf("%w: crypto11: resource pool timed out", hsm.ErrPoolExhausted)
	fk.failOnce.Store(&busy)
	if _, err := d.svc.SubmitDrillProof(ctx, d.kraPrincipal(t, 0), id, shares, sig); err != nil {
		t.Fatalf("a good proof whose first decryption met a busy token: %v", err)
	}
	if got := d.aftermath(t, 0, id); got.state != DrillProven || got.refusals != 0 || got.failures != 0 {
		t.Fatalf("after the proof: %+v; want it proven, nothing refused", got)
	}
}
