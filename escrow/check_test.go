package escrow

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/policy"
)

// tamper changes the database file behind the store, as someone holding the file would.
func (r *recoveryEnv) tamper(t *testing.T, query string, args ...any) {
	t.Helper()
	raw, err := sql.Open("sqlite", "file:"+r.svc.Store.(*sqlite.DB).Path()+"?_pragma=busy_timeout(5000)")
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
		{name: "undelivered certificate", tamper: func(r *recoveryEnv) {
			r.tamper(t, `UPDATE certificates SET state = 'failed' WHERE serial = ?`, r.serial)
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
	if err := r.svc.Store.View(ctx, func(tx store.Tx) (err error) { rows, err = tx.ListApprovals(id); return err }); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Errorf("%d approvals stored, want the one given before the tampering", len(rows))
	}
}

// TestCheckCredential: the row of a presented credential is trusted only when it holds the
// presented certificate and passes the consistency check: a role raised in the row, the
// certificate of another row, or a KRA name changed are refused as integrity faults.
func TestCheckCredential(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		tamper  func(r *recoveryEnv, officer string)
		other   bool // present another certificate of the CA
		wantErr error
	}{
		{name: "intact"},
		{name: "role raised", wantErr: ErrIntegrity, tamper: func(r *recoveryEnv, officer string) {
			r.tamper(t, `UPDATE certificates SET role = 'admin' WHERE serial = ?`, officer)
		}},
		{name: "name changed", wantErr: ErrIntegrity, tamper: func(r *recoveryEnv, officer string) {
			r.tamper(t, `UPDATE certificates SET subject = 'CN=ada,OU=officer' WHERE serial = ?`, officer)
		}},
		{name: "another certificate presented", wantErr: ErrIntegrity, other: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			if tt.tamper != nil {
				tt.tamper(r, r.officer.Serial)
			}
			row := r.certificate(t, r.officer.Serial)
			presented := row.DER
			if tt.other {
				presented = r.certificate(t, r.admin.Serial).DER
			}
			cert, err := x509.ParseCertificate(presented)
			if err != nil {
				t.Fatal(err)
			}
			err = r.svc.CheckCredential(ctx, row, cert)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckCredential: %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil && !errors.Is(err, check.ErrInconsistent) {
				t.Errorf("CheckCredential: %v does not wrap check.ErrInconsistent", err)
			}
		})
	}
}

// TestApprovalRefusesTamperedSigner: a KRA authentication row renamed to another KRA does not
// count as that KRA's approval; the refusal is an integrity fault, not the KRA's failure.
func TestApprovalRefusesTamperedSigner(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	shares, sig := r.approval(t, 0, id)
	p := r.kraPrincipal(t, 0)
	r.tamper(t, `UPDATE certificates SET kra = 'kra-9' WHERE serial = ?`, p.Serial)
	if _, err := r.svc.SubmitApproval(ctx, p, id, shares, sig); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("SubmitApproval: %v, want ErrIntegrity", err)
	}
	raw, err := sql.Open("sqlite", "file:"+r.svc.Store.(*sqlite.DB).Path()+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var n int
	if err := raw.QueryRow(`SELECT count(*) FROM approval_failures`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d approval failure(s) counted against the KRA for an integrity fault, want 0", n)
	}
}

// TestCheckCredentialRemembersOnlyTheRowItChecked: a credential checked once is not checked in
// full again while its row is unchanged, and a row changed after that check (here: its role
// raised under the running appliance) is checked again and refused.
func TestCheckCredentialRemembersOnlyTheRowItChecked(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	row := r.certificate(t, r.officer.Serial)
	cert, err := x509.ParseCertificate(row.DER)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := r.svc.CheckCredential(ctx, row, cert); err != nil {
			t.Fatalf("check %d of the intact row: %v", i+1, err)
		}
	}
	r.tamper(t, `UPDATE certificates SET role = 'admin' WHERE serial = ?`, r.officer.Serial)
	row = r.certificate(t, r.officer.Serial)
	if err := r.svc.CheckCredential(ctx, row, cert); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("CheckCredential after the role was raised: %v, want %v", err, ErrIntegrity)
	}
}

// TestCheckCredentialRevoked: a revoked credential is refused even after its intact row was
// checked and remembered, so a revocation takes effect on the next request.
func TestCheckCredentialRevoked(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	row := r.certificate(t, r.officer.Serial)
	cert, err := x509.ParseCertificate(row.DER)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.svc.CheckCredential(ctx, row, cert); err != nil {
		t.Fatalf("the intact row: %v", err)
	}
	if _, err := r.svc.Revoke(ctx, policy.Principal{Role: policy.RoleAdmin, Name: "ada"}, RevokeRequest{Serial: r.officer.Serial, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	row = r.certificate(t, r.officer.Serial)
	if err := r.svc.CheckCredential(ctx, row, cert); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("CheckCredential of a revoked credential: %v, want %v", err, ErrUnauthorized)
	}
}
