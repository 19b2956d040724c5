package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stopServe interrupts a running appliance and waits until it has exited (its shutdown
// checkpoint written).
func stopServe(t *testing.T, a *appliance) {
	t.Helper()
	a.cmd.Process.Signal(os.Interrupt)
	deadline := time.Now().Add(30 * time.Second)
	for a.cmd.Process.Signal(syscall.Signal(0)) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("keyarc serve did not stop\n%s", a.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func copyFileT(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, b)
}

// restoreDB puts a copy of the database file in place, as an operator restoring a backup.
func restoreDB(t *testing.T, state, from string) {
	t.Helper()
	db := filepath.Join(state, "keyarc.db")
	os.Remove(db + "-wal")
	os.Remove(db + "-shm")
	copyFileT(t, from, db)
}

// TestAuditTrail: enrollment and recovery leave entries (the approvals with the KRAs'
// signatures), no secret reaches the trail, `keyarc audit verify` passes on the intact trail
// and names the problem once the SQLite file is tampered with or an older backup is restored.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "dora@example.org"
	code := enrollUser(t, a, mailbox, filepath.Join(dir, "dora"))
	serial := certSerial(t, dir, filepath.Join(dir, "dora", "cert.pem"))

	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "audit scenario")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	p12, pw := filepath.Join(dir, "dora.p12"), filepath.Join(dir, "dora.pw")
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)

	// The auditor reads the trail over the API; an officer may not (and that is recorded).
	creds := filepath.Join(state, "credentials")
	curlAs := func(who string) (int, []byte) {
		return curlStatus(t, dir, "--cacert", filepath.Join(state, "ca.pem"), "--cert", filepath.Join(creds, who+".pem"),
			"--key", filepath.Join(creds, who+"-key.pem"), a.url+"/api/v1/audit?limit=1000")
	}
	if code, body := curlAs("officer"); code != 403 {
		t.Errorf("officer reading the audit trail: %d %s", code, body)
	}
	status, body := curlAs("auditor")
	if status != 200 {
		t.Fatalf("GET /api/v1/audit as auditor: %d %s", status, body)
	}
	var got struct {
		Verification struct {
			OK      bool   `json:"ok"`
			Problem string `json:"problem"`
		} `json:"verification"`
		Entries []struct {
			Seq     int64          `json:"seq"`
			Kind    string         `json:"kind"`
			Actor   string         `json:"actor"`
			Subject string         `json:"subject"`
			Details map[string]any `json:"details"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("audit JSON: %v\n%s", err, body)
	}
	if !got.Verification.OK {
		t.Errorf("the API reports the trail does not verify: %s", got.Verification.Problem)
	}
	kinds := map[string]int{}
	for _, e := range got.Entries {
		kinds[e.Kind]++
		switch e.Kind {
		case "archive":
			if e.Details["serial"] == serial && e.Actor != "enrollee:"+mailbox {
				t.Errorf("archive entry by %q, want the enrollee", e.Actor)
			}
		case "approval":
			if sig, _ := e.Details["signature"].(string); len(sig) < 60 || e.Subject != id {
				t.Errorf("approval entry without the KRA's signature: %+v", e)
			}
		case "recovery-fetched":
			if !strings.HasPrefix(e.Actor, "officer:") {
				t.Errorf("recovery-fetched by %q", e.Actor)
			}
		}
	}
	for kind, n := range map[string]int{"startup": 1, "code-created": 1, "archive": 1, "recovery-set-changed": 1,
		"recovery-requested": 1, "approval": 2, "recovery-fetched": 1, "login-failed": 1} {
		if kinds[kind] < n {
			t.Errorf("%d %s entries, want at least %d (kinds: %v)", kinds[kind], kind, n, kinds)
		}
	}
	stopServe(t, a)

	// No secret of the scenario is in the trail.
	var all string
	sdb := openDB(t, state)
	if err := sdb.QueryRow(`SELECT group_concat(kind || actor || subject || details, '|') FROM audit`).Scan(&all); err != nil {
		t.Fatal(err)
	}
	sdb.Close() // the file is replaced below
	password, _ := os.ReadFile(pw)
	pin, _ := os.ReadFile(filepath.Join(state, "softhsm", "pins", "keyarc.pin"))
	for what, secret := range map[string]string{"enrollment code": code, "PKCS#12 password": strings.TrimSpace(string(password)),
		"token PIN": strings.TrimSpace(string(pin))} {
		if secret == "" || strings.Contains(all, secret) {
			t.Errorf("the %s (%q) is in the audit trail, or empty", what, secret)
		}
	}

	out := keyarc(t, "audit", "verify", "--state", state)
	if !strings.Contains(out, "OK") {
		t.Fatalf("audit verify on an intact trail:\n%s", out)
	}

	// A backup taken now, then more activity (a restart), then the backup restored: the head
	// file shows the database is older than the trail.
	backup := filepath.Join(dir, "backup.db")
	copyFileT(t, filepath.Join(state, "keyarc.db"), backup)
	a = serve(t, state)
	keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", "erin@example.org", "--template", "smime-encryption")
	stopServe(t, a)
	keyarc(t, "audit", "verify", "--state", state)
	good := filepath.Join(dir, "good.db")
	copyFileT(t, filepath.Join(state, "keyarc.db"), good)

	restoreDB(t, state, backup)
	if msg := keyarcFails(t, "audit", "verify", "--state", state); !strings.Contains(msg, "truncated") || !strings.Contains(msg, "older backup") {
		t.Errorf("audit verify of an older backup:\n%s", msg)
	}

	// A changed byte in one entry's details.
	restoreDB(t, state, good)
	db := openDB(t, state)
	if _, err := db.Exec(`UPDATE audit SET details = replace(details, 'dora@', 'dorb@') WHERE kind = 'archive'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if msg := keyarcFails(t, "audit", "verify", "--state", state); !strings.Contains(msg, "entry changed at entry") {
		t.Errorf("audit verify after a changed byte:\n%s", msg)
	}

	// A deleted entry.
	restoreDB(t, state, good)
	db = openDB(t, state)
	if _, err := db.Exec(`DELETE FROM audit WHERE kind = 'approval' AND seq NOT IN (SELECT seq FROM audit_checkpoints)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if msg := keyarcFails(t, "audit", "verify", "--state", state); !strings.Contains(msg, "entry deleted") {
		t.Errorf("audit verify after a deleted entry:\n%s", msg)
	}
}
