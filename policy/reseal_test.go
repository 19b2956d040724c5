package policy

import (
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
