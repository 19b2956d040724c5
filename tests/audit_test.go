package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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

// TestAuditTailDeletedWhileServing: the newest audit entry (a KRA's approval, not yet covered
// by a checkpoint) deleted with sqlite3 while the appliance runs is caught: the next audited
// operation is refused, no checkpoint signs the shortened trail, the auditor's API and
// `keyarc audit verify` report the loss within seconds, and the appliance does not start
// again on that database.
func TestAuditTailDeletedWhileServing(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl", "sqlite3")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "fay@example.org", filepath.Join(dir, "fay"))
	serial := certSerial(t, dir, filepath.Join(dir, "fay", "cert.pem"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "tail deletion")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)

	dbPath := filepath.Join(state, "keyarc.db")
	var seq int
	if err := openDB(t, state).QueryRow(`SELECT max(seq) FROM audit WHERE kind = 'approval'`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	out, err := exec.Command("sqlite3", "-cmd", ".timeout 10000", dbPath,
		`DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit) AND kind = 'approval'; SELECT changes();`).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("sqlite3 deleting the approval's entry: %v\n%s", err, out)
	}

	// With nothing appended, the periodic look at the trail (every 5 s) sees the loss and
	// records the lost entry in the head file: verify reports it.
	deadline := time.Now().Add(30 * time.Second)
	var msg string
	for {
		_, errOut, err := keyarcResult("audit", "verify", "--state", state)
		if err != nil {
			msg = errOut
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit verify still passes 30 s after entry %d was deleted", seq)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(msg, "truncated") || !strings.Contains(msg, fmt.Sprintf("records entry %d", seq)) {
		t.Errorf("audit verify after the tail was deleted:\n%s", msg)
	}
	if !strings.Contains(a.logs.String(), "AUDIT TRAIL LOST ENTRIES") {
		t.Errorf("no error logged for the lost entry:\n%s", a.logs.String())
	}
	if v := metricValue(t, a, "keyarc_audit_failures_total"); v < 1 {
		t.Errorf("keyarc_audit_failures_total = %v, want at least 1", v)
	}

	// The second approval would chain onto the shortened trail: refused, and not counted.
	if msg := keyarcFails(t, as("kra2", "recovery", "approve", id, "--yes")...); msg == "" {
		t.Error("the second approval was refused without a message")
	}
	var approvals int
	if err := openDB(t, state).QueryRow(`SELECT count(*) FROM audit WHERE kind = 'approval'`).Scan(&approvals); err != nil {
		t.Fatal(err)
	}
	if approvals != 0 {
		t.Errorf("%d approval entries after the refusal, want 0", approvals)
	}
	var signed int
	if err := openDB(t, state).QueryRow(`SELECT count(*) FROM audit_checkpoints WHERE seq < ? AND at >= ?`,
		seq, deleted.UnixMicro()).Scan(&signed); err != nil {
		t.Fatal(err)
	}
	if signed > 0 {
		t.Errorf("%d checkpoints were signed over the shortened trail (before the approval, entry %d)", signed, seq)
	}

	// The auditor's API reports it too.
	creds := filepath.Join(state, "credentials")
	status, body := curlStatus(t, dir, "--cacert", filepath.Join(state, "ca.pem"), "--cert", filepath.Join(creds, "auditor.pem"),
		"--key", filepath.Join(creds, "auditor-key.pem"), a.url+"/api/v1/audit?limit=1")
	var got struct {
		Verification struct {
			OK      bool   `json:"ok"`
			Problem string `json:"problem"`
		} `json:"verification"`
	}
	if status != 200 || json.Unmarshal(body, &got) != nil || got.Verification.OK || !strings.Contains(got.Verification.Problem, "truncated") {
		t.Errorf("GET /api/v1/audit after the loss: %d %s", status, body)
	}

	// Stopped, the appliance does not start again on the database that lost its tail.
	stopServe(t, a)
	serveFails(t, state, "truncated", "keyarc restore")
}
