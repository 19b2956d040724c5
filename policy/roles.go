package policy

import (
	"errors"
	"fmt"
)

// ErrUnknownRole means a role name is not one of the five roles.
var ErrUnknownRole = errors.New("policy: unknown role")

// Role is what an authenticated caller is. Roles are disjoint on purpose: the person who sets
// up the recovery set is not the one who asks for a recovery, who is not one of those who
// approve it, and none of them reads the audit trail as its auditor.
type Role string

// The roles.
const (
	RoleAdmin    Role = "admin"    // CA administrator: pending requests, recovery set, bulk jobs
	RoleOfficer  Role = "officer"  // recovery officer: opens recovery requests
	RoleAuditor  Role = "auditor"  // reads and verifies the audit trail
	RoleKRA      Role = "kra"      // key recovery agent: approves recoveries with its own token
	RoleEnrollee Role = "enrollee" // a mailbox owner enrolling with a code
)

// Action is something a role may be allowed to do. Each HTTP route of the appliance names
// exactly one action; [Authorize] decides.
type Action string

// The actions.
const (
	ActEnroll          Action = "enroll"            // submit a certificate request
	ActAdminPending    Action = "admin.pending"     // list, issue or deny pending requests
	ActRecoverySet     Action = "recovery.set"      // change the recovery set (KRAs and quorum)
	ActRecoverySetRead Action = "recovery.set.read" // show the current recovery set
	ActRecoveryRequest Action = "recovery.request"  // open a recovery request, fetch its result, cancel it
	ActRecoveryRead    Action = "recovery.read"     // list and show recovery requests
	ActRecoveryApprove Action = "recovery.approve"  // approve a recovery request as a KRA
	ActReseal          Action = "reseal"            // open and complete a reseal to the current recovery set
	ActAudit           Action = "audit"             // read and verify the audit trail
	ActBulk            Action = "bulk"              // submit and follow bulk jobs, release their passwords
	ActWhoami          Action = "whoami"            // show the caller's own credential
	// ActRevoke revokes any subscriber certificate the CA issued. A subscriber without it may
	// still revoke the certificates of their own mailbox: see [AuthorizeRevoke].
	ActRevoke Action = "revoke"
	// ActRevokeCredential also revokes the appliance's own people's certificates: operator
	// credentials and KRA certificates. Not a route of its own: see [AuthorizeRevoke].
	ActRevokeCredential Action = "revoke.credential"
)

// permissions is the whole access matrix.
var permissions = map[Role]map[Action]bool{
	RoleAdmin: {ActEnroll: true, ActAdminPending: true, ActRecoverySet: true, ActBulk: true, ActReseal: true,
		ActRevoke: true, ActRevokeCredential: true,
		ActRecoverySetRead: true, ActRecoveryRead: true, ActWhoami: true},
	RoleOfficer: {ActRecoveryRequest: true, ActRevoke: true,
		ActRecoverySetRead: true, ActRecoveryRead: true, ActWhoami: true},
	RoleAuditor: {ActAudit: true,
		ActRecoverySetRead: true, ActRecoveryRead: true, ActWhoami: true},
	RoleKRA: {ActRecoveryApprove: true,
		ActRecoverySetRead: true, ActRecoveryRead: true, ActWhoami: true},
	RoleEnrollee: {ActEnroll: true},
}

// Roles returns every role, in a fixed order.
func Roles() []Role {
	return []Role{RoleAdmin, RoleOfficer, RoleAuditor, RoleKRA, RoleEnrollee}
}

// ParseRole returns the role named s, or an error wrapping [ErrUnknownRole].
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if _, ok := permissions[r]; !ok {
		return "", fmt.Errorf("%w: %q (known: admin, officer, auditor, kra, enrollee)", ErrUnknownRole, s)
	}
	return r, nil
}

// Allowed reports whether role r may do action a. Unknown roles and actions are never allowed.
func Allowed(r Role, a Action) bool { return permissions[r][a] }

// May is [Allowed] as a method.
func (r Role) May(a Action) bool { return Allowed(r, a) }
