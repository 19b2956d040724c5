package issue

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/policy"
)

var kra struct {
	once sync.Once
	key  *rsa.PrivateKey
	err  error
}

// kraKey is the one recipient of the test records (made once: RSA keys are slow to make).
func kraKey(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	kra.once.Do(func() { kra.key, kra.err = rsa.GenerateKey(rand.Reader, 2048) })
	if kra.err != nil {
		tb.Fatal(kra.err)
	}
	return kra.key
}

func p256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

type env struct {
	p    *Pipeline
	db   store.Store
	tmpl *policy.Template
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	db, err := sqlite.Open(filepath.Join(tb.TempDir(), "k.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	caKey := p256(tb)
	root, err := ca.SelfSignedRoot(caKey, pkix.Name{CommonName: "issue test CA"}, time.Now().Add(-time.Hour), 10*365*24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := ca.New(caKey, root)
	if err != nil {
		tb.Fatal(err)
	}
	templates, err := policy.Templates(nil)
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{db: db, tmpl: templates["smime-encryption"], p: &Pipeline{Store: db, Issuer: issuer,
		Audit: func(tx store.Tx, kind audit.Kind, actor, subject string, d audit.Details) error {
			_, err := audit.Append(tx, time.Now(), kind, actor, subject, d)
			return err
		}}}
	e.newEpoch(tb)
	return e
}

// newEpoch makes a new recovery set (an admin's change) and returns its epoch.
func (e *env) newEpoch(tb testing.TB) uint32 {
	tb.Helper()
	var epoch uint32
	err := e.db.Update(context.Background(), func(tx store.Tx) (err error) {
		epoch, err = tx.InsertRecoverySet(store.RecoverySet{Quorum: 1, KRASerials: []string{"01"}, CreatedAt: time.Now(), CreatedBy: "admin"})
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return epoch
}

// seal seals key for epoch, binding serial.
func seal(tb testing.TB, epoch uint32, serial *big.Int, key crypto.Signer) *Record {
	tb.Helper()
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := record.NewID()
	if err != nil {
		tb.Fatal(err)
	}
	h := record.Header{ID: id, Issuer: "issue test CA", Serial: serial.Bytes(), SPKIHash: sha256.Sum256(spki),
		Epoch: epoch, M: 1, N: 1, OAEPHash: crypto.SHA1}
	r, err := record.Seal(h, p8, []record.Recipient{{KeyID: []byte{1}, Key: &kraKey(tb).PublicKey}})
	if err != nil {
		tb.Fatal(err)
	}
	blob, err := r.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return &Record{ID: hex.EncodeToString(id[:]), Blob: blob, Epoch: epoch, Fingerprint: hex.EncodeToString(h.SPKIHash[:])}
}

func (e *env) request(tb testing.TB, i int, epoch uint32) Request {
	tb.Helper()
	serial, err := ca.NewSerial()
	if err != nil {
		tb.Fatal(err)
	}
	k := p256(tb)
	return Request{Template: e.tmpl, Pub: k.Public(), Mailbox: fmt.Sprintf("user%d@example.org", i), Serial: serial,
		Record: seal(tb, epoch, serial, k), Actor: "admin:test"}
}

// recordState is the state of a record, or "" when it was never stored.
func (e *env) recordState(tb testing.TB, id string) string {
	tb.Helper()
	var state string
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		r, err := tx.GetRecord(id)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		state = r.State
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return state
}

// TestIssueEpochCheck: in one batch, the items sealed for a replaced recovery set are refused
// with ErrRecoverySetChanged and nothing of theirs is stored, while the items sealed for the
// current set are issued.
func TestIssueEpochCheck(t *testing.T) {
	e := newEnv(t)
	old := uint32(1)
	var reqs []Request
	for i := range 6 {
		reqs = append(reqs, e.request(t, i, old))
	}
	cur := e.newEpoch(t)
	for i := 1; i < len(reqs); i += 2 {
		reqs[i] = e.request(t, i, cur)
	}
	var reserved []string
	for i := range reqs {
		reqs[i].Reserve = func(tx store.Tx, serial string) error { reserved = append(reserved, serial); return nil }
	}
	res := e.p.Issue(context.Background(), reqs, 4, nil)
	for i, r := range res {
		if i%2 == 0 {
			if !errors.Is(r.Err, ErrRecoverySetChanged) {
				t.Errorf("item %d sealed for the old set: %v, want ErrRecoverySetChanged", i, r.Err)
			}
			if st := e.recordState(t, reqs[i].Record.ID); st != "" {
				t.Errorf("item %d sealed for the old set: its record was stored (%s)", i, st)
			}
			if slices.Contains(reserved, store.FormatSerial(reqs[i].Serial)) {
				t.Errorf("item %d sealed for the old set: its Reserve hook ran", i)
			}
			continue
		}
		if r.Err != nil {
			t.Fatalf("item %d: %v", i, r.Err)
		}
		if st := e.recordState(t, r.RecordID); st != store.StateActive {
			t.Errorf("item %d: record %s, want active", i, st)
		}
	}
}

// TestIssueOneBadItemFailsAlone: a Reserve hook that refuses one item spoils the batch's
// reservation; the pipeline issues the items one by one, so only that item fails.
func TestIssueOneBadItemFailsAlone(t *testing.T) {
	e := newEnv(t)
	errTaken := errors.New("taken")
	var reqs []Request
	for i := range 4 {
		reqs = append(reqs, e.request(t, i, 1))
	}
	reqs[2].Reserve = func(store.Tx, string) error { return errTaken }
	for i, r := range e.p.Issue(context.Background(), reqs, 2, nil) {
		switch {
		case i == 2:
			if !errors.Is(r.Err, ErrReserved) || !errors.Is(r.Err, errTaken) {
				t.Errorf("refused item: %v, want ErrReserved wrapping the hook's error", r.Err)
			}
		case r.Err != nil:
			t.Errorf("item %d: %v", i, r.Err)
		}
	}
}

// TestImportEpochCheck: an import batch stores its items sealed for the current set, leaves out
// those sealed for a replaced one, and tells its bookkeeping which were stored.
func TestImportEpochCheck(t *testing.T) {
	e := newEnv(t)
	cur := e.newEpoch(t)
	var items []ImportItem
	for i := range 5 {
		k := p256(t)
		serial := big.NewInt(int64(1000 + i))
		tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "old"}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), EmailAddresses: []string{fmt.Sprintf("old%d@example.org", i)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		epoch := cur
		if i%2 == 0 {
			epoch = 1
		}
		items = append(items, ImportItem{Cert: c, Mailbox: c.EmailAddresses[0], Record: seal(t, epoch, serial, k)})
	}
	var got []int
	stale, err := e.p.Import(context.Background(), "admin:test", "job j", items, func(tx store.Tx, stored []int) error {
		got = stored
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 3}; !slices.Equal(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}
	for i, it := range items {
		want := store.StateActive
		if i%2 == 0 {
			want = ""
			if !stale[i] {
				t.Errorf("item %d sealed for the old set: not reported stale", i)
			}
		}
		if st := e.recordState(t, it.Record.ID); st != want {
			t.Errorf("item %d: record %q, want %q", i, st, want)
		}
	}
}

// manyTx is a Tx that offers SetCertificatesIssued (as PostgreSQL's writer does), made of the
// single calls, counting the calls of each kind; fail makes the batch call fail.
type manyTx struct {
	store.Tx
	calls *manyCalls
}

type manyCalls struct {
	batches, batched, singles int
	fail                      bool
}

func (tx manyTx) SetCertificatesIssued(serials []string, ders [][]byte, nbs, nas []time.Time, records []string) error {
	tx.calls.batches++
	if tx.calls.fail {
		return store.ErrConflict
	}
	for i, s := range serials {
		if err := tx.Tx.SetCertificateIssued(s, ders[i], nbs[i], nas[i]); err != nil {
			return err
		}
		if err := tx.Tx.ActivateRecord(records[i]); err != nil {
			return err
		}
		tx.calls.batched++
	}
	return nil
}

func (tx manyTx) SetCertificateIssued(serial string, der []byte, nb, na time.Time) error {
	tx.calls.singles++
	return tx.Tx.SetCertificateIssued(serial, der, nb, na)
}

// manyStore hands its Update functions a manyTx.
type manyStore struct {
	store.Store
	calls *manyCalls
}

func (s manyStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error { return fn(manyTx{tx, s.calls}) })
}

// TestIssueFinishesBatchAtOnce: when the store's Tx stores many signed certificates at once, a
// batch's finishing transaction stores them (and activates their records) in one call, and no
// item in a call of its own; if that call fails, the items are finished one by one and issued
// all the same.
func TestIssueFinishesBatchAtOnce(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			e := newEnv(t)
			calls := &manyCalls{fail: fail}
			e.p.Store = manyStore{e.db, calls}
			var reqs []Request
			for i := range 4 {
				reqs = append(reqs, e.request(t, i, 1))
			}
			for i, r := range e.p.Issue(context.Background(), reqs, 2, nil) {
				if r.Err != nil {
					t.Fatalf("item %d: %v", i, r.Err)
				}
				if st := e.recordState(t, r.RecordID); st != store.StateActive {
					t.Errorf("item %d: record %s, want active", i, st)
				}
			}
			want := manyCalls{batches: 1, batched: 4, fail: fail}
			if fail {
				want.batched, want.singles = 0, 4
			}
			if *calls != want {
				t.Errorf("calls %+v, want %+v", *calls, want)
			}
		})
	}
}

// TestTemplateImportReserved: no configured template may take the name imported certificates
// are stored under, or the certificates it issued would get no OCSP response and could never
// be revoked.
func TestTemplateImportReserved(t *testing.T) {
	if TemplateImport != policy.ImportedTemplate {
		t.Fatalf("imported certificates are stored under %q, policy reserves %q", TemplateImport, policy.ImportedTemplate)
	}
	_, err := policy.Templates([]policy.Template{{Name: TemplateImport, KeyUsage: []string{policy.KUKeyEncipherment},
		ExtKeyUsage: []string{policy.EKUEmailProtection}, ValidityDays: 365, Archive: true}})
	if !errors.Is(err, policy.ErrInvalidTemplate) {
		t.Fatalf("a configured template named %q: %v, want %v", TemplateImport, err, policy.ErrInvalidTemplate)
	}
}
