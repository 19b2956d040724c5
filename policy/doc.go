// Package policy holds keyarc's pure rules: certificate templates (the built-in ones and those
// from the configuration file), the checks a certificate signing request must pass before the
// CA looks at it, the syntax of a mailbox, which role may do which action, and the rules of
// key recovery.
//
// # Authorization
//
// [Authorize] is the one access decision: a [Principal], an [Action], a [Resource]. Every HTTP
// route of the appliance names its action and asks it; the matrix behind [Allowed] decides, and
// a refusal wraps [ErrForbidden] with a message naming the action and the roles that hold it.
//
// # Recovery
//
// [CheckRecoveryRequest] decides whether an officer may open a recovery request,
// [CheckApprover] whether a KRA may submit an approval, and [Evaluate] whether the approvals
// meet the quorum of every record's recovery set. Only [Evaluate] makes a valid [Grant] (its
// fields are unexported), and the escrow engine opens a record only with one, so recovery
// without a quorum does not compile. [Explain] gives the reason each approval was not counted.
//
// # What it must not import
//
// policy imports the standard library only. It does no I/O, no logging, no metrics and has no
// clock of its own: anything that depends on time takes the time as an argument. It knows
// nothing of HSMs, storage or HTTP; cmd/keyarc decodes templates from YAML (strictly) into
// []Template and hands them to [Templates].
//
// # Errors
//
// Template validation fails with a *[FieldError] that names the template and the YAML field
// (errors.Is(err, [ErrInvalidTemplate]) holds). A request that breaks the rules fails with a
// *[RejectError] whose message is meant for the person who sent the request;
// errors.Is(err, [ErrRejected]) holds, and so does errors.Is with the more precise sentinel
// ([ErrSignature], [ErrWeakSignature], [ErrKeyNotAllowed], [ErrExtension], [ErrSubject],
// [ErrMailboxMismatch]). Recovery checks return errors wrapping one sentinel each
// ([ErrNotAllowed], [ErrOwnKey], [ErrExpired], ...); a missing quorum is a *[QuorumError]
// that names the record and matches [ErrQuorum].
//
// # Concurrency
//
// Everything here is safe for concurrent use as long as a [Template] is not modified while it
// is in use: [Templates] returns fresh copies that the caller treats as read-only. The
// recovery functions only read their arguments, and a [Grant] is immutable.
package policy
