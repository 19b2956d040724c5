package notice

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Sender hands one message to a relay. [SMTP] is the one the appliance uses; tests use
// their own.
type Sender interface {
	// Send delivers msg from from to the mailbox to. An error wrapping [ErrRejected] means
	// the relay refused this message for good; any other error is worth retrying.
	Send(ctx context.Context, from, to string, msg []byte) error
}

// ErrRejected: the relay answered a permanent (5xx) refusal to the message's sender,
// recipient or content. Retrying the same message would be refused again.
var ErrRejected = errors.New("notice: the relay refused the message")

// SMTP sends through an SMTP relay with github.com/emersion/go-smtp, one connection per
// message (notices are few: one per escrowed key or recovery step).
type SMTP struct {
	// Addr is the relay, host:port.
	Addr string
	// StartTLS requires STARTTLS before anything is sent: a relay that does not offer it, or
	// whose certificate does not verify against TLSConfig (nil: the system roots and the
	// host of Addr), is an error, never a fall-back to plain text.
	StartTLS  bool
	TLSConfig *tls.Config
	// Username and Password, when Username is set, authenticate with SASL PLAIN (only over
	// STARTTLS; the configuration refuses it otherwise).
	Username string
	Password Password
	// Timeout bounds the connection and each command (default 30 s).
	Timeout time.Duration
	// HelloName is the name given in EHLO (default "localhost").
	HelloName string
}

// Password is a secret that never prints.
type Password []byte

func (Password) String() string                 { return "[redacted]" }
func (Password) GoString() string               { return "[redacted]" }
func (Password) LogValue() slog.Value           { return slog.StringValue("[redacted]") }
func (p Password) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

var _ Sender = (*SMTP)(nil)

// Send implements [Sender].
func (s *SMTP) Send(ctx context.Context, from, to string, msg []byte) error {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, 2*timeout+timeout/2)
	defer cancel()
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("notice: connect to relay %s: %w", s.Addr, err)
	}
	// The context bounds the whole exchange, whatever the per-command timeouts.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var c *smtp.Client
	if s.StartTLS {
		cfg := &tls.Config{}
		if s.TLSConfig != nil {
			cfg = s.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(s.Addr)
		}
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
		c, err = smtp.NewClientStartTLS(conn, cfg)
		if err != nil {
			conn.Close()
			return fmt.Errorf("notice: STARTTLS with relay %s: %w", s.Addr, err)
		}
	} else {
		c = smtp.NewClient(conn)
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = timeout, timeout
	if s.HelloName != "" {
		if err := c.Hello(s.HelloName); err != nil {
			return fmt.Errorf("notice: relay %s: EHLO: %w", s.Addr, err)
		}
	}
	if s.Username != "" {
		if err := c.Auth(sasl.NewPlainClient("", s.Username, string(s.Password))); err != nil {
			return fmt.Errorf("notice: relay %s: authentication as %q: %w", s.Addr, s.Username, err)
		}
	}
	if err := c.SendMail(from, []string{to}, bytes.NewReader(msg)); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 {
			return fmt.Errorf("%w: %w", ErrRejected, err)
		}
		return fmt.Errorf("notice: relay %s: %w", s.Addr, err)
	}
	c.Quit()
	return nil
}
