package escrow

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestCRLClockSkew: nodes on one PostgreSQL database whose clocks are minutes ahead of or
// behind the database server's publish CRLs dated by the server's clock, one after the other
// in increasing order. Before, a node ahead published a CRL whose thisUpdate was minutes in
// the future (OpenSSL refuses such a CRL as not yet valid), and every later CRL, whichever
// node made it, stayed in that future, a second after it, until the clocks caught up; and the
// node ahead left out of its CRL a certificate revoked that had not expired yet, by its clock
// already had.
func TestCRLClockSkew(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	db, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.SelfSignedRoot(key, pkix.Name{CommonName: "CRL clock test CA"}, time.Now().Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := ca.New(key, root)
	if err != nil {
		t.Fatal(err)
	}
	// Revoked, and valid two more minutes: every CRL of the next two minutes lists it.
	soon := time.Now().Add(2 * time.Minute).Truncate(time.Second)
	err = db.Update(context.Background(), func(tx store.Tx) error {
		return tx.InsertCertificate(store.Certificate{Serial: "0a", Template: "smime-encryption", Email: "a@example.org",
			Subject: "CN=a", State: store.StateRevoked, DER: []byte{0x30, 0x03, 0x02, 0x01, 0x01},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: soon, RevokedAt: time.Now().Add(-time.Minute),
			RevocationReason: store.ReasonSuperseded, CreatedAt: time.Now().Add(-time.Hour)})
	})
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for i, off := range []time.Duration{5 * time.Minute, -5 * time.Minute, 0} {
		p := &CRLPublisher{Store: db, Issuer: issuer.WithClock(skewed(off)), Now: skewed(off)}
		before := time.Now().Add(-2 * time.Second)
		c, err := p.publishOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		after := time.Now().Add(2 * time.Second)
		if c.Number != int64(i+1) {
			t.Errorf("node %v off: CRL number %d, want %d", off, c.Number, i+1)
		}
		if c.ThisUpdate.Before(before) || c.ThisUpdate.After(after) {
			t.Errorf("node %v off: CRL %d thisUpdate %v, want the database's clock, within [%v, %v]", off, c.Number, c.ThisUpdate, before, after)
		}
		crl, err := x509.ParseRevocationList(c.DER)
		if err != nil {
			t.Fatal(err)
		}
		if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Int64() != 0x0a {
			t.Errorf("node %v off: CRL %d lists %d entries, want the certificate revoked that expires at %v", off, c.Number, len(crl.RevokedCertificateEntries), soon)
		}
		if !c.ThisUpdate.After(last) {
			t.Errorf("node %v off: CRL %d thisUpdate %v, not after the last one's %v", off, c.Number, c.ThisUpdate, last)
		}
		last = c.ThisUpdate
	}
}
