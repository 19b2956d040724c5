package config

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigDatabase: database is a SQLite file or a postgres:// URL without a password, on a
// unix socket or over TLS that verifies the server (sslmode=verify-full); the error names the
// field and says what to do.
func TestConfigDatabase(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		// want are the parts the error must contain; none means the file loads.
		want     []string
		postgres bool
	}{
		{name: "file", yaml: minimal + "database: keyarc.db\n"},
		{name: "socket", yaml: minimal + "database: postgres:///keyarc?host=/run/postgresql\n", postgres: true},
		{name: "verify-full", yaml: minimal + "database: postgresql://keyarc@db.example.org:5432/keyarc?sslmode=verify-full&sslrootcert=/etc/keyarc/db-ca.pem\n" +
			"database_password_source: env:KEYARC_DB_PASSWORD\n", postgres: true},
		{name: "password in url", yaml: minimal + "database: postgres://keyarc:hunter2@db.example.org/keyarc?sslmode=verify-full\n",
			want: []string{"database", "password", "database_password_source"}},
		{name: "password parameter", yaml: minimal + "database: postgres:///keyarc?host=/run/postgresql&password=hunter2\n",
			want: []string{"database", "password"}},
		{name: "no sslmode", yaml: minimal + "database: postgres://db.example.org/keyarc\n", want: []string{"database", "sslmode", "verify-full"}},
		{name: "require", yaml: minimal + "database: postgres://db.example.org/keyarc?sslmode=require\n", want: []string{"database", "require", "verify-full"}},
		{name: "tcp among socket hosts", yaml: minimal + "database: postgres:///keyarc?host=/run/postgresql,db.example.org\n", want: []string{"sslmode"}},
		{name: "bad source", yaml: minimal + "database: postgres:///keyarc?host=/run/postgresql\ndatabase_password_source: hunter2\n",
			want: []string{"database_password_source", "file:PATH or env:NAME"}},
		{name: "source without postgres", yaml: minimal + "database: keyarc.db\ndatabase_password_source: env:X\n",
			want: []string{"database_password_source", "postgres://"}},
		{name: "other scheme", yaml: minimal + "database: mysql://db/keyarc\n", want: []string{"database", "postgres://"}},
		// A misspelt scheme is no postgres:// URL, so the password check above does not apply:
		// the error must not quote the URL either.
		{name: "misspelt scheme with password", yaml: minimal + "database: postgress://keyarc:hunter2@db.example.org/keyarc\n",
			want: []string{"database", "postgres://"}},
		{name: "capital scheme with password", yaml: minimal + "database: Postgres://keyarc:hunter2@db.example.org/keyarc?sslmode=verify-full\n",
			want: []string{"database", "postgres://"}},
		// libpq's keyword/value form is not a file name: it would become one, with the
		// password in it, and the appliance would run on an empty SQLite archive.
		{name: "keyword/value string", yaml: minimal + "database: host=db.example.org dbname=keyarc password=hunter2\n",
			want: []string{"database", "keyword", "postgres://"}},
		{name: "keyword/value, spaced", yaml: minimal + "database: 'dbname = keyarc'\n", want: []string{"database", "postgres://"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if c.IsPostgres() != tt.postgres {
					t.Errorf("IsPostgres() = %v, want %v", c.IsPostgres(), tt.postgres)
				}
				return
			}
			if err == nil {
				t.Fatalf("Load: no error, want one containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load: %v; want it to contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error quotes the password: %v", err)
			}
		})
	}
}

// TestPostgresConnString: the password comes from the file or the environment variable that
// database_password_source names, into the URL given to the driver and nowhere else.
func TestPostgresConnString(t *testing.T) {
	dir := t.TempDir()
	base := minimal + "database: postgres://keyarc@db.example.org/keyarc?sslmode=verify-full\n"
	if err := os.WriteFile(filepath.Join(dir, "db-password"), []byte("s3cret:/@?\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "open-password"), []byte("s3cret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYARC_TEST_DB_PASSWORD", "from-env")
	for _, tt := range []struct {
		name, source, want string
		wantErr            bool
	}{
		{name: "none", source: ""},
		{name: "file", source: "file:db-password", want: "s3cret:/@?"},
		{name: "env", source: "env:KEYARC_TEST_DB_PASSWORD", want: "from-env"},
		{name: "env unset", source: "env:KEYARC_TEST_NO_SUCH_VARIABLE", wantErr: true},
		{name: "file missing", source: "file:no-such-file", wantErr: true},
		{name: "file any user may read", source: "file:open-password", wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			yaml := base
			if tt.source != "" {
				yaml += "database_password_source: " + tt.source + "\n"
			}
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := c.PostgresConnString()
			if (err != nil) != tt.wantErr {
				t.Fatalf("PostgresConnString: %v, want an error: %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			u, err := url.Parse(conn)
			if err != nil {
				t.Fatal(err)
			}
			pw, _ := u.User.Password()
			if pw != tt.want || u.User.Username() != "keyarc" || u.Query().Get("sslmode") != "verify-full" {
				t.Errorf("connection string gives user %q, password %q, sslmode %q; want keyarc, %q, verify-full",
					u.User.Username(), pw, u.Query().Get("sslmode"), tt.want)
			}
			if strings.Contains(c.DatabaseName(), "s3cret") || strings.Contains(c.DatabaseName(), "from-env") {
				t.Errorf("DatabaseName holds the password: %s", c.DatabaseName())
			}
		})
	}
}
