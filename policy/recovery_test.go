package policy

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	now      = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	later    = now.Add(365 * 24 * time.Hour)
	earlier  = now.Add(-time.Hour)
	officer  = Principal{Role: RoleOfficer, Name: "olivia", Mailbox: "olivia@example.com", Serial: "0a01"}
	ownerBox = "bob@example.com"
)

// kra is the principal of KRA name, with a mailbox and serial of its own.
func kra(name string) Principal {
	return Principal{Role: RoleKRA, Name: name, Mailbox: name + "@kra.example.com", Serial: "serial-" + name}
}

// approve is a valid approval of request "req-1" by KRA name carrying shares for records.
func approve(name string, records ...string) Approval {
	return Approval{RequestID: "req-1", KRA: name, Signer: kra(name), SignerNotAfter: later, Records: records, SignatureOK: true}
}

// with returns a after edit.
func with(a Approval, edit func(*Approval)) Approval {
	edit(&a)
	return a
}

func record(id string, epoch uint32) RecordRef {
	return RecordRef{ID: id, Owner: ownerBox, Epoch: epoch, State: RecordActive}
}

func members(names ...string) []SetMember {
	var ms []SetMember
	for _, n := range names {
		ms = append(ms, SetMember{Name: n, NotAfter: later})
	}
	return ms
}

// testSets: epoch 1 is 2-of-4 (kra-d's unwrap certificate has expired), epoch 2 is 3-of-4 with
// KRAs partly shared with epoch 1 (kra-c) and partly its own.
func testSets() map[uint32]RecoverySet {
	s1 := RecoverySet{Epoch: 1, Quorum: 2, KRAs: members("kra-a", "kra-b", "kra-c", "kra-d")}
	s1.KRAs[3].NotAfter = earlier
	s2 := RecoverySet{Epoch: 2, Quorum: 3, KRAs: members("kra-c", "kra-e", "kra-f", "kra-g")}
	return map[uint32]RecoverySet{1: s1, 2: s2}
}

func openRequest(records ...RecordRef) Request {
	if len(records) == 0 {
		records = []RecordRef{record("r1", 1)}
	}
	return Request{ID: "req-1", Requester: officer, Records: records, CreatedAt: earlier, ExpiresAt: now.Add(time.Hour), State: RequestOpen}
}

func TestCheckRecoveryRequest(t *testing.T) {
	many := make([]RecordRef, MaxRecoveryRecords+1)
	for i := range many {
		many[i] = record(fmt.Sprintf("r%d", i), 1)
	}
	tests := []struct {
		name    string
		who     Principal
		records []RecordRef
		wantErr error
	}{
		{name: "ok", who: officer, records: []RecordRef{record("r1", 1), record("r2", 2)}},
		{name: "officer without mailbox", who: Principal{Role: RoleOfficer, Name: "o"}, records: []RecordRef{record("r1", 1)}},
		{name: "max records", who: officer, records: many[:MaxRecoveryRecords]},
		{name: "too many records", who: officer, records: many, wantErr: ErrTooManyRecords},
		{name: "admin", who: Principal{Role: RoleAdmin, Name: "a"}, records: []RecordRef{record("r1", 1)}, wantErr: ErrNotAllowed},
		{name: "kra", who: kra("kra-a"), records: []RecordRef{record("r1", 1)}, wantErr: ErrNotAllowed},
		{name: "enrollee", who: Principal{Role: RoleEnrollee, Name: "e", Mailbox: "e@example.com"}, records: []RecordRef{record("r1", 1)}, wantErr: ErrNotAllowed},
		{name: "no role", who: Principal{Name: "x"}, records: []RecordRef{record("r1", 1)}, wantErr: ErrNotAllowed},
		{name: "unnamed officer", who: Principal{Role: RoleOfficer}, records: []RecordRef{record("r1", 1)}, wantErr: ErrNotAllowed},
		{name: "no records", who: officer, wantErr: ErrNothingToRecover},
		{name: "empty records", who: officer, records: []RecordRef{}, wantErr: ErrNothingToRecover},
		{name: "own key", who: officer, records: []RecordRef{record("r1", 1), {ID: "r2", Owner: "olivia@example.com", Epoch: 1, State: RecordActive}}, wantErr: ErrOwnKey},
		{name: "own key domain case", who: officer, records: []RecordRef{{ID: "r1", Owner: "olivia@EXAMPLE.com", Epoch: 1, State: RecordActive}}, wantErr: ErrOwnKey},
		{name: "other local part case is another mailbox", who: officer, records: []RecordRef{{ID: "r1", Owner: "Olivia@example.com", Epoch: 1, State: RecordActive}}},
		{name: "revoked record", who: officer, records: []RecordRef{record("r1", 1), {ID: "r2", Owner: ownerBox, State: "destroyed"}}, wantErr: ErrNotRecoverable},
		{name: "empty state", who: officer, records: []RecordRef{{ID: "r1", Owner: ownerBox}}, wantErr: ErrNotRecoverable},
		{name: "state case", who: officer, records: []RecordRef{{ID: "r1", Owner: ownerBox, State: "Active"}}, wantErr: ErrNotRecoverable},
		{name: "empty id", who: officer, records: []RecordRef{{Owner: ownerBox, State: RecordActive}}, wantErr: ErrBadRecord},
		{name: "duplicate id", who: officer, records: []RecordRef{record("r1", 1), record("r1", 2)}, wantErr: ErrBadRecord},
		{name: "owner not a mailbox", who: officer, records: []RecordRef{{ID: "r1", Owner: "", State: RecordActive}}, wantErr: ErrBadRecord},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckRecoveryRequest(tt.who, tt.records)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("CheckRecoveryRequest() = %v, want %v", err, tt.wantErr)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "policy: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestCheckApprover(t *testing.T) {
	tests := []struct {
		name    string
		who     Principal
		edit    func(*Request)
		at      time.Time
		wantErr error
	}{
		{name: "ok", who: kra("kra-a")},
		{name: "officer", who: officer, wantErr: ErrNotAllowed},
		{name: "admin", who: Principal{Role: RoleAdmin, Name: "adm"}, wantErr: ErrNotAllowed},
		{name: "unnamed kra", who: Principal{Role: RoleKRA, Serial: "x"}, wantErr: ErrNotAllowed},
		{name: "requester name", who: Principal{Role: RoleKRA, Name: "olivia", Serial: "s"}, wantErr: ErrNotAllowed},
		{name: "requester name case", who: Principal{Role: RoleKRA, Name: "Olivia", Serial: "s"}, wantErr: ErrNotAllowed},
		{name: "requester serial", who: Principal{Role: RoleKRA, Name: "kra-x", Serial: "0a01"}, wantErr: ErrNotAllowed},
		{name: "requester mailbox", who: Principal{Role: RoleKRA, Name: "kra-x", Serial: "s", Mailbox: "olivia@example.com"}, wantErr: ErrNotAllowed},
		{name: "consumed", who: kra("kra-a"), edit: func(r *Request) { r.State = RequestConsumed }, wantErr: ErrConsumed},
		{name: "cancelled", who: kra("kra-a"), edit: func(r *Request) { r.State = RequestCancelled }, wantErr: ErrRequestClosed},
		{name: "expired state", who: kra("kra-a"), edit: func(r *Request) { r.State = RequestExpired }, wantErr: ErrExpired},
		{name: "unknown state", who: kra("kra-a"), edit: func(r *Request) { r.State = "" }, wantErr: ErrRequestClosed},
		{name: "expired", who: kra("kra-a"), at: now.Add(2 * time.Hour), wantErr: ErrExpired},
		{name: "at expiry", who: kra("kra-a"), at: now.Add(time.Hour), wantErr: ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := openRequest()
			if tt.edit != nil {
				tt.edit(&req)
			}
			at := tt.at
			if at.IsZero() {
				at = now
			}
			err := CheckApprover(tt.who, req, at)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("CheckApprover() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	r1, r2 := record("r1", 1), record("r2", 2)
	tests := []struct {
		name      string
		records   []RecordRef                  // default: r1 (epoch 1, 2-of-4)
		edit      func(*Request)               // change the request
		sets      func(map[uint32]RecoverySet) // change the sets
		approvals []Approval
		at        time.Time // default: now
		wantErr   error
		wantHave  int                 // with ErrQuorum
		wantRec   string              // with ErrQuorum
		want      map[string][]string // the grant, when no error
	}{
		// Quorum arithmetic.
		{name: "no approvals", wantErr: ErrQuorum, wantRec: "r1", wantHave: 0},
		{name: "m-1", approvals: []Approval{approve("kra-a", "r1")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "exactly m", approvals: []Approval{approve("kra-b", "r1"), approve("kra-a", "r1")},
			want: map[string][]string{"r1": {"kra-a", "kra-b"}}},
		// Every eligible KRA is named, not only the first m: a share is known good only when
		// the record opens, and the escrow layer tries the other quorums around a bad one.
		{name: "m+1 grants every eligible KRA sorted", approvals: []Approval{approve("kra-c", "r1"), approve("kra-b", "r1"), approve("kra-a", "r1")},
			want: map[string][]string{"r1": {"kra-a", "kra-b", "kra-c"}}},
		{name: "m+1 with first invalid", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.SignatureOK = false }), approve("kra-c", "r1"), approve("kra-b", "r1")},
			want: map[string][]string{"r1": {"kra-b", "kra-c"}}},

		// The same KRA twice.
		{name: "duplicate same approval", approvals: []Approval{approve("kra-a", "r1"), approve("kra-a", "r1")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "duplicate other serial", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Serial = "renewed" })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "duplicate other serial no mailbox", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Serial = "renewed"; a.Signer.Mailbox = "" })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "duplicate plus one", approvals: []Approval{approve("kra-a", "r1"), approve("kra-a", "r1"), approve("kra-b", "r1")},
			want: map[string][]string{"r1": {"kra-a", "kra-b"}}},

		// Who signed.
		{name: "officer signer", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Role = RoleOfficer })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "admin signer", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Role = RoleAdmin })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "signer is another kra", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer = kra("kra-x") })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "signer name case", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Name = "KRA-B" })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "kra not in any set", approvals: []Approval{approve("kra-a", "r1"), approve("kra-x", "r1")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "kra name case is not membership", approvals: []Approval{approve("kra-a", "r1"), approve("KRA-B", "r1")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "kra of the other epoch only", approvals: []Approval{approve("kra-a", "r1"), approve("kra-e", "r1")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "requester by name", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Name, a.KRA = "olivia", "olivia" })},
			sets: func(s map[uint32]RecoverySet) { s[1].KRAs[1].Name = "olivia" }, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "requester by serial", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Serial = officer.Serial })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "requester by mailbox", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Mailbox = "olivia@Example.COM" })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "requester by one of two certificates", approvals: []Approval{
			approve("kra-a", "r1"),
			with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Mailbox = "" }),
			with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Serial = officer.Serial; a.SignerNotAfter = earlier }),
		}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "empty mailboxes do not match", edit: func(r *Request) { r.Requester.Mailbox = "" },
			approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Mailbox = "" })},
			want:      map[string][]string{"r1": {"kra-a", "kra-b"}}},
		{name: "owner", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Mailbox = "bob@EXAMPLE.com" })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "owner by one of two certificates", approvals: []Approval{
			approve("kra-a", "r1"),
			with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Mailbox = "" }),
			with(approve("kra-b"), func(a *Approval) { a.Signer.Mailbox = ownerBox; a.Signer.Serial = "2" }),
		}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "owner of another record only", records: []RecordRef{r1, {ID: "r3", Owner: "carol@example.com", Epoch: 1, State: RecordActive}},
			approvals: []Approval{
				approve("kra-a", "r1", "r3"),
				approve("kra-c", "r1", "r3"),
				with(approve("kra-b", "r1", "r3"), func(a *Approval) { a.Signer.Mailbox = "carol@example.com" }),
			},
			want: map[string][]string{"r1": {"kra-a", "kra-b", "kra-c"}, "r3": {"kra-a", "kra-c"}}},

		// The approval itself.
		{name: "other request", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.RequestID = "req-2" })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "bad signature", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.SignatureOK = false })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "no share", approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r9")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "no share at all", approvals: []Approval{approve("kra-a", "r1"), approve("kra-b")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "expired unwrap membership", approvals: []Approval{approve("kra-a", "r1"), approve("kra-d", "r1")}, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "membership expires at now", approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")},
			sets: func(s map[uint32]RecoverySet) { s[1].KRAs[1].NotAfter = now }, wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "expired auth certificate", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.SignerNotAfter = earlier })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "auth certificate expires at now", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.SignerNotAfter = now })},
			wantErr: ErrQuorum, wantRec: "r1", wantHave: 1},
		{name: "renewed auth certificate counts", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-b", "r1"), func(a *Approval) { a.SignerNotAfter = earlier }), with(approve("kra-b", "r1"), func(a *Approval) { a.Signer.Serial = "new" })},
			want: map[string][]string{"r1": {"kra-a", "kra-b"}}},

		// The request.
		{name: "consumed", edit: func(r *Request) { r.State = RequestConsumed }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrConsumed},
		{name: "cancelled", edit: func(r *Request) { r.State = RequestCancelled }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrRequestClosed},
		{name: "expired state", edit: func(r *Request) { r.State = RequestExpired }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrRequestClosed},
		{name: "unknown state", edit: func(r *Request) { r.State = "OPEN" }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrRequestClosed},
		{name: "expired", at: now.Add(2 * time.Hour), approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrExpired},
		{name: "at expiry", at: now.Add(time.Hour), approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrExpired},
		{name: "no expiry set", edit: func(r *Request) { r.ExpiresAt = time.Time{} }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrExpired},
		{name: "requester not officer", edit: func(r *Request) { r.Requester.Role = RoleAdmin }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrNotAllowed},
		{name: "requester owns record", edit: func(r *Request) { r.Requester.Mailbox = ownerBox }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrOwnKey},
		{name: "record no longer active", edit: func(r *Request) { r.Records[0].State = "resealed" }, approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, wantErr: ErrNotRecoverable},
		{name: "no records", edit: func(r *Request) { r.Records = nil }, wantErr: ErrNothingToRecover},
		{name: "no request id", edit: func(r *Request) { r.ID = "" }, approvals: []Approval{
			with(approve("kra-a", "r1"), func(a *Approval) { a.RequestID = "" }), with(approve("kra-b", "r1"), func(a *Approval) { a.RequestID = "" }),
		}, wantErr: ErrRequestClosed},

		// Sets.
		{name: "unknown epoch", records: []RecordRef{r1, record("r5", 5)}, approvals: []Approval{approve("kra-a", "r1", "r5"), approve("kra-b", "r1", "r5")}, wantErr: ErrUnknownEpoch},
		{name: "quorum zero", sets: func(s map[uint32]RecoverySet) { set := s[1]; set.Quorum = 0; s[1] = set }, wantErr: ErrInvalidSet},
		{name: "quorum above n", sets: func(s map[uint32]RecoverySet) { set := s[1]; set.Quorum = 5; s[1] = set }, wantErr: ErrInvalidSet},
		{name: "set of another epoch under this key", sets: func(s map[uint32]RecoverySet) { s[1] = s[2] }, wantErr: ErrInvalidSet},
		{name: "kra listed twice", sets: func(s map[uint32]RecoverySet) { s[1].KRAs[2].Name = "KRA-A" }, wantErr: ErrInvalidSet},
		{name: "unnamed kra", sets: func(s map[uint32]RecoverySet) { s[1].KRAs[2].Name = "" }, wantErr: ErrInvalidSet},
		{name: "quorum one", sets: func(s map[uint32]RecoverySet) { set := s[1]; set.Quorum = 1; s[1] = set },
			approvals: []Approval{approve("kra-b", "r1"), approve("kra-a", "r1")}, want: map[string][]string{"r1": {"kra-a", "kra-b"}}},

		// Several records.
		{name: "multi record one short", records: []RecordRef{r1, record("r3", 1), record("r4", 1)},
			approvals: []Approval{approve("kra-a", "r1", "r3", "r4"), approve("kra-b", "r1", "r4")}, wantErr: ErrQuorum, wantRec: "r3", wantHave: 1},
		{name: "multi record all met", records: []RecordRef{r1, record("r3", 1)},
			approvals: []Approval{approve("kra-a", "r1", "r3"), approve("kra-b", "r1"), approve("kra-c", "r3")},
			want:      map[string][]string{"r1": {"kra-a", "kra-b"}, "r3": {"kra-a", "kra-c"}}},
		{name: "duplicate kra across approvals for different records", records: []RecordRef{r1, record("r3", 1)},
			approvals: []Approval{approve("kra-a", "r1"), approve("kra-a", "r3"), approve("kra-b", "r1", "r3")},
			want:      map[string][]string{"r1": {"kra-a", "kra-b"}, "r3": {"kra-a", "kra-b"}}},
		{name: "two epochs met", records: []RecordRef{r1, r2},
			approvals: []Approval{approve("kra-a", "r1"), approve("kra-c", "r1", "r2"), approve("kra-e", "r2"), approve("kra-f", "r2"), approve("kra-g", "r2")},
			want:      map[string][]string{"r1": {"kra-a", "kra-c"}, "r2": {"kra-c", "kra-e", "kra-f", "kra-g"}}},
		{name: "two epochs second short", records: []RecordRef{r1, r2},
			approvals: []Approval{approve("kra-a", "r1", "r2"), approve("kra-b", "r1", "r2"), approve("kra-e", "r2"), approve("kra-f", "r2")},
			wantErr:   ErrQuorum, wantRec: "r2", wantHave: 2},
		{name: "two epochs epoch-1 kras do not count for epoch 2", records: []RecordRef{r2, r1},
			approvals: []Approval{approve("kra-a", "r1", "r2"), approve("kra-b", "r1", "r2"), approve("kra-d", "r1", "r2"), approve("kra-e", "r1", "r2")},
			wantErr:   ErrQuorum, wantRec: "r2", wantHave: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := tt.records
			if recs == nil {
				recs = []RecordRef{r1}
			}
			req := openRequest(slices.Clone(recs)...)
			if tt.edit != nil {
				tt.edit(&req)
			}
			sets := testSets()
			if tt.sets != nil {
				tt.sets(sets)
			}
			at := tt.at
			if at.IsZero() {
				at = now
			}
			g, err := Evaluate(req, sets, tt.approvals, at)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Evaluate() = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.HasPrefix(err.Error(), "policy: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
				if g.Valid() || g.RequestID() != "" || len(g.Records()) != 0 {
					t.Errorf("failed Evaluate returned a usable grant %+v", g)
				}
				var qe *QuorumError
				if errors.As(err, &qe) != errors.Is(tt.wantErr, ErrQuorum) {
					t.Fatalf("errors.As QuorumError = %v for %v", qe, err)
				}
				if qe != nil && (qe.Record != tt.wantRec || qe.Have != tt.wantHave || qe.Need != sets[recordEpoch(req, qe.Record)].Quorum) {
					t.Errorf("QuorumError = %+v, want record %s have %d", qe, tt.wantRec, tt.wantHave)
				}
				return
			}
			if !g.Valid() || g.RequestID() != req.ID || !g.At().Equal(at) {
				t.Fatalf("grant %+v not valid for %s", g, req.ID)
			}
			var ids []string
			for id := range tt.want {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			if got := g.Records(); !slices.Equal(got, ids) {
				t.Errorf("Records() = %v, want %v", got, ids)
			}
			for id, want := range tt.want {
				got := g.KRAsFor(id)
				if !slices.Equal(got, want) {
					t.Errorf("KRAsFor(%s) = %v, want %v", id, got, want)
				}
				if q := sets[recordEpoch(req, id)].Quorum; g.Quorum(id) != q {
					t.Errorf("Quorum(%s) = %d, want %d", id, g.Quorum(id), q)
				}
				idx := g.ApprovalsFor(id)
				if len(idx) != len(got) {
					t.Fatalf("ApprovalsFor(%s) = %v, KRAs %v", id, idx, got)
				}
				for j, i := range idx {
					a := tt.approvals[i]
					if a.KRA != got[j] || !a.SignatureOK || !slices.Contains(a.Records, id) || !a.SignerNotAfter.After(at) {
						t.Errorf("ApprovalsFor(%s)[%d] = approval %d %+v, not an eligible one of %s", id, j, i, a, got[j])
					}
				}
			}
		})
	}
}

func recordEpoch(req Request, id string) uint32 {
	for _, r := range req.Records {
		if r.ID == id {
			return r.Epoch
		}
	}
	return 0
}

func TestQuorumError(t *testing.T) {
	var err error = &QuorumError{Record: "r1", Have: 1, Need: 2}
	if !errors.Is(err, ErrQuorum) {
		t.Fatal("QuorumError does not match ErrQuorum")
	}
	if errors.Is(err, ErrExpired) {
		t.Fatal("QuorumError matches ErrExpired")
	}
	wrapped := fmt.Errorf("recover: %w", err)
	var qe *QuorumError
	if !errors.As(wrapped, &qe) || qe.Record != "r1" {
		t.Fatalf("errors.As through a wrap = %v", qe)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "policy: ") || !strings.Contains(msg, `"r1"`) || !strings.Contains(msg, "1 of the 2") {
		t.Errorf("message %q does not say which record and how many", msg)
	}
}

func TestGrantZero(t *testing.T) {
	var g Grant
	if g.Valid() {
		t.Fatal("zero Grant is valid")
	}
	if g.RequestID() != "" || g.KRAsFor("r1") != nil || g.ApprovalsFor("r1") != nil || len(g.Records()) != 0 {
		t.Fatalf("zero Grant names something: %+v", g)
	}
	// A grant with ok set but nothing in it is not valid either.
	if (Grant{ok: true}).Valid() || (Grant{ok: true, requestID: "req-1"}).Valid() {
		t.Fatal("an empty grant is valid")
	}
}

func TestGrantCopies(t *testing.T) {
	g, err := Evaluate(openRequest(), testSets(), []Approval{approve("kra-a", "r1"), approve("kra-b", "r1")}, now)
	if err != nil {
		t.Fatal(err)
	}
	k := g.KRAsFor("r1")
	k[0] = "mallory"
	_ = append(k[:1], "eve")
	ix := g.ApprovalsFor("r1")
	ix[0] = 99
	r := g.Records()
	r[0] = "other"
	if got := g.KRAsFor("r1"); !slices.Equal(got, []string{"kra-a", "kra-b"}) {
		t.Fatalf("KRAsFor changed through its result: %v", got)
	}
	if got := g.ApprovalsFor("r1"); !slices.Equal(got, []int{0, 1}) {
		t.Fatalf("ApprovalsFor changed through its result: %v", got)
	}
	if got := g.Records(); !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("Records changed through its result: %v", got)
	}
}

func TestEvaluateDoesNotModifyArguments(t *testing.T) {
	req := openRequest(record("r1", 1), record("r2", 2))
	sets := testSets()
	approvals := []Approval{approve("kra-c", "r2", "r1"), approve("kra-a", "r1"), approve("kra-g", "r2"), approve("kra-e", "r2")}
	reqCopy, apCopy := fmt.Sprintf("%#v", req), fmt.Sprintf("%#v", approvals)
	setsCopy := fmt.Sprintf("%#v", sets[1]) + fmt.Sprintf("%#v", sets[2])
	if _, err := Evaluate(req, sets, approvals, now); err != nil {
		t.Fatal(err)
	}
	Explain(req, sets, approvals, now)
	if fmt.Sprintf("%#v", req) != reqCopy || fmt.Sprintf("%#v", approvals) != apCopy || fmt.Sprintf("%#v", sets[1])+fmt.Sprintf("%#v", sets[2]) != setsCopy {
		t.Fatal("Evaluate or Explain modified its arguments")
	}
}

func TestExplain(t *testing.T) {
	r1, r2, r3 := record("r1", 1), record("r2", 2), RecordRef{ID: "r3", Owner: "carol@example.com", Epoch: 1, State: RecordActive}
	tests := []struct {
		name      string
		records   []RecordRef
		approvals []Approval
		want      []Rejection
	}{
		{name: "all counted", approvals: []Approval{approve("kra-a", "r1"), approve("kra-b", "r1"), approve("kra-c", "r1")}},
		{name: "bad signature", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.SignatureOK = false; a.RequestID = "x" })},
			want: []Rejection{{"kra-a", "", ReasonBadSignature}}},
		{name: "other request", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.RequestID = "x" })},
			want: []Rejection{{"kra-a", "", ReasonOtherRequest}}},
		{name: "not kra", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Role = RoleAuditor })},
			want: []Rejection{{"kra-a", "", ReasonNotKRA}}},
		{name: "name mismatch", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Name = "kra-b" })},
			want: []Rejection{{"kra-a", "", ReasonNotKRA}}},
		{name: "expired auth", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.SignerNotAfter = earlier })},
			want: []Rejection{{"kra-a", "", ReasonExpiredKRA}}},
		{name: "expired membership", approvals: []Approval{approve("kra-d", "r1")},
			want: []Rejection{{"kra-d", "r1", ReasonExpiredKRA}}},
		{name: "requester", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Serial = officer.Serial })},
			want: []Rejection{{"kra-a", "", ReasonRequester}}},
		{name: "requester taints other certificate", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Mailbox = officer.Mailbox })},
			want: []Rejection{{"kra-a", "", ReasonRequester}, {"kra-a", "", ReasonRequester}}},
		{name: "owner", approvals: []Approval{with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Mailbox = ownerBox })},
			want: []Rejection{{"kra-a", "r1", ReasonOwner}}},
		{name: "owner of one record", records: []RecordRef{r1, r3}, approvals: []Approval{with(approve("kra-a", "r1", "r3"), func(a *Approval) { a.Signer.Mailbox = "carol@example.com" })},
			want: []Rejection{{"kra-a", "r3", ReasonOwner}}},
		{name: "not in set, share claimed", approvals: []Approval{approve("kra-x", "r1")},
			want: []Rejection{{"kra-x", "r1", ReasonNotInSet}}},
		{name: "not in any set, nothing claimed", approvals: []Approval{approve("kra-x")},
			want: []Rejection{{"kra-x", "", ReasonNotInSet}}},
		{name: "other epoch member claims share", records: []RecordRef{r1, r2}, approvals: []Approval{approve("kra-e", "r1", "r2")},
			want: []Rejection{{"kra-e", "r1", ReasonNotInSet}}},
		{name: "other epoch member silent", records: []RecordRef{r1, r2}, approvals: []Approval{approve("kra-e", "r2")}},
		{name: "no share", records: []RecordRef{r1, r3}, approvals: []Approval{approve("kra-a", "r1")},
			want: []Rejection{{"kra-a", "r3", ReasonNoShare}}},
		{name: "no share for anything", approvals: []Approval{approve("kra-a", "r9")},
			want: []Rejection{{"kra-a", "r1", ReasonNoShare}}},
		{name: "duplicate", approvals: []Approval{approve("kra-a", "r1"), with(approve("kra-a", "r1"), func(a *Approval) { a.Signer.Serial = "renewed" }), approve("kra-b", "r1")},
			want: []Rejection{{"kra-a", "r1", ReasonDuplicate}}},
		{name: "in order", records: []RecordRef{r1, r3}, approvals: []Approval{
			with(approve("kra-a", "r1"), func(a *Approval) { a.SignatureOK = false }),
			approve("kra-b", "r3"),
			approve("kra-b", "r1", "r3"),
		}, want: []Rejection{{"kra-a", "", ReasonBadSignature}, {"kra-b", "r1", ReasonNoShare}, {"kra-b", "r3", ReasonDuplicate}}},
	}
	reasons := []string{ReasonBadSignature, ReasonOtherRequest, ReasonNotKRA, ReasonNotInSet, ReasonOtherKey, ReasonExpiredKRA, ReasonRequester, ReasonOwner, ReasonDuplicate, ReasonNoShare}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := tt.records
			if recs == nil {
				recs = []RecordRef{r1}
			}
			got := Explain(openRequest(recs...), testSets(), tt.approvals, now)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Explain() =\n%v\nwant\n%v", got, tt.want)
			}
			for _, r := range got {
				if !slices.Contains(reasons, r.Reason) {
					t.Errorf("reason %q is not in the fixed set", r.Reason)
				}
			}
		})
	}
}

// eligible is the rule of Evaluate written out again, independently and slowly: whether
// approval a counts for record r of req at now.
func eligible(req Request, sets map[uint32]RecoverySet, approvals []Approval, a Approval, r RecordRef, at time.Time) bool {
	authentic := func(b Approval) bool {
		return b.SignatureOK && b.RequestID == req.ID && b.Signer.Role == RoleKRA && b.Signer.Name == b.KRA && b.KRA != ""
	}
	if !authentic(a) || !a.SignerNotAfter.After(at) || !slices.Contains(a.Records, r.ID) {
		return false
	}
	set, ok := sets[r.Epoch]
	if !ok {
		return false
	}
	inSet := false
	for _, m := range set.KRAs {
		if m.Name == a.KRA && m.NotAfter.After(at) {
			inSet = true
		}
	}
	if !inSet {
		return false
	}
	// Every authentic approval of the same KRA speaks for who it is.
	for _, b := range approvals {
		if !authentic(b) || b.KRA != a.KRA {
			continue
		}
		s, q := b.Signer, req.Requester
		if strings.EqualFold(s.Name, q.Name) || strings.EqualFold(s.Serial, q.Serial) {
			return false
		}
		if s.Mailbox != "" && q.Mailbox != "" && SameMailbox(s.Mailbox, q.Mailbox) {
			return false
		}
		if SameMailbox(s.Mailbox, r.Owner) {
			return false
		}
	}
	return true
}

// TestEvaluateProperty: for random approvals, Evaluate grants if and only if every record has
// at least its quorum of distinct eligible KRAs, and a grant names exactly the quorum, each an
// eligible KRA whose approval index points at an eligible approval. An approval that counts
// nowhere is always explained.
func TestEvaluateProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(20250601))
	names := []string{"kra-a", "kra-b", "kra-c", "kra-d", "kra-e", "kra-f", "kra-g", "olivia", "kra-x"} // kra-x is in no set
	mailboxes := []string{"", ownerBox, "carol@example.com", officer.Mailbox, "kra@kra.example.com"}
	recordIDs := []string{"r1", "r2", "r3", "r9"}
	pick := func(xs []string) string { return xs[rng.Intn(len(xs))] }
	grants := 0
	for iter := 0; iter < 20000; iter++ {
		sets := map[uint32]RecoverySet{}
		for epoch := uint32(1); epoch <= 2; epoch++ {
			perm := rng.Perm(len(names) - 1)[:2+rng.Intn(4)]
			set := RecoverySet{Epoch: epoch}
			for _, i := range perm {
				na := later
				if rng.Intn(6) == 0 {
					na = earlier
				}
				set.KRAs = append(set.KRAs, SetMember{Name: names[i], NotAfter: na})
			}
			set.Quorum = 1 + rng.Intn(len(set.KRAs))
			sets[epoch] = set
		}
		req := openRequest(
			RecordRef{ID: "r1", Owner: ownerBox, Epoch: 1, State: RecordActive},
			RecordRef{ID: "r2", Owner: "carol@example.com", Epoch: uint32(1 + rng.Intn(2)), State: RecordActive},
			RecordRef{ID: "r3", Owner: "dave@example.com", Epoch: 2, State: RecordActive},
		)
		req.Records = req.Records[:1+rng.Intn(3)]
		var approvals []Approval
		for n := rng.Intn(10); n > 0; n-- {
			name := pick(names)
			a := Approval{
				RequestID:      "req-1",
				KRA:            name,
				Signer:         Principal{Role: RoleKRA, Name: name, Mailbox: pick(mailboxes), Serial: fmt.Sprintf("s%d", rng.Intn(4))},
				SignerNotAfter: later,
				SignatureOK:    rng.Intn(8) != 0,
			}
			if rng.Intn(8) == 0 {
				a.RequestID = "req-2"
			}
			if rng.Intn(8) == 0 {
				a.Signer.Role = Roles()[rng.Intn(len(Roles()))]
			}
			if rng.Intn(8) == 0 {
				a.Signer.Name = pick(names)
			}
			if rng.Intn(8) == 0 {
				a.SignerNotAfter = earlier
			}
			if rng.Intn(12) == 0 {
				a.Signer.Serial = officer.Serial
			}
			for _, id := range recordIDs {
				if rng.Intn(4) != 0 {
					a.Records = append(a.Records, id)
				}
			}
			approvals = append(approvals, a)
		}

		// The reference answer.
		wantGrant := true
		for _, r := range req.Records {
			distinct := map[string]bool{}
			for _, a := range approvals {
				if eligible(req, sets, approvals, a, r, now) {
					distinct[a.KRA] = true
				}
			}
			if len(distinct) < sets[r.Epoch].Quorum {
				wantGrant = false
			}
		}

		g, err := Evaluate(req, sets, approvals, now)
		if wantGrant != (err == nil) || g.Valid() != (err == nil) {
			t.Fatalf("iteration %d: Evaluate() = %v, reference grants: %v\nsets %+v\nreq %+v\napprovals %+v", iter, err, wantGrant, sets, req, approvals)
		}
		if err != nil && !errors.Is(err, ErrQuorum) {
			t.Fatalf("iteration %d: unexpected error %v", iter, err)
		}
		counted := make([]bool, len(approvals))
		if err == nil {
			grants++
			for _, r := range req.Records {
				distinct := map[string]bool{}
				for _, a := range approvals {
					if eligible(req, sets, approvals, a, r, now) {
						distinct[a.KRA] = true
					}
				}
				got, idx := g.KRAsFor(r.ID), g.ApprovalsFor(r.ID)
				if len(got) != len(distinct) || g.Quorum(r.ID) != sets[r.Epoch].Quorum || len(idx) != len(got) || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
					t.Fatalf("iteration %d: record %s: grant names %v (%v), quorum %d", iter, r.ID, got, idx, sets[r.Epoch].Quorum)
				}
				for j, i := range idx {
					if approvals[i].KRA != got[j] || !eligible(req, sets, approvals, approvals[i], r, now) {
						t.Fatalf("iteration %d: record %s: %s from ineligible approval %d %+v", iter, r.ID, got[j], i, approvals[i])
					}
				}
			}
		}
		// Explain agrees with the reference: an approval eligible for no record is explained,
		// and no eligible approval is explained away for a record it counts for, unless a
		// duplicate of its KRA came first.
		for i, a := range approvals {
			for _, r := range req.Records {
				if eligible(req, sets, approvals, a, r, now) {
					counted[i] = true
				}
			}
		}
		rej := Explain(req, sets, approvals, now)
		for i, a := range approvals {
			if counted[i] {
				continue
			}
			found := false
			for _, r := range rej {
				found = found || r.KRA == a.KRA
			}
			if !found {
				t.Fatalf("iteration %d: approval %d %+v counts nowhere and is not explained: %v", iter, i, a, rej)
			}
		}
	}
	if grants < 500 {
		t.Fatalf("only %d of the random cases granted; the generator does not test granting", grants)
	}
}
