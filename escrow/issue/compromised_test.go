package issue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// TestCompromisedKeyRefused: once a certificate of a key is revoked for keyCompromise, no
// path certifies that key again, in any mailbox (S/MIME BR §6.1.1.3): a direct issuance and
// an archiving one are refused before anything is signed, as the client's fault, naming the
// revoked certificate, and the enrollment code stays unused. Other keys of the same batch
// are issued.
func TestCompromisedKeyRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	templates, err := policy.Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	key := p256(t)
	serial, err := ca.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	first, err := e.p.IssueDirect(ctx, DirectRequest{Template: templates["smime-signature"], Pub: key.Public(), Serial: serial,
		Mailbox: "alice@example.org", Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.db.Update(ctx, func(tx store.Tx) error {
		return tx.RevokeCertificate(first.Serial, store.ReasonKeyCompromise, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	code := func(id string) {
		t.Helper()
		if err := e.db.Update(ctx, func(tx store.Tx) error {
			return tx.InsertCode(store.Code{ID: id, Email: "walt@example.org", Template: "smime-signature", Hash: []byte{1},
				CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, policy.ErrRejected) || !errors.Is(err, policy.ErrKeyNotAllowed) {
			t.Fatalf("%s with a compromised key: %v, want a policy rejection", what, err)
		}
		if want := fmt.Sprintf("certificate %s", first.Serial); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "keyCompromise") {
			t.Errorf("%s: %q does not name %s and keyCompromise", what, err, want)
		}
	}
	unused := func(id string) {
		t.Helper()
		if err := e.db.View(ctx, func(tx store.Tx) error {
			c, err := tx.GetCode(id)
			if err == nil && c.UsedAt != nil {
				t.Errorf("code %s was used by a refused request", id)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}

	code("direct")
	again, err := ca.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.p.IssueDirect(ctx, DirectRequest{Template: templates["smime-signature"], Pub: key.Public(), Serial: again,
		Mailbox: "walt@example.org", CodeID: "direct", Actor: "test"})
	refused("IssueDirect", err)
	unused("direct")
	if err := e.db.View(ctx, func(tx store.Tx) error {
		_, err := tx.GetCertificate(store.FormatSerial(again))
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the refused certificate was stored (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// An archiving batch: the item with the compromised key fails alone.
	reqs := []Request{e.request(t, 0, 1), e.request(t, 1, 1), e.request(t, 2, 1)}
	bad, err := ca.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	reqs[1] = Request{Template: e.tmpl, Pub: key.Public(), Mailbox: "walt@example.org", Serial: bad,
		Record: seal(t, 1, bad, key), Actor: "test"}
	for i, r := range e.p.Issue(ctx, reqs, 2, nil) {
		if i == 1 {
			refused("Issue", r.Err)
			if st := e.recordState(t, reqs[1].Record.ID); st != "" {
				t.Errorf("the refused item's record was stored (%s)", st)
			}
			continue
		}
		if r.Err != nil {
			t.Errorf("item %d: %v", i, r.Err)
		}
	}
}
