package config

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"strings"
	"time"
)

// NoticesConfig is the notices section: the SMTP relay through which subscribers are told that
// their key was escrowed, and when a recovery of it is requested and completed (S/MIME BR
// §4.12.1). Absent, no notice is queued or sent. It never holds a password: password_file
// names a file, as token.uri names a pin-source.
type NoticesConfig struct {
	// SMTP is the relay, host:port (submission is usually port 587).
	SMTP string `yaml:"smtp"`
	// From is the sender address of the notices, e.g. pki@example.org.
	From string `yaml:"from"`
	// StartTLS is "required" (the default: STARTTLS before anything is sent, the relay's
	// certificate verified, no fall-back to plain text) or "off" (plain SMTP, for a relay on
	// the same host or network; no authentication then).
	StartTLS string `yaml:"starttls,omitempty"`
	// CAFile, when set, is the PEM file of the CA(s) that verify the relay's certificate,
	// instead of the system roots.
	CAFile string `yaml:"ca_file,omitempty"`
	// Username, when set, authenticates to the relay (SASL PLAIN, over STARTTLS only) with the
	// password read from PasswordFile (mode 0600 or stricter).
	Username     string `yaml:"username,omitempty"`
	PasswordFile string `yaml:"password_file,omitempty"`
	// Queue is the folder of queued notices (default "notices" in the state folder).
	Queue string `yaml:"queue,omitempty"`
	// RetryMax is the longest wait between two attempts at a notice (default 5m; 1s..1h).
	RetryMax Duration `yaml:"retry_max,omitempty"`
}

// StartTLS modes.
const (
	StartTLSRequired = "required"
	StartTLSOff      = "off"
)

// DefaultNoticeQueue is the queue folder, relative to the state folder.
const DefaultNoticeQueue = "notices"

// Validate checks the notices section (nil: not configured) and names the wrong field.
func (n *NoticesConfig) Validate() error {
	if n == nil {
		return nil
	}
	if strings.Contains(n.SMTP, "@") {
		// Not quoted: user:password@host is a password in the configuration.
		return errors.New("notices.smtp: no user or password here, only host:port; give them with notices.username and notices.password_file")
	}
	host, port, err := net.SplitHostPort(n.SMTP)
	if err != nil || host == "" || !validPort(port) || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("notices.smtp: %q is not host:port (the SMTP relay, e.g. mail.example.org:587)", n.SMTP)
	}
	a, err := mail.ParseAddress(n.From)
	if err != nil || a.Name != "" || a.Address != n.From || strings.ContainsAny(n.From, "\r\n") {
		return fmt.Errorf("notices.from: %q is not a bare mail address such as pki@example.org", n.From)
	}
	switch n.StartTLSMode() {
	case StartTLSRequired:
	case StartTLSOff:
		if n.Username != "" || n.PasswordFile != "" {
			return errors.New("notices.username: authentication needs starttls: required (the password would cross the network in clear)")
		}
		if n.CAFile != "" {
			return errors.New("notices.ca_file: only with starttls: required")
		}
	default:
		return fmt.Errorf("notices.starttls: %q is neither %s nor %s", n.StartTLS, StartTLSRequired, StartTLSOff)
	}
	if (n.Username == "") != (n.PasswordFile == "") {
		return errors.New("notices.username and notices.password_file go together (the password is read from the file, never written here)")
	}
	if d := n.RetryMax.Duration; d != 0 && (d < time.Second || d > time.Hour) {
		return fmt.Errorf("notices.retry_max: %v is outside 1s..1h", d)
	}
	return nil
}

// StartTLSMode is the starttls field with its default.
func (n *NoticesConfig) StartTLSMode() string {
	if n.StartTLS == "" {
		return StartTLSRequired
	}
	return n.StartTLS
}

// QueueDir is the queue field with its default (relative to the state folder).
func (n *NoticesConfig) QueueDir() string {
	if n.Queue == "" {
		return DefaultNoticeQueue
	}
	return n.Queue
}
