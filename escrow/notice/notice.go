// Package notice tells subscribers, by mail, what happens to their escrowed keys (S/MIME BR
// §4.12.1: "The CA SHALL notify Subscribers when their Private Keys are escrowed"): that a key
// was escrowed, that a recovery of it was requested, and how the recovery ended: completed,
// cancelled, or expired.
//
// It owns the notice queue, one file per notice or per batch of notices in a folder ([Queue]:
// written to a temporary file, synced, renamed, the folder synced; deleted once the relay
// accepted the message), and the [Notifier], which sends the queued notices through an SMTP
// relay ([SMTP]) in one goroutine, retrying with back-off. Enqueueing never waits for the
// relay, so a relay that is down never delays or fails an enrollment, a bulk job or a
// recovery. What is queued comes from the audit trail (escrow/notice/feed): a change and the
// entry its notice is read from commit together, so no notice is lost between a commit and its
// queue file.
//
// # Batches
//
// A bulk job escrows thousands of keys: their notices are queued as batches
// ([Notifier.NotifyBatch], [Queue.PutBatch]: one file, one fsync, for many). The sender waits
// until the job ends ([Notifier.Flush]), or no batch was queued for a few seconds, or the oldest
// has waited 10 minutes, then merges the events of the batches due into one message per
// mailbox, listing its serials. Each message accepted marks its events done in the batches'
// progress files (appended, synced at the end of each pass); a batch whose events are all done
// is removed. Notices due at once ([Notifier.NotifyNow]) are a notice file, or a batch made due
// at once.
//
// What is guaranteed: a notice queued is sent at least once (a crash, a restart or a relay that
// is down only delays it). A message the relay accepted is sent again only if the process stops
// between the relay's answer and the progress record (that one message, once), or if the
// machine loses power before the pass's sync (the messages of that pass, once): never more than
// once per restart. A message sent again has the same Message-ID. A process stopped between
// queueing notices and recording that in the store queues them again at its next start, under
// new IDs.
//
// A notice holds no secret: a mailbox, certificate serials, what happened and when, and for a
// recovery the request ID and who asked. Never a key, code, password or share.
//
// It imports the SMTP client (github.com/emersion/go-smtp) and Prometheus; it must not import
// escrow, the store, hsm or the HTTP server.
//
// # Concurrency
//
// [Notifier.Notify], [Notifier.NotifyBatch], [Queue.Put] and [Queue.PutBatch] are safe for
// concurrent use. [Notifier.Run] is the one sender; run it once.
package notice

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind is what happened to a subscriber's key.
type Kind string

// The kinds of notice.
const (
	// Escrowed: the private key of an encryption certificate was archived.
	Escrowed Kind = "escrowed"
	// RecoveryRequested: a recovery officer asked for the archived key.
	RecoveryRequested Kind = "recovery-requested"
	// RecoveryCompleted: the key was recovered and delivered to the officer who asked.
	RecoveryCompleted Kind = "recovery-completed"
	// RecoveryCancelled: the officer who asked withdrew the request; no key was delivered.
	RecoveryCancelled Kind = "recovery-cancelled"
	// RecoveryExpired: the request expired before it was completed; no key was delivered.
	RecoveryExpired Kind = "recovery-expired"
)

// ErrInvalid: the event cannot be sent (unknown kind, no mailbox, a line break in a field).
var ErrInvalid = errors.New("notice: invalid event")

// Event is one notice for one mailbox. It holds no secret by construction: there is no field
// for one.
type Event struct {
	Kind Kind `json:"kind"`
	// Mailbox is the subscriber's address, the certificate's rfc822Name.
	Mailbox string `json:"mailbox"`
	// Serials are the certificates (hex) whose key this is about.
	Serials []string `json:"serials"`
	// Time is when it happened (UTC).
	Time time.Time `json:"time"`
	// Request is the recovery request's ID (recovery notices only).
	Request string `json:"request,omitempty"`
	// RequestedBy is the name of the recovery officer who asked (recovery notices only).
	RequestedBy string `json:"requested_by,omitempty"`
	// CancelledBy, for a recovery cancelled by someone other than the officer who asked (an
	// administrator whose reseal closed it), says who: "administrator NAME".
	CancelledBy string `json:"cancelled_by,omitempty"`
}

// Validate checks that e can become a message: a known kind, a mailbox, and no field that
// could break out of its header or line.
func (e Event) Validate() error {
	switch e.Kind {
	case Escrowed:
	case RecoveryRequested, RecoveryCompleted, RecoveryCancelled, RecoveryExpired:
		if e.Request == "" {
			return fmt.Errorf("%w: a recovery notice needs its request ID", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: unknown kind %q", ErrInvalid, e.Kind)
	}
	if e.Mailbox == "" || !strings.Contains(e.Mailbox, "@") {
		return fmt.Errorf("%w: no mailbox", ErrInvalid)
	}
	fields := append([]string{e.Mailbox, e.Request, e.RequestedBy, e.CancelledBy}, e.Serials...)
	for _, f := range fields {
		if strings.ContainsFunc(f, isControl) {
			return fmt.Errorf("%w: a field holds a control character", ErrInvalid)
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// Message is e as an RFC 5322 message from the address from, with the given Message-ID (the
// queued notice's ID, so that a notice sent twice after a crash is recognisably the same). The
// body is plain US-ASCII text where the event's fields are.
func (e Event) Message(from, id string, caName string) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	if strings.ContainsFunc(from+id+caName, isControl) {
		return nil, fmt.Errorf("%w: a header holds a control character", ErrInvalid)
	}
	if caName == "" {
		caName = "keyarc"
	}
	subject, body := e.text(caName)
	var b strings.Builder
	domain := "keyarc.invalid"
	if i := strings.LastIndexByte(from, '@'); i >= 0 {
		domain = from[i+1:]
	}
	fmt.Fprintf(&b, "From: %s\r\n", from)
	fmt.Fprintf(&b, "To: %s\r\n", e.Mailbox)
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Date: %s\r\n", e.Time.UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", id, domain)
	b.WriteString("Auto-Submitted: auto-generated\r\n")
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	for _, line := range strings.Split(body, "\n") {
		b.WriteString(line)
		b.WriteString("\r\n")
	}
	return []byte(b.String()), nil
}

// maxInlineSerials is the longest list of serials written within a line of a message's text;
// a longer one is written one serial a line.
const maxInlineSerials = 100

// text is the subject and body of e.
func (e Event) text(caName string) (subject, body string) {
	when := e.Time.UTC().Format("2006-01-02 15:04:05 UTC")
	certs := "certificate (serial " + strings.Join(e.Serials, ", ") + ")"
	switch list := strings.Join(e.Serials, ", "); {
	case len(e.Serials) == 1:
	case len(list) <= maxInlineSerials:
		certs = "certificates (serials " + list + ")"
	default:
		// A mailbox with many keys (a bulk job's): one serial a line. RFC 5322 bounds a line
		// at 998 characters, and relays enforce it (some drop the connection, some refuse the
		// message for good).
		certs = "certificates (serials\n  " + strings.Join(e.Serials, ",\n  ") + ")"
	}
	var b strings.Builder
	switch e.Kind {
	case Escrowed:
		subject = "Your encryption key has been escrowed"
		if len(e.Serials) > 1 {
			fmt.Fprintf(&b, "On %s, %s issued S/MIME encryption %s\nto %s and escrowed their private keys.\n\n", when, caName, certs, e.Mailbox)
		} else {
			fmt.Fprintf(&b, "On %s, %s issued an S/MIME encryption %s\nto %s and escrowed its private key.\n\n", when, caName, certs, e.Mailbox)
		}
		b.WriteString("Escrowed means a copy of the private key is archived, sealed so that it can be\n" +
			"recovered only with the approval of a quorum of the organisation's key recovery\n" +
			"agents, for instance if you lose your key and need to read old mail again.\n\n" +
			"You will be told by mail whenever a recovery of this key is requested, and when\n" +
			"one is completed.\n")
	case RecoveryRequested:
		subject = "A recovery of your escrowed key was requested"
		fmt.Fprintf(&b, "On %s, recovery officer %s asked %s to recover the escrowed\nprivate key of your %s for %s.\n\n", when, e.RequestedBy, caName, certs, e.Mailbox)
		fmt.Fprintf(&b, "Recovery request: %s\n\n", e.Request)
		b.WriteString("The key is released only after a quorum of key recovery agents approves.\n" +
			"If you did not expect this, contact your security team and quote the request.\n")
	case RecoveryCompleted:
		subject = "Your escrowed key was recovered"
		fmt.Fprintf(&b, "On %s, the escrowed private key of your %s\nfor %s was recovered and delivered to recovery officer %s.\n\n", when, certs, e.Mailbox, e.RequestedBy)
		fmt.Fprintf(&b, "Recovery request: %s\n\n", e.Request)
		b.WriteString("A quorum of key recovery agents approved it. If you did not expect this,\n" +
			"contact your security team and quote the request.\n")
	case RecoveryCancelled:
		subject = "The recovery of your escrowed key was cancelled"
		if e.CancelledBy != "" {
			fmt.Fprintf(&b, "On %s, %s cancelled the request of recovery officer %s to\nrecover the escrowed private key of your %s for %s.\n\n", when, e.CancelledBy, e.RequestedBy, certs, e.Mailbox)
		} else {
			fmt.Fprintf(&b, "On %s, recovery officer %s cancelled the request to recover the\nescrowed private key of your %s for %s.\n\n", when, e.RequestedBy, certs, e.Mailbox)
		}
		fmt.Fprintf(&b, "Recovery request: %s\n\n", e.Request)
		b.WriteString("The request is closed: the key was not recovered, and this request can no\n" +
			"longer be used to recover it.\n")
	case RecoveryExpired:
		subject = "The recovery of your escrowed key expired"
		fmt.Fprintf(&b, "On %s, the request of recovery officer %s to recover the escrowed\nprivate key of your %s for %s expired\nbefore a quorum of key recovery agents approved it and the key was fetched.\n\n", when, e.RequestedBy, certs, e.Mailbox)
		fmt.Fprintf(&b, "Recovery request: %s\n\n", e.Request)
		b.WriteString("The request is closed: the key was not recovered, and this request can no\n" +
			"longer be used to recover it.\n")
	}
	b.WriteString("\nThis message contains no key, code or password, and asks nothing of you.\n")
	return subject, b.String()
}
