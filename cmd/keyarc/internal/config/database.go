package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// IsPostgres reports whether database is the URL of a PostgreSQL database (postgres:// or
// postgresql://) rather than the path of a SQLite file.
func (c *Config) IsPostgres() bool {
	return strings.HasPrefix(c.Database, "postgres://") || strings.HasPrefix(c.Database, "postgresql://")
}

// DatabaseName names the database in logs and messages: the SQLite file's absolute path, or
// the PostgreSQL URL, which never holds a password ([Config.Validate] refuses one).
func (c *Config) DatabaseName() string {
	if c.IsPostgres() {
		return c.Database
	}
	return c.Path(c.Database)
}

// validateDatabase checks a PostgreSQL URL: no password in it (database_password_source
// names where it is read), and either a unix socket or TLS that verifies the server's
// certificate and name (sslmode=verify-full): anything weaker lets a host on the path read
// the archive's traffic or pose as the server.
func (c *Config) validateDatabase() error {
	if !c.IsPostgres() {
		if c.DatabasePasswordSource != "" {
			return errors.New("database_password_source: only a postgres:// database takes a password")
		}
		if scheme, _, ok := strings.Cut(c.Database, "://"); ok {
			// Not the URL: it may carry a password (postgress://user:pass@host), which the
			// check below applies only to postgres:// URLs. The scheme cannot hold one.
			return fmt.Errorf("database: a %s:// URL is neither a file nor a postgres:// (or postgresql://, in lower case) URL", clipScheme(scheme))
		}
		if keywordValue(c.Database) {
			// Not quoted: such a string may hold password=...
			return errors.New("database: a PostgreSQL keyword/value string (host=... dbname=...) is not taken; give a postgres:// URL, or a SQLite file name")
		}
		return nil
	}
	u, err := url.Parse(c.Database)
	if err != nil {
		// url's message quotes the URL: name only the field.
		return errors.New("database: malformed postgres:// URL")
	}
	q := u.Query()
	if _, ok := u.User.Password(); ok || q.Has("password") {
		return errors.New("database: the URL carries a password; remove it and give it with database_password_source: file:PATH or env:NAME")
	}
	if err := checkPasswordSource(c.DatabasePasswordSource); err != nil {
		return fmt.Errorf("database_password_source: %w", err)
	}
	if socket(u) {
		return nil
	}
	if mode := q.Get("sslmode"); mode != "verify-full" {
		if mode == "" {
			mode = "unset (prefer)"
		}
		return fmt.Errorf("database: sslmode is %s; a PostgreSQL server over TCP needs sslmode=verify-full (TLS, the server's certificate and name verified, with sslrootcert=PATH for a private CA), or use a unix socket", mode)
	}
	return nil
}

// clipScheme bounds a URL scheme quoted in an error.
func clipScheme(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

// keywordValue reports whether s starts like libpq's keyword/value connection string
// (host=db dbname=keyarc): a keyword of letters and underscores, then "=".
func keywordValue(s string) bool {
	k, _, ok := strings.Cut(s, "=")
	k = strings.TrimSpace(k)
	return ok && k != "" && strings.Trim(k, "abcdefghijklmnopqrstuvwxyz_") == ""
}

// socket reports whether u reaches the server on a unix socket only: no host but a host
// parameter that is a folder (postgres:///keyarc?host=/run/postgresql).
func socket(u *url.URL) bool {
	if u.Host != "" {
		return false
	}
	h := u.Query().Get("host")
	if h == "" {
		return false // libpq's default host is a socket, pgx's is localhost over TCP: say which
	}
	for _, one := range strings.Split(h, ",") {
		if !strings.HasPrefix(one, "/") {
			return false
		}
	}
	return true
}

func checkPasswordSource(src string) error {
	switch {
	case src == "":
		return nil
	case strings.HasPrefix(src, "file:") && len(src) > len("file:"),
		strings.HasPrefix(src, "env:") && len(src) > len("env:"):
		return nil
	}
	return errors.New("want file:PATH or env:NAME")
}

// PostgresConnString returns the URL of the PostgreSQL database with the password read from
// database_password_source, if any. The result holds the password: pass it to the driver
// only, never to a log or an error.
func (c *Config) PostgresConnString() (string, error) {
	if !c.IsPostgres() {
		return "", fmt.Errorf("database %s is not a postgres:// URL", c.Path(c.Database))
	}
	if err := c.validateDatabase(); err != nil {
		return "", err
	}
	src := c.DatabasePasswordSource
	if src == "" {
		return c.Database, nil
	}
	pw, err := c.readSecretSource("database_password_source", src)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(c.Database)
	if err != nil {
		return "", errors.New("database: malformed postgres:// URL")
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String(), nil
}
