package escrow

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/policy"
)

// t0 is the fixed time every test service starts at.
var t0 = time.Date(2026, 1, 15, 9, 0, 0, 0, time.UTC)

// RSA-2048 key generation is slow (more so under -race): the keys are made once per test
// binary, in parallel, and shared.
const (
	keyKRA0 = iota // unwrap keys of the three KRAs of newTestService
	keyKRA1
	keyKRA2
	keyTransport
	keySpare   // an extra unwrap key (KRA enrollment, replacement KRAs)
	keySpare2  // a second extra unwrap key: one key pair is one KRA
	keySubject // a subject key for RSA enrollments
	numRSAKeys
)

var rsaPool struct {
	once sync.Once
	keys [numRSAKeys]*rsa.PrivateKey
	err  error
}

func rsaKey(tb testing.TB, i int) *rsa.PrivateKey {
	tb.Helper()
	rsaPool.once.Do(func() {
		var wg sync.WaitGroup
		errs := make([]error, numRSAKeys)
		for i := range numRSAKeys {
			wg.Go(func() { rsaPool.keys[i], errs[i] = rsa.GenerateKey(rand.Reader, 2048) })
		}
		wg.Wait()
		rsaPool.err = errors.Join(errs...)
	})
	if rsaPool.err != nil {
		tb.Fatalf("generate RSA keys: %v", rsaPool.err)
	}
	return rsaPool.keys[i]
}

func newP256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// testClock is the clock of a test service and of its CA (the CA's lint refuses a NotBefore in
// its future, so both must move together).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// hookSigner is the CA signer of a test service: the software key, with hooks that run inside
// Sign, that is, between steps 1 and 3 of the issuance protocol.
type hookSigner struct {
	key crypto.Signer

	mu sync.Mutex
	// observe runs first in every Sign.
	observe func()
	// before runs next; an error is returned instead of a signature.
	before func() error
	// corrupt makes Sign return a signature that does not verify.
	corrupt bool
}

func (h *hookSigner) Public() crypto.PublicKey { return h.key.Public() }

func (h *hookSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h.mu.Lock()
	observe, before, corrupt := h.observe, h.before, h.corrupt
	h.mu.Unlock()
	if observe != nil {
		observe()
	}
	if before != nil {
		if err := before(); err != nil {
			return nil, err
		}
	}
	sig, err := h.key.Sign(r, digest, opts)
	if err == nil && corrupt {
		sig[len(sig)/2] ^= 0x55
	}
	return sig, err
}

func (h *hookSigner) set(before func() error, corrupt bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.before, h.corrupt = before, corrupt
}

// observation is what the signer saw committed in the store when it was asked to sign the
// certificate with a given serial.
type observation struct {
	certState    string
	recordID     string // the pending row's record ID
	recordState  string // "" when the record was not found
	recordSerial string
}

// kra is one Key Recovery Agent of a test service.
type kra struct {
	name   string
	unwrap *rsa.PrivateKey
	auth   *ecdsa.PrivateKey
	cert   *x509.Certificate // unwrap certificate
	serial string            // of the unwrap certificate
}

// testEnv is a Service with everything it needs, and the keys behind it.
type testEnv struct {
	svc       *Service
	clock     *testClock
	signer    *hookSigner
	transport *x509.Certificate
	kras      []kra

	mu      sync.Mutex
	seen    map[string]observation // by serial
	secrets map[string]string      // enrollment code secrets by code ID
}

// newBareService sets up a CA, a transport certificate and a store, with no KRA and no recovery
// set.
func newBareService(tb testing.TB) *testEnv {
	tb.Helper()
	db, err := sqlite.Open(filepath.Join(tb.TempDir(), "k.db"))
	if err != nil {
		tb.Fatalf("store.Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := db.Close(); err != nil {
			tb.Errorf("store Close: %v", err)
		}
	})
	env := &testEnv{clock: &testClock{t: t0}, seen: map[string]observation{}, secrets: map[string]string{}}
	caKey := newP256(tb)
	env.signer = &hookSigner{key: caKey}
	root, err := ca.SelfSignedRoot(caKey, pkix.Name{CommonName: "keyarc test CA"}, t0.Add(-time.Hour), 20*365*24*time.Hour)
	if err != nil {
		tb.Fatalf("SelfSignedRoot: %v", err)
	}
	issuer, err := ca.New(env.signer, root)
	if err != nil {
		tb.Fatalf("ca.New: %v", err)
	}
	issuer = issuer.WithClock(env.clock.Now)
	templates, err := policy.Templates(nil)
	if err != nil {
		tb.Fatalf("policy.Templates: %v", err)
	}
	tk := rsaKey(tb, keyTransport)
	env.transport, err = issuer.Issue(ca.Request{
		PublicKey: &tk.PublicKey,
		Subject:   pkix.Name{CommonName: "keyarc transport"},
		KeyUsage:  x509.KeyUsageKeyEncipherment,
		NotBefore: t0,
		Validity:  5 * 365 * 24 * time.Hour,
	})
	if err != nil {
		tb.Fatalf("issue transport certificate: %v", err)
	}
	env.svc = &Service{
		Store:     db,
		Issuer:    issuer,
		Templates: templates,
		Transport: &Transport{Cert: env.transport, Key: tk},
		Now:       env.clock.Now,
	}
	env.signer.observe = env.observeStore
	return env
}

// newTestService is newBareService with three KRAs (kra-0, kra-1, kra-2) and a 2-of-3 recovery
// set of their unwrap certificates (epoch 1).
func newTestService(tb testing.TB) *testEnv {
	tb.Helper()
	env := newBareService(tb)
	var serials []string
	for i := range 3 {
		k := env.addKRA(tb, fmt.Sprintf("kra-%d", i), rsaKey(tb, keyKRA0+i))
		serials = append(serials, k.serial)
	}
	rs, err := env.svc.SetRecoverySet(context.Background(), 2, serials, "admin")
	if err != nil {
		tb.Fatalf("SetRecoverySet: %v", err)
	}
	if rs.Epoch != 1 || rs.Quorum != 2 || len(rs.KRAs) != 3 {
		tb.Fatalf("recovery set: epoch %d, %d of %d; want epoch 1, 2 of 3", rs.Epoch, rs.Quorum, len(rs.KRAs))
	}
	return env
}

// addKRA issues a KRA's certificates with IssueKRA and remembers its keys.
func (env *testEnv) addKRA(tb testing.TB, name string, unwrap *rsa.PrivateKey) kra {
	tb.Helper()
	auth := newP256(tb)
	out, err := env.svc.IssueKRA(context.Background(), name, &unwrap.PublicKey, auth.Public())
	if err != nil {
		tb.Fatalf("IssueKRA(%s): %v", name, err)
	}
	if len(out) != 2 {
		tb.Fatalf("IssueKRA(%s) issued %d certificates, want 2", name, len(out))
	}
	k := kra{name: name, unwrap: unwrap, auth: auth, cert: out[0].Certificate, serial: out[0].Serial}
	env.kras = append(env.kras, k)
	return k
}

// observeStore runs inside the CA signer: it reads, from committed data only, every pending
// certificate row and its escrow record.
func (env *testEnv) observeStore() {
	obs := map[string]observation{}
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		rows, err := tx.ListCertificates(store.Filter{State: store.StatePending})
		if err != nil {
			return err
		}
		for _, c := range rows {
			o := observation{certState: c.State, recordID: c.RecordID}
			if c.RecordID != "" {
				r, err := tx.GetRecord(c.RecordID)
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
				if r != nil {
					o.recordState, o.recordSerial = r.State, r.Serial
				}
			}
			obs[c.Serial] = o
		}
		return nil
	})
	env.mu.Lock()
	defer env.mu.Unlock()
	if err != nil {
		env.seen["error"] = observation{certState: err.Error()}
		return
	}
	for s, o := range obs {
		if _, ok := env.seen[s]; !ok {
			env.seen[s] = o
		}
	}
}

// assertCommittedFirst checks that when the CA was asked to sign the certificate of issued, the
// store already held, committed, its pending row and its escrow record in state pending.
func (env *testEnv) assertCommittedFirst(tb testing.TB, issued *Issued) {
	tb.Helper()
	env.mu.Lock()
	o, ok := env.seen[issued.Serial]
	storeErr, failed := env.seen["error"]
	env.mu.Unlock()
	if failed {
		tb.Fatalf("observer could not read the store: %s", storeErr.certState)
	}
	switch {
	case !ok:
		tb.Errorf("serial %s: no pending certificate row was committed when the CA signed", issued.Serial)
	case issued.RecordID == "":
		tb.Errorf("serial %s: archiving issuance returned no record ID", issued.Serial)
	case o.recordID != issued.RecordID:
		tb.Errorf("serial %s: pending row had record %q at signing, issued record is %q", issued.Serial, o.recordID, issued.RecordID)
	case o.recordState != store.StatePending:
		tb.Errorf("serial %s: record %s was %q when the CA signed, want committed and pending", issued.Serial, o.recordID, o.recordState)
	case o.recordSerial != issued.Serial:
		tb.Errorf("serial %s: record committed at signing is for serial %q", issued.Serial, o.recordSerial)
	}
}

// enrollee creates an enrollment code for mailbox and template and authenticates with it.
func (env *testEnv) enrollee(tb testing.TB, mailbox, template string) Enrollee {
	tb.Helper()
	ctx := context.Background()
	c, err := env.svc.CreateCode(ctx, mailbox, template, 30*24*time.Hour)
	if err != nil {
		tb.Fatalf("CreateCode(%s, %s): %v", mailbox, template, err)
	}
	sc, err := env.svc.Authenticate(ctx, mailbox, c.Secret)
	if err != nil {
		tb.Fatalf("Authenticate(%s): %v", mailbox, err)
	}
	env.mu.Lock()
	env.secrets[c.ID] = c.Secret
	env.mu.Unlock()
	return Enrollee{Mailbox: c.Email, Code: sc}
}

// codeErr authenticates again with who's code: nil while the code is usable.
func (env *testEnv) codeErr(tb testing.TB, who Enrollee) error {
	tb.Helper()
	env.mu.Lock()
	secret := env.secrets[who.Code.ID]
	env.mu.Unlock()
	_, err := env.svc.Authenticate(context.Background(), who.Mailbox, secret)
	return err
}

func (env *testEnv) certs(tb testing.TB, f store.Filter) []store.Certificate {
	tb.Helper()
	var out []store.Certificate
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.ListCertificates(f)
		return err
	})
	if err != nil {
		tb.Fatalf("ListCertificates: %v", err)
	}
	return out
}

func (env *testEnv) records(tb testing.TB, email string) []store.Record {
	tb.Helper()
	var out []store.Record
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.ListRecords(email)
		return err
	})
	if err != nil {
		tb.Fatalf("ListRecords: %v", err)
	}
	return out
}

func (env *testEnv) record(tb testing.TB, id string) *store.Record {
	tb.Helper()
	var r *store.Record
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		r, err = tx.GetRecord(id)
		return err
	})
	if err != nil {
		tb.Fatalf("GetRecord(%s): %v", id, err)
	}
	return r
}

func (env *testEnv) certificate(tb testing.TB, serial string) *store.Certificate {
	tb.Helper()
	var c *store.Certificate
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		c, err = tx.GetCertificate(serial)
		return err
	})
	if err != nil {
		tb.Fatalf("GetCertificate(%s): %v", serial, err)
	}
	return c
}

// assertNothingLeft checks that a refused enrollment left no issued certificate, no active
// record and a usable code behind.
func (env *testEnv) assertNothingLeft(tb testing.TB, who Enrollee) {
	tb.Helper()
	if got := env.certs(tb, store.Filter{Email: who.Mailbox, State: store.StateIssued}); len(got) != 0 {
		tb.Errorf("%d issued certificate(s) for %s after a refusal", len(got), who.Mailbox)
	}
	for _, r := range env.records(tb, who.Mailbox) {
		if r.State == store.StateActive {
			tb.Errorf("active record %s for %s after a refusal", r.ID, who.Mailbox)
		}
	}
	if err := env.codeErr(tb, who); err != nil {
		tb.Errorf("code no longer usable after a refusal: %v", err)
	}
}

// openRecord opens a sealed record with the shares of the KRAs at the given indexes.
func (env *testEnv) openRecord(tb testing.TB, blob []byte, kras ...int) ([]byte, error) {
	tb.Helper()
	r, err := record.Parse(blob)
	if err != nil {
		tb.Fatalf("record.Parse: %v", err)
	}
	var shares [][]byte
	for _, i := range kras {
		_, ct, err := r.ShareFor(record.KeyID(env.kras[i].cert))
		if err != nil {
			tb.Fatalf("ShareFor(%s): %v", env.kras[i].name, err)
		}
		share, err := record.DecryptShare(env.kras[i].unwrap, r.Header.OAEPHash, ct)
		if err != nil {
			tb.Fatalf("DecryptShare(%s): %v", env.kras[i].name, err)
		}
		shares = append(shares, share)
	}
	return record.Open(r, shares)
}

// csrOpt changes a CSR template before it is signed.
type csrOpt func(*x509.CertificateRequest)

func withEmails(emails ...string) csrOpt {
	return func(r *x509.CertificateRequest) { r.EmailAddresses = emails }
}

func withExtension(ext pkix.Extension) csrOpt {
	return func(r *x509.CertificateRequest) { r.ExtraExtensions = append(r.ExtraExtensions, ext) }
}

// newCSR makes a CSR signed by key, for mailbox: CN and rfc822Name SAN.
func newCSR(tb testing.TB, key crypto.Signer, mailbox string, opts ...csrOpt) *x509.CertificateRequest {
	tb.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: mailbox}}
	if mailbox != "" {
		tmpl.EmailAddresses = []string{mailbox}
	}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatalf("CreateCertificateRequest: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		tb.Fatalf("ParseCertificateRequest: %v", err)
	}
	return csr
}

func pkcs8Of(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("MarshalPKCS8PrivateKey: %v", err)
	}
	return der
}

// envelope encrypts key's PKCS#8 to cert, as a client does.
func envelope(tb testing.TB, key crypto.Signer, cert *x509.Certificate, c cms.Content, h crypto.Hash) []byte {
	tb.Helper()
	env, err := cms.Encrypt(pkcs8Of(tb, key), cert, c, h)
	if err != nil {
		tb.Fatalf("cms.Encrypt: %v", err)
	}
	return env
}

// enrollArchived enrolls mailbox on smime-encryption with a fresh P-256 key; it returns the
// result and the PKCS#8 sent.
func (env *testEnv) enrollArchived(tb testing.TB, mailbox string) (*Issued, []byte) {
	tb.Helper()
	who := env.enrollee(tb, mailbox, policy.TemplateSMIMEEncryption)
	key := newP256(tb)
	issued, err := env.svc.EnrollArchived(context.Background(), who,
		EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: newCSR(tb, key, who.Mailbox)},
		envelope(tb, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256))
	if err != nil {
		tb.Fatalf("EnrollArchived(%s): %v", mailbox, err)
	}
	return issued, pkcs8Of(tb, key)
}

// assertArchived checks an archiving issuance: the certificate row is issued with its record,
// the record is active, bound to the certificate, opens with any two KRAs to want and not with
// one, and was committed before the CA signed.
func (env *testEnv) assertArchived(tb testing.TB, issued *Issued, want []byte) {
	tb.Helper()
	env.assertCommittedFirst(tb, issued)
	if got := store.FormatSerial(issued.Certificate.SerialNumber); got != issued.Serial {
		tb.Errorf("Issued.Serial %s, certificate serial %s", issued.Serial, got)
	}
	row := env.certificate(tb, issued.Serial)
	if row.State != store.StateIssued || row.RecordID != issued.RecordID || !bytes.Equal(row.DER, issued.Certificate.Raw) {
		tb.Errorf("certificate row: state %s, record %q, DER stored %v; want issued, %q, true",
			row.State, row.RecordID, bytes.Equal(row.DER, issued.Certificate.Raw), issued.RecordID)
	}
	rec := env.record(tb, issued.RecordID)
	if rec.State != store.StateActive || rec.Serial != issued.Serial {
		tb.Errorf("record: state %s, serial %s; want active, %s", rec.State, rec.Serial, issued.Serial)
	}
	r, err := record.Parse(rec.Blob)
	if err != nil {
		tb.Fatalf("record.Parse: %v", err)
	}
	if !bytes.Equal(r.Header.Serial, issued.Certificate.SerialNumber.Bytes()) {
		tb.Errorf("record header serial %x, certificate serial %x", r.Header.Serial, issued.Certificate.SerialNumber.Bytes())
	}
	if r.Header.Epoch != rec.Epoch {
		tb.Errorf("record header epoch %d, store epoch %d", r.Header.Epoch, rec.Epoch)
	}
	if r.Header.M != 2 || r.Header.N != 3 {
		tb.Errorf("record is %d of %d, want 2 of 3", r.Header.M, r.Header.N)
	}
	for _, pair := range [][]int{{0, 1}, {0, 2}, {2, 1}} {
		got, err := env.openRecord(tb, rec.Blob, pair...)
		if err != nil {
			tb.Errorf("open with KRAs %v: %v", pair, err)
			continue
		}
		if !bytes.Equal(got, want) {
			tb.Errorf("open with KRAs %v: got a different PKCS#8", pair)
		}
	}
	for i := range 3 {
		if _, err := env.openRecord(tb, rec.Blob, i); !errors.Is(err, record.ErrOpen) {
			tb.Errorf("open with KRA %d alone: err %v, want record.ErrOpen", i, err)
		}
	}
}
