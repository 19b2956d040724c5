package directory_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/directory"
	"github.com/keyarc/keyarc/escrow/directory/ldapdir"
	"github.com/keyarc/keyarc/escrow/directory/ldaptest"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// env is a CA, a real SQLite archive, a real slapd and a publisher between them.
type env struct {
	t      *testing.T
	db     store.Store
	issuer *ca.Issuer
	other  *ca.Issuer
	ldap   *ldaptest.Server
	dir    *ldapdir.Dir
	cursor directory.Cursor
	reg    *prometheus.Registry
	pub    *directory.Publisher
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newIssuer(t *testing.T, name string) *ca.Issuer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root, err := ca.SelfSignedRoot(key, pkix.Name{CommonName: name, Organization: []string{"keyarc"}, Country: []string{"DE"}},
		time.Now().Add(-72*time.Hour), 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.New(key, root)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// newCursor is the publisher's cursor in db, as the appliance keeps it.
func newCursor(t *testing.T, db store.Store) directory.Cursor {
	t.Helper()
	return directory.StoreCursor{Store: db, Name: directory.CursorName}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{t: t, db: db, issuer: newIssuer(t, "keyarc test CA"), other: newIssuer(t, "another CA"), ldap: ldaptest.Start(t),
		logs: &syncBuffer{}}
	e.cursor = newCursor(t, db)
	e.dir = e.openDir(ldaptest.Password)
	e.pub = e.publisher(e.dir)
	return e
}

func (e *env) openDir(password string) *ldapdir.Dir {
	d, err := ldapdir.New(ldapdir.Config{URL: e.ldap.URL, BindDN: ldaptest.BindDN, Password: password, Base: ldaptest.Base,
		CA: e.issuer.Certificate(), Timeout: 5 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { d.Close() })
	return d
}

// publisher makes a publisher on dir with fresh metrics (e.reg).
func (e *env) publisher(dir directory.Directory) *directory.Publisher {
	p := &directory.Publisher{Store: e.db, Dir: dir, Cursor: e.cursor, CA: e.issuer.Certificate(), Batch: 50,
		Interval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil))}
	e.reg = prometheus.NewRegistry()
	if err := p.Register(e.reg); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// issue has iss sign a certificate for mail and stores it as issued with its audit entry of
// kind, in one transaction, as the engine does.
func (e *env) issue(iss *ca.Issuer, mail string, ku x509.KeyUsage, kind audit.Kind) *x509.Certificate {
	e.t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := iss.Issue(ca.Request{PublicKey: k.Public(), EmailAddresses: []string{mail}, KeyUsage: ku,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}, NotBefore: time.Now().Add(-time.Minute), Validity: 30 * 24 * time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	serial := store.FormatSerial(c.SerialNumber)
	err = e.db.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "smime-encryption", Email: mail, State: store.StateIssued,
			DER: c.Raw, NotBefore: c.NotBefore, NotAfter: c.NotAfter}); err != nil {
			return err
		}
		_, err := audit.Append(tx, time.Now(), kind, "local", mail, audit.Details{Serial: serial, Mailbox: mail})
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) revoke(c *x509.Certificate) {
	e.t.Helper()
	serial := store.FormatSerial(c.SerialNumber)
	err := e.db.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.RevokeCertificate(serial, 1, time.Now()); err != nil {
			return err
		}
		_, err := audit.Append(tx, time.Now(), audit.KindRevoke, "local", serial, audit.Details{Serials: []string{serial}, RevocationReason: "keyCompromise"})
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// drain runs Step until the trail is applied.
func (e *env) drain() {
	e.t.Helper()
	for range 1000 {
		more, err := e.pub.Step(context.Background())
		if err != nil {
			e.t.Fatalf("Step: %v", err)
		}
		if !more {
			return
		}
	}
	e.t.Fatal("Step never caught up")
}

func (e *env) published(mail string) [][]byte { return e.ldap.Certificates(e.t, mail) }

func (e *env) count(op, outcome string) float64 {
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keyarc_directory_published_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var o, out string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "op":
					o = l.GetValue()
				case "outcome":
					out = l.GetValue()
				}
			}
			if o == op && out == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func holds(vals [][]byte, want ...*x509.Certificate) bool {
	if len(vals) != len(want) {
		return false
	}
	for _, w := range want {
		found := false
		for _, v := range vals {
			found = found || bytes.Equal(v, w.Raw)
		}
		if !found {
			return false
		}
	}
	return true
}

// TestPublisherFollowsTheTrail: issuances are published, what is not an encryption certificate
// of this CA is not, a revocation takes the certificate away, and an unknown or ambiguous
// mailbox is a counted skip that does not hold the queue.
func TestPublisherFollowsTheTrail(t *testing.T) {
	e := newEnv(t)
	alice := e.issue(e.issuer, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive)
	bob := e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindEnroll)
	e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageDigitalSignature, audit.KindEnroll) // signing only
	e.issue(e.other, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindArchive)     // an import from another CA
	e.issue(e.issuer, "nobody@example.org", x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.issue(e.issuer, ldaptest.Carol, x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.drain()
	if got := e.published(ldaptest.Alice); !holds(got, alice) {
		t.Fatalf("alice: %d values; want her certificate", len(got))
	}
	if got := e.published(ldaptest.Bob); !holds(got, bob) {
		t.Fatalf("bob: %d values; want only his encryption certificate from this CA", len(got))
	}
	if got := e.published(ldaptest.Carol); len(got) != 0 {
		t.Fatalf("carol (two entries): %d values; want none", len(got))
	}
	if e.count(directory.OpPublish, directory.OutcomeOK) != 2 || e.count(directory.OpPublish, directory.OutcomeNoEntry) != 1 ||
		e.count(directory.OpPublish, directory.OutcomeManyEntries) != 1 {
		t.Fatalf("published_total: ok %v, no_entry %v, many_entries %v; want 2, 1, 1", e.count(directory.OpPublish, directory.OutcomeOK),
			e.count(directory.OpPublish, directory.OutcomeNoEntry), e.count(directory.OpPublish, directory.OutcomeManyEntries))
	}
	if !strings.Contains(e.logs.String(), "no entry has this mail") || !strings.Contains(e.logs.String(), "several entries have this mail") {
		t.Fatalf("the skips are not logged:\n%s", e.logs)
	}
	if v := gauge(t, e.reg, "keyarc_directory_backlog"); v != 0 {
		t.Fatalf("backlog %v after catching up; want 0", v)
	}

	e.revoke(alice)
	e.drain()
	if got := e.published(ldaptest.Alice); len(got) != 0 {
		t.Fatalf("alice after her revocation: %d values; want none", len(got))
	}
	if got := e.ldap.Attribute(t, ldaptest.Alice, ldapdir.AttrSMIMECertificate); len(got) != 0 {
		t.Fatalf("alice's userSMIMECertificate after her revocation: %d values; want none", len(got))
	}
	if got := e.published(ldaptest.Bob); !holds(got, bob) {
		t.Fatalf("bob after alice's revocation: %d values; want his certificate", len(got))
	}
	// Applying everything again (a cursor lost, another node's replay) changes nothing.
	again := e.publisher(e.dir)
	again.Cursor = directory.StoreCursor{Store: e.db, Name: "replay"}
	for {
		more, err := again.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			break
		}
	}
	if !holds(e.published(ldaptest.Bob), bob) || len(e.published(ldaptest.Alice)) != 0 {
		t.Fatal("a replay of the whole trail changed the directory")
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestPublisherSweep removes this CA's expired and revoked certificates and never another
// issuer's.
func TestPublisherSweep(t *testing.T) {
	e := newEnv(t)
	alice := e.issue(e.issuer, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.drain()
	theirs := e.issue(e.other, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.ldap.AddBinary(t, ldaptest.DN("alice"), ldapdir.AttrCertificate, theirs.Raw)
	if got := e.published(ldaptest.Alice); !holds(got, alice, theirs) {
		t.Fatalf("alice: %d values; want hers and the other issuer's", len(got))
	}
	// Nothing has expired yet: the sweep removes nothing.
	if n, err := e.pub.Sweep(context.Background()); err != nil || n != 0 {
		t.Fatalf("Sweep now = %d, %v; want 0", n, err)
	}
	// 31 days on, both have expired: only this CA's goes.
	e.pub.Now = func() time.Time { return time.Now().Add(31 * 24 * time.Hour) }
	if n, err := e.pub.Sweep(context.Background()); err != nil || n != 2 {
		t.Fatalf("Sweep after expiry = %d, %v; want 2 (both attributes of alice's certificate)", n, err)
	}
	if got := e.published(ldaptest.Alice); !holds(got, theirs) {
		t.Fatalf("alice after the sweep: %d values; want only the other issuer's", len(got))
	}
	if e.count(directory.OpExpire, directory.OutcomeOK) != 2 {
		t.Fatalf("expire ok = %v; want 2", e.count(directory.OpExpire, directory.OutcomeOK))
	}
}

// TestPublisherDirectoryDown: with slapd stopped, issuance goes on, the publisher fails and
// keeps its cursor; when slapd is back, the backlog is published and nothing is lost.
func TestPublisherDirectoryDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.ldap.Stop()
	var certs []*x509.Certificate
	for range 3 {
		certs = append(certs, e.issue(e.issuer, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive))
	}
	before, err := e.cursor.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.pub.Step(ctx); err == nil {
		t.Fatal("Step with slapd stopped succeeded")
	}
	if after, _ := e.cursor.Position(ctx); after != before {
		t.Fatalf("the cursor moved from %d to %d while the directory was down", before, after)
	}
	if e.count(directory.OpPublish, directory.OutcomeError) < 1 {
		t.Fatal("the failure is not counted")
	}
	if v := gauge(t, e.reg, "keyarc_directory_backlog"); v != 3 {
		t.Fatalf("backlog %v; want 3", v)
	}
	e.ldap.Restart(t)
	e.drain()
	if got := e.published(ldaptest.Alice); !holds(got, certs...) {
		t.Fatalf("alice after slapd came back: %d values; want all 3", len(got))
	}
}

// TestPublisherWrongPassword: a refused bind is logged (without the password), counted and
// retried; once the password is right, everything is published.
func TestPublisherWrongPassword(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const wrong = "not-the-password-value"
	bad := e.publisher(e.openDir(wrong))
	c := e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindArchive)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); bad.Run(runCtx) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(e.logs.String(), "refused the bind") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for e.count(directory.OpPublish, directory.OutcomeError) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // retried
	}
	cancel()
	<-done
	logs := e.logs.String()
	if !strings.Contains(logs, "refused the bind") || strings.Contains(logs, wrong) || strings.Contains(logs, ldaptest.Password) {
		t.Fatalf("the log does not say the bind was refused, or names a password:\n%s", logs)
	}
	if n := e.count(directory.OpPublish, directory.OutcomeError); n < 2 {
		t.Fatalf("errors counted %v; want the refused bind counted at each retry", n)
	}
	if got := e.published(ldaptest.Bob); len(got) != 0 {
		t.Fatal("published with a wrong password")
	}
	good := e.publisher(e.dir)
	for {
		more, err := good.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			break
		}
	}
	if got := e.published(ldaptest.Bob); !holds(got, c) {
		t.Fatalf("bob once the password is right: %d values; want his certificate", len(got))
	}
}

// TestPublisherRun: the running publisher publishes a bulk of certificates in batches, at its
// own pace, through a directory outage, and stops leading when told.
func TestPublisherRun(t *testing.T) {
	e := newEnv(t)
	const n = 120
	var ldif strings.Builder
	for i := range n {
		fmt.Fprintf(&ldif, "dn: uid=bulk%d,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: bulk%d\ncn: Bulk %d\nsn: Bulk\nmail: bulk%d@example.org\n\n",
			i, ldaptest.People, i, i, i)
	}
	e.ldap.Modify(t, ldif.String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.pub.Run(ctx) }()
	defer func() { cancel(); <-done }()
	certs := make([]*x509.Certificate, n)
	for i := range n {
		if i == n/2 {
			e.ldap.Stop()
		}
		certs[i] = e.issue(e.issuer, fmt.Sprintf("bulk%d@example.org", i), x509.KeyUsageKeyAgreement, audit.KindArchive)
	}
	e.ldap.Restart(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		pos, err := e.cursor.Position(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if pos >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the publisher reached entry %d of %d within a minute", pos, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, c := range certs {
		if got := e.published(fmt.Sprintf("bulk%d@example.org", i)); !holds(got, c) {
			t.Fatalf("bulk%d: %d values; want the certificate", i, len(got))
		}
	}
	if ok := e.count(directory.OpPublish, directory.OutcomeOK); ok < n {
		t.Fatalf("publish ok = %v; want at least %d", ok, n)
	}
}

// TestPublisherFollower: a publisher on a node that does not lead does nothing.
func TestPublisherFollower(t *testing.T) {
	e := newEnv(t)
	e.pub.Leads = func() bool { return false }
	e.issue(e.issuer, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	e.pub.Run(ctx)
	if got := e.published(ldaptest.Alice); len(got) != 0 {
		t.Fatalf("a follower published %d values", len(got))
	}
	if pos, _ := e.cursor.Position(context.Background()); pos != 0 {
		t.Fatalf("a follower moved the cursor to %d", pos)
	}
}

// TestPublisherResumes: the cursor is durable: after the archive is closed and opened again (a
// restart), a new publisher applies only what came after it.
func TestPublisherResumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyarc.db")
	db, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, issuer: newIssuer(t, "keyarc test CA"), ldap: ldaptest.Start(t), logs: &syncBuffer{}}
	e.cursor = newCursor(t, db)
	e.dir = e.openDir(ldaptest.Password)
	e.pub = e.publisher(e.dir)
	first := e.issue(e.issuer, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.drain()
	pos, err := e.cursor.Position(context.Background())
	if err != nil || pos == 0 {
		t.Fatalf("cursor after the first drain: %d, %v", pos, err)
	}
	db.Close()

	if e.db, err = sqlite.Open(path); err != nil {
		t.Fatal(err)
	}
	defer e.db.Close()
	e.cursor = newCursor(t, e.db)
	if again, _ := e.cursor.Position(context.Background()); again != pos {
		t.Fatalf("cursor after reopening: %d, want %d", again, pos)
	}
	second := e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.pub = e.publisher(e.dir)
	e.drain()
	if ok := e.count(directory.OpPublish, directory.OutcomeOK); ok != 1 {
		t.Fatalf("the restarted publisher published %v certificates; want 1, the one issued after its cursor", ok)
	}
	if !holds(e.published(ldaptest.Alice), first) || !holds(e.published(ldaptest.Bob), second) {
		t.Fatal("alice's and bob's certificates are not both published")
	}
}

// BenchmarkPublisher: certificates published per second to a real slapd, each to its own
// entry, in the publisher's batches (what a bulk job's publication runs at).
func BenchmarkPublisher(b *testing.B) {
	db, err := sqlite.Open(filepath.Join(b.TempDir(), "keyarc.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	s := ldaptest.Start(b)
	iss := newIssuerB(b, "keyarc bench CA")
	var ldif strings.Builder
	for i := range b.N {
		fmt.Fprintf(&ldif, "dn: uid=p%d,%s\nchangetype: add\nobjectClass: inetOrgPerson\nuid: p%d\ncn: P %d\nsn: P\nmail: p%d@example.org\n\n",
			i, ldaptest.People, i, i, i)
	}
	s.Modify(b, ldif.String())
	for i := range b.N {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		mail := fmt.Sprintf("p%d@example.org", i)
		c, err := iss.Issue(ca.Request{PublicKey: k.Public(), EmailAddresses: []string{mail}, KeyUsage: x509.KeyUsageKeyAgreement,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}, NotBefore: time.Now().Add(-time.Minute), Validity: 24 * time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		serial := store.FormatSerial(c.SerialNumber)
		if err := db.Update(context.Background(), func(tx store.Tx) error {
			if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "smime-encryption", Email: mail, State: store.StateIssued,
				DER: c.Raw, NotBefore: c.NotBefore, NotAfter: c.NotAfter}); err != nil {
				return err
			}
			_, err := audit.Append(tx, time.Now(), audit.KindArchive, "local", mail, audit.Details{Serial: serial, Mailbox: mail})
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	d, err := ldapdir.New(ldapdir.Config{URL: s.URL, BindDN: ldaptest.BindDN, Password: ldaptest.Password, Base: ldaptest.Base, CA: iss.Certificate()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	p := &directory.Publisher{Store: db, Dir: d, Cursor: directory.StoreCursor{Store: db, Name: directory.CursorName}, CA: iss.Certificate()}
	b.ResetTimer()
	for {
		more, err := p.Step(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if !more {
			break
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

func newIssuerB(b *testing.B, name string) *ca.Issuer {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root, err := ca.SelfSignedRoot(key, pkix.Name{CommonName: name, Organization: []string{"keyarc"}, Country: []string{"DE"}},
		time.Now().Add(-72*time.Hour), 365*24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	iss, err := ca.New(key, root)
	if err != nil {
		b.Fatal(err)
	}
	return iss
}

// TestPublisherSkipLogBounded: a batch of certificates for mailboxes without an entry (a bulk
// job before the directory knows the people) logs the first ones and a count of the rest.
func TestPublisherSkipLogBounded(t *testing.T) {
	e := newEnv(t)
	for i := range 30 {
		e.issue(e.issuer, fmt.Sprintf("newcomer%d@example.org", i), x509.KeyUsageKeyAgreement, audit.KindArchive)
	}
	e.drain()
	logs := e.logs.String()
	if n := strings.Count(logs, "no entry has this mail"); n != 20 {
		t.Errorf("%d skips logged one by one; want 20", n)
	}
	if !strings.Contains(logs, "not_logged=10") {
		t.Errorf("the log does not count the 10 skips not logged:\n%s", logs)
	}
	if n := e.count(directory.OpPublish, directory.OutcomeNoEntry); n != 30 {
		t.Errorf("no_entry counted %v; want 30", n)
	}
}

// TestPublisherUntrusted: a directory whose TLS certificate the configured CA did not issue is
// refused before the bind; the refusal is logged (saying to check ca_file, without the
// password), counted and retried; with the right CA everything is published.
func TestPublisherUntrusted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	stranger := x509.NewCertPool()
	stranger.AddCert(e.other.Certificate())
	d, err := ldapdir.New(ldapdir.Config{URL: e.ldap.LDAPSURL, BindDN: ldaptest.BindDN, Password: ldaptest.Password, Base: ldaptest.Base,
		RootCAs: stranger, CA: e.issuer.Certificate(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	bad := e.publisher(d)
	c := e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindArchive)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); bad.Run(runCtx) }()
	deadline := time.Now().Add(30 * time.Second)
	for e.count(directory.OpPublish, directory.OutcomeError) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // retried
	}
	cancel()
	<-done
	logs := e.logs.String()
	if !strings.Contains(logs, "certificate is not trusted") || !strings.Contains(logs, "check ca_file") || strings.Contains(logs, ldaptest.Password) {
		t.Fatalf("the log does not say the server's certificate is not trusted, or names the password:\n%s", logs)
	}
	if n := e.count(directory.OpPublish, directory.OutcomeError); n < 2 {
		t.Fatalf("errors counted %v; want the refusal counted at each retry", n)
	}
	if got := e.published(ldaptest.Bob); len(got) != 0 {
		t.Fatal("published to a server that was not trusted")
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.ldap.CA)
	good, err := ldapdir.New(ldapdir.Config{URL: e.ldap.LDAPSURL, BindDN: ldaptest.BindDN, Password: ldaptest.Password, Base: ldaptest.Base,
		RootCAs: roots, CA: e.issuer.Certificate(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	e.pub = e.publisher(good)
	e.drain()
	if got := e.published(ldaptest.Bob); !holds(got, c) {
		t.Fatalf("bob once the CA is right: %d values; want his certificate", len(got))
	}
}

// skippedSerials reads the serials the store keeps for Retry.
func (e *env) skippedSerials() []string {
	e.t.Helper()
	var out []string
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.DirectorySkipped("", 1000)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// TestPublisherRetriesSkipped: a certificate for a mailbox without an entry is skipped and
// counted; once the entry is added (ldapmodify, as an administrator would), the sweep's retry
// publishes it without a new enrollment and forgets it. A skipped certificate revoked in the
// meantime is forgotten, not published; one whose mailbox still has no entry waits, without
// being counted or logged again.
func TestPublisherRetriesSkipped(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const dave, erin = "dave@example.org", "erin@example.org"
	daveCert := e.issue(e.issuer, dave, x509.KeyUsageKeyAgreement, audit.KindArchive)
	revoked := e.issue(e.issuer, dave, x509.KeyUsageKeyAgreement, audit.KindArchive)
	erinCert := e.issue(e.issuer, erin, x509.KeyUsageKeyAgreement, audit.KindArchive)
	e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindArchive) // published at once: not kept
	e.drain()
	if n := e.count(directory.OpPublish, directory.OutcomeNoEntry); n != 3 {
		t.Fatalf("no_entry counted %v; want 3", n)
	}
	serial := func(c *x509.Certificate) string { return store.FormatSerial(c.SerialNumber) }
	want := []string{serial(daveCert), serial(revoked), serial(erinCert)}
	slices.Sort(want)
	if got := e.skippedSerials(); !slices.Equal(got, want) {
		t.Fatalf("skipped serials kept %v; want %v", got, want)
	}
	// Nothing changed in the directory: the retry publishes nothing and keeps all three.
	if n, err := e.pub.Retry(ctx); err != nil || n != 0 {
		t.Fatalf("Retry before the entries exist = %d, %v; want 0", n, err)
	}
	if got := e.skippedSerials(); len(got) != 3 {
		t.Fatalf("after a fruitless Retry, %d serials kept; want 3", len(got))
	}
	if n := e.count(directory.OpPublish, directory.OutcomeNoEntry); n != 3 {
		t.Fatalf("no_entry counted %v after the retry; want still 3 (a skip is counted once)", n)
	}

	e.revoke(revoked)
	e.ldap.Modify(t, "dn: uid=dave,"+ldaptest.People+"\nchangetype: add\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: Example\nmail: "+dave+"\n")
	// The revocation's audit entry is applied first (it withdraws, there was nothing).
	e.drain()
	if got := e.published(dave); len(got) != 0 {
		t.Fatalf("dave before the retry: %d values; the trail alone does not publish a skipped certificate", len(got))
	}
	// Run's sweep, at its first pass, retries them.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); e.pub.Run(runCtx) }()
	deadline := time.Now().Add(30 * time.Second)
	for !holds(e.published(dave), daveCert) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	if got := e.published(dave); !holds(got, daveCert) {
		t.Fatalf("dave after his entry was added and the sweep ran: %d values; want his unrevoked certificate only", len(got))
	}
	if got := e.skippedSerials(); !slices.Equal(got, []string{serial(erinCert)}) {
		t.Fatalf("skipped serials after the retry %v; want erin's only (dave's published, the revoked one forgotten)", got)
	}
	if !strings.Contains(e.logs.String(), "skipped before are published now") {
		t.Fatalf("the retry's publication is not logged:\n%s", e.logs)
	}
}
