package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/go-ldap/ldap/v3"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
)

// DirectoryConfig is the directory section: who may look certificates up with
// GET /api/v1/directory, and the LDAP server certificates are published to. Absent, lookups
// are open (see [LookupOpen]) and nothing is published.
type DirectoryConfig struct {
	// Lookup is "open" (the default) or "client-certificate". See [LookupOpen].
	Lookup string `yaml:"lookup,omitempty"`
	// LookupsPerMinute is how many lookups one source address (IPv6: its /64) may make per
	// minute; beyond, 429 with Retry-After (default 60; 1..100000).
	LookupsPerMinute int `yaml:"lookups_per_minute,omitempty"`
	// LDAP, when present, is the directory server certificates are published to.
	LDAP *LDAPConfig `yaml:"ldap,omitempty"`
}

// Lookup modes.
const (
	// LookupOpen answers anyone who can reach the HTTPS listener, like the corporate LDAP
	// directory mail clients already read anonymously: a certificate is public by design,
	// and a sender must find the recipient's before the first encrypted message. A lookup
	// names one exact mailbox (no wildcard, no listing), answers alike for an unknown
	// mailbox and one without a certificate, and is rate-limited per source. It is the
	// default because the enrollment page's "find a colleague's certificate" is used by
	// people with no keyarc client certificate.
	LookupOpen = "open"
	// LookupClientCertificate answers only callers with a valid client certificate this CA
	// issued (operators, KRAs, devices): for a site that treats its list of mailboxes as
	// confidential.
	LookupClientCertificate = "client-certificate"
)

// DefaultLookupsPerMinute is the default lookup rate per source.
const DefaultLookupsPerMinute = 60

// LDAPConfig is directory.ldap: the LDAP server, how to bind, and where people are.
type LDAPConfig struct {
	// URL is ldaps://HOST[:PORT], or ldap://HOST[:PORT] with StartTLS. Plain LDAP (no TLS) is
	// used only to a loopback address (ldap://127.0.0.1, ldap://[::1]) or with
	// InsecurePlaintext.
	URL string `yaml:"url"`
	// BindDN is the publisher's account (it needs write access to userCertificate and
	// userSMIMECertificate of people's entries).
	BindDN string `yaml:"bind_dn"`
	// BindPasswordSource names where the bind password is read, as token.uri's pin-source:
	// file:PATH (relative to this folder) or env:NAME. Never the password itself.
	BindPasswordSource string `yaml:"bind_password_source"`
	// Base is the search base under which people's entries are found by (mail=ADDR).
	Base string `yaml:"base"`
	// CAFile, when set, is the PEM file of the CA(s) that verify the LDAP server's
	// certificate, instead of the system roots.
	CAFile string `yaml:"ca_file,omitempty"`
	// InsecurePlaintext allows ldap:// without StartTLS to a server that is not on a loopback
	// address: the bind password and the certificates then cross the network in clear.
	InsecurePlaintext bool `yaml:"insecure_plaintext,omitempty"`
}

// LookupMode is the lookup field with its default.
func (d *DirectoryConfig) LookupMode() string {
	if d == nil || d.Lookup == "" {
		return LookupOpen
	}
	return d.Lookup
}

// LookupRate is lookups_per_minute with its default.
func (d *DirectoryConfig) LookupRate() int {
	if d == nil || d.LookupsPerMinute == 0 {
		return DefaultLookupsPerMinute
	}
	return d.LookupsPerMinute
}

// Validate checks the directory section (nil: absent) and names the wrong field.
func (d *DirectoryConfig) Validate() error {
	if d == nil {
		return nil
	}
	switch d.LookupMode() {
	case LookupOpen, LookupClientCertificate:
	default:
		return fmt.Errorf("directory.lookup: %q is neither %s nor %s", d.Lookup, LookupOpen, LookupClientCertificate)
	}
	if d.LookupsPerMinute < 0 || d.LookupsPerMinute > 100000 {
		return fmt.Errorf("directory.lookups_per_minute: %d is outside 1..100000 (0 means %d)", d.LookupsPerMinute, DefaultLookupsPerMinute)
	}
	l := d.LDAP
	if l == nil {
		return nil
	}
	// Checked first, and the URL then not quoted: a user or password in it must not reach the
	// error, whatever else is wrong with the URL.
	if strings.Contains(l.URL, "@") {
		return errors.New("directory.ldap.url: no user or password in the URL; use bind_dn and bind_password_source")
	}
	u, err := url.Parse(l.URL)
	if err != nil || u.Host == "" || (u.Scheme != "ldaps" && u.Scheme != "ldap") || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Port() != "" && !validPort(u.Port()) {
		return fmt.Errorf("directory.ldap.url: %q is not ldaps://HOST[:PORT] or ldap://HOST[:PORT]", l.URL)
	}
	if u.User != nil {
		return errors.New("directory.ldap.url: no user or password in the URL; use bind_dn and bind_password_source")
	}
	if l.BindDN == "" {
		return errors.New("directory.ldap.bind_dn is required (the DN the publisher binds as)")
	}
	if _, err := ldap.ParseDN(l.BindDN); err != nil {
		return fmt.Errorf("directory.ldap.bind_dn: %q is not a DN such as cn=keyarc,ou=services,dc=example,dc=org", l.BindDN)
	}
	if l.Base == "" {
		return errors.New("directory.ldap.base is required (the search base of people's entries, e.g. ou=people,dc=example,dc=org)")
	}
	if _, err := ldap.ParseDN(l.Base); err != nil {
		return fmt.Errorf("directory.ldap.base: %q is not a DN such as ou=people,dc=example,dc=org", l.Base)
	}
	if l.BindPasswordSource == "" {
		return errors.New("directory.ldap.bind_password_source is required: file:PATH or env:NAME (never the password itself)")
	}
	if err := checkPasswordSource(l.BindPasswordSource); err != nil {
		return fmt.Errorf("directory.ldap.bind_password_source: %w", err)
	}
	if u.Scheme == "ldaps" && l.InsecurePlaintext {
		return errors.New("directory.ldap.insecure_plaintext: only with an ldap:// URL")
	}
	return nil
}

// LogValue names the server, the bind DN, the base and where the password is read from.
func (l *LDAPConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", l.URL), slog.String("bind_dn", l.BindDN), slog.String("base", l.Base),
		slog.String("bind_password_source", l.BindPasswordSource))
}

// DirectoryBindPassword reads directory.ldap's bind password from its source. The result is a
// secret: pass it to the LDAP client only.
func (c *Config) DirectoryBindPassword() (string, error) {
	if c.Directory == nil || c.Directory.LDAP == nil {
		return "", errors.New("directory.ldap is not configured")
	}
	return c.readSecretSource("directory.ldap.bind_password_source", c.Directory.LDAP.BindPasswordSource)
}

// readSecretSource reads a secret from file:PATH (relative to this folder; trailing line
// breaks dropped; refused if any user can read or change it) or env:NAME; field names the
// source in errors, which never hold the secret.
func (c *Config) readSecretSource(field, src string) (string, error) {
	if err := checkPasswordSource(src); err != nil || src == "" {
		return "", fmt.Errorf("%s: want file:PATH or env:NAME", field)
	}
	if name, ok := strings.CutPrefix(src, "env:"); ok {
		v := os.Getenv(name)
		if v == "" {
			return "", fmt.Errorf("%s: environment variable %s is unset or empty", field, name)
		}
		return v, nil
	}
	path := c.Path(strings.TrimPrefix(src, "file:"))
	if err := pemfile.CheckSecret(path); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	clear(b)
	if v == "" {
		return "", fmt.Errorf("%s: %s is empty", field, path)
	}
	return v, nil
}
