package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoginFailureKeepsCodeOut: a client that swaps the fields of HTTP Basic (the enrollment
// code as the user name, the mailbox as the password) is refused, and the code, which is still
// valid, reaches neither the audit trail (the failure's entry, the source's summary) nor the log.
func TestLoginFailureKeepsCodeOut(t *testing.T) {
	t.Parallel()
	requireTools(t, "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "sam@example.org"
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-signature"))
	csr := filepath.Join(dir, "csr.b64")
	if err := os.WriteFile(csr, []byte("MIIB"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		status, body := curlStatus(t, dir, "--cacert", filepath.Join(state, "ca.pem"), "--user", code+":"+mailbox,
			"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+csr, a.url+"/.well-known/est/smime-signature/simpleenroll")
		if status != 401 {
			t.Fatalf("swapped fields: %d %s, want 401", status, body)
		}
	}
	stopServe(t, a) // writes the source's summary entry

	var all string
	if err := openDB(t, state).QueryRow(`SELECT group_concat(kind || actor || subject || details, '|') FROM audit`).Scan(&all); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(all, "login-failed") {
		t.Fatalf("no login-failed entry in the trail: %s", all)
	}
	for what, text := range map[string]string{"audit trail": all, "log": a.logs.String()} {
		if strings.Contains(strings.ToLower(text), strings.ToLower(code)) {
			t.Errorf("the enrollment code given as the user name is in the %s", what)
		}
	}
}
