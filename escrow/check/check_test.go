package check_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

type fixture struct {
	t      *testing.T
	db     *sqlite.DB
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "check test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, db: db, ca: ca, caKey: key, serial: 0x1000}
}

// sign makes a certificate of the fixture's CA with the given serial and lifetime.
func (f *fixture) sign(serial int64, days int) []byte {
	f.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "user"},
		EmailAddresses: []string{"u@example.org"},
		NotBefore:      time.Now(), NotAfter: time.Now().Add(time.Duration(days) * 24 * time.Hour)} // NotBefore: the issuer's clock, as the CA does
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, &key.PublicKey, f.caKey)
	if err != nil {
		f.t.Fatal(err)
	}
	return der
}

// issue stores a certificate with its issuance entry, as escrow does; it returns the serial.
func (f *fixture) issue(d audit.Details) string {
	f.t.Helper()
	f.serial++
	der := f.sign(f.serial, 30)
	serial := store.FormatSerial(big.NewInt(f.serial))
	err := f.db.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "smime-signature", Email: "u@example.org",
			Subject: "CN=user", State: store.StateIssued, DER: der, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}); err != nil {
			return err
		}
		d.Serial = serial
		_, err := audit.Append(tx, time.Now(), audit.KindEnroll, "local", "u@example.org", d)
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return serial
}

func (f *fixture) exec(query string, args ...any) {
	f.t.Helper()
	// Tampering goes around the store, on the file, as someone holding it would.
	raw, err := sql.Open("sqlite", "file:"+f.db.Path()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		f.t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(query, args...); err != nil {
		f.t.Fatal(err)
	}
}

// issuedAs is what an issuance entry records of the fixture's certificates.
var issuedAs = audit.Details{Template: "smime-signature", Mailbox: "u@example.org"}

// TestCheck: each kind of tampering is found and named, an intact archive passes, and an
// issuance entry written before certificate hashes were recorded is accepted.
func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(f *fixture, serial string)
		details audit.Details
		wantErr error
	}{
		{name: "intact"},
		{name: "entry without a certificate hash", details: audit.Details{CertHash: []string{""}}},
		{name: "one byte of the signature flipped", wantErr: check.ErrSignature, tamper: func(f *fixture, serial string) {
			var der []byte
			if err := f.db.View(context.Background(), func(tx store.Tx) error {
				c, err := tx.GetCertificate(serial)
				if err == nil {
					der = c.DER
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			der[len(der)-3] ^= 1
			f.exec(`UPDATE certificates SET der = ? WHERE serial = ?`, der, serial)
		}},
		{name: "not a certificate", wantErr: check.ErrUnparsable, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET der = x'3003020100' WHERE serial = ?`, serial)
		}},
		{name: "another certificate of the CA with the same serial", wantErr: check.ErrAuditHash, tamper: func(f *fixture, serial string) {
			n, _ := new(big.Int).SetString(serial, 16)
			f.exec(`UPDATE certificates SET der = ? WHERE serial = ?`, f.sign(n.Int64(), 3650), serial)
		}},
		{name: "the row of another serial", wantErr: check.ErrRowMismatch, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET der = ? WHERE serial = ?`, f.sign(0x7777, 30), serial)
		}},
		{name: "pointed at a record that does not exist", wantErr: check.ErrRecordLink, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET record_id = 'feedface' WHERE serial = ?`, serial)
		}},
		{name: "mailbox changed", wantErr: check.ErrRowMismatch, details: issuedAs, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET email = 'mallory@example.org' WHERE serial = ?`, serial)
		}},
		{name: "mailbox changed, older entry", wantErr: check.ErrRowMismatch, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET email = 'mallory@example.org' WHERE serial = ?`, serial)
		}},
		{name: "template changed", wantErr: check.ErrAuditRow, details: issuedAs, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET template = 'smime-encryption' WHERE serial = ?`, serial)
		}},
		{name: "template changed, created_at moved", wantErr: check.ErrAuditRow, details: issuedAs, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET template = 'smime-encryption', created_at = 86400000000 WHERE serial = ?`, serial)
		}},
		{name: "relabelled as an import, created_at moved", wantErr: check.ErrAuditRow, details: issuedAs, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET template = 'import', created_at = 86400000000 WHERE serial = ?`, serial)
		}},
		{name: "role granted", wantErr: check.ErrRowMismatch, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET role = 'admin' WHERE serial = ?`, serial)
		}},
		{name: "made a KRA", wantErr: check.ErrRowMismatch, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET role = 'kra', kra = 'kra1' WHERE serial = ?`, serial)
		}},
		{name: "subject changed", wantErr: check.ErrRowMismatch, tamper: func(f *fixture, serial string) {
			f.exec(`UPDATE certificates SET subject = 'CN=ada' WHERE serial = ?`, serial)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			other := f.issue(audit.Details{})
			serial := f.issue(tt.details)
			if tt.details.CertHash != nil {
				// An older entry: no hash recorded at all.
				f.exec(`UPDATE audit SET details = replace(details, '"cert_sha256":[""],', '') WHERE seq = 2`)
			}
			if tt.tamper != nil {
				tt.tamper(f, serial)
			}
			c := &check.Checker{DB: f.db, CA: f.ca, Foreign: []string{"import"}}
			rep, err := c.All(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if rep.Certificates != 2 {
				t.Errorf("%d certificates checked, want 2", rep.Certificates)
			}
			err = c.Certificate(context.Background(), serial)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Certificate: %v, want %v", err, tt.wantErr)
			}
			if !errors.Is(rep.Err(), tt.wantErr) {
				t.Errorf("All: %v, want %v", rep.Err(), tt.wantErr)
			}
			if tt.wantErr != nil {
				if len(rep.Problems) != 1 || rep.Problems[0].Serial != serial || !errors.Is(err, check.ErrInconsistent) {
					t.Errorf("problems %+v, want one naming %s", rep.Problems, serial)
				}
			}
			if err := c.Certificate(context.Background(), other); err != nil {
				t.Errorf("the untouched certificate: %v", err)
			}
			if rep, err := c.Recent(context.Background(), 1); err != nil || rep.Certificates != 1 || !errors.Is(rep.Err(), tt.wantErr) {
				t.Errorf("Recent(1): %+v, %v", rep, err)
			}
		})
	}
}

// TestAppendRecordsCertificateHash: an issuance entry records the SHA-256 of the stored DER.
func TestAppendRecordsCertificateHash(t *testing.T) {
	f := newFixture(t)
	f.issue(audit.Details{})
	var e *store.AuditEntry
	if err := f.db.View(context.Background(), func(tx store.Tx) (err error) { e, err = tx.GetAudit(1); return err }); err != nil {
		t.Fatal(err)
	}
	if want := `"cert_sha256":["`; !strings.Contains(e.Details, want) {
		t.Errorf("issuance entry %s does not record the certificate hash", e.Details)
	}
}
