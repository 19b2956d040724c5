package tests

import (
	"io"
	"net/http"
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

// TestMisplacedSecretsKeptOut: secrets typed into the wrong field (an enrollment code as the
// EST label, as the JSON template or as a serial to recover or revoke, a password as a mailbox
// in a directory lookup, a recovery request or a bulk job) are refused without being repeated: they reach neither the answer,
// the log, the audit trail, the database nor the metrics.
func TestMisplacedSecretsKeptOut(t *testing.T) {
	t.Parallel()
	requireTools(t, "curl", "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	ca := filepath.Join(state, "ca.pem")
	const mailbox = "tess@example.org"
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-signature"))
	csr := estCSR(t, dir, "tess", "/CN="+mailbox)
	secrets := []string{code, "Hunter2-mailbox-password", "Hunter3-recovery-password", "Hunter4-bulk-password"}

	var bodies []string
	refused := func(want int, args ...string) {
		t.Helper()
		status, body := curlStatus(t, dir, append([]string{"--cacert", ca}, args...)...)
		if status != want {
			t.Errorf("%v: %d %s, want %d", args, status, body, want)
		}
		bodies = append(bodies, string(body))
	}
	// The code as the EST label, with the right credentials.
	refused(404, "--user", mailbox+":"+code, "-H", "Content-Type: application/pkcs10", "--data-binary", "@"+csr,
		a.url+"/.well-known/est/"+code+"/simpleenroll")
	// The code as the JSON enrollment's template.
	der, err := os.ReadFile(csr)
	if err != nil {
		t.Fatal(err)
	}
	refused(404, "--user", mailbox+":"+code, "-H", "Content-Type: application/json",
		"--data-binary", `{"template":"`+code+`","csr":"`+strings.TrimSpace(string(der))+`","encrypted_key":"MIIB"}`, a.url+"/api/v1/enroll")
	// A password as the mailbox of an open directory lookup.
	refused(400, a.url+"/api/v1/directory?email="+secrets[1])
	// A password as the mailbox of a recovery request and of a bulk job's item.
	if _, _, err := keyarcResult("recovery", "request", "--state", state, "--as", "officer", "--email", secrets[2], "--reason", "lost"); err == nil {
		t.Error("a recovery request for a mailbox without @ was accepted")
	}
	// The code as the serial of a recovery request and of a revocation.
	for _, args := range [][]string{
		{"recovery", "request", "--serial", code, "--reason", "lost", "--as", "officer"},
		{"revoke", "--serial", code, "--reason", "keyCompromise", "--as", "officer"},
		{"revoke", "--key-of", code, "--reason", "keyCompromise", "--as", "officer"},
	} {
		if _, _, err := keyarcResult(append(args, "--state", state)...); err == nil {
			t.Errorf("keyarc %v with an enrollment code as the serial was accepted", args[:2])
		}
	}
	job := filepath.Join(dir, "job.jsonl")
	writeFile(t, job, []byte(`{"kind":"keygen","template":"smime-encryption","key":"p256"}`+"\n"+`{"email":"`+secrets[3]+`"}`+"\n"))
	id, _, _ := keyarcResult("bulk", "submit", job, "--wait", "--state", state, "--as", "admin")
	res := filepath.Join(dir, "results.jsonl")
	var results []byte
	keyarc(t, "bulk", "results", strings.TrimSpace(id), "--out", res, "--state", state, "--as", "admin")
	results, err = os.ReadFile(res)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(results), "invalid mailbox") {
		t.Errorf("the bulk item with a password as its mailbox did not fail for its mailbox:\n%s", results)
	}
	// The code, refused above, still enrolls.
	if status, body := curlEST(t, a, dir, "/.well-known/est/smime-signature/simpleenroll", mailbox+":"+code, csr); status != "200" {
		t.Fatalf("the enrollment code no longer works after the refusals: %s %s", status, body)
	}
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	stopServe(t, a)

	var trail string
	if err := openDB(t, state).QueryRow(`SELECT group_concat(kind || actor || subject || details, '|') FROM audit`).Scan(&trail); err != nil {
		t.Fatal(err)
	}
	var db []byte
	for _, f := range []string{"keyarc.db", "keyarc.db-wal"} {
		b, _ := os.ReadFile(filepath.Join(state, f))
		db = append(db, b...)
	}
	sinks := map[string]string{"answers": strings.Join(bodies, "\n"), "log": a.logs.String(), "audit trail": trail,
		"database": string(db), "metrics": string(metrics), "bulk results": string(results)}
	for _, secret := range secrets {
		for what, text := range sinks {
			if strings.Contains(strings.ToLower(text), strings.ToLower(secret)) {
				t.Errorf("the secret %q given in the wrong field is in the %s", secret, what)
			}
		}
	}
}
