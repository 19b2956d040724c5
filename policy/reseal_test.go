package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"testing"
	"time"
)

func TestReseal(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	admin := Principal{Role: RoleAdmin, Name: "ada", Mailbox: "ada@example.org", Serial: "a1"}
	officer := Principal{Role: RoleOfficer, Name: "olga", Serial: "o1"}
	// The admin's own key is among the records: a reseal delivers no key, so that is fine.
	records := []RecordRef{{ID: "r1", Owner: "ada@example.org", Epoch: 1, State: RecordActive}}
	sets := map[uint32]RecoverySet{1: {Epoch: 1, Quorum: 2, KRAs: []SetMember{
		{Name: "kra1", NotAfter: now.Add(time.Hour)}, {Name: "kra2", NotAfter: now.Add(time.Hour)},
	}}}
	approve := func(kra string) Approval {
		return Approval{RequestID: "q", KRA: kra, Signer: Principal{Role: RoleKRA, Name: kra, Serial: kra + "-auth"},
			SignerNotAfter: now.Add(time.Hour), Records: []string{"r1"}, SignatureOK: true}
	}
	approvals := []Approval{approve("kra1"), approve("kra2")}
	req := func(reseal bool, by Principal) Request {
		return Request{ID: "q", Reseal: reseal, Requester: by, Records: records, CreatedAt: now.Add(-time.Minute),
			ExpiresAt: now.Add(time.Hour), State: RequestOpen}
	}
	tests := []struct {
		name    string
		req     Request
		apps    []Approval
		wantErr error
	}{
		{"admin reseal with quorum", req(true, admin), approvals, nil},
		{"admin reseal below quorum", req(true, admin), approvals[:1], ErrQuorum},
		{"officer cannot open a reseal", req(true, officer), approvals, ErrNotAllowed},
		{"admin cannot open a recovery", req(false, admin), approvals, ErrNotAllowed},
		{"an admin recovering their own key is refused as a recovery", req(false, Principal{Role: RoleOfficer, Name: "ada", Mailbox: "ada@example.org", Serial: "a2"}), approvals, ErrOwnKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := Evaluate(tt.req, sets, tt.apps, now)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Evaluate: %v, want %v", err, tt.wantErr)
			}
			if (err == nil) != g.Valid() {
				t.Fatalf("grant valid %v with error %v", g.Valid(), err)
			}
		})
	}
	if err := CheckResealRequest(officer, records); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("CheckResealRequest(officer): %v, want ErrNotAllowed", err)
	}
	if err := CheckResealRequest(admin, records); err != nil {
		t.Errorf("CheckResealRequest(admin): %v", err)
	}
}

// TestCheckCSRWithoutMailbox: credentials' templates accept a request naming no mailbox, and
// refuse one that names any; S/MIME templates always need the mailbox.
func TestCheckCSRWithoutMailbox(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr := func(emails ...string) *x509.CertificateRequest {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "KRA kra4"}, EmailAddresses: emails}, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tmpls, err := Templates(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		template string
		csr      *x509.CertificateRequest
		wantErr  error
	}{
		{"client-auth, no mailbox", TemplateClientAuth, csr(), nil},
		{"client-auth, a mailbox in the request", TemplateClientAuth, csr("x@example.org"), ErrMailboxMismatch},
		{"smime-signature needs the mailbox", TemplateSMIMESignature, csr(), ErrInvalidMailbox},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tmpls[tt.template].CheckCSR(tt.csr, ""); !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckCSR: %v, want %v", err, tt.wantErr)
			}
		})
	}
}
