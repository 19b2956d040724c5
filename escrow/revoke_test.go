package escrow

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// revokeWatch records what a Service tells of its revocations: the metric and the trigger.
type revokeWatch struct {
	mu       sync.Mutex
	reasons  []string
	triggers [][]string
}

func (w *revokeWatch) Enrolled(string, bool)  {}
func (w *revokeWatch) Refused(string, string) {}
func (w *revokeWatch) Revoked(reason string) {
	w.mu.Lock()
	w.reasons = append(w.reasons, reason)
	w.mu.Unlock()
}
func (w *revokeWatch) trigger(serials []string) {
	w.mu.Lock()
	w.triggers = append(w.triggers, serials)
	w.mu.Unlock()
}

func (w *revokeWatch) seen() ([]string, [][]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.reasons), slices.Clone(w.triggers)
}

func watchRevocations(env *testEnv) *revokeWatch {
	w := &revokeWatch{}
	env.svc.Metrics = w
	env.svc.Revoked = w.trigger
	return w
}

// enrollSigning enrolls mailbox on smime-signature with key (no archive).
func (env *testEnv) enrollSigning(tb testing.TB, mailbox string, key crypto.Signer) *Issued {
	tb.Helper()
	who := env.enrollee(tb, mailbox, policy.TemplateSMIMESignature)
	issued, err := env.svc.Enroll(context.Background(), who, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: newCSR(tb, key, who.Mailbox)})
	if err != nil {
		tb.Fatalf("Enroll(%s): %v", mailbox, err)
	}
	return issued
}

// auditOf returns the audit entries of kind, oldest first.
func (env *testEnv) auditOf(tb testing.TB, kind audit.Kind) []audit.Details {
	tb.Helper()
	var out []audit.Details
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		es, err := tx.AuditOfKindsFrom([]string{string(kind)}, 1, 1000)
		for _, e := range es {
			var d audit.Details
			if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
				return err
			}
			out = append(out, d)
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

var officerP = policy.Principal{Role: policy.RoleOfficer, Name: "olga", Serial: "0f"}

func TestReasonCodesAreTheStores(t *testing.T) {
	for _, name := range policy.RevocationReasons() {
		code, _ := policy.ParseRevocationReason(name)
		if !store.ValidReason(code) {
			t.Errorf("policy's %s (%d) is not a reason the store accepts", name, code)
		}
	}
	pairs := [][2]int{{policy.ReasonUnspecified, store.ReasonUnspecified}, {policy.ReasonKeyCompromise, store.ReasonKeyCompromise},
		{policy.ReasonAffiliationChanged, store.ReasonAffiliationChanged}, {policy.ReasonSuperseded, store.ReasonSuperseded},
		{policy.ReasonCessationOfOperation, store.ReasonCessationOfOperation}, {policy.ReasonPrivilegeWithdrawn, store.ReasonPrivilegeWithdrawn}}
	for _, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("policy's code %d is the store's %d", p[0], p[1])
		}
	}
}

// TestRevokeSerial: a revocation is stored, audited, counted and signalled once; a second is
// refused with the first revocation, which stays; only a move to keyCompromise changes it,
// keeping the first date.
func TestRevokeSerial(t *testing.T) {
	env := newTestService(t)
	w := watchRevocations(env)
	ctx := context.Background()
	issued := env.enrollSigning(t, "alice@example.org", newP256(t))

	res, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Serial: "0x" + issued.Serial, Reason: "superseded"})
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if len(res.Revoked) != 1 || res.Revoked[0].Serial != issued.Serial || res.Revoked[0].Reason != "superseded" {
		t.Fatalf("result %+v", res)
	}
	row := env.certificate(t, issued.Serial)
	if row.State != store.StateRevoked || row.RevocationReason != store.ReasonSuperseded || !row.RevokedAt.Equal(t0) {
		t.Fatalf("row: state %s reason %d at %v", row.State, row.RevocationReason, row.RevokedAt)
	}
	entries := env.auditOf(t, audit.KindRevoke)
	if len(entries) != 1 || !slices.Equal(entries[0].Serials, []string{issued.Serial}) || entries[0].RevocationReason != "superseded" {
		t.Fatalf("audit entries %+v", entries)
	}
	if reasons, triggers := w.seen(); !slices.Equal(reasons, []string{"superseded"}) || len(triggers) != 1 || !slices.Equal(triggers[0], []string{issued.Serial}) {
		t.Fatalf("metric %v, trigger %v", reasons, triggers)
	}

	env.clock.Set(t0.Add(time.Hour))
	defer env.clock.Set(t0)
	_, err = env.svc.Revoke(ctx, officerP, RevokeRequest{Serial: issued.Serial, Reason: "cessationOfOperation"})
	var already *AlreadyRevokedError
	if !errors.As(err, &already) || !errors.Is(err, ErrAlreadyRevoked) {
		t.Fatalf("second Revoke: %v, want an AlreadyRevokedError", err)
	}
	if len(already.Existing) != 1 || already.Existing[0].Reason != "superseded" || !already.Existing[0].RevokedAt.Equal(t0) {
		t.Fatalf("existing %+v, want the first revocation", already.Existing)
	}
	if row := env.certificate(t, issued.Serial); row.RevocationReason != store.ReasonSuperseded {
		t.Fatalf("a refused revocation changed the reason to %d", row.RevocationReason)
	}

	res, err = env.svc.Revoke(ctx, officerP, RevokeRequest{Serial: issued.Serial, Reason: "keyCompromise"})
	if err != nil {
		t.Fatalf("move to keyCompromise: %v", err)
	}
	if len(res.KeyCompromise) != 1 || len(res.Revoked) != 0 || !res.KeyCompromise[0].RevokedAt.Equal(t0) {
		t.Fatalf("result %+v", res)
	}
	row = env.certificate(t, issued.Serial)
	if row.RevocationReason != store.ReasonKeyCompromise || !row.RevokedAt.Equal(t0) {
		t.Fatalf("after the move: reason %d at %v, want keyCompromise at the first date", row.RevocationReason, row.RevokedAt)
	}
	if _, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Serial: issued.Serial, Reason: "keyCompromise"}); !errors.Is(err, ErrAlreadyRevoked) {
		t.Fatalf("keyCompromise twice: %v, want ErrAlreadyRevoked", err)
	}
	entries = env.auditOf(t, audit.KindRevoke)
	if len(entries) != 2 || !slices.Equal(entries[1].KeyCompromise, []string{issued.Serial}) {
		t.Fatalf("audit entries %+v, want the revocation and the move", entries)
	}
	if reasons, triggers := w.seen(); len(reasons) != 2 || len(triggers) != 2 {
		t.Fatalf("metric %v, trigger %v: refusals must not count", reasons, triggers)
	}
}

// TestRevokeRefusals: each bad request is refused with its sentinel, and changes nothing.
func TestRevokeRefusals(t *testing.T) {
	env := newTestService(t)
	w := watchRevocations(env)
	ctx := context.Background()
	alice := env.enrollSigning(t, "alice@example.org", newP256(t))
	bob := env.enrollSigning(t, "bob@example.org", newP256(t))
	subscriber := policy.Principal{Role: policy.RoleEnrollee, Mailbox: "alice@example.org", Serial: alice.Serial}
	tests := []struct {
		name    string
		by      policy.Principal
		req     RevokeRequest
		wantErr []error
	}{
		{"unknown serial", officerP, RevokeRequest{Serial: "7777", Reason: "unspecified"}, []error{ErrNotFound}},
		{"malformed serial", officerP, RevokeRequest{Serial: "zz", Reason: "unspecified"}, []error{ErrInvalidRequest}},
		{"reason outside the BR set", officerP, RevokeRequest{Serial: alice.Serial, Reason: "certificateHold"}, []error{ErrInvalidRequest, policy.ErrBadRevocationReason}},
		{"cACompromise", officerP, RevokeRequest{Serial: alice.Serial, Reason: "cACompromise"}, []error{ErrInvalidRequest, policy.ErrBadRevocationReason}},
		{"no reason", officerP, RevokeRequest{Serial: alice.Serial}, []error{ErrInvalidRequest, policy.ErrBadRevocationReason}},
		{"nothing named", officerP, RevokeRequest{Reason: "unspecified"}, []error{ErrInvalidRequest}},
		{"two selectors", officerP, RevokeRequest{Serial: alice.Serial, Email: "alice@example.org", Reason: "unspecified"}, []error{ErrInvalidRequest}},
		{"bad mailbox", officerP, RevokeRequest{Email: "not a mailbox", Reason: "unspecified"}, []error{ErrInvalidRequest}},
		{"mailbox without certificates", officerP, RevokeRequest{Email: "nobody@example.org", Reason: "unspecified"}, []error{ErrNotFound}},
		{"key of an unknown serial", officerP, RevokeRequest{KeyOf: "7777", Reason: "keyCompromise"}, []error{ErrNotFound}},
		{"subscriber, someone else's", subscriber, RevokeRequest{Serial: bob.Serial, Reason: "keyCompromise"}, []error{policy.ErrForbidden}},
		{"subscriber, someone else's mailbox", subscriber, RevokeRequest{Email: "bob@example.org", Reason: "keyCompromise"}, []error{policy.ErrForbidden}},
		{"subscriber, privilegeWithdrawn", subscriber, RevokeRequest{Serial: alice.Serial, Reason: "privilegeWithdrawn"}, []error{policy.ErrForbidden}},
		{"auditor", policy.Principal{Role: policy.RoleAuditor, Name: "a"}, RevokeRequest{Serial: bob.Serial, Reason: "unspecified"}, []error{policy.ErrForbidden}},
		{"kra", policy.Principal{Role: policy.RoleKRA, Name: "kra-0"}, RevokeRequest{Serial: bob.Serial, Reason: "unspecified"}, []error{policy.ErrForbidden}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := env.svc.Revoke(ctx, tt.by, tt.req)
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Fatalf("err %v, want %v", err, want)
				}
			}
		})
	}
	for _, s := range []string{alice.Serial, bob.Serial} {
		if row := env.certificate(t, s); row.State != store.StateIssued {
			t.Errorf("certificate %s is %s after refused revocations", s, row.State)
		}
	}
	if n := len(env.auditOf(t, audit.KindRevoke)); n != 0 {
		t.Errorf("%d revoke entries after refusals", n)
	}
	if reasons, triggers := w.seen(); len(reasons)+len(triggers) != 0 {
		t.Errorf("refusals counted (%v) or signalled (%v)", reasons, triggers)
	}
	// The subscriber's own certificate: allowed.
	if _, err := env.svc.Revoke(ctx, subscriber, RevokeRequest{Serial: alice.Serial, Reason: "keyCompromise"}); err != nil {
		t.Fatalf("subscriber revokes their own certificate: %v", err)
	}
}

// TestRevokeByMailboxAndKey: by mailbox, every unexpired certificate of it and no other; by
// key, every certificate of the key in any mailbox (BR §6.1.2), which a subscriber may not do
// when the key is also in someone else's certificate.
func TestRevokeByMailboxAndKey(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	a1 := env.enrollSigning(t, "alice@example.org", newP256(t))
	a2, _ := env.enrollArchived(t, "alice@example.org")
	other := env.enrollSigning(t, "bob@example.org", newP256(t))
	cred, err := env.svc.IssueCredential(ctx, policy.RoleOfficer, "alice-officer", "alice@example.org", newP256(t).Public())
	if err != nil {
		t.Fatal(err)
	}

	res, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Email: "alice@EXAMPLE.org", Reason: "affiliationChanged"})
	if err != nil {
		t.Fatalf("Revoke by mailbox: %v", err)
	}
	got := res.Serials()
	slices.Sort(got)
	want := []string{a1.Serial, a2.Serial}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("revoked %v, want %v", got, want)
	}
	if row := env.certificate(t, other.Serial); row.State != store.StateIssued {
		t.Fatalf("bob's certificate is %s", row.State)
	}
	if row := env.certificate(t, cred.Serial); row.State != store.StateIssued {
		t.Fatalf("the operator credential naming the mailbox is %s; it is revoked by its serial only", row.State)
	}
	if _, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Email: "alice@example.org", Reason: "unspecified"}); !errors.Is(err, ErrAlreadyRevoked) {
		t.Fatalf("mailbox again: %v, want ErrAlreadyRevoked", err)
	}

	// One key in two mailboxes' signing certificates, and a third certificate of another key.
	key := newP256(t)
	c1 := env.enrollSigning(t, "carol@example.org", key)
	c2 := env.enrollSigning(t, "dave@example.org", key)
	c3 := env.enrollSigning(t, "carol@example.org", newP256(t))
	carol := policy.Principal{Role: policy.RoleEnrollee, Mailbox: "carol@example.org", Serial: c3.Serial}
	if _, err := env.svc.Revoke(ctx, carol, RevokeRequest{KeyOf: c1.Serial, Reason: "keyCompromise"}); !errors.Is(err, policy.ErrForbidden) {
		t.Fatalf("subscriber revokes a key in someone else's certificate: %v, want ErrForbidden", err)
	}
	if row := env.certificate(t, c1.Serial); row.State != store.StateIssued {
		t.Fatalf("a refused revocation by key revoked %s", c1.Serial)
	}
	res, err = env.svc.Revoke(ctx, officerP, RevokeRequest{KeyOf: c2.Serial, Reason: "keyCompromise"})
	if err != nil {
		t.Fatalf("Revoke by key: %v", err)
	}
	got = res.Serials()
	slices.Sort(got)
	want = []string{c1.Serial, c2.Serial}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("revoked %v, want the key's certificates %v", got, want)
	}
	if row := env.certificate(t, c3.Serial); row.State != store.StateIssued {
		t.Fatalf("the certificate of another key is %s", row.State)
	}
	entries := env.auditOf(t, audit.KindRevoke)
	last := entries[len(entries)-1]
	if last.Serial != c2.Serial || len(last.Fingerprint) != 1 || last.Fingerprint[0] != PublicKeyFingerprint(key.Public()) {
		t.Fatalf("audit entry of the revocation by key %+v", last)
	}
}

// TestRevokedKeyStaysRecoverable: revoking a certificate does not touch its escrow record: the
// key is recovered after the revocation, to the archived bytes.
func TestRevokedKeyStaysRecoverable(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	if _, err := r.svc.Revoke(ctx, r.officer, RevokeRequest{Serial: r.serial, Reason: "keyCompromise"}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	id := r.request(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	got, err := r.svc.Fetch(ctx, r.officer, id, false)
	if err != nil {
		t.Fatalf("Fetch of a revoked certificate's key: %v", err)
	}
	key, _, _, err := pkcs12.DecodeChain(got.Files[0].PFX, got.Password)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if string(der) != string(r.pkcs8) {
		t.Fatal("the key recovered after revocation is not the archived one")
	}
}

// TestRecoveryRevokesAtFetch: the request's choice (or its template's) is written with the
// request, shown with it, and carried out in the fetch's transaction, not before.
func TestRecoveryRevokesAtFetch(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		revoke     string // the request's choice
		tmpl       string // the template's recovery_revoke
		wantState  string
		wantReason int
	}{
		{"keyCompromise", "keyCompromise", "", store.StateRevoked, store.ReasonKeyCompromise},
		{"superseded", "superseded", "", store.StateRevoked, store.ReasonSuperseded},
		{"keep", "keep", "keyCompromise", store.StateIssued, 0},
		{"template default", "", "superseded", store.StateRevoked, store.ReasonSuperseded},
		{"built-in default keeps", "", "", store.StateIssued, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			w := watchRevocations(r.testEnv)
			r.svc.Templates[policy.TemplateSMIMEEncryption].RecoveryRevoke = tt.tmpl
			rec, err := r.svc.OpenRecovery(ctx, r.officer, RecoveryRequest{Serial: r.serial, Reason: "laptop stolen", Revoke: tt.revoke, TTL: time.Hour})
			if err != nil {
				t.Fatalf("OpenRecovery: %v", err)
			}
			wantChoice := tt.revoke
			if wantChoice == "" {
				wantChoice = tt.tmpl
			}
			if wantChoice == "" {
				wantChoice = "keep"
			}
			if !slices.Equal(rec.Revoke, []string{wantChoice}) {
				t.Fatalf("request shows revoke %v, want [%s]", rec.Revoke, wantChoice)
			}
			r.approve(t, 0, rec.ID)
			r.approve(t, 2, rec.ID)
			// The template changing between request and fetch does not change the request.
			r.svc.Templates[policy.TemplateSMIMEEncryption].RecoveryRevoke = ""
			if row := r.certificate(t, r.serial); row.State != store.StateIssued {
				t.Fatalf("certificate %s before the fetch", row.State)
			}
			got, err := r.svc.Fetch(ctx, r.officer, rec.ID, false)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			row := r.certificate(t, r.serial)
			if row.State != tt.wantState || row.RevocationReason != tt.wantReason {
				t.Fatalf("after the fetch: %s reason %d, want %s reason %d", row.State, row.RevocationReason, tt.wantState, tt.wantReason)
			}
			_, triggers := w.seen()
			entries := r.auditOf(t, audit.KindRevoke)
			if tt.wantState == store.StateIssued {
				if len(got.Revocations.Revoked) != 0 || len(triggers) != 0 || len(entries) != 0 {
					t.Fatalf("keep revoked %+v, signalled %v, audited %d", got.Revocations, triggers, len(entries))
				}
				return
			}
			if len(got.Revocations.Revoked) != 1 || len(triggers) != 1 || !slices.Equal(triggers[0], []string{r.serial}) {
				t.Fatalf("revocations %+v, triggers %v", got.Revocations, triggers)
			}
			if len(entries) != 1 || entries[0].Request != rec.ID || !slices.Equal(entries[0].Serials, []string{r.serial}) {
				t.Fatalf("revoke entries %+v", entries)
			}
			fetched := r.auditOf(t, audit.KindRecoveryFetched)
			if len(fetched) != 1 || !slices.Equal(fetched[0].Revoke, []string{wantChoice}) {
				t.Fatalf("fetch entry %+v", fetched)
			}
		})
	}
}

// TestRecoveryRevokeChoiceRefused: a choice outside keep, keyCompromise and superseded is
// refused before any key is made.
func TestRecoveryRevokeChoiceRefused(t *testing.T) {
	r := newRecoveryEnv(t)
	_, err := r.svc.OpenRecovery(context.Background(), r.officer, RecoveryRequest{Serial: r.serial, Reason: "x", Revoke: "cessationOfOperation", TTL: time.Hour})
	if !errors.Is(err, ErrInvalidRequest) || !errors.Is(err, policy.ErrBadRecoveryRevocation) {
		t.Fatalf("err %v, want ErrInvalidRequest and ErrBadRecoveryRevocation", err)
	}
	if n := r.keys.made.Load(); n != 0 {
		t.Fatalf("%d recovery keys made for a refused request", n)
	}
}

// TestRevokeKRAUnwrapInCurrentSet: a KRA unwrap certificate of the current recovery set is
// not revoked (new records would be sealed to it) until a set without it is defined.
func TestRevokeKRAUnwrapInCurrentSet(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	admin := policy.Principal{Role: policy.RoleAdmin, Name: "ada"}
	_, err := env.svc.Revoke(ctx, admin, RevokeRequest{Serial: env.kras[0].serial, Reason: "keyCompromise"})
	if !errors.Is(err, ErrInRecoverySet) {
		t.Fatalf("revoke a KRA certificate of the current set: %v, want ErrInRecoverySet", err)
	}
	if row := env.certificate(t, env.kras[0].serial); row.State != store.StateIssued {
		t.Fatalf("refused, yet the certificate is %s", row.State)
	}
	k3 := env.addKRA(t, "kra-3", rsaKey(t, keySpare))
	if _, err := env.svc.SetRecoverySet(ctx, 2, []string{env.kras[1].serial, env.kras[2].serial, k3.serial}, "ada"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.svc.Revoke(ctx, admin, RevokeRequest{Serial: env.kras[0].serial, Reason: "keyCompromise"}); err != nil {
		t.Fatalf("revoke once replaced: %v", err)
	}
}

// TestRevokedKRACredentialNoLongerApproves: an approval counts only while its signer's
// credential is issued: once revoked (by an admin: an officer may not), the quorum is short and
// nothing is decrypted.
func TestRevokedKRACredentialNoLongerApproves(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	id := r.request(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	kra := r.kraPrincipal(t, 1).Serial
	// The officer who asked cannot take a KRA's credential away (nor an admin's).
	for _, serial := range []string{kra, r.admin.Serial} {
		if _, err := r.svc.Revoke(ctx, r.officer, RevokeRequest{Serial: serial, Reason: "keyCompromise"}); !errors.Is(err, policy.ErrForbidden) {
			t.Fatalf("an officer revokes credential %s: %v, want ErrForbidden", serial, err)
		}
	}
	if _, err := r.svc.Revoke(ctx, r.admin, RevokeRequest{Serial: kra, Reason: "keyCompromise"}); err != nil {
		t.Fatalf("revoke the KRA's credential: %v", err)
	}
	if _, err := r.svc.Fetch(ctx, r.officer, id, false); !errors.Is(err, policy.ErrQuorum) {
		t.Fatalf("Fetch with a revoked approver: %v, want ErrQuorum", err)
	}
	if n := r.keys.decrypts.Load(); n != 0 {
		t.Fatalf("%d decryptions with a revoked approver", n)
	}
}

// TestRevokeImportedRefused: a certificate of another CA whose key a bulk import archived is
// not this CA's to revoke: by serial it is refused (409, saying where to revoke it), by
// mailbox or key it is left out, and a recovery's revocation passes over it; its key stays
// archived and its row issued, with no revoke entry and no signal to the OCSP pre-signer.
func TestRevokeImportedRefused(t *testing.T) {
	env := newTestService(t)
	w := watchRevocations(env)
	ctx := context.Background()
	key := newP256(t)
	foreign := foreignCert(t, 4242, "dave@example.org", key.Public())
	if _, err := env.svc.ImportArchived(ctx, foreign, pkcs8Of(t, key)); err != nil {
		t.Fatalf("import: %v", err)
	}
	serial := store.FormatSerial(foreign.SerialNumber)
	_, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Serial: serial, Reason: "keyCompromise"})
	if !errors.Is(err, ErrNotIssued) || !strings.Contains(err.Error(), "another CA") {
		t.Errorf("revoke the imported certificate by serial: %v, want ErrNotIssued naming another CA", err)
	}
	if _, err := env.svc.Revoke(ctx, officerP, RevokeRequest{Email: "dave@example.org", Reason: "keyCompromise"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke the mailbox whose only certificate is imported: %v, want ErrNotFound", err)
	}
	if _, err := env.svc.Revoke(ctx, officerP, RevokeRequest{KeyOf: serial, Reason: "keyCompromise"}); !errors.Is(err, ErrNotIssued) || !strings.Contains(err.Error(), "another CA") {
		t.Errorf("revoke every certificate of the imported key: %v, want ErrNotIssued naming another CA", err)
	}
	if row := env.certificate(t, serial); row.State != store.StateIssued {
		t.Errorf("the imported certificate is %s after the refusals", row.State)
	}
	if n := len(env.auditOf(t, audit.KindRevoke)); n != 0 {
		t.Errorf("%d revoke entries after refusals", n)
	}
	if reasons, triggers := w.seen(); len(reasons)+len(triggers) != 0 {
		t.Errorf("refusals counted (%v) or signalled (%v)", reasons, triggers)
	}
}

// TestRecoveryOfImportedKeepsIt: a recovery that asks to revoke, of a key imported from
// another CA, says the certificate stays as it is: the fetch never revokes another CA's
// certificate, and the officer and the KRAs are not told otherwise.
func TestRecoveryOfImportedKeepsIt(t *testing.T) {
	r := newRecoveryEnv(t)
	ctx := context.Background()
	key := newP256(t)
	foreign := foreignCert(t, 4343, "erin@example.org", key.Public())
	if _, err := r.svc.ImportArchived(ctx, foreign, pkcs8Of(t, key)); err != nil {
		t.Fatalf("import: %v", err)
	}
	for _, choice := range []string{"keyCompromise", "superseded", ""} {
		rec, err := r.svc.OpenRecovery(ctx, r.officer, RecoveryRequest{Serial: store.FormatSerial(foreign.SerialNumber), Reason: "lost",
			Revoke: choice, TTL: time.Hour})
		if err != nil {
			t.Fatalf("OpenRecovery (%q): %v", choice, err)
		}
		if len(rec.Revoke) != 1 || rec.Revoke[0] != policy.RecoveryKeep {
			t.Errorf("recovery of an imported key asking %q: the fetch would %v, want keep", choice, rec.Revoke)
		}
	}
}
