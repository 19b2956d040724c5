package bulk

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
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/policy"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// RSA keys are slow to make (more so under -race): made once, in parallel, and shared.
const numRSA = 5 // 3 KRAs, transport, one subject key

var rsaPool struct {
	once sync.Once
	keys [numRSA]*rsa.PrivateKey
	err  error
}

func rsaKey(tb testing.TB, i int) *rsa.PrivateKey {
	tb.Helper()
	rsaPool.once.Do(func() {
		var wg sync.WaitGroup
		errs := make([]error, numRSA)
		for i := range numRSA {
			wg.Go(func() { rsaPool.keys[i], errs[i] = rsa.GenerateKey(rand.Reader, 2048) })
		}
		wg.Wait()
		rsaPool.err = errors.Join(errs...)
	})
	if rsaPool.err != nil {
		tb.Fatal(rsaPool.err)
	}
	return rsaPool.keys[i]
}

func p256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

type testEnv struct {
	svc       *escrow.Service
	db        store.Store
	path      string
	transport *x509.Certificate
	caKey     crypto.Signer
	kraKeys   []*rsa.PrivateKey
	kraCerts  []*x509.Certificate
	mgr       *Manager
	// openStore opens a handle on the env's database (default: the SQLite file at path).
	openStore func(tb testing.TB) store.Store
}

// newEnv makes a service with software keys, a real SQLite file, three KRAs in a 2-of-3
// recovery set, and a Manager.
func newEnv(tb testing.TB) *testEnv {
	return newEnvOn(tb, nil)
}

// newEnvOn is newEnv on the database openStore opens (nil: a SQLite file).
func newEnvOn(tb testing.TB, openStore func(tb testing.TB) store.Store) *testEnv {
	tb.Helper()
	dir := tb.TempDir()
	env := &testEnv{path: filepath.Join(dir, "k.db"), openStore: openStore}
	env.open(tb)
	caKey := p256(tb)
	env.caKey = caKey
	root, err := ca.SelfSignedRoot(caKey, pkix.Name{CommonName: "bulk test CA"}, time.Now().Add(-time.Hour), 10*365*24*time.Hour)
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
	tk := rsaKey(tb, 3)
	env.transport, err = issuer.Issue(ca.Request{PublicKey: &tk.PublicKey, Subject: pkix.Name{CommonName: "transport"},
		KeyUsage: x509.KeyUsageKeyEncipherment, NotBefore: time.Now().Add(-time.Minute), Validity: 365 * 24 * time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	env.svc = &escrow.Service{Store: env.db, Issuer: issuer, Templates: templates,
		Transport: &escrow.Transport{Cert: env.transport, Key: tk}}
	var serials []string
	for i := range 3 {
		out, err := env.svc.IssueKRA(context.Background(), fmt.Sprintf("kra-%d", i), &rsaKey(tb, i).PublicKey, p256(tb).Public())
		if err != nil {
			tb.Fatal(err)
		}
		serials = append(serials, out[0].Serial)
		env.kraKeys = append(env.kraKeys, rsaKey(tb, i))
		env.kraCerts = append(env.kraCerts, out[0].Certificate)
	}
	if _, err := env.svc.SetRecoverySet(context.Background(), 2, serials, "admin"); err != nil {
		tb.Fatal(err)
	}
	env.mgr = &Manager{Service: env.svc, Dir: filepath.Join(dir, "jobs")}
	return env
}

func (env *testEnv) open(tb testing.TB) {
	tb.Helper()
	db := env.handle(tb)
	env.db = db
	if env.svc != nil {
		env.svc.Store = db
	}
}

// handle opens another handle on the env's database, as another node would, closed when tb
// ends.
func (env *testEnv) handle(tb testing.TB) store.Store {
	tb.Helper()
	if env.openStore != nil {
		return env.openStore(tb)
	}
	db, err := sqlite.Open(env.path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// jobFile builds a job file from a header and items.
func jobFile(tb testing.TB, h Header, items ...any) []byte {
	tb.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	if err := enc.Encode(h); err != nil {
		tb.Fatal(err)
	}
	for _, it := range items {
		if s, ok := it.(string); ok {
			b.WriteString(s + "\n")
			continue
		}
		if err := enc.Encode(it); err != nil {
			tb.Fatal(err)
		}
	}
	return b.Bytes()
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func csrFor(tb testing.TB, key crypto.Signer, mailbox string) []byte {
	tb.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: mailbox}, EmailAddresses: []string{mailbox}}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func pkcs8(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// enrollItem is a good enroll item for mailbox with a fresh P-256 key.
func (env *testEnv) enrollItem(tb testing.TB, mailbox string) Item {
	tb.Helper()
	k := p256(tb)
	envl, err := cms.Encrypt(pkcs8(tb, k), env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256)
	if err != nil {
		tb.Fatal(err)
	}
	return Item{Email: mailbox, CSR: b64(csrFor(tb, k, mailbox)), EncryptedKey: b64(envl)}
}

// otherCA issues certificates as a foreign CA would, for imports.
type otherCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	n    int64
}

func newOtherCA(tb testing.TB) *otherCA {
	k := p256(tb)
	root, err := ca.SelfSignedRoot(k, pkix.Name{CommonName: "old CA"}, time.Now().Add(-48*time.Hour), 10*365*24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return &otherCA{key: k, cert: root, n: time.Now().UnixNano()}
}

func (o *otherCA) issue(tb testing.TB, pub crypto.PublicKey, mailbox string) *x509.Certificate {
	tb.Helper()
	o.n++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(o.n), Subject: pkix.Name{CommonName: mailbox},
		EmailAddresses: []string{mailbox}, NotBefore: time.Now().Add(-24 * time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, o.cert, pub, o.key)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func pemOf(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// openRecord opens a sealed record with KRAs 0 and 2.
func (env *testEnv) openRecord(tb testing.TB, blob []byte) ([]byte, *record.Record) {
	tb.Helper()
	r, err := record.Parse(blob)
	if err != nil {
		tb.Fatal(err)
	}
	var shares [][]byte
	for _, i := range []int{0, 2} {
		_, ct, err := r.ShareFor(record.KeyID(env.kraCerts[i]))
		if err != nil {
			tb.Fatal(err)
		}
		s, err := record.DecryptShare(env.kraKeys[i], r.Header.OAEPHash, ct)
		if err != nil {
			tb.Fatal(err)
		}
		shares = append(shares, s)
	}
	key, err := record.Open(r, shares)
	if err != nil {
		tb.Fatal(err)
	}
	return key, r
}

// waitJob runs the manager until the job is done (or the timeout).
func (env *testEnv) runUntilDone(tb testing.TB, id string) *Status {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { env.mgr.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := env.mgr.Status(context.Background(), id)
		if err != nil {
			tb.Fatal(err)
		}
		if st.State == store.JobDone || st.State == store.JobCancelled {
			return st
		}
		if time.Now().After(deadline) {
			tb.Fatalf("job %s not done: %+v", id, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// results reads a job's results.
func (env *testEnv) results(tb testing.TB, id string) map[int]Result {
	tb.Helper()
	var b bytes.Buffer
	if err := env.mgr.Results(context.Background(), id, &b); err != nil {
		tb.Fatal(err)
	}
	dec := json.NewDecoder(&b)
	var st Status
	if err := dec.Decode(&st); err != nil {
		tb.Fatal(err)
	}
	out := map[int]Result{}
	for dec.More() {
		var r Result
		if err := dec.Decode(&r); err != nil {
			tb.Fatal(err)
		}
		if _, dup := out[r.Seq]; dup {
			tb.Fatalf("seq %d twice in the results", r.Seq)
		}
		out[r.Seq] = r
	}
	return out
}

// checkInvariant checks every done result: an issued certificate row with an active record whose
// header binds the certificate's serial and public key, and opens (2 of 3) to a key of that
// certificate. It returns the certificates by seq.
func (env *testEnv) checkInvariant(tb testing.TB, res map[int]Result) map[int]*x509.Certificate {
	tb.Helper()
	certs := map[int]*x509.Certificate{}
	serials := map[string]int{}
	for seq, r := range res {
		if r.State != store.ItemDone {
			continue
		}
		if prev, dup := serials[r.Serial]; dup {
			tb.Fatalf("serial %s issued for items %d and %d", r.Serial, prev, seq)
		}
		serials[r.Serial] = seq
		der, err := base64.StdEncoding.DecodeString(r.Certificate)
		if err != nil {
			tb.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatalf("item %d: %v", seq, err)
		}
		if store.FormatSerial(cert.SerialNumber) != r.Serial {
			tb.Fatalf("item %d: result serial %s, certificate %x", seq, r.Serial, cert.SerialNumber)
		}
		var row *store.Certificate
		var rec *store.Record
		err = env.db.View(context.Background(), func(tx store.Tx) (err error) {
			if row, err = tx.GetCertificate(r.Serial); err != nil {
				return err
			}
			rec, err = tx.GetRecordBySerial(r.Serial)
			return err
		})
		if err != nil {
			tb.Fatalf("item %d: %v", seq, err)
		}
		if row.State != store.StateIssued || rec.State != store.StateActive || rec.ID != r.RecordID || row.RecordID != rec.ID {
			tb.Fatalf("item %d: certificate %s record %s (%s), want issued/active %s", seq, row.State, rec.State, rec.ID, r.RecordID)
		}
		key, parsed := env.openRecord(tb, rec.Blob)
		if !bytes.Equal(parsed.Header.Serial, cert.SerialNumber.Bytes()) {
			tb.Fatalf("item %d: record header binds serial %x, certificate has %x", seq, parsed.Header.Serial, cert.SerialNumber)
		}
		if err := escrow.CheckKeyPair(key, cert.PublicKey); err != nil {
			tb.Fatalf("item %d: archived key is not the certificate's: %v", seq, err)
		}
		certs[seq] = cert
	}
	env.checkArchiveAudit(tb, res)
	return certs
}

// checkArchiveAudit checks that each done item's record is named by exactly one archive entry of
// the audit trail, with the item's serial and the certificate's mailbox: an entry of its own, or
// a batch entry whose lists name it at one position.
func (env *testEnv) checkArchiveAudit(tb testing.TB, res map[int]Result) {
	tb.Helper()
	type named struct{ serial, mailbox string }
	seen := map[string][]named{}
	err := env.db.View(context.Background(), func(tx store.Tx) error {
		entries, err := tx.ListAudit(1, 1_000_000)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Kind != string(audit.KindArchive) {
				continue
			}
			var d audit.Details
			if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
				return err
			}
			if d.Record != "" {
				seen[d.Record] = append(seen[d.Record], named{d.Serial, d.Mailbox})
			}
			if len(d.Records) > 0 && (len(d.Serials) != len(d.Records) || len(d.Mailboxes) != len(d.Records) ||
				len(d.Fingerprint) != len(d.Records) || d.Count != len(d.Records)) {
				tb.Fatalf("audit entry %d: lists of unequal lengths: %s", e.Seq, e.Details)
			}
			for i, id := range d.Records {
				seen[id] = append(seen[id], named{d.Serials[i], d.Mailboxes[i]})
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	for seq, r := range res {
		if r.State != store.ItemDone {
			continue
		}
		var row *store.Certificate
		err := env.db.View(context.Background(), func(tx store.Tx) (err error) {
			row, err = tx.GetCertificate(r.Serial)
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
		want := named{r.Serial, row.Email}
		if got := seen[r.RecordID]; len(got) != 1 || got[0] != want {
			tb.Fatalf("item %d: record %s named by archive audit entries as %v, want once as %v", seq, r.RecordID, got, want)
		}
	}
}

func jsonLine(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func p12(tb testing.TB, key crypto.Signer, cert *x509.Certificate, password string) []byte {
	tb.Helper()
	b, err := pkcs12.Modern2023.WithIterations(1000).Encode(key, cert, nil, password)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
