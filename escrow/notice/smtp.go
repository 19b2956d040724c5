package notice

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
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

// ErrRejected: the relay answered a permanent (5xx) refusal to the message's recipient or
// content. Retrying the same message would be refused again. A refusal of the sender (at MAIL)
// is not ErrRejected: it refuses every message alike, a fault of the relay or the configuration.
var ErrRejected = errors.New("notice: the relay refused the message")

// SMTP sends through an SMTP relay with github.com/emersion/go-smtp. After a message is
// accepted it keeps the connection for the next one (a bulk job's notices go back to back),
// until [SMTP.CloseIdle], which the [Notifier] calls at the end of each pass; a kept connection
// that fails before the relay took anything is replaced by a new one at once. Its Send calls
// run one at a time.
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

	mu   sync.Mutex
	idle *smtpConn // the connection kept since the last message accepted
}

// smtpConn is a connection to the relay, ready for a message (greeted, TLS and AUTH done).
type smtpConn struct {
	c    *smtp.Client
	conn net.Conn
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
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*s.timeout()+s.timeout()/2)
	defer cancel()
	if sc := s.idle; sc != nil {
		s.idle = nil
		atMail, err := s.transact(ctx, sc, from, to, msg)
		if err == nil || !atMail {
			return err
		}
		// The kept connection failed before the relay took anything (it timed out, or the
		// relay closed it): the message goes on a new one.
	}
	sc, err := s.connect(ctx)
	if err != nil {
		return err
	}
	_, err = s.transact(ctx, sc, from, to, msg)
	return err
}

// CloseIdle closes the connection kept since the last message, if any.
func (s *SMTP) CloseIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idle != nil {
		s.idle.c.Quit()
		s.idle.c.Close()
		s.idle = nil
	}
}

func (s *SMTP) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return 30 * time.Second
}

// connect opens a connection to the relay: STARTTLS (required when set, never a fall-back to
// plain text), EHLO, AUTH.
func (s *SMTP) connect(ctx context.Context) (*smtpConn, error) {
	timeout := s.timeout()
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return nil, fmt.Errorf("notice: connect to relay %s: %w", s.Addr, err)
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
			return nil, fmt.Errorf("notice: STARTTLS with relay %s: %w", s.Addr, err)
		}
	} else {
		c = smtp.NewClient(conn)
	}
	c.CommandTimeout, c.SubmissionTimeout = timeout, timeout
	if s.HelloName != "" {
		if err := c.Hello(s.HelloName); err != nil {
			c.Close()
			return nil, fmt.Errorf("notice: relay %s: EHLO: %w", s.Addr, err)
		}
	}
	if s.Username != "" {
		if err := c.Auth(sasl.NewPlainClient("", s.Username, string(s.Password))); err != nil {
			c.Close()
			return nil, fmt.Errorf("notice: relay %s: authentication as %q: %w", s.Addr, s.Username, err)
		}
	}
	return &smtpConn{c: c, conn: conn}, nil
}

// transact sends one message on sc: MAIL, RCPT, DATA. After success sc is kept for the next
// message; after a failure it is closed, and atMail reports that it failed at MAIL, before the
// relay took anything.
func (s *SMTP) transact(ctx context.Context, sc *smtpConn, from, to string, msg []byte) (atMail bool, err error) {
	stop := context.AfterFunc(ctx, func() { sc.conn.Close() })
	defer func() {
		if !stop() || err != nil {
			sc.c.Close()
			return
		}
		s.idle = sc
	}()
	step := func() error {
		if err := sc.c.Mail(from, nil); err != nil {
			atMail = true
			return err
		}
		if err := sc.c.Rcpt(to, nil); err != nil {
			return err
		}
		w, err := sc.c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(msg); err != nil {
			w.Close()
			return err
		}
		return w.Close()
	}
	if err := step(); err != nil {
		// A refusal at MAIL is of the sender (the configuration or the relay), the same for
		// every notice: it is retried. At RCPT or DATA it is of this message.
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 && !atMail {
			return false, fmt.Errorf("%w: %w", ErrRejected, err)
		}
		return atMail, fmt.Errorf("notice: relay %s: %w", s.Addr, err)
	}
	return false, nil
}
