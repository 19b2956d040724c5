package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupRestore: an online backup while serving; a restore refused while the appliance
// runs, refused for a backup older than the audit trail's last signed checkpoint unless forced,
// and accepted for a current one.
func TestBackupRestore(t *testing.T) {
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "early@example.org", filepath.Join(dir, "early"))
	old := filepath.Join(dir, "old.db")
	keyarc(t, "backup", "--state", state, "--out", old)
	if st, err := os.Stat(old); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v", err, st.Mode().Perm())
	}
	enrollUser(t, a, "late@example.org", filepath.Join(dir, "late"))

	if msg := keyarcFails(t, "restore", "--state", state, "--from", old); !strings.Contains(msg, "in use") {
		t.Errorf("restore while serving: %s", msg)
	}
	a.stop(t) // the shutdown checkpoint signs the trail past the old backup

	dbBefore, _ := os.ReadFile(filepath.Join(state, "keyarc.db"))
	msg := keyarcFails(t, "restore", "--state", state, "--from", old)
	if !strings.Contains(msg, "older than the audit trail") {
		t.Fatalf("restoring an old backup: %s", msg)
	}
	if now, _ := os.ReadFile(filepath.Join(state, "keyarc.db")); string(now) != string(dbBefore) {
		t.Fatal("a refused restore changed the database")
	}

	current := filepath.Join(dir, "current.db")
	keyarc(t, "backup", "--state", state, "--out", current)
	keyarc(t, "restore", "--state", state, "--from", current)
	out := keyarc(t, "audit", "verify", "--state", state)
	if !strings.Contains(strings.ToLower(out), "ok") {
		t.Errorf("audit verify after restoring a current backup:\n%s", out)
	}
	b := serve(t, state)
	if got := countFileRows(t, filepath.Join(state, "keyarc.db"), `SELECT count(*) FROM certificates WHERE state = 'issued' AND template = 'smime-encryption'`); got < 2 {
		t.Errorf("%d issued certificates after restoring the current backup, want both enrollments", got)
	}
	b.stop(t)

	_, errOut, err := keyarcResult("restore", "--state", state, "--from", old, "--force")
	if err != nil {
		t.Fatalf("forced restore: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "kept as") {
		t.Errorf("forced restore does not say what it kept:\n%s", errOut)
	}
}
