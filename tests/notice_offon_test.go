package tests

import (
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// enrollArchival enrolls mailbox with an archival enrollment through a's API and returns the
// certificate's serial.
func enrollArchival(t *testing.T, a *appliance, state, mailbox string) string {
	t.Helper()
	dir := t.TempDir()
	tr := filepath.Join(dir, "transport.pem")
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(state, "ca.pem"), "-o", tr, a.url+"/api/v1/transport-certificate")
	name, _, _ := strings.Cut(mailbox, "@")
	_, csr, env := opensslArchivalInput(t, dir, name, mailbox, tr)
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-encryption"))
	status, body := postEnroll(t, a, dir, mailbox+":"+code, apiEnrollJSON{Template: "smime-encryption",
		CSR: base64.StdEncoding.EncodeToString(csr), EncryptedKey: base64.StdEncoding.EncodeToString(env)})
	if status != 200 {
		t.Fatalf("enrollment of %s: %d %s", mailbox, status, body)
	}
	var issued struct {
		Serial string `json:"serial"`
	}
	if err := json.Unmarshal(body, &issued); err != nil {
		t.Fatal(err)
	}
	return issued.Serial
}

// TestNoticeOffThenOn: an enrollment made while notices are off is not mailed when they are
// turned on at the next start, even when the appliance is stopped soon after it (the feed of a
// node without notices moves its cursor once a minute); one made after is.
func TestNoticeOffThenOn(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	off := serve(t, state)
	enrollArchival(t, off, state, "before@example.org")
	off.stop(t)

	relay := freePort(t)
	sink := startMailSink(t, relay)
	appendFile(t, filepath.Join(state, "keyarc.yaml"), noticesConfig(relay))
	a := serve(t, state)
	serial := enrollArchival(t, a, state, "after@example.org")
	m := sink.next(t, "for the enrollment made with notices on")
	checkMail(t, m, "after@example.org", "escrowed", serial)
	select {
	case m := <-sink.mail:
		t.Errorf("a second mail, to %v: the time notices were off was mailed:\n%s", m.to, m.data)
	case <-time.After(2 * time.Second):
	}
}
