package escrow

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
)

// tamper changes the database file behind the store, as someone holding the file would.
func (r *recoveryEnv) tamper(t *testing.T, query string, args ...any) {
	t.Helper()
	raw, err := sql.Open("sqlite", "file:"+r.svc.Store.Path()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(query, args...); err != nil {
		t.Fatal(err)
	}
}

// TestRecoveryRefusesTamperedRows: a row that disagrees with its certificate or with its
// audited issuance is not trusted to open a recovery. A mailbox moved to another owner in both
// tables, a template changed, a role granted in the row: the request is refused as an
// integrity fault (ErrIntegrity, wrapping check.ErrInconsistent) before a recovery key is made.
func TestRecoveryRefusesTamperedRows(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(r *recoveryEnv)
		mailbox string // request by mailbox when set, else by serial
	}{
		{name: "mailbox moved, by mailbox", mailbox: "mallory@example.org", tamper: func(r *recoveryEnv) {
			r.tamper(t, `UPDATE certificates SET email = 'mallory@example.org' WHERE email = 'owner@example.org'`)
			r.tamper(t, `UPDATE records SET email = 'mallory@example.org' WHERE email = 'owner@example.org'`)
		}},
		{name: "mailbox moved, by serial", tamper: func(r *recoveryEnv) {
			r.tamper(t, `UPDATE certificates SET email = 'mallory@example.org' WHERE email = 'owner@example.org'`)
			r.tamper(t, `UPDATE records SET email = 'mallory@example.org' WHERE email = 'owner@example.org'`)
		}},
		{name: "record owner changed", mailbox: "mallory@example.org", tamper: func(r *recoveryEnv) {
			r.tamper(t, `UPDATE records SET email = 'mallory@example.org' WHERE email = 'owner@example.org'`)
		}},
		{name: "template changed", tamper: func(r *recoveryEnv) {
			r.tamper(t, `UPDATE certificates SET template = ? WHERE serial = ?`, "smime-signature", r.serial)
		}},
		{name: "role granted", tamper: func(r *recoveryEnv) {
			r.tamper(t, `UPDATE certificates SET role = 'admin' WHERE serial = ?`, r.serial)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			tt.tamper(r)
			serial := r.serial
			if tt.mailbox != "" {
				serial = ""
			}
			_, err := r.svc.RequestRecovery(context.Background(), r.officer, serial, tt.mailbox, "test", time.Hour)
			if !errors.Is(err, ErrIntegrity) || !errors.Is(err, check.ErrInconsistent) {
				t.Fatalf("RequestRecovery: %v, want ErrIntegrity and check.ErrInconsistent", err)
			}
			if n := r.keys.live(); n != 0 {
				t.Errorf("%d recovery key(s) made for a refused request", n)
			}
		})
	}
}

// TestRecoveryRefusesFlaggedCertificate: a certificate that fails the consistency check after
// the request was opened is refused at every later step: the KRA's shares, the approval and the
// fetch, each with ErrIntegrity, and no share is decrypted.
func TestRecoveryRefusesFlaggedCertificate(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approve(t, 0, id)
	shares, sig := r.approval(t, 1, id)

	der := r.certificate(t, r.serial).DER
	der[len(der)-10] ^= 1 // inside the signature: it still parses
	r.tamper(t, `UPDATE certificates SET der = ? WHERE serial = ?`, der, r.serial)

	if _, _, err := r.svc.SharesFor(ctx, r.kraPrincipal(t, 2), id); !errors.Is(err, ErrIntegrity) || !errors.Is(err, check.ErrSignature) {
		t.Errorf("SharesFor: %v, want ErrIntegrity and check.ErrSignature", err)
	}
	if _, err := r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 1), id, shares, sig); !errors.Is(err, ErrIntegrity) {
		t.Errorf("SubmitApproval: %v, want ErrIntegrity", err)
	}
	if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, ErrIntegrity) {
		t.Errorf("Fetch: %v, want ErrIntegrity", err)
	}
	if n := r.keys.decrypts.Load(); n != 0 {
		t.Errorf("%d share(s) decrypted for a flagged certificate, want 0", n)
	}
	var rows []store.Approval
	if err := r.svc.Store.View(ctx, func(tx *store.Tx) (err error) { rows, err = tx.ListApprovals(id); return err }); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Errorf("%d approvals stored, want the one given before the tampering", len(rows))
	}
}
