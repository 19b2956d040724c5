package policy

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestEvaluateReseal: a reseal moves the records whose epoch's quorum approved and leaves the
// others, reported, rather than let one epoch that can no longer reach its quorum (a KRA's
// token lost) block the reseal of every other. With no record approved it fails as Evaluate
// does; a recovery is never granted in part.
func TestEvaluateReseal(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	admin := Principal{Role: RoleAdmin, Name: "ada", Serial: "a1"}
	member := func(names ...string) []SetMember {
		var out []SetMember
		for _, n := range names {
			out = append(out, SetMember{Name: n, NotAfter: now.Add(time.Hour)})
		}
		return out
	}
	sets := map[uint32]RecoverySet{
		1: {Epoch: 1, Quorum: 2, KRAs: member("kra1", "kra2", "kra3")},
		2: {Epoch: 2, Quorum: 2, KRAs: member("kra4", "kra5", "kra6")},
	}
	records := []RecordRef{
		{ID: "r1", Owner: "a@example.org", Epoch: 1, State: RecordActive},
		{ID: "r2", Owner: "b@example.org", Epoch: 2, State: RecordActive},
		{ID: "r3", Owner: "c@example.org", Epoch: 1, State: RecordActive},
	}
	approve := func(kra string, recs ...string) Approval {
		return Approval{RequestID: "q", KRA: kra, Signer: Principal{Role: RoleKRA, Name: kra, Serial: kra + "-auth"},
			SignerNotAfter: now.Add(time.Hour), Records: recs, SignatureOK: true}
	}
	req := Request{ID: "q", Reseal: true, Requester: admin, Records: records, CreatedAt: now.Add(-time.Minute),
		ExpiresAt: now.Add(time.Hour), State: RequestOpen}

	tests := []struct {
		name      string
		req       Request
		approvals []Approval
		wantErr   error
		granted   []string
		left      []QuorumError
	}{
		{"epoch 1 met, epoch 2 short", req,
			[]Approval{approve("kra1", "r1", "r3"), approve("kra2", "r1", "r3"), approve("kra4", "r2")}, nil,
			[]string{"r1", "r3"}, []QuorumError{{Record: "r2", Have: 1, Need: 2}}},
		{"every epoch met", req,
			[]Approval{approve("kra1", "r1", "r3"), approve("kra3", "r1", "r3"), approve("kra4", "r2"), approve("kra6", "r2")}, nil,
			[]string{"r1", "r2", "r3"}, nil},
		{"no epoch met", req, []Approval{approve("kra1", "r1", "r3"), approve("kra4", "r2")}, ErrQuorum, nil, nil},
		{"a recovery is not granted in part", func() Request {
			r := req
			r.Reseal, r.Requester = false, Principal{Role: RoleOfficer, Name: "olga", Serial: "o1"}
			return r
		}(), []Approval{approve("kra1", "r1", "r3"), approve("kra2", "r1", "r3")}, ErrNotAllowed, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, left, err := EvaluateReseal(tt.req, sets, tt.approvals, now)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("EvaluateReseal: %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if g.Valid() || left != nil {
					t.Errorf("a refusal granted %v and left %v", g.Records(), left)
				}
				return
			}
			if got := g.Records(); !slices.Equal(got, tt.granted) {
				t.Errorf("granted %v, want %v", got, tt.granted)
			}
			if !slices.Equal(left, tt.left) {
				t.Errorf("left %+v, want %+v", left, tt.left)
			}
			for _, id := range tt.granted {
				if len(g.KRAsFor(id)) < g.Quorum(id) || g.Quorum(id) == 0 {
					t.Errorf("record %s granted with %v, quorum %d", id, g.KRAsFor(id), g.Quorum(id))
				}
			}
			for _, l := range left {
				if g.KRAsFor(l.Record) != nil || g.Quorum(l.Record) != 0 {
					t.Errorf("record %s left out, yet granted %v", l.Record, g.KRAsFor(l.Record))
				}
			}
		})
	}
}
