package presign

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

type env struct {
	db        *sqlite.DB
	ca        *x509.Certificate
	caKey     *ecdsa.PrivateKey
	leafDER   []byte
	respCert  *x509.Certificate
	respKey   crypto.Signer
	responder *ocsp.Responder
}

func newEnv(tb testing.TB, respKey crypto.Signer, respValidity time.Duration) *env {
	tb.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "presign CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	if respKey == nil {
		respKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	rt := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "responder"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(respValidity), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}}
	rDER, err := x509.CreateCertificate(rand.Reader, rt, ca, respKey.Public(), caKey)
	if err != nil {
		tb.Fatal(err)
	}
	rc, _ := x509.ParseCertificate(rDER)
	r, err := ocsp.NewResponder(ca, rc, respKey, nil)
	if err != nil {
		tb.Fatal(err)
	}
	lk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lt := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
	leafDER, _ := x509.CreateCertificate(rand.Reader, lt, ca, lk.Public(), caKey)
	db, err := sqlite.Open(filepath.Join(tb.TempDir(), "keyarc.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return &env{db: db, ca: ca, caKey: caKey, leafDER: leafDER, respCert: rc, respKey: respKey, responder: r}
}

// addCerts stores n issued certificates with serials first..first+n-1 (hex), expiring in a day.
func (e *env) addCerts(tb testing.TB, first, n int) []string {
	tb.Helper()
	now := time.Now()
	var serials []string
	for lo := 0; lo < n; lo += 5000 {
		var cs []store.Certificate
		for i := lo; i < min(n, lo+5000); i++ {
			sn := fmt.Sprintf("%x", first+i)
			serials = append(serials, sn)
			cs = append(cs, store.Certificate{Serial: sn, Template: "t", Email: "a@example.org", State: "issued",
				DER: e.leafDER, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
		}
		if err := e.db.Update(context.Background(), func(tx store.Tx) error { return tx.InsertCertificates(cs) }); err != nil {
			tb.Fatal(err)
		}
	}
	return serials
}

func (e *env) signer(r *ocsp.Responder) *Signer {
	return &Signer{Store: e.db, Responder: func(time.Time) (*ocsp.Responder, error) { return r, nil }, Batch: 64}
}

// status reads the stored response of serial with x/crypto/ocsp (signature checked).
func (e *env) status(tb testing.TB, serial string) *xocsp.Response {
	tb.Helper()
	var r *store.OCSPResponse
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		var err error
		r, err = tx.GetOCSPResponse(serial)
		return err
	})
	if err != nil {
		tb.Fatalf("serial %s: %v", serial, err)
	}
	n, _ := new(big.Int).SetString(serial, 16)
	leaf := &x509.Certificate{SerialNumber: n}
	resp, err := xocsp.ParseResponseForCert(r.DER, leaf, e.ca)
	if err != nil {
		tb.Fatalf("serial %s: x/crypto/ocsp: %v", serial, err)
	}
	return resp
}

func (e *env) due(tb testing.TB) int {
	var due []store.CertStatus
	now := time.Now()
	e.db.View(context.Background(), func(tx store.Tx) error {
		var err error
		due, err = tx.OCSPDue(now, now.Add(-DefaultRefreshAge), "", 100000)
		return err
	})
	return len(due)
}

func TestSignDueThenRevoked(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	serials := e.addCerts(t, 0x1000, 200)
	// An expired certificate and a pending one get no response.
	now := time.Now()
	e.db.Update(context.Background(), func(tx store.Tx) error {
		tx.InsertCertificate(store.Certificate{Serial: "dead", Template: "t", Email: "a@example.org", State: "issued", DER: e.leafDER,
			NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
		return tx.InsertCertificate(store.Certificate{Serial: "beef", Template: "t", Email: "a@example.org"})
	})
	s := e.signer(e.responder)
	n, err := s.SignDue(context.Background())
	if err != nil || n != 200 {
		t.Fatalf("SignDue: %d, %v", n, err)
	}
	if d := e.due(t); d != 0 {
		t.Fatalf("%d still due", d)
	}
	for _, sn := range []string{serials[0], serials[199]} {
		r := e.status(t, sn)
		if r.Status != xocsp.Good || r.NextUpdate.Sub(r.ThisUpdate) != DefaultValidity {
			t.Fatalf("%s: status %d, validity %v", sn, r.Status, r.NextUpdate.Sub(r.ThisUpdate))
		}
	}
	if n, err := s.SignDue(context.Background()); err != nil || n != 0 {
		t.Fatalf("second pass signed %d (%v): nothing was due", n, err)
	}
	// Revoke one: it is due at once, and SignSerials signs it revoked.
	at := time.Now().Add(-time.Minute).Truncate(time.Second)
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(serials[7], store.ReasonKeyCompromise, at)
	}); err != nil {
		t.Fatal(err)
	}
	if d := e.due(t); d != 1 {
		t.Fatalf("%d due after a revocation, want 1", d)
	}
	if n, err := s.SignSerials(context.Background(), []string{serials[7], "dead", "beef", "f00d"}); err != nil || n != 1 {
		t.Fatalf("SignSerials: %d, %v", n, err)
	}
	r := e.status(t, serials[7])
	if r.Status != xocsp.Revoked || r.RevocationReason != xocsp.KeyCompromise || !r.RevokedAt.Equal(at) {
		t.Fatalf("after revocation: %+v", r)
	}
	// Revoked just now: thisUpdate, when the status is known to be right (RFC 6960 2.4), is
	// not before the revocation, whatever the backdating of the other responses.
	revokedNow := time.Now().Truncate(time.Second)
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(serials[8], store.ReasonSuperseded, revokedNow)
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SignSerials(context.Background(), []string{serials[8]}); err != nil || n != 1 {
		t.Fatalf("SignSerials: %d, %v", n, err)
	}
	if r := e.status(t, serials[8]); r.Status != xocsp.Revoked || !r.RevokedAt.Equal(revokedNow) || r.ThisUpdate.Before(r.RevokedAt) ||
		!r.NextUpdate.After(r.ThisUpdate) {
		t.Fatalf("revoked at %v: thisUpdate %v, nextUpdate %v, revocationTime %v", revokedNow, r.ThisUpdate, r.NextUpdate, r.RevokedAt)
	}
}

// failingSigner fails every signature after the first ok ones: a token that goes away.
type failingSigner struct {
	crypto.Signer
	ok    atomic.Int64
	fails atomic.Bool
}

var errTokenGone = errors.New("token gone")

func (f *failingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if f.fails.Load() && f.ok.Add(-1) < 0 {
		return nil, errTokenGone
	}
	return f.Signer.Sign(r, d, o)
}

// TestTokenFaultPostpones: a token fault in the middle of a pass stops it; nothing is lost,
// the next pass signs the rest.
func TestTokenFaultPostpones(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fs := &failingSigner{Signer: key}
	e := newEnv(t, fs, 30*24*time.Hour)
	e.addCerts(t, 0x5000, 300)
	fs.ok.Store(150)
	fs.fails.Store(true)
	s := e.signer(e.responder)
	n, err := s.SignDue(context.Background())
	if !errors.Is(err, errTokenGone) {
		t.Fatalf("SignDue with a failing token: %d, %v", n, err)
	}
	if d := e.due(t); d != 300-n || n >= 300 {
		t.Fatalf("stored %d, %d due: want the rest due", n, d)
	}
	fs.fails.Store(false)
	m, err := s.SignDue(context.Background())
	if err != nil || n+m != 300 || e.due(t) != 0 {
		t.Fatalf("after the token came back: %d more, %v, %d due", m, err, e.due(t))
	}
}

// TestIndexesWithoutResponder: a pass whose responder cannot be had (the token away when the
// responder certificate is renewed) still indexes the new certificates for the store, which
// needs no token.
func TestIndexesWithoutResponder(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	e.addCerts(t, 0x5800, 3)
	s := e.signer(nil)
	s.Responder = func(time.Time) (*ocsp.Responder, error) { return nil, errTokenGone }
	if n, err := s.SignDue(context.Background()); !errors.Is(err, errTokenGone) || n != 0 {
		t.Fatalf("SignDue without a responder: %d, %v; want 0 and the responder's error", n, err)
	}
	err := e.db.Update(context.Background(), func(tx store.Tx) error {
		more, err := tx.IndexNewCertificates(1)
		if more {
			t.Error("certificates are left to index after the pass: it did not index them")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := e.due(t); d != 3 {
		t.Errorf("%d due, want the 3 new certificates", d)
	}
}

// TestRunRevokedAtOnce: Run signs at start, and a revocation signalled through Revoked is
// signed at once, long before the next interval.
func TestRunRevokedAtOnce(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	serials := e.addCerts(t, 0x9000, 20)
	s := e.signer(e.responder)
	s.Interval = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.Run(ctx); close(stopped) }()
	defer func() { cancel(); <-stopped }()
	waitFor(t, func() bool { return e.due(t) == 0 })
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate(serials[3], store.ReasonSuperseded, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	s.Revoked([]string{"0x" + serials[3], "not hex"})
	waitFor(t, func() bool { return e.due(t) == 0 })
	if r := e.status(t, serials[3]); r.Status != xocsp.Revoked || r.RevocationReason != xocsp.Superseded {
		t.Fatalf("status %d reason %d", r.Status, r.RevocationReason)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("timed out")
}

func TestConfigAndResponderBounds(t *testing.T) {
	e := newEnv(t, nil, 4*time.Hour)
	e.addCerts(t, 1, 3)
	s := e.signer(e.responder)
	// A responder certificate that expires within 8 hours signs nothing.
	if n, err := s.SignDue(context.Background()); err == nil || n != 0 {
		t.Fatalf("signed %d with a responder certificate about to expire (%v)", n, err)
	}
	if e.due(t) != 3 {
		t.Fatal("responses stored")
	}
	for _, c := range []struct{ v, r time.Duration }{{11 * 24 * time.Hour, time.Hour}, {7 * time.Hour, time.Hour}, {DefaultValidity, 5 * 24 * time.Hour}, {9 * time.Hour, 9 * time.Hour}} {
		s := e.signer(e.responder)
		s.Validity, s.RefreshAge = c.v, c.r
		if _, err := s.SignDue(context.Background()); !errors.Is(err, ErrConfig) {
			t.Errorf("validity %v refresh %v: %v", c.v, c.r, err)
		}
	}
}

// A response never outlives the responder certificate.
func TestNextUpdateCappedByResponderCert(t *testing.T) {
	e := newEnv(t, nil, 2*24*time.Hour)
	serials := e.addCerts(t, 0x77, 1)
	if _, err := e.signer(e.responder).SignDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := e.status(t, serials[0])
	if r.NextUpdate.After(e.respCert.NotAfter) {
		t.Fatalf("nextUpdate %v after the responder certificate's expiry %v", r.NextUpdate, e.respCert.NotAfter)
	}
}

// cancellingSigner cancels the pass after its first ok signatures.
type cancellingSigner struct {
	crypto.Signer
	ok     atomic.Int64
	cancel context.CancelFunc
}

func (c *cancellingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if c.ok.Add(-1) == 0 {
		c.cancel()
	}
	return c.Signer.Sign(r, d, o)
}

// TestSignDueCancelled: a pass cancelled in the middle says so; what it stored is stored,
// everything else is still due, and the next pass signs it.
func TestSignDueCancelled(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ctx, cancel := context.WithCancel(context.Background())
	cs := &cancellingSigner{Signer: key, cancel: cancel}
	cs.ok.Store(200)
	e := newEnv(t, cs, 30*24*time.Hour)
	e.addCerts(t, 0x6000, 1000)
	s := e.signer(e.responder)
	n, err := s.SignDue(ctx)
	if !errors.Is(err, context.Canceled) || n >= 1000 {
		t.Fatalf("cancelled SignDue: %d, %v; want fewer than 1000 and context.Canceled", n, err)
	}
	if d := e.due(t); d != 1000-n {
		t.Fatalf("stored %d, %d due: want the rest due", n, d)
	}
	m, err := s.SignDue(context.Background())
	if err != nil || n+m != 1000 || e.due(t) != 0 {
		t.Fatalf("next pass: %d more, %v, %d due", m, err, e.due(t))
	}
}

// faultyStore fails every Update after the first ok ones with a storage fault.
type faultyStore struct {
	store.Store
	ok atomic.Int64
}

func (f *faultyStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	if f.ok.Add(-1) < 0 {
		return fmt.Errorf("disk gone: %w", store.ErrUnavailable)
	}
	return f.Store.Update(ctx, fn)
}

// TestSignDueStorageFault: a storage fault stops the pass with the storage's error; the
// batches stored before it stay, the rest is due, and the next pass signs it.
func TestSignDueStorageFault(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	e.addCerts(t, 0x7000, 1000)
	fs := &faultyStore{Store: e.db}
	s := e.signer(e.responder)
	s.Store = fs
	// A fault in the indexing of the new certificates, the pass's first write: nothing is
	// signed, and everything stays due.
	if n, err := s.SignDue(context.Background()); !errors.Is(err, store.ErrUnavailable) || n != 0 {
		t.Fatalf("SignDue with a store failing at once: %d, %v; want nothing stored and ErrUnavailable", n, err)
	}
	if d := e.due(t); d != 1000 {
		t.Fatalf("%d due after a failed indexing, want 1000", d)
	}
	fs.ok.Store(4) // the indexing's transaction, then three batches
	n, err := s.SignDue(context.Background())
	if !errors.Is(err, store.ErrUnavailable) || n != 3*s.Batch {
		t.Fatalf("SignDue with a failing store: %d, %v; want %d stored and ErrUnavailable", n, err, 3*s.Batch)
	}
	if d := e.due(t); d != 1000-n {
		t.Fatalf("stored %d, %d due: want the rest due", n, d)
	}
	fs.ok.Store(1 << 30)
	m, err := s.SignDue(context.Background())
	if err != nil || n+m != 1000 || e.due(t) != 0 {
		t.Fatalf("after the storage came back: %d more, %v, %d due", m, err, e.due(t))
	}
}

// countingSigner counts the signatures it makes.
type countingSigner struct {
	crypto.Signer
	n atomic.Int64
}

func (c *countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	c.n.Add(1)
	return c.Signer.Sign(r, d, o)
}

// TestSignDueForgetsPriority: certificates given to Revoked before a pass over everything due
// began are signed by that pass once, and the priority pass after it does not sign them again.
// One given to Revoked again after the pass began is signed again.
func TestSignDueForgetsPriority(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cs := &countingSigner{Signer: key}
	e := newEnv(t, cs, 30*24*time.Hour)
	serials := e.addCerts(t, 0xa000, 10)
	s := e.signer(e.responder)
	s.Revoked(serials)
	if n, err := s.SignDue(context.Background()); err != nil || n != 10 {
		t.Fatalf("SignDue: %d, %v", n, err)
	}
	if got := cs.n.Load(); got != 10 {
		t.Fatalf("%d signatures for 10 certificates", got)
	}
	if err := s.pass(context.Background(), false, false, true); err != nil {
		t.Fatal(err)
	}
	if got := cs.n.Load(); got != 10 {
		t.Fatalf("the priority pass signed %d responses that the pass over everything due had signed", got-10)
	}
	// Given again after the pass's start: kept, and signed again.
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	s.Revoked(serials[:1])
	s.forget([]store.OCSPResponse{{Serial: serials[0]}}, gen)
	if err := s.pass(context.Background(), false, false, true); err != nil {
		t.Fatal(err)
	}
	if got := cs.n.Load(); got != 11 {
		t.Fatalf("%d signatures, want 11", got)
	}
}

// TestRunRevokedSignsOnlyItsSerials: between the passes over everything due, a call of
// Revoked signs its serials and nothing else; the next pass over everything due signs the
// rest.
func TestRunRevokedSignsOnlyItsSerials(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	e.addCerts(t, 0xb000, 5)
	s := e.signer(e.responder)
	s.Interval = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.Run(ctx); close(stopped) }()
	defer func() { cancel(); <-stopped }()
	waitFor(t, func() bool { return e.due(t) == 0 })
	fresh := e.addCerts(t, 0xc000, 3)
	s.Revoked(fresh[:1])
	waitFor(t, func() bool { return e.due(t) == 2 })
	if r := e.status(t, fresh[0]); r.Status != xocsp.Good {
		t.Fatalf("status %d", r.Status)
	}
	time.Sleep(200 * time.Millisecond) // a pass over everything due would have signed the others by now
	if d := e.due(t); d != 2 {
		t.Fatalf("%d due after a priority pass, want the 2 certificates not given to Revoked", d)
	}
	if _, err := s.SignDue(context.Background()); err != nil || e.due(t) != 0 {
		t.Fatalf("pass over everything due: %v, %d due", err, e.due(t))
	}
}

// TestSignSerialsRevokedAfterExpiry: a certificate revoked after it expired (a revocation by
// serial is taken whatever the expiry: a compromised S/MIME key still matters for the mail
// it signed) gets its revoked response when its serial is signed, instead of keeping the good
// response signed while it was valid. An expired certificate that is not revoked still gets
// none.
func TestSignSerialsRevokedAfterExpiry(t *testing.T) {
	e := newEnv(t, nil, 30*24*time.Hour)
	now := time.Now()
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		for _, sn := range []string{"a1", "a2"} {
			if err := tx.InsertCertificate(store.Certificate{Serial: sn, Template: "t", Email: "a@example.org", State: "issued",
				DER: e.leafDER, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(time.Hour)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s := e.signer(e.responder)
	if n, err := s.SignDue(context.Background()); err != nil || n != 2 {
		t.Fatalf("SignDue: %d, %v", n, err)
	}
	// Two hours later both have expired; a1 is revoked for keyCompromise.
	later := now.Add(2 * time.Hour)
	s.Now = func() time.Time { return later }
	at := later.Add(-time.Minute).Truncate(time.Second)
	if err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.RevokeCertificate("a1", store.ReasonKeyCompromise, at)
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SignSerials(context.Background(), []string{"a1", "a2"}); err != nil || n != 1 {
		t.Fatalf("SignSerials: %d, %v; want the revoked one only", n, err)
	}
	if r := e.status(t, "a1"); r.Status != xocsp.Revoked || r.RevocationReason != xocsp.KeyCompromise || !r.RevokedAt.Equal(at) {
		t.Fatalf("a1, revoked after it expired: status %d, reason %d, at %v", r.Status, r.RevocationReason, r.RevokedAt)
	}
	if r := e.status(t, "a2"); r.Status != xocsp.Good {
		t.Fatalf("a2, expired and not revoked: status %d", r.Status)
	}
}
