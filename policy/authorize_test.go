package policy

import (
	"errors"
	"strings"
	"testing"
)

// TestAuthorizeRoutes pins who may call each HTTP route of the appliance. The role lists
// are those the handlers carried before the decision moved here (cmd/keyarc requireRole and
// principal calls); a change to this table is a change of the product's access rules.
func TestAuthorizeRoutes(t *testing.T) {
	operators := []Role{RoleAdmin, RoleOfficer, RoleAuditor, RoleKRA}
	tests := []struct {
		name   string // the routes that name the action
		action Action
		roles  []Role // every role allowed; all others get ErrForbidden
	}{
		{"GET /api/v1/pending, POST /api/v1/pending/{id}/issue|deny", ActAdminPending, []Role{RoleAdmin}},
		{"GET /api/v1/recovery-set", ActRecoverySetRead, operators},
		{"POST /api/v1/recovery-set", ActRecoverySet, []Role{RoleAdmin}},
		{"GET /api/v1/whoami", ActWhoami, operators},
		{"GET /api/v1/audit", ActAudit, []Role{RoleAuditor}},
		{"POST|GET /api/v1/bulk, GET /api/v1/bulk/{id}[/results], POST /api/v1/bulk/{id}/passwords", ActBulk, []Role{RoleAdmin}},
		{"POST /api/v1/reseals, POST /api/v1/reseals/{id}/complete", ActReseal, []Role{RoleAdmin}},
		{"POST /api/v1/recoveries, POST /api/v1/recoveries/{id}/fetch|cancel", ActRecoveryRequest, []Role{RoleOfficer}},
		{"GET /api/v1/recoveries, GET /api/v1/recoveries/{id}", ActRecoveryRead, operators},
		{"POST /api/v1/recoveries/{id}/approvals", ActRecoveryApprove, []Role{RoleKRA}},
		{"POST /api/v1/revocations (any certificate; subscribers: AuthorizeRevoke)", ActRevoke, []Role{RoleAdmin, RoleOfficer}},
	}
	everyone := append(Roles(), Role(""), Role("root"))
	for _, tt := range tests {
		allowed := map[Role]bool{}
		for _, r := range tt.roles {
			allowed[r] = true
		}
		for _, role := range everyone {
			t.Run(tt.name+"/"+string(role), func(t *testing.T) {
				err := Authorize(Principal{Role: role, Name: "n"}, tt.action, Resource{})
				var wantErr error
				if !allowed[role] {
					wantErr = ErrForbidden
				}
				if !errors.Is(err, wantErr) || (wantErr == nil && err != nil) {
					t.Fatalf("Authorize(%q, %q) = %v, want %v", role, tt.action, err, wantErr)
				}
				if err != nil {
					// The refusal names the permission and the roles that hold it.
					for _, r := range tt.roles {
						if !strings.Contains(err.Error(), string(r)+" role") && !strings.Contains(err.Error(), " "+string(r)+" ") {
							t.Errorf("message %q does not name role %s", err, r)
						}
					}
					if !strings.Contains(err.Error(), string(tt.action)) {
						t.Errorf("message %q does not name action %s", err, tt.action)
					}
				}
			})
		}
	}
}

func TestAuthorizeUnknownAction(t *testing.T) {
	for _, role := range Roles() {
		if err := Authorize(Principal{Role: role}, Action("shutdown"), Resource{}); !errors.Is(err, ErrForbidden) {
			t.Errorf("Authorize(%q, shutdown) = %v, want ErrForbidden", role, err)
		}
	}
}

func TestAuthorizeMessage(t *testing.T) {
	tests := []struct {
		name string
		p    Principal
		a    Action
		r    Resource
		want []string
	}{
		{"no role", Principal{}, ActAdminPending, Resource{}, []string{"admin.pending", "admin role", "has no role"}},
		{"officer on pending", Principal{Role: RoleOfficer}, ActAdminPending, Resource{Kind: "pending request", ID: "p1"}, []string{"pending request p1", "admin role", "has officer"}},
		{"long id", Principal{Role: RoleAuditor}, ActBulk, Resource{Kind: "bulk job", ID: strings.Repeat("x", 200)}, []string{"bulk job " + strings.Repeat("x", 80) + "..."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Authorize(tt.p, tt.a, tt.r)
			if !errors.Is(err, ErrForbidden) {
				t.Fatalf("err = %v, want ErrForbidden", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q lacks %q", err, w)
				}
			}
		})
	}
}
