package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNoticesConfigValidate(t *testing.T) {
	ok := func() *NoticesConfig {
		return &NoticesConfig{SMTP: "mail.example.org:587", From: "pki@example.org"}
	}
	tests := []struct {
		name   string
		change func(*NoticesConfig)
		// wantField is the field the error must name; empty means no error.
		wantField string
	}{
		{name: "minimal", change: func(*NoticesConfig) {}},
		{name: "authenticated", change: func(n *NoticesConfig) { n.Username, n.PasswordFile = "keyarc", "smtp.pw" }},
		{name: "plain relay on loopback", change: func(n *NoticesConfig) { n.SMTP, n.StartTLS = "127.0.0.1:25", StartTLSOff }},
		{name: "no port", change: func(n *NoticesConfig) { n.SMTP = "mail.example.org" }, wantField: "notices.smtp"},
		{name: "port not a number", change: func(n *NoticesConfig) { n.SMTP = "mail.example.org:smtp" }, wantField: "notices.smtp"},
		{name: "port zero", change: func(n *NoticesConfig) { n.SMTP = "mail.example.org:0" }, wantField: "notices.smtp"},
		{name: "line break in host", change: func(n *NoticesConfig) { n.SMTP = "mail.example.org\r\n:587" }, wantField: "notices.smtp"},
		{name: "credentials in smtp", change: func(n *NoticesConfig) { n.SMTP = "keyarc:hunter2@mail.example.org:587" }, wantField: "notices.smtp"},
		{name: "URL in smtp", change: func(n *NoticesConfig) { n.SMTP = "smtp://keyarc:hunter2@mail.example.org:587" }, wantField: "notices.smtp"},
		{name: "display name in from", change: func(n *NoticesConfig) { n.From = "PKI <pki@example.org>" }, wantField: "notices.from"},
		{name: "from with a line break", change: func(n *NoticesConfig) { n.From = "pki@example.org\r\nBcc: x@example.org" }, wantField: "notices.from"},
		{name: "unknown starttls", change: func(n *NoticesConfig) { n.StartTLS = "opportunistic" }, wantField: "notices.starttls"},
		{name: "password in clear", change: func(n *NoticesConfig) {
			n.StartTLS, n.Username, n.PasswordFile = StartTLSOff, "keyarc", "smtp.pw"
		}, wantField: "notices.username"},
		{name: "user without password file", change: func(n *NoticesConfig) { n.Username = "keyarc" }, wantField: "notices.password_file"},
		{name: "retry too long", change: func(n *NoticesConfig) { n.RetryMax.Duration = 2 * time.Hour }, wantField: "notices.retry_max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := ok()
			tt.change(n)
			err := n.Validate()
			if (err != nil) != (tt.wantField != "") || err != nil && !strings.Contains(err.Error(), tt.wantField) {
				t.Errorf("validate() = %v, want an error naming %q", err, tt.wantField)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error quotes the password: %v", err)
			}
		})
	}
	if err := (*NoticesConfig)(nil).Validate(); err != nil {
		t.Errorf("no notices section: %v", err)
	}
}

// TestNoticesConfigLoad: the section loads with its defaults, is absent by default, and a
// password written inline is an unknown field, never read.
func TestNoticesConfigLoad(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       []string // parts of the error; none means it loads
	}{
		{name: "absent", yaml: minimal},
		{name: "present", yaml: minimal + "notices:\n  smtp: mail.example.org:587\n  from: pki@example.org\n"},
		{name: "inline password", yaml: minimal + "notices:\n  smtp: mail.example.org:587\n  from: pki@example.org\n  password: hunter2\n",
			want: []string{"line 6", "password"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, Name), []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(dir)
			if len(tt.want) > 0 {
				if err == nil {
					t.Fatal("loaded, want an error")
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("the error repeats the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "absent" && c.Notices != nil {
				t.Errorf("notices = %+v without a section", c.Notices)
			}
			if tt.name == "present" && (c.Notices.StartTLSMode() != StartTLSRequired || c.Notices.QueueDir() != DefaultNoticeQueue) {
				t.Errorf("defaults: starttls %q, queue %q", c.Notices.StartTLSMode(), c.Notices.QueueDir())
			}
		})
	}
}
