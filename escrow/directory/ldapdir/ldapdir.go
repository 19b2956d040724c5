// Package ldapdir is the LDAP directory keyarc publishes certificates to (an OpenLDAP server,
// Active Directory): it implements [directory.Directory] with github.com/go-ldap/ldap/v3.
//
// # What it writes
//
// A person's entry is found by (mail=ADDR) under the search base, with a subtree search. A
// certificate is published to it as two values, the ones mail clients read:
//
//   - userCertificate;binary: the certificate's DER (RFC 4523; the ;binary option is how
//     OpenLDAP transfers this attribute). Its equality rule (certificateExactMatch) lets one
//     value be added or deleted alone.
//   - userSMIMECertificate (RFC 2798, in inetOrgPerson): a degenerate PKCS#7 SignedData
//     holding the certificate and the CA certificate, as Outlook reads it. OpenLDAP's schema
//     gives it no equality rule, so a value can be neither added beside others nor deleted
//     alone ("inappropriate matching"): the attribute is read and replaced as a whole, with
//     the values of others kept as they were read. Another writer changing that attribute of
//     the same entry in the same instant could lose its change; nothing else can.
//
// Withdrawing removes exactly the values that hold the certificate; [Dir.Prune] reads every
// published certificate under the base and removes the values its caller chooses. Values of
// other issuers are never touched: the caller (the publisher) decides only about certificates
// its CA issued.
//
// # Transport
//
// ldaps:// is TLS from the start; ldap:// is upgraded with StartTLS, except to a loopback
// address (127.0.0.1, ::1) or with InsecurePlaintext. The server's certificate is verified
// against RootCAs (the system roots when nil) and the URL's host.
//
// # Secrets and concurrency
//
// The bind password is held in memory only, for binding; it is never in an error or a log line
// ([Config.LogValue] leaves it out). A Dir keeps one connection, opened on first use and again
// after a failure; its methods are safe for concurrent use (they take turns).
package ldapdir

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/keyarc/keyarc/escrow/directory"
)

// The attributes written.
const (
	AttrCertificate      = "userCertificate;binary"
	AttrSMIMECertificate = "userSMIMECertificate"
)

// ErrBind: the LDAP server refused the bind (a wrong bind DN or password, a locked account).
var ErrBind = errors.New("ldapdir: the LDAP server refused the bind")

// ErrUntrusted: the server's TLS certificate was not verified (not issued by a CA of RootCAs,
// not for the URL's host, expired). Nothing was sent to it.
var ErrUntrusted = errors.New("ldapdir: the LDAP server's certificate is not trusted")

// ErrConfig: the configuration cannot work (a bad URL, plain text to a remote server).
var ErrConfig = errors.New("ldapdir: bad configuration")

// Config says how to reach the directory.
type Config struct {
	// URL is ldaps://HOST[:PORT] or ldap://HOST[:PORT].
	URL string
	// BindDN and Password authenticate the publisher (a simple bind). Password is a secret.
	BindDN   string
	Password string
	// PasswordFunc, when set, is called for the password at each connection instead of
	// Password: a password changed at its source is used at the next retry, without a
	// restart.
	PasswordFunc func() (string, error)
	// Base is the search base under which people's entries are found.
	Base string
	// RootCAs verifies the server's certificate (nil: the system roots).
	RootCAs *x509.CertPool
	// InsecurePlaintext allows ldap:// without StartTLS to a host that is not a loopback
	// address: the bind password then crosses the network in clear.
	InsecurePlaintext bool
	// CA is the issuing CA's certificate, put beside each certificate in userSMIMECertificate.
	CA *x509.Certificate
	// Timeout bounds connecting and each operation (default 30s).
	Timeout time.Duration
}

// LogValue names the server, the bind DN and the base, never the password.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", c.URL), slog.String("bind_dn", c.BindDN), slog.String("base", c.Base))
}

// String is what fmt prints for c (%v, %s): the server, the bind DN and the base, never the
// password.
func (c Config) String() string {
	return fmt.Sprintf("ldapdir.Config{url: %q, bind_dn: %q, base: %q}", c.URL, c.BindDN, c.Base)
}

// GoString is what fmt prints for %#v: the same as String.
func (c Config) GoString() string { return c.String() }

// Plaintext reports whether the URL would be used without TLS: ldap:// to a loopback address.
// (ldap:// elsewhere uses StartTLS unless InsecurePlaintext.)
func (c Config) plaintext() (bool, error) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return false, fmt.Errorf("%w: url %q is not ldap://HOST[:PORT] or ldaps://HOST[:PORT]", ErrConfig, c.URL)
	}
	switch u.Scheme {
	case "ldaps":
		return false, nil
	case "ldap":
		if c.InsecurePlaintext {
			return true, nil
		}
		ip := net.ParseIP(u.Hostname())
		return ip != nil && ip.IsLoopback(), nil
	}
	return false, fmt.Errorf("%w: url %q: the scheme must be ldaps or ldap", ErrConfig, c.URL)
}

// Dir is an LDAP directory.
type Dir struct {
	cfg Config

	mu   sync.Mutex
	conn *ldap.Conn
}

var _ directory.Directory = (*Dir)(nil)

// New checks cfg and returns a Dir; it connects on first use. [ErrConfig] for a URL it cannot
// use, a missing bind DN or base.
func New(cfg Config) (*Dir, error) {
	if _, err := cfg.plaintext(); err != nil {
		return nil, err
	}
	if cfg.BindDN == "" || cfg.Base == "" {
		return nil, fmt.Errorf("%w: the bind DN and the search base are required", ErrConfig)
	}
	if _, err := ldap.ParseDN(cfg.Base); err != nil {
		return nil, fmt.Errorf("%w: search base %q is not a DN", ErrConfig, cfg.Base)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &Dir{cfg: cfg}, nil
}

// Close closes the connection, if one is open. The Dir may be used again.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop()
	return nil
}

func (d *Dir) drop() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
}

// Check connects and binds (a fresh connection), for a start-up check.
func (d *Dir) Check(ctx context.Context) error {
	return d.do(ctx, func(*ldap.Conn) error { return nil })
}

// do runs fn on the connection, connecting and binding first when there is none. After an
// error that is not a result the server gave for one operation, the connection is dropped and
// the next call connects again.
func (d *Dir) do(ctx context.Context, fn func(*ldap.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil || d.conn.IsClosing() {
		c, err := d.connect(ctx)
		if err != nil {
			return err
		}
		d.conn = c
	}
	// A server that does not answer holds the call until ctx ends, not for the whole timeout:
	// closing the connection makes the call return.
	c := d.conn
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := fn(c)
	if !stop() {
		d.drop()
		return fmt.Errorf("ldapdir: %w", ctx.Err())
	}
	var le *ldap.Error
	if err != nil && (!errors.As(err, &le) || le.ResultCode == ldap.ErrorNetwork || le.ResultCode >= ldap.ErrorNetwork) {
		d.drop()
	}
	return err
}

func (d *Dir) connect(ctx context.Context) (_ *ldap.Conn, err error) {
	plain, err := d.cfg.plaintext()
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(d.cfg.URL)
	tc := &tls.Config{RootCAs: d.cfg.RootCAs, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	dialer := &net.Dialer{Timeout: d.cfg.Timeout}
	opts := []ldap.DialOpt{ldap.DialWithDialer(dialer)}
	if u.Scheme == "ldaps" {
		opts = append(opts, ldap.DialWithTLSConfig(tc))
	}
	c, err := ldap.DialURL(d.cfg.URL, opts...)
	if err != nil {
		if untrusted(err) {
			return nil, fmt.Errorf("%w: %s (check ca_file): %w", ErrUntrusted, d.cfg.URL, err)
		}
		return nil, fmt.Errorf("ldapdir: connect to %s: %w", d.cfg.URL, err)
	}
	c.SetTimeout(d.cfg.Timeout)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if !stop() {
			c.Close()
			err = fmt.Errorf("ldapdir: connect to %s: %w", d.cfg.URL, ctx.Err())
		}
	}()
	if u.Scheme == "ldap" && !plain {
		if err := c.StartTLS(tc); err != nil {
			c.Close()
			if untrusted(err) {
				return nil, fmt.Errorf("%w: %s, after StartTLS (check ca_file): %w", ErrUntrusted, d.cfg.URL, err)
			}
			return nil, fmt.Errorf("ldapdir: StartTLS with %s (set insecure_plaintext only for a server that cannot do TLS): %w", d.cfg.URL, err)
		}
	}
	pw := d.cfg.Password
	if d.cfg.PasswordFunc != nil {
		if pw, err = d.cfg.PasswordFunc(); err != nil {
			c.Close()
			return nil, fmt.Errorf("ldapdir: bind password: %w", err)
		}
	}
	if err := c.Bind(d.cfg.BindDN, pw); err != nil {
		c.Close()
		if ldap.IsErrorAnyOf(err, ldap.LDAPResultInvalidCredentials, ldap.LDAPResultInappropriateAuthentication,
			ldap.LDAPResultInsufficientAccessRights, ldap.LDAPResultUnwillingToPerform, ldap.LDAPResultConfidentialityRequired) {
			return nil, fmt.Errorf("%w as %q at %s (check the bind DN and the password source): %s", ErrBind, d.cfg.BindDN, d.cfg.URL, resultOf(err))
		}
		return nil, fmt.Errorf("ldapdir: bind as %q at %s: %w", d.cfg.BindDN, d.cfg.URL, err)
	}
	return c, nil
}

// untrusted reports a TLS handshake that failed on the server's certificate. go-ldap keeps
// the cause of a failed StartTLS only as text, so the text is read too.
func untrusted(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	if errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) {
		return true
	}
	return strings.Contains(err.Error(), "tls: failed to verify certificate")
}

// resultOf names an LDAP result without the server's free text.
func resultOf(err error) string {
	var le *ldap.Error
	if errors.As(err, &le) {
		return fmt.Sprintf("LDAP result %d (%s)", le.ResultCode, ldap.LDAPResultCodeMap[le.ResultCode])
	}
	return err.Error()
}

var searchAttrs = []string{AttrCertificate, AttrSMIMECertificate}

func (d *Dir) find(c *ldap.Conn, mailbox string) ([]*ldap.Entry, error) {
	res, err := c.Search(ldap.NewSearchRequest(d.cfg.Base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(mail="+ldap.EscapeFilter(mailbox)+")", searchAttrs, nil))
	if err != nil {
		return nil, fmt.Errorf("ldapdir: search (mail=...) under %s: %w", d.cfg.Base, err)
	}
	return res.Entries, nil
}

// entryRefused reports a result the server gives for one entry's change (its object classes do
// not allow the attributes, a value it will not take): the certificate is skipped for this
// entry rather than retried forever.
func entryRefused(err error) bool {
	return ldap.IsErrorAnyOf(err, ldap.LDAPResultObjectClassViolation, ldap.LDAPResultConstraintViolation,
		ldap.LDAPResultInvalidAttributeSyntax)
}

// Publish adds cert to the one entry whose mail is mailbox (see the package doc).
func (d *Dir) Publish(ctx context.Context, mailbox string, cert *x509.Certificate) error {
	p7, err := CertsOnly(cert, d.cfg.CA)
	if err != nil {
		return err
	}
	return d.do(ctx, func(c *ldap.Conn) error {
		entries, err := d.find(c, mailbox)
		if err != nil {
			return err
		}
		switch len(entries) {
		case 0:
			return directory.ErrNoEntry
		case 1:
		default:
			return fmt.Errorf("%w (%d)", directory.ErrManyEntries, len(entries))
		}
		e := entries[0]
		mod := ldap.NewModifyRequest(e.DN, nil)
		if !holds(e.GetRawAttributeValues(AttrCertificate), cert.Raw) {
			mod.Add(AttrCertificate, []string{string(cert.Raw)})
		}
		smime := e.GetRawAttributeValues(AttrSMIMECertificate)
		found := false
		for _, v := range smime {
			if leafIs(v, cert) {
				found = true
				break
			}
		}
		if !found {
			vals := make([]string, 0, len(smime)+1)
			for _, v := range smime {
				vals = append(vals, string(v))
			}
			mod.Replace(AttrSMIMECertificate, append(vals, string(p7)))
		}
		if len(mod.Changes) == 0 {
			return nil
		}
		if err := c.Modify(mod); err != nil {
			if entryRefused(err) {
				return fmt.Errorf("%w: %s: %s", directory.ErrEntryRefused, e.DN, resultOf(err))
			}
			return fmt.Errorf("ldapdir: modify %s: %w", e.DN, err)
		}
		return nil
	})
}

// Withdraw removes the values that hold cert from every entry whose mail is mailbox.
func (d *Dir) Withdraw(ctx context.Context, mailbox string, cert *x509.Certificate) error {
	return d.do(ctx, func(c *ldap.Conn) error {
		entries, err := d.find(c, mailbox)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if _, err := d.prune(c, e, func(x *x509.Certificate) bool { return bytes.Equal(x.Raw, cert.Raw) }); err != nil {
				return err
			}
		}
		return nil
	})
}

// Prune reads every certificate published under the base, a page of entries at a time (RFC
// 2696 paged results: memory follows the page, not the directory), and removes the values of
// those for which remove returns true.
func (d *Dir) Prune(ctx context.Context, remove func(*x509.Certificate) bool) (int, error) {
	n := 0
	err := d.do(ctx, func(c *ldap.Conn) error {
		paging := ldap.NewControlPaging(pruneStep)
		req := ldap.NewSearchRequest(d.cfg.Base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
			"(|(userCertificate=*)(userSMIMECertificate=*))", searchAttrs, []ldap.Control{paging})
		for {
			res, err := c.Search(req)
			if err != nil {
				return fmt.Errorf("ldapdir: search the published certificates under %s: %w", d.cfg.Base, err)
			}
			for _, e := range res.Entries {
				if err := ctx.Err(); err != nil {
					return err
				}
				k, err := d.prune(c, e, remove)
				n += k
				if err != nil {
					return err
				}
			}
			next, ok := ldap.FindControl(res.Controls, ldap.ControlTypePaging).(*ldap.ControlPaging)
			if !ok || len(next.Cookie) == 0 {
				return nil
			}
			paging.SetCookie(next.Cookie)
		}
	})
	return n, err
}

// pruneStep is the page size of [Dir.Prune]'s search.
const pruneStep = 200

// prune removes from entry e the values whose certificate remove chooses, and returns how many.
func (d *Dir) prune(c *ldap.Conn, e *ldap.Entry, remove func(*x509.Certificate) bool) (int, error) {
	mod := ldap.NewModifyRequest(e.DN, nil)
	n := 0
	var gone []string
	for _, v := range e.GetRawAttributeValues(AttrCertificate) {
		if x, err := x509.ParseCertificate(v); err == nil && remove(x) {
			gone = append(gone, string(v))
		}
	}
	if len(gone) > 0 {
		mod.Delete(AttrCertificate, gone)
		n += len(gone)
	}
	smime := e.GetRawAttributeValues(AttrSMIMECertificate)
	keep := make([]string, 0, len(smime))
	for _, v := range smime {
		if leaf := Leaf(v); leaf != nil && remove(leaf) {
			n++
			continue
		}
		keep = append(keep, string(v))
	}
	if len(keep) < len(smime) {
		mod.Replace(AttrSMIMECertificate, keep)
	}
	if len(mod.Changes) == 0 {
		return 0, nil
	}
	if err := c.Modify(mod); err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchAttribute) {
		return 0, fmt.Errorf("ldapdir: modify %s: %w", e.DN, err)
	}
	return n, nil
}

func holds(vals [][]byte, v []byte) bool {
	for _, x := range vals {
		if bytes.Equal(x, v) {
			return true
		}
	}
	return false
}

// leafIs reports whether the userSMIMECertificate value v holds cert as its one end-entity
// certificate.
func leafIs(v []byte, cert *x509.Certificate) bool {
	leaf := Leaf(v)
	return leaf != nil && bytes.Equal(leaf.Raw, cert.Raw)
}
