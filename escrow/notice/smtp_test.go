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
	"io"
	"log"
	"math/big"
	"net"
	"strings"
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
func (s *relaySession) Mail(string, *smtp.MailOptions) error { return nil }
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
	r := &relay{got: make(chan string, 256), authed: make(chan string, 256)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &relaySession{r: r}, nil }))
	srv.Domain = "localhost"
	srv.TLSConfig = tlsCfg
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	srv.ErrorLog = log.New(io.Discard, "", 0) // clients hanging up on purpose are not news
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return r
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
