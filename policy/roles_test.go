package policy

import (
	"errors"
	"testing"
)

func TestAllowed(t *testing.T) {
	all := []Action{ActEnroll, ActAdminPending, ActRecoverySet, ActRecoveryRequest, ActRecoveryApprove, ActAudit, ActBulk}
	want := map[Role][]Action{
		RoleAdmin:    {ActEnroll, ActAdminPending, ActRecoverySet, ActBulk},
		RoleOfficer:  {ActRecoveryRequest},
		RoleAuditor:  {ActAudit},
		RoleKRA:      {ActRecoveryApprove},
		RoleEnrollee: {ActEnroll},
		Role("root"): nil,
		Role(""):     nil,
	}
	for role, acts := range want {
		allowed := map[Action]bool{}
		for _, a := range acts {
			allowed[a] = true
		}
		for _, a := range append(all, Action("shutdown")) {
			if got := Allowed(role, a); got != allowed[a] {
				t.Errorf("Allowed(%q, %q) = %v", role, a, got)
			}
			if role.May(a) != Allowed(role, a) {
				t.Errorf("May and Allowed disagree")
			}
		}
	}
}

func TestSeparationOfDuties(t *testing.T) {
	// No role may both ask for a recovery and approve it, or both change the recovery set and
	// approve or request a recovery.
	for _, r := range Roles() {
		if r.May(ActRecoveryRequest) && r.May(ActRecoveryApprove) {
			t.Errorf("%s may request and approve", r)
		}
		if r.May(ActRecoverySet) && (r.May(ActRecoveryApprove) || r.May(ActRecoveryRequest)) {
			t.Errorf("%s may set the recovery set and recover", r)
		}
	}
}

func TestParseRole(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Role
		wantErr error
	}{
		{name: "admin", in: "admin", want: RoleAdmin},
		{name: "kra", in: "kra", want: RoleKRA},
		{name: "enrollee", in: "enrollee", want: RoleEnrollee},
		{name: "upper", in: "Admin", wantErr: ErrUnknownRole},
		{name: "empty", in: "", wantErr: ErrUnknownRole},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRole(tt.in)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("ParseRole(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
}
