package escrow

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// newSet makes KRAs with the given names (unwrap keys in the KRA token) and a 2-of-n recovery
// set of them, which becomes the current one; it returns the new set's epoch.
func (r *recoveryEnv) newSet(t *testing.T, names ...string) uint32 {
	t.Helper()
	var serials []string
	for _, n := range names {
		serials = append(serials, r.addTokenKRA(t, n).serial)
	}
	rs, err := r.svc.SetRecoverySet(context.Background(), 2, serials, "admin")
	if err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	return rs.Epoch
}

// reuseSet makes a new recovery set of the existing KRAs at the given indexes.
func (r *recoveryEnv) reuseSet(t *testing.T, idx ...int) uint32 {
	t.Helper()
	var serials []string
	for _, i := range idx {
		serials = append(serials, r.kras[i].serial)
	}
	rs, err := r.svc.SetRecoverySet(context.Background(), 2, serials, "admin")
	if err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	return rs.Epoch
}

func (r *recoveryEnv) requestReseal(t *testing.T) *Recovery {
	t.Helper()
	rec, err := r.svc.RequestReseal(context.Background(), r.admin, "rotate the KRAs", 0, time.Hour)
	if err != nil {
		t.Fatalf("RequestReseal: %v", err)
	}
	return rec
}

// reseal moves the records to the current set: a reseal approved by KRAs 0 and 1, completed.
func (r *recoveryEnv) reseal(t *testing.T) {
	t.Helper()
	rec := r.requestReseal(t)
	r.approve(t, 0, rec.ID)
	r.approve(t, 1, rec.ID)
	if _, err := r.svc.CompleteReseal(context.Background(), r.admin, rec.ID); err != nil {
		t.Fatalf("CompleteReseal: %v", err)
	}
}

// approvalFromBlob is KRA i's approval of request id made from its share in blob, a record as
// it was sealed (the KRA may have kept its old share): decrypted with its unwrap key,
// re-encrypted to the request's recovery key and signed.
func (r *recoveryEnv) approvalFromBlob(t *testing.T, i int, id, recordID string, blob []byte) ([]ApprovedShare, []byte) {
	t.Helper()
	rec, err := r.svc.GetRecovery(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := record.Parse(blob)
	if err != nil {
		t.Fatal(err)
	}
	_, ct, err := sealed.ShareFor(record.KeyID(r.kras[i].cert))
	if err != nil {
		t.Fatalf("%s holds no share of the blob: %v", r.kras[i].name, err)
	}
	pt, err := r.unwrap[r.kras[i].name].Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: sealed.Header.OAEPHash})
	if err != nil {
		t.Fatalf("KRA decrypts its share: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(rec.KeySPKI)
	if err != nil {
		t.Fatal(err)
	}
	to, err := hashByName(rec.OAEPHash)
	if err != nil {
		t.Fatal(err)
	}
	reenc, err := rsa.EncryptOAEP(to.New(), rand.Reader, pub.(*rsa.PublicKey), pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	shares := []ApprovedShare{{RecordID: recordID, Share: reenc}}
	sig, err := ecdsa.SignASN1(rand.Reader, r.kras[i].auth, ApprovalDigest(&rec.Recovery, shares))
	if err != nil {
		t.Fatal(err)
	}
	return shares, sig
}

// fetchKey fetches a granted recovery and returns the PKCS#8 of its one key.
func (r *recoveryEnv) fetchKey(t *testing.T, id string) []byte {
	t.Helper()
	got, err := r.svc.Fetch(context.Background(), r.officer, id, false)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	key, _, _, err := pkcs12.DecodeChain(got.Files[0].PFX, got.Password)
	if err != nil {
		t.Fatalf("decode the PKCS#12: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestResealToNewSet: a reseal approved by the old set's quorum moves the record to the new
// set's epoch, in its row and in its sealed header; the new KRAs then recover the very key, and
// the old KRAs, holding no share any more, cannot: even their old shares do not count.
func TestResealToNewSet(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	recordID := r.records(t, "owner@example.org")[0].ID
	oldBlob := r.record(t, recordID).Blob
	epoch := r.newSet(t, "kra-3", "kra-4", "kra-5")
	if epoch != 2 {
		t.Fatalf("new set has epoch %d, want 2", epoch)
	}

	id := r.requestReseal(t).ID
	r.approve(t, 0, id)
	r.approve(t, 2, id)
	n, err := r.svc.CompleteReseal(ctx, r.admin, id)
	if err != nil || n != 1 {
		t.Fatalf("CompleteReseal: %d, %v; want 1 record", n, err)
	}
	row := r.record(t, recordID)
	sealed, err := record.Parse(row.Blob)
	if err != nil {
		t.Fatal(err)
	}
	if row.Epoch != epoch || sealed.Header.Epoch != epoch {
		t.Fatalf("after the reseal the record is at epoch %d (row) and %d (header), want %d", row.Epoch, sealed.Header.Epoch, epoch)
	}
	for i := range 3 {
		if _, _, err := sealed.ShareFor(record.KeyID(r.kras[i].cert)); err == nil {
			t.Errorf("the resealed record still holds a share for old KRA %s", r.kras[i].name)
		}
	}
	if _, err := r.svc.RequestReseal(ctx, r.admin, "again", 0, time.Hour); !errors.Is(err, policy.ErrNothingToRecover) {
		t.Errorf("a second reseal: %v, want ErrNothingToRecover (every record is at the current epoch)", err)
	}

	// The old set's KRAs: no share is offered, and their old shares are not counted.
	rid := r.request(t).ID
	_, items, err := r.svc.SharesFor(ctx, r.kraPrincipal(t, 0), rid)
	if err != nil {
		t.Fatal(err)
	}
	if items[0].Share != nil {
		t.Errorf("old KRA %s is offered a share of the resealed record", r.kras[0].name)
	}
	for _, i := range []int{0, 1} {
		shares, sig := r.approvalFromBlob(t, i, rid, recordID, oldBlob)
		r.svc.SubmitApproval(ctx, r.kraPrincipal(t, i), rid, shares, sig) // stored or refused: it must not count
	}
	before := r.keys.decrypts.Load()
	if _, err := r.svc.Fetch(ctx, r.officer, rid, false); !errors.Is(err, policy.ErrQuorum) {
		t.Fatalf("Fetch with the old KRAs' shares: %v, want ErrQuorum", err)
	}
	if r.keys.decrypts.Load() != before {
		t.Errorf("the old KRAs' shares were decrypted")
	}

	// The new set's KRAs recover the archived key.
	r.approve(t, 3, rid)
	r.approve(t, 5, rid)
	if got := r.fetchKey(t, rid); !bytes.Equal(got, r.pkcs8) {
		t.Fatal("the key recovered after the reseal is not the archived one")
	}
}

// TestResealChecks: only an admin requests a reseal and only that admin completes it, with the
// old set's quorum; a reseal is not a recovery; records already at the current epoch are left
// alone, and a set replaced again before completion is the one the records go to. A refusal
// decrypts nothing.
func TestResealChecks(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		run     func(t *testing.T, r *recoveryEnv) error
		wantErr error
		// resealed: the record was resealed before the refusal.
		resealed bool
	}{
		{"nothing to reseal", func(t *testing.T, r *recoveryEnv) error {
			_, err := r.svc.RequestReseal(ctx, r.admin, "", 0, time.Hour)
			return err
		}, policy.ErrNothingToRecover, false},
		{"an officer requests", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			_, err := r.svc.RequestReseal(ctx, r.officer, "", 0, time.Hour)
			return err
		}, policy.ErrNotAllowed, false},
		{"a KRA requests", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			_, err := r.svc.RequestReseal(ctx, r.kraPrincipal(t, 0), "", 0, time.Hour)
			return err
		}, policy.ErrNotAllowed, false},
		{"another admin completes", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			_, err := r.svc.CompleteReseal(ctx, r.credential(t, policy.RoleAdmin, "adam", ""), id)
			return err
		}, ErrForbidden, false},
		{"an officer completes", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			_, err := r.svc.CompleteReseal(ctx, r.officer, id)
			return err
		}, ErrForbidden, false},
		{"completing without the quorum", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			r.approve(t, 0, id)
			_, err := r.svc.CompleteReseal(ctx, r.admin, id)
			return err
		}, policy.ErrQuorum, false},
		{"the new set's KRAs approve", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			for _, i := range []int{3, 4} {
				rec, _, err := r.svc.SharesFor(ctx, r.kraPrincipal(t, i), id)
				if err != nil {
					t.Fatal(err)
				}
				fake := []ApprovedShare{{RecordID: rec.Items[0].RecordID, Share: make([]byte, 256)}}
				sig, _ := ecdsa.SignASN1(rand.Reader, r.kras[i].auth, ApprovalDigest(&rec.Recovery, fake))
				r.svc.SubmitApproval(ctx, r.kraPrincipal(t, i), id, fake, sig)
			}
			_, err := r.svc.CompleteReseal(ctx, r.admin, id)
			return err
		}, policy.ErrQuorum, false},
		{"completing a recovery", func(t *testing.T, r *recoveryEnv) error {
			id := r.request(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			_, err := r.svc.CompleteReseal(ctx, r.admin, id)
			return err
		}, ErrInvalidRequest, false},
		{"fetching a reseal", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			_, err := r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, ErrInvalidRequest, false},
		{"completing twice", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			if _, err := r.svc.CompleteReseal(ctx, r.admin, id); err != nil {
				t.Fatalf("first CompleteReseal: %v", err)
			}
			before := r.keys.decrypts.Load()
			_, err := r.svc.CompleteReseal(ctx, r.admin, id)
			if r.keys.decrypts.Load() != before {
				t.Errorf("the second completion decrypted shares")
			}
			r.keys.decrypts.Store(0)
			return err
		}, policy.ErrConsumed, true},
		{"records at the current epoch are left alone", func(t *testing.T, r *recoveryEnv) error {
			epoch := r.newSet(t, "kra-3", "kra-4")
			current, _ := r.enrollArchived(t, "new@example.org")
			rec := r.requestReseal(t)
			if len(rec.Items) != 1 || rec.Items[0].Serial != r.serial {
				t.Errorf("reseal items %+v, want only the record of %s", rec.Items, r.serial)
			}
			if got := r.record(t, current.RecordID); got.Epoch != epoch {
				t.Errorf("a new record is at epoch %d, want %d", got.Epoch, epoch)
			}
			return nil
		}, nil, false},
		{"the set changes again before completion", func(t *testing.T, r *recoveryEnv) error {
			r.newSet(t, "kra-3", "kra-4")
			id := r.requestReseal(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			latest := r.reuseSet(t, 3, 4, 0)
			r.keys.decrypts.Store(0)
			if _, err := r.svc.CompleteReseal(ctx, r.admin, id); err != nil {
				return err
			}
			recID := r.records(t, "owner@example.org")[0].ID
			if got := r.record(t, recID); got.Epoch != latest {
				t.Errorf("record resealed to epoch %d, want the current %d", got.Epoch, latest)
			}
			r.keys.decrypts.Store(0)
			return nil
		}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			err := tt.run(t, r)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if n := r.keys.decrypts.Load(); tt.wantErr != nil && n != 0 {
				t.Errorf("%d decryptions with the recovery key for a refused reseal, want 0", n)
			}
			if tt.wantErr != nil && !tt.resealed {
				for _, rec := range r.records(t, "owner@example.org") {
					if rec.Epoch != 1 {
						t.Errorf("a refused reseal moved record %s to epoch %d", rec.ID, rec.Epoch)
					}
				}
			}
		})
	}
}

// requestState brings a new recovery request of r to a state: "open", "one approval",
// "quorum" (granted, not fetched), "consumed", "cancelled" or "expired".
func (r *recoveryEnv) requestState(t *testing.T, state string) string {
	t.Helper()
	ctx := context.Background()
	id := r.request(t).ID
	switch state {
	case "open":
	case "one approval":
		r.approve(t, 0, id)
	case "quorum":
		r.approve(t, 0, id)
		r.approve(t, 1, id)
	case "consumed":
		r.approve(t, 0, id)
		r.approve(t, 1, id)
		if _, err := r.svc.Fetch(ctx, r.officer, id, false); err != nil {
			t.Fatalf("Fetch: %v", err)
		}
	case "cancelled":
		if err := r.svc.CancelRecovery(ctx, r.officer, id); err != nil {
			t.Fatalf("CancelRecovery: %v", err)
		}
	case "expired":
		r.approve(t, 0, id)
		r.clock.Set(t0.Add(2 * time.Hour))
		if n, err := r.svc.ExpireRecoveries(ctx); err != nil || n != 1 {
			t.Fatalf("ExpireRecoveries: %d, %v", n, err)
		}
		r.clock.Set(t0)
	default:
		t.Fatalf("unknown state %q", state)
	}
	return id
}

// TestCancelAtEachState: the requester cancels an open request, approved or not, and its
// recovery key is destroyed; nothing can be fetched or approved after. A closed request cannot
// be cancelled, and nobody else can cancel one.
func TestCancelAtEachState(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		state   string
		wantErr error
	}{
		{"open", nil},
		{"one approval", nil},
		{"quorum", nil},
		{"consumed", policy.ErrConsumed},
		{"cancelled", policy.ErrRequestClosed},
		{"expired", policy.ErrRequestClosed},
	}
	for _, tt := range tests {
		t.Run(tt.state, func(t *testing.T) {
			r := newRecoveryEnv(t)
			id := r.requestState(t, tt.state)
			before, _ := r.svc.GetRecovery(ctx, id)
			decrypts := r.keys.decrypts.Load()
			if err := r.svc.CancelRecovery(ctx, r.credential(t, policy.RoleOfficer, "oscar", ""), id); !errors.Is(err, ErrForbidden) {
				t.Errorf("another officer cancels: %v, want ErrForbidden", err)
			}
			err := r.svc.CancelRecovery(ctx, r.officer, id)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CancelRecovery: %v, want %v", err, tt.wantErr)
			}
			after, _ := r.svc.GetRecovery(ctx, id)
			if tt.wantErr != nil {
				if after.State != before.State {
					t.Errorf("a refused cancel moved the request from %s to %s", before.State, after.State)
				}
				return
			}
			if after.State != store.RecoveryCancelled {
				t.Errorf("state %s after cancel, want cancelled", after.State)
			}
			if n := r.keys.live(); n != 0 {
				t.Errorf("%d recovery key(s) left in the token after cancel", n)
			}
			if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, policy.ErrRequestClosed) {
				t.Errorf("Fetch after cancel: %v, want ErrRequestClosed", err)
			}
			shares, sig := r.approvalFromBlob(t, 2, id, r.records(t, "owner@example.org")[0].ID, r.records(t, "owner@example.org")[0].Blob)
			if _, err := r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 2), id, shares, sig); !errors.Is(err, policy.ErrRequestClosed) {
				t.Errorf("approval after cancel: %v, want ErrRequestClosed", err)
			}
			if r.keys.decrypts.Load() != decrypts {
				t.Errorf("a cancelled request decrypted shares")
			}
		})
	}
}

// TestExpireAtEachState: past its expiry an open request, approved or not, expires and its
// recovery key is destroyed, after which it can neither be fetched nor approved; a request
// already closed keeps its state.
func TestExpireAtEachState(t *testing.T) {
	ctx := context.Background()
	for _, state := range []string{"open", "one approval", "quorum", "consumed", "cancelled", "expired"} {
		t.Run(state, func(t *testing.T) {
			r := newRecoveryEnv(t)
			id := r.requestState(t, state)
			before, _ := r.svc.GetRecovery(ctx, id)
			wasOpen := before.State == store.RecoveryOpen

			// Before its expiry nothing expires.
			if n, err := r.svc.ExpireRecoveries(ctx); err != nil || n != 0 {
				t.Fatalf("ExpireRecoveries before the expiry: %d, %v; want 0", n, err)
			}
			r.clock.Set(before.ExpiresAt)
			defer r.clock.Set(t0)
			n, err := r.svc.ExpireRecoveries(ctx)
			if err != nil {
				t.Fatalf("ExpireRecoveries: %v", err)
			}
			after, _ := r.svc.GetRecovery(ctx, id)
			if !wasOpen {
				if n != 0 || after.State != before.State {
					t.Errorf("a %s request: %d expired, state %s; want 0 and unchanged", before.State, n, after.State)
				}
				return
			}
			if n != 1 || after.State != store.RecoveryExpired {
				t.Fatalf("%d expired, state %s; want 1 and expired", n, after.State)
			}
			if k := r.keys.live(); k != 0 {
				t.Errorf("%d recovery key(s) left in the token after expiry", k)
			}
			decrypts := r.keys.decrypts.Load()
			r.clock.Set(t0) // even with a clock put back
			if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, policy.ErrExpired) {
				t.Errorf("Fetch after expiry: %v, want ErrExpired", err)
			}
			recs := r.records(t, "owner@example.org")
			shares, sig := r.approvalFromBlob(t, 2, id, recs[0].ID, recs[0].Blob)
			if _, err := r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 2), id, shares, sig); !errors.Is(err, policy.ErrRequestClosed) {
				t.Errorf("approval after expiry: %v, want ErrRequestClosed", err)
			}
			if r.keys.decrypts.Load() != decrypts {
				t.Errorf("an expired request decrypted shares")
			}
		})
	}
}

// TestRecordBoundToPublicKey: a record whose ID, serial and epoch are those of its row but that
// was sealed for another public key (a swapped-in record of another key, sealed to the same
// KRAs) is refused, to the KRAs and at fetch, before any share is decrypted.
func TestRecordBoundToPublicKey(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)

	// Epoch 2 holds the same KRAs; the forged record is sealed for it, with the genuine
	// record's ID and serial, and moved in as a reseal would.
	epoch := r.reuseSet(t, 0, 1, 2)
	row := r.records(t, "owner@example.org")[0]
	genuine, err := record.Parse(row.Blob)
	if err != nil {
		t.Fatal(err)
	}
	other := newP256(t)
	spki, err := x509.MarshalPKIXPublicKey(other.Public())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := r.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := genuine.Header
	h.Epoch, h.SPKIHash = epoch, sha256.Sum256(spki)
	forged, err := record.Seal(h, pkcs8Of(t, other), rs.recipients)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := forged.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.svc.Store.Update(ctx, func(tx store.Tx) error { return tx.ResealRecord(row.ID, row.Epoch, epoch, blob) }); err != nil {
		t.Fatalf("swap the record: %v", err)
	}

	if _, _, err := r.svc.SharesFor(ctx, r.kraPrincipal(t, 2), id); !errors.Is(err, ErrRecordMismatch) {
		t.Errorf("SharesFor: %v, want ErrRecordMismatch", err)
	}
	if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, ErrRecordMismatch) {
		t.Errorf("Fetch: %v, want ErrRecordMismatch", err)
	}
	if n := r.keys.decrypts.Load(); n != 0 {
		t.Errorf("%d share(s) decrypted for a record bound to another public key, want 0", n)
	}
}

// gateAfter makes the first operation that reaches its nth share decryption wait there, all
// shares decrypted, until the returned release is called; arrived is closed when it waits.
func (r *recoveryEnv) gateAfter(n int64) (arrived chan struct{}, release func()) {
	arrived, gate := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.keys.afterDecrypt = func(got int64) {
		if got == n {
			close(arrived)
			select {
			case <-gate:
			case <-time.After(time.Minute):
			}
		}
	}
	return arrived, func() { once.Do(func() { close(gate) }) }
}

// TestConcurrentFetch: two fetches of one granted recovery, the first held after its shares
// are decrypted while the second runs: exactly one delivers, the other reaches the store's
// conflict and gets ErrConsumed.
func TestConcurrentFetch(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	arrived, release := r.gateAfter(2)
	defer release()
	type result struct {
		got *Recovered
		err error
	}
	first := make(chan result, 1)
	go func() {
		got, err := r.svc.Fetch(ctx, r.officer, id, false)
		first <- result{got, err}
	}()
	<-arrived
	second, err2 := r.svc.Fetch(ctx, r.officer, id, false)
	release()
	res1 := <-first
	if err2 != nil || second == nil {
		t.Fatalf("the second fetch: %v; want the delivery", err2)
	}
	if !errors.Is(res1.err, policy.ErrConsumed) || res1.got != nil {
		t.Fatalf("the first fetch, held while the second delivered: %v; want ErrConsumed", res1.err)
	}
	if rec, _ := r.svc.GetRecovery(ctx, id); rec.State != store.RecoveryConsumed {
		t.Errorf("request state %s, want consumed", rec.State)
	}
}

// TestConcurrentReseal: two completions of one granted reseal, the first held after its shares
// are decrypted while the second runs: exactly one reseals, the other reaches the store's
// conflict and gets ErrConsumed; the record is resealed once, to the new set.
func TestConcurrentReseal(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	epoch := r.newSet(t, "kra-3", "kra-4")
	id := r.requestReseal(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	arrived, release := r.gateAfter(2)
	defer release()
	type result struct {
		n   int
		err error
	}
	first := make(chan result, 1)
	go func() {
		n, err := r.svc.CompleteReseal(ctx, r.admin, id)
		first <- result{n, err}
	}()
	<-arrived
	n2, err2 := r.svc.CompleteReseal(ctx, r.admin, id)
	release()
	res1 := <-first
	if err2 != nil || n2 != 1 {
		t.Fatalf("the second completion: %d, %v; want 1 record resealed", n2, err2)
	}
	if !errors.Is(res1.err, policy.ErrConsumed) {
		t.Fatalf("the first completion, held while the second resealed: %d, %v; want ErrConsumed", res1.n, res1.err)
	}
	recs := r.records(t, "owner@example.org")
	if recs[0].Epoch != epoch {
		t.Errorf("record at epoch %d, want %d", recs[0].Epoch, epoch)
	}
}
