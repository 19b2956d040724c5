package notice

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// relay is a go-smtp server on loopback; with tlsCfg it offers STARTTLS and AUTH PLAIN (only
// after STARTTLS), accepting user/pass.
type relay struct {
	addr   string
	got    chan string
	authed chan string
	conns  atomic.Int32 // connections accepted
}

type relaySession struct {
	r    *relay
	user string
}

func (s *relaySession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *relaySession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != "keyarc" || pass != "relay-secret" {
			return errors.New("bad credentials")
		}
		s.user = user
		return nil
	}), nil
}
func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	if strings.HasPrefix(from, "unauthenticated@") {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	return nil
}
func (s *relaySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.HasPrefix(to, "nobody@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
func (s *relaySession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.r.authed <- s.user
	s.r.got <- string(b)
	return nil
}
func (s *relaySession) Reset()        {}
func (s *relaySession) Logout() error { return nil }

func startRelay(t testing.TB, tlsCfg *tls.Config) *relay {
	t.Helper()
	return startRelayTimeout(t, tlsCfg, 10*time.Second)
}

// startRelayTimeout is startRelay whose server drops a connection idle for readTimeout.
func startRelayTimeout(t testing.TB, tlsCfg *tls.Config, readTimeout time.Duration) *relay {
	t.Helper()
	r := &relay{got: make(chan string, 256), authed: make(chan string, 256)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &relaySession{r: r}, nil }))
	srv.Domain = "localhost"
	srv.TLSConfig = tlsCfg
	srv.ReadTimeout, srv.WriteTimeout = readTimeout, 10*time.Second
	srv.ErrorLog = log.New(io.Discard, "", 0) // clients hanging up on purpose are not news
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	go srv.Serve(countingListener{l, &r.conns})
	t.Cleanup(func() { srv.Close() })
	return r
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// selfSigned makes a certificate for 127.0.0.1 and the pool that trusts it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

func TestSMTPStartTLSAndAuth(t *testing.T) {
	srvTLS, pool := selfSigned(t)
	r := startRelay(t, srvTLS)
	msg, err := escrowed("alice@example.org").Message("pki@example.org", "0001", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		s        *SMTP
		to       string
		wantErr  error // nil: sent
		wantSent bool
	}{
		{"starttls, verified, authenticated", &SMTP{Addr: r.addr, StartTLS: true, TLSConfig: &tls.Config{RootCAs: pool},
			Username: "keyarc", Password: Password("relay-secret")}, "alice@example.org", nil, true},
		{"recipient refused for good", &SMTP{Addr: r.addr, StartTLS: true, TLSConfig: &tls.Config{RootCAs: pool},
			Username: "keyarc", Password: Password("relay-secret")}, "nobody@example.org", ErrRejected, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Send(ctx, "pki@example.org", tc.to, msg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Send: %v, want %v", err, tc.wantErr)
			}
			if tc.wantSent {
				if user := <-r.authed; user != "keyarc" {
					t.Errorf("relay saw user %q", user)
				}
				if got := <-r.got; !strings.Contains(got, "To: alice@example.org") {
					t.Errorf("relay got:\n%s", got)
				}
			}
		})
	}

	// Failures that must be retried, never reported as a refusal of the message, and never
	// a fall-back to plain text.
	plain := startRelay(t, nil)
	for _, tc := range []struct {
		name string
		s    *SMTP
	}{
		{"certificate not trusted", &SMTP{Addr: r.addr, StartTLS: true}},
		{"wrong password", &SMTP{Addr: r.addr, StartTLS: true, TLSConfig: &tls.Config{RootCAs: pool}, Username: "keyarc", Password: Password("nope")}},
		{"relay without STARTTLS", &SMTP{Addr: plain.addr, StartTLS: true}},
		{"relay down", &SMTP{Addr: "127.0.0.1:1", Timeout: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Send(ctx, "pki@example.org", "alice@example.org", msg)
			if err == nil || errors.Is(err, ErrRejected) {
				t.Fatalf("Send: %v, want a failure to retry", err)
			}
			if strings.Contains(err.Error(), "nope") {
				t.Errorf("the error holds the password: %v", err)
			}
			select {
			case got := <-plain.got:
				t.Fatalf("the message went in plain text:\n%s", got)
			default:
			}
		})
	}
}

// TestSMTPKeepsTheConnection: messages sent back to back share one connection (with STARTTLS
// and AUTH done once), CloseIdle ends it, and a kept connection the relay has dropped meanwhile
// is replaced without losing the message.
func TestSMTPKeepsTheConnection(t *testing.T) {
	srvTLS, pool := selfSigned(t)
	r := startRelayTimeout(t, srvTLS, 300*time.Millisecond)
	s := &SMTP{Addr: r.addr, StartTLS: true, TLSConfig: &tls.Config{RootCAs: pool}, Username: "keyarc", Password: Password("relay-secret")}
	ctx := context.Background()
	send := func(to string) {
		t.Helper()
		msg, err := escrowed(to).Message("pki@example.org", "0001", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(ctx, "pki@example.org", to, msg); err != nil {
			t.Fatalf("Send to %s: %v", to, err)
		}
		if got := <-r.got; !strings.Contains(got, "To: "+to+"\r\n") {
			t.Fatalf("relay got:\n%s", got)
		}
		if user := <-r.authed; user != "keyarc" {
			t.Fatalf("message sent as %q", user)
		}
	}
	for _, m := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		send(m)
	}
	if n := r.conns.Load(); n != 1 {
		t.Errorf("%d connections for 3 messages back to back, want 1", n)
	}
	s.CloseIdle()
	send("d@example.org")
	if n := r.conns.Load(); n != 2 {
		t.Errorf("%d connections after CloseIdle and a message, want 2", n)
	}
	time.Sleep(time.Second) // the relay drops the kept connection
	send("e@example.org")
	if n := r.conns.Load(); n != 3 {
		t.Errorf("%d connections after the relay dropped the kept one, want 3", n)
	}
	// A refusal for good at RCPT ends the connection; the next message opens another.
	msg, _ := escrowed("nobody@example.org").Message("pki@example.org", "0002", "")
	if err := s.Send(ctx, "pki@example.org", "nobody@example.org", msg); !errors.Is(err, ErrRejected) {
		t.Fatalf("Send to a refused recipient: %v, want %v", err, ErrRejected)
	}
	send("f@example.org")
	s.CloseIdle()
	s.CloseIdle() // safe twice
}

// TestSMTPSenderRefusedIsRetried: a relay that refuses the sender at MAIL (here 530,
// authentication required: the appliance's configuration) refuses every notice alike, so the
// refusal is a fault to retry, never a notice refused for good; one refused at RCPT is.
func TestSMTPSenderRefusedIsRetried(t *testing.T) {
	r := startRelay(t, nil)
	s := &SMTP{Addr: r.addr}
	msg, err := escrowed("a@example.org").Message("unauthenticated@example.org", "0001", "")
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(context.Background(), "unauthenticated@example.org", "a@example.org", msg)
	if err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("Send refused at MAIL: %v, want an error to retry, not %v", err, ErrRejected)
	}
	if err := s.Send(context.Background(), "pki@example.org", "nobody@example.org", msg); !errors.Is(err, ErrRejected) {
		t.Fatalf("Send to a refused recipient: %v, want %v", err, ErrRejected)
	}
}

// TestManySerialsThroughARelay: a mailbox with many keys in one bulk job gets one message
// listing every serial. RFC 5322 bounds a line at 998 characters, and relays enforce it
// (go-smtp refuses lines over 2000): the listing must be folded, or the relay refuses the
// message, and the subscriber is never told. Every line stays within 998 characters, and
// every serial is in the message.
func TestManySerialsThroughARelay(t *testing.T) {
	r := startRelay(t, nil)
	e := Event{Kind: Escrowed, Mailbox: "shared@example.org", Time: t0}
	for i := range 200 {
		e.Serials = append(e.Serials, fmt.Sprintf("%040x", i+1))
	}
	for _, kind := range []Kind{Escrowed, RecoveryRequested, RecoveryCompleted, RecoveryCancelled, RecoveryExpired} {
		e.Kind, e.Request, e.RequestedBy = kind, "", ""
		if kind != Escrowed {
			e.Request, e.RequestedBy = "a1b2c3d4e5f60718", "olga"
		}
		msg, err := e.Message("pki@example.org", "0001", "Example CA")
		if err != nil {
			t.Fatal(err)
		}
		if err := (&SMTP{Addr: r.addr}).Send(context.Background(), "pki@example.org", e.Mailbox, msg); err != nil {
			t.Fatalf("%s: the relay did not take a message of %d serials: %v", kind, len(e.Serials), err)
		}
		got := <-r.got
		<-r.authed
		for _, line := range strings.Split(got, "\r\n") {
			if len(line) > 998 {
				t.Errorf("%s: a line of %d characters: %.80q...", kind, len(line), line)
				break
			}
		}
		for _, s := range e.Serials {
			if !strings.Contains(got, s) {
				t.Errorf("%s: serial %s is not in the message", kind, s)
				break
			}
		}
	}
}
