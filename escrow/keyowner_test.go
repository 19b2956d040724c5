package escrow

import (
	"context"
	"crypto"
	"errors"
	"testing"

	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestKeyArchivedForOneMailbox: a key archived for alice is refused for bob on every path
// (enrollment with an envelope, an admin's archival as bulk does it, an import), leaving
// nothing behind and bob's code usable; alice may archive it again, in a record of its own.
func TestKeyArchivedForOneMailbox(t *testing.T) {
	ctx := context.Background()
	env := newTestService(t)
	key := newP256(t)
	enroll := func(mailbox string) (Enrollee, *Issued, error) {
		who := env.enrollee(t, mailbox, policy.TemplateSMIMEEncryption)
		iss, err := env.svc.EnrollArchived(ctx, who,
			EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: newCSR(t, key, who.Mailbox)},
			envelope(t, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256))
		return who, iss, err
	}
	_, first, err := enroll("alice@example.org")
	if err != nil {
		t.Fatalf("alice enrolls: %v", err)
	}

	tests := []struct {
		name    string
		run     func(t *testing.T) error
		wantErr error
	}{
		{"enrollment for another mailbox", func(t *testing.T) error {
			who, _, err := enroll("bob@example.org")
			env.assertNothingLeft(t, who)
			return err
		}, ErrKeyArchivedElsewhere},
		{"archival by an admin for another mailbox", func(t *testing.T) error {
			_, err := env.svc.IssueArchivedKey(ctx, "carol@example.org", policy.TemplateSMIMEEncryption, key.Public(), pkcs8Of(t, key))
			return err
		}, ErrKeyArchivedElsewhere},
		{"import for another mailbox", func(t *testing.T) error {
			_, err := env.svc.ImportArchived(ctx, foreignCert(t, 4242, "dave@example.org", key.Public()), pkcs8Of(t, key))
			return err
		}, ErrKeyArchivedElsewhere},
		{"a new enrollment of the same mailbox", func(t *testing.T) error {
			_, again, err := enroll("alice@example.org")
			if err == nil && (again.RecordID == first.RecordID || again.Serial == first.Serial) {
				t.Errorf("second enrollment shares record or serial with the first")
			}
			return err
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(t); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
		})
	}
	for _, m := range []string{"bob@example.org", "carol@example.org", "dave@example.org"} {
		if n := len(env.records(t, m)); n != 0 {
			t.Errorf("%s has %d escrow record(s) of alice's key", m, n)
		}
		if n := len(env.certs(t, store.Filter{Email: m, State: store.StateIssued})); n != 0 {
			t.Errorf("%s has %d certificate(s) for alice's key", m, n)
		}
	}
	recs := env.records(t, "alice@example.org")
	if len(recs) != 2 || recs[0].Fingerprint != PublicKeyFingerprint(key.Public()) || recs[1].Fingerprint != recs[0].Fingerprint {
		t.Errorf("alice's records: %+v; want two with the key's fingerprint", recs)
	}
}
