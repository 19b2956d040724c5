package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/policy"
)

// TestStatusOfRefusedAction: a refusal of policy.Authorize is a 403 whose message names the
// role the action needs (as the handlers' role lists said before), and it is counted as a
// not-allowed recovery step.
func TestStatusOfRefusedAction(t *testing.T) {
	tests := []struct {
		name   string
		p      policy.Principal
		action policy.Action
		want   string
	}{
		{"officer lists pending", policy.Principal{Role: policy.RoleOfficer}, policy.ActAdminPending, "admin role"},
		{"auditor opens a recovery", policy.Principal{Role: policy.RoleAuditor}, policy.ActRecoveryRequest, "officer role"},
		{"officer approves", policy.Principal{Role: policy.RoleOfficer}, policy.ActRecoveryApprove, "kra role"},
		{"enrollee reads the trail", policy.Principal{Role: policy.RoleEnrollee}, policy.ActAudit, "auditor role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := policy.Authorize(tt.p, tt.action, policy.Resource{})
			code, msg := status(err)
			if code != http.StatusForbidden || !strings.Contains(msg, tt.want) {
				t.Errorf("status(%v) = %d %q, want 403 naming %q", err, code, msg, tt.want)
			}
			if got := recoveryReason(err); got != "not-allowed" {
				t.Errorf("recoveryReason = %q, want not-allowed", got)
			}
		})
	}
}
