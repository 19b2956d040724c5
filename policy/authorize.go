package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrForbidden means an authenticated caller's role does not hold the permission an action
// needs. The error's message names the action and the roles that hold it.
var ErrForbidden = errors.New("policy: forbidden")

// Resource is what an action is done to, for the message of a refusal: Kind is a noun such as
// "pending request" or "bulk job", ID its identifier ("" for a collection). The decision of
// [Authorize] depends on the role and the action only; whether a caller owns a particular
// object (the officer who opened a recovery, the admin who opened a reseal) is decided by the
// recovery rules and the engine, which see the object.
type Resource struct {
	Kind, ID string
}

// Authorize is the one authorization decision of the appliance: it returns nil when p's role
// holds the permission for action a on r, and otherwise an error wrapping [ErrForbidden] that
// names the action, the roles that may do it and the role p has. Unknown roles and actions
// are never allowed. It is safe for concurrent use.
func Authorize(p Principal, a Action, r Resource) error {
	if Allowed(p.Role, a) {
		return nil
	}
	var holders []string
	for _, role := range Roles() {
		if Allowed(role, a) {
			holders = append(holders, string(role))
		}
	}
	need := "a permission no role holds"
	if len(holders) > 0 {
		need = "the " + strings.Join(holders, " or ") + " role"
	}
	on := ""
	if r.Kind != "" {
		on = " on " + r.Kind
		if r.ID != "" {
			on += " " + truncate(r.ID)
		}
	}
	have := string(p.Role)
	if have == "" {
		have = "no role"
	}
	return fmt.Errorf("%w: %s%s needs %s; the presented credential has %s", ErrForbidden, truncate(string(a)), on, need, truncate(have))
}
