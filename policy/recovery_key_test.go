package policy

import (
	"errors"
	"slices"
	"testing"
)

// keyedSet is a 2-of-3 set for epoch 1 whose members have unwrap keys: kra-a holds key-a and
// so on.
func keyedSet() map[uint32]RecoverySet {
	s := RecoverySet{Epoch: 1, Quorum: 2, KRAs: members("kra-a", "kra-b", "kra-c")}
	for i := range s.KRAs {
		s.KRAs[i].Key = "key-" + s.KRAs[i].Name[len("kra-"):]
	}
	return map[uint32]RecoverySet{1: s}
}

// keyed is approve(name, "r1") by a credential enrolled with unwrap key key.
func keyed(name, key string) Approval {
	return with(approve(name, "r1"), func(a *Approval) { a.UnwrapKey = key })
}

// TestEvaluateBindsMembersToKeys: an approval counts for a set member only when the signer's
// credential was enrolled with that member's unwrap key. A second credential issued under a
// member's name with other keys is not the member, and one unwrap key never counts twice.
func TestEvaluateBindsMembersToKeys(t *testing.T) {
	twoNamesOneKey := keyedSet()
	s := twoNamesOneKey[1]
	s.KRAs[2].Key = "key-b" // kra-c's certificate holds kra-b's key
	twoNamesOneKey[1] = s

	tests := []struct {
		name       string
		sets       map[uint32]RecoverySet
		approvals  []Approval
		wantErr    error
		wantKRAs   []string
		wantReason string // a rejection every test expects, "" for none
	}{
		{name: "two members with their own keys", sets: keyedSet(),
			approvals: []Approval{keyed("kra-a", "key-a"), keyed("kra-b", "key-b")}, wantKRAs: []string{"kra-a", "kra-b"}},
		{name: "a second credential under a member's name with another key", sets: keyedSet(),
			approvals: []Approval{keyed("kra-a", "key-evil"), keyed("kra-b", "key-b")}, wantErr: ErrQuorum, wantReason: ReasonOtherKey},
		{name: "a credential whose key is unknown", sets: keyedSet(),
			approvals: []Approval{keyed("kra-a", ""), keyed("kra-b", "key-b")}, wantErr: ErrQuorum, wantReason: ReasonOtherKey},
		{name: "another member's key under a member's name", sets: keyedSet(),
			approvals: []Approval{keyed("kra-a", "key-b"), keyed("kra-b", "key-b")}, wantErr: ErrQuorum, wantReason: ReasonOtherKey},
		{name: "a set where two members share one unwrap key", sets: twoNamesOneKey,
			approvals: []Approval{keyed("kra-b", "key-b"), keyed("kra-c", "key-b")}, wantErr: ErrInvalidSet},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := openRequest()
			g, err := Evaluate(req, tt.sets, tt.approvals, now)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Evaluate() = %v, want %v", err, tt.wantErr)
			}
			if err == nil && !slices.Equal(g.KRAsFor("r1"), tt.wantKRAs) {
				t.Errorf("KRAsFor(r1) = %v, want %v", g.KRAsFor("r1"), tt.wantKRAs)
			}
			if tt.wantReason != "" {
				rs := Explain(req, tt.sets, tt.approvals, now)
				if !slices.ContainsFunc(rs, func(r Rejection) bool { return r.Reason == tt.wantReason && r.KRA == "kra-a" }) {
					t.Errorf("Explain() = %+v, want kra-a rejected for %s", rs, tt.wantReason)
				}
			}
		})
	}
}

// TestTallyCountsOneKeyOnce: even in a set that Evaluate refuses (two members with one unwrap
// key), the tally that Explain shares with it never counts one key for two members.
func TestTallyCountsOneKeyOnce(t *testing.T) {
	sets := keyedSet()
	s := sets[1]
	s.KRAs[2].Key = "key-b"
	sets[1] = s
	approvals := []Approval{keyed("kra-b", "key-b"), keyed("kra-c", "key-b")}
	counted, rejections := tally(openRequest(), sets, approvals, now)
	if len(counted["r1"]) != 1 {
		t.Errorf("counted %v for r1, want one KRA for the one key", counted["r1"])
	}
	want := Rejection{KRA: "kra-c", Record: "r1", Reason: ReasonDuplicate}
	if !slices.Contains(rejections, want) {
		t.Errorf("rejections %+v, want %+v", rejections, want)
	}
}
