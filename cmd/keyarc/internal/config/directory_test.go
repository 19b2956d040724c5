package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDirectoryConfigValidate(t *testing.T) {
	ok := func() *DirectoryConfig {
		return &DirectoryConfig{LDAP: &LDAPConfig{URL: "ldaps://ldap.example.org", BindDN: "cn=keyarc,dc=example,dc=org",
			BindPasswordSource: "file:ldap.pw", Base: "ou=people,dc=example,dc=org"}}
	}
	tests := []struct {
		name   string
		change func(*DirectoryConfig)
		// wantField is the field the error must name; empty means no error.
		wantField string
	}{
		{name: "ldaps", change: func(*DirectoryConfig) {}},
		{name: "lookup only", change: func(d *DirectoryConfig) { d.LDAP = nil; d.Lookup = LookupClientCertificate }},
		{name: "ldap with StartTLS", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldap://ldap.example.org:389" }},
		{name: "plain LDAP on purpose", change: func(d *DirectoryConfig) { d.LDAP.URL, d.LDAP.InsecurePlaintext = "ldap://ldap.example.org", true }},
		{name: "password from the environment", change: func(d *DirectoryConfig) { d.LDAP.BindPasswordSource = "env:LDAP_PW" }},
		{name: "unknown lookup", change: func(d *DirectoryConfig) { d.Lookup = "anonymous" }, wantField: "directory.lookup"},
		{name: "negative rate", change: func(d *DirectoryConfig) { d.LookupsPerMinute = -1 }, wantField: "directory.lookups_per_minute"},
		{name: "http URL", change: func(d *DirectoryConfig) { d.LDAP.URL = "http://ldap.example.org" }, wantField: "directory.ldap.url"},
		{name: "password in the URL", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://cn=x:secret@ldap.example.org" }, wantField: "directory.ldap.url"},
		{name: "password in a URL with a path", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://cn=x:hunter2@ldap.example.org/ou=people" }, wantField: "directory.ldap.url"},
		{name: "password in a URL with a bad port", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://admin:hunter2@ldap.example.org:ldaps" }, wantField: "directory.ldap.url"},
		{name: "no bind DN", change: func(d *DirectoryConfig) { d.LDAP.BindDN = "" }, wantField: "directory.ldap.bind_dn"},
		{name: "no base", change: func(d *DirectoryConfig) { d.LDAP.Base = "" }, wantField: "directory.ldap.base"},
		{name: "no password source", change: func(d *DirectoryConfig) { d.LDAP.BindPasswordSource = "" }, wantField: "directory.ldap.bind_password_source"},
		{name: "password inline", change: func(d *DirectoryConfig) { d.LDAP.BindPasswordSource = "hunter2" }, wantField: "directory.ldap.bind_password_source"},
		{name: "port not a number", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://ldap.example.org:ldaps" }, wantField: "directory.ldap.url"},
		{name: "port out of range", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://ldap.example.org:99999" }, wantField: "directory.ldap.url"},
		{name: "query in the URL", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://ldap.example.org/?mail?sub" }, wantField: "directory.ldap.url"},
		{name: "fragment in the URL", change: func(d *DirectoryConfig) { d.LDAP.URL = "ldaps://ldap.example.org#x" }, wantField: "directory.ldap.url"},
		{name: "bind DN not a DN", change: func(d *DirectoryConfig) { d.LDAP.BindDN = "keyarc" }, wantField: "directory.ldap.bind_dn"},
		{name: "base not a DN", change: func(d *DirectoryConfig) { d.LDAP.Base = "people at example.org" }, wantField: "directory.ldap.base"},
		{name: "insecure with ldaps", change: func(d *DirectoryConfig) { d.LDAP.InsecurePlaintext = true }, wantField: "directory.ldap.insecure_plaintext"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ok()
			tt.change(d)
			err := d.Validate()
			if (err != nil) != (tt.wantField != "") || err != nil && !strings.Contains(err.Error(), tt.wantField) {
				t.Errorf("Validate() = %v, want an error naming %q", err, tt.wantField)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error quotes the password: %v", err)
			}
		})
	}
	var none *DirectoryConfig
	if none.LookupMode() != LookupOpen || none.LookupRate() != DefaultLookupsPerMinute || none.Validate() != nil {
		t.Errorf("an absent directory section: lookup %q, rate %d; want open, %d", none.LookupMode(), none.LookupRate(), DefaultLookupsPerMinute)
	}
}

func TestDirectoryBindPassword(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ldap.pw"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := DefaultAt(dir)
	c.Directory = &DirectoryConfig{LDAP: &LDAPConfig{BindPasswordSource: "file:ldap.pw"}}
	if pw, err := c.DirectoryBindPassword(); err != nil || pw != "s3cret" {
		t.Fatalf("DirectoryBindPassword from a file = %q, %v", pw, err)
	}
	t.Setenv("KEYARC_TEST_LDAP_PW", "from-env")
	c.Directory.LDAP.BindPasswordSource = "env:KEYARC_TEST_LDAP_PW"
	if pw, err := c.DirectoryBindPassword(); err != nil || pw != "from-env" {
		t.Fatalf("DirectoryBindPassword from the environment = %q, %v", pw, err)
	}
	c.Directory.LDAP.BindPasswordSource = "env:KEYARC_TEST_LDAP_PW_UNSET"
	if _, err := c.DirectoryBindPassword(); err == nil || !strings.Contains(err.Error(), "directory.ldap.bind_password_source") {
		t.Fatalf("DirectoryBindPassword from an unset variable = %v; want an error naming the field", err)
	}
}
