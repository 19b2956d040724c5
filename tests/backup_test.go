package tests

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBackupRestore: an online backup while serving; a restore refused while the appliance
// runs, refused for a backup older than the audit trail's last signed checkpoint unless forced,
// and accepted for a current one.
func TestBackupRestore(t *testing.T) {
	t.Parallel()
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

// TestRollbackRefused: a database rolled back behind the audit trail's head is not served, with
// or without the head file, until the rollback is recorded with `keyarc restore --force`; the
// forced restore is an audited act that names the backup, the entries it drops and the OS user,
// and `keyarc audit verify` then passes and reports the gap.
func TestRollbackRefused(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "before@example.org", filepath.Join(dir, "before"))
	old := filepath.Join(dir, "old.db")
	keyarc(t, "backup", "--state", state, "--out", old)
	if _, err := os.Stat(old + ".audit-head.json"); err != nil {
		t.Errorf("backup did not carry the audit head file: %v", err)
	}
	for _, m := range []string{"after1@example.org", "after2@example.org"} {
		enrollUser(t, a, m, filepath.Join(dir, m))
	}
	a.stop(t) // the shutdown checkpoint signs the trail past the backup

	head := filepath.Join(state, "audit-head.json")
	restoreDB(t, state, old) // the operator copies the backup over the database
	serveFails(t, state, "DOES NOT VERIFY", "keyarc restore")
	// Nothing is written to a rolled-back database, not even the certificates serve issues for
	// itself at start (a missing audit or OCSP responder certificate) before it is refused.
	dbPath := filepath.Join(state, "keyarc.db")
	const audits = `SELECT count(*) FROM audit`
	entries := countFileRows(t, dbPath, audits)
	for _, f := range []string{"audit.pem", "ocsp.pem"} {
		if err := os.Rename(filepath.Join(state, f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	serveFails(t, state, "DOES NOT VERIFY", "keyarc restore")
	if got := countFileRows(t, dbPath, audits); got != entries {
		t.Errorf("a refused start wrote %d audit entries to the rolled-back database", got-entries)
	}
	for _, f := range []string{"audit.pem", "ocsp.pem"} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(state, f)); err != nil {
			t.Fatal(err)
		}
	}

	// A head file edited to match the rolled-back database is not the audit key's: refused.
	orig, err := os.ReadFile(head)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(orig, &h); err != nil {
		t.Fatal(err)
	}
	h["seq"] = 2
	forged, _ := json.Marshal(h)
	writeFile(t, head, forged)
	serveFails(t, state, "not signed by the audit key", "keyarc restore")
	writeFile(t, head, orig)

	// Without the head file there is nothing to compare with, but the database holds signed
	// checkpoints: refused too.
	if err := os.Rename(head, head+".aside"); err != nil {
		t.Fatal(err)
	}
	serveFails(t, state, "audit-head.json", "keyarc restore")
	if err := os.Rename(head+".aside", head); err != nil {
		t.Fatal(err)
	}

	// The forced restore records the rollback and signs a new head after it.
	_, errOut, err := keyarcResult("restore", "--state", state, "--from", old, "--force")
	if err != nil {
		t.Fatalf("forced restore: %v\n%s", err, errOut)
	}
	var rep struct {
		OK     bool `json:"ok"`
		Report struct {
			Restores []struct {
				Seq         int64 `json:"seq"`
				RestoredSeq int64 `json:"restored_seq"`
				TrailSeq    int64 `json:"trail_seq"`
			} `json:"restores"`
		} `json:"report"`
	}
	out := keyarc(t, "audit", "verify", "--state", state, "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("audit verify --json: %v\n%s", err, out)
	}
	if !rep.OK || len(rep.Report.Restores) != 1 {
		t.Fatalf("audit verify after a forced restore:\n%s", out)
	}
	r := rep.Report.Restores[0]
	if r.RestoredSeq < 1 || r.TrailSeq <= r.RestoredSeq || r.Seq != r.RestoredSeq+1 {
		t.Errorf("restore entry %+v: want the restored database's last entry, the lost trail's last entry after it, and the entry right after the restored one", r)
	}
	text := keyarc(t, "audit", "verify", "--state", state)
	if !strings.Contains(text, "OK") || !strings.Contains(text, "restored") || !strings.Contains(text, fmt.Sprintf("%d to %d", r.RestoredSeq+1, r.TrailSeq)) {
		t.Errorf("audit verify does not show the gap:\n%s", text)
	}
	db := openDB(t, state)
	var actor, details string
	if err := db.QueryRow(`SELECT actor, details FROM audit WHERE kind = 'restore'`).Scan(&actor, &details); err != nil {
		t.Fatalf("no restore entry: %v", err)
	}
	db.Close()
	if !strings.HasPrefix(actor, "os:") || !strings.Contains(details, filepath.Base(old)) {
		t.Errorf("restore entry by %q: %s", actor, details)
	}
	b := serve(t, state)
	b.stop(t)
	keyarc(t, "audit", "verify", "--state", state)
}

// TestRollbackWithoutHead: the database copied back and the head file removed, as one who hides
// a rollback would: refused; recorded in place with `restore --force --from` the database
// itself, the entry says the head was missing and the trail verifies again.
func TestRollbackWithoutHead(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "before@example.org", filepath.Join(dir, "before"))
	old := filepath.Join(dir, "old.db")
	keyarc(t, "backup", "--state", state, "--out", old)
	enrollUser(t, a, "after@example.org", filepath.Join(dir, "after"))
	a.stop(t)

	restoreDB(t, state, old)
	if err := os.Remove(filepath.Join(state, "audit-head.json")); err != nil {
		t.Fatal(err)
	}
	serveFails(t, state, "audit-head.json", "keyarc restore")
	if msg := keyarcFails(t, "audit", "verify", "--state", state); !strings.Contains(msg, "no head file") {
		t.Errorf("audit verify without the head file:\n%s", msg)
	}
	dbPath := filepath.Join(state, "keyarc.db")
	if msg := keyarcFails(t, "restore", "--state", state, "--from", dbPath); !strings.Contains(msg, "--force") {
		t.Errorf("restore in place without --force:\n%s", msg)
	}
	keyarc(t, "restore", "--state", state, "--from", dbPath, "--force")
	out := keyarc(t, "audit", "verify", "--state", state)
	if !strings.Contains(out, "OK") || !strings.Contains(out, "head file was missing") {
		t.Errorf("audit verify after recording the rollback:\n%s", out)
	}
	b := serve(t, state)
	b.stop(t)
}

// TestRestoreRefusesWhatIsNotThisArchive: an empty file, a copy whose trail was changed and
// another appliance's database are refused, even with --force, and leave the state as it was;
// a backup behind the database in place is refused without --force although no head file
// exists yet (the appliance was never served).
func TestRestoreRefusesWhatIsNotThisArchive(t *testing.T) {
	t.Parallel()
	state, other := devState(t), devState(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	keyarc(t, "backup", "--state", state, "--out", good)
	foreign := filepath.Join(dir, "foreign.db")
	keyarc(t, "backup", "--state", other, "--out", foreign)
	empty := filepath.Join(dir, "empty.db")
	writeFile(t, empty, nil)
	tampered := filepath.Join(dir, "tampered.db")
	copyFileT(t, good, tampered)
	db, err := sql.Open("sqlite", "file:"+tampered)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit SET actor = 'mallory' WHERE seq = 3`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	newer := filepath.Join(dir, "newer.db")
	copyFileT(t, good, newer)
	if db, err = sql.Open("sqlite", "file:"+newer); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA user_version = 9999`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	dbPath := filepath.Join(state, "keyarc.db")
	before, _ := os.ReadFile(dbPath)
	for _, c := range []struct{ from, want string }{
		{newer, "another keyarc version"},
		{empty, "holds no audit trail"},
		{tampered, "does not verify"},
		{foreign, "another appliance's database"},
	} {
		msg := keyarcFails(t, "restore", "--state", state, "--from", c.from, "--force")
		if !strings.Contains(msg, c.want) || !strings.Contains(msg, "nothing was changed") {
			t.Errorf("restore --from %s: %s", filepath.Base(c.from), msg)
		}
		if now, _ := os.ReadFile(dbPath); string(now) != string(before) {
			t.Fatalf("a refused restore of %s changed the database", filepath.Base(c.from))
		}
		if m, _ := filepath.Glob(filepath.Join(state, "*before-restore*")); len(m) > 0 {
			t.Fatalf("a refused restore of %s moved files aside: %v", filepath.Base(c.from), m)
		}
	}

	keyarc(t, "admin", "credential", "issue", "--state", state, "--role", "admin", "--name", "ada", "--out", filepath.Join(dir, "ada"))
	if msg := keyarcFails(t, "restore", "--state", state, "--from", good); !strings.Contains(msg, "drops audited history") {
		t.Errorf("restoring a backup behind the database, no head file: %s", msg)
	}
	keyarc(t, "restore", "--state", state, "--from", good, "--force")
	if out := keyarc(t, "audit", "verify", "--state", state); !strings.Contains(out, "OK") {
		t.Errorf("audit verify after the forced restore:\n%s", out)
	}
}

// TestRestoreDiskFull: a restore onto a disk too full for it fails as a storage fault (never
// "not a keyarc database") and leaves the database, the head file and no leftover behind;
// with a little more room it succeeds.
func TestRestoreDiskFull(t *testing.T) {
	t.Parallel()
	mnt := smallDisk(t, "2m")
	state := devState(t)
	dbPath := moveDatabase(t, state, mnt)
	backup := filepath.Join(t.TempDir(), "b.db")
	keyarc(t, "backup", "--state", state, "--out", backup)

	filler, size := fillDisk(t, mnt, 4096)
	before, _ := os.ReadFile(dbPath)
	for free := int64(0); ; free += 16 << 10 {
		if free > size {
			t.Fatal("the restore never succeeded")
		}
		if err := os.Truncate(filler, size-free); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := keyarcResult("restore", "--state", state, "--from", backup)
		if err == nil {
			break
		}
		if strings.Contains(errOut, "not a keyarc database") || !strings.Contains(errOut, "nothing was changed") {
			t.Errorf("restore with %d KiB free: %s", free>>10, errOut)
		}
		if now, _ := os.ReadFile(dbPath); string(now) != string(before) {
			t.Fatalf("a failed restore with %d KiB free changed the database", free>>10)
		}
		for _, dir := range []string{mnt, state} {
			if m, _ := filepath.Glob(filepath.Join(dir, "*.restoring*")); len(m) > 0 {
				t.Fatalf("a failed restore with %d KiB free left %v", free>>10, m)
			}
			if m, _ := filepath.Glob(filepath.Join(dir, "*before-restore*")); len(m) > 0 {
				t.Fatalf("a failed restore with %d KiB free moved files aside: %v", free>>10, m)
			}
		}
	}
	os.Remove(filler)
	if out := keyarc(t, "audit", "verify", "--state", state); !strings.Contains(out, "OK") {
		t.Errorf("audit verify after the restore:\n%s", out)
	}
}

// TestBackupRestoreInterrupted: Ctrl-C during a backup leaves no partial copy (a second backup
// to the same file works), and Ctrl-C during a restore leaves the state folder as it was.
func TestBackupRestoreInterrupted(t *testing.T) {
	t.Parallel()
	state := devState(t)
	dbPath := filepath.Join(state, "keyarc.db")
	db, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	// A large database, so that copying it takes a while.
	if _, err := db.Exec(`CREATE TABLE filler (b BLOB); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) INSERT INTO filler SELECT randomblob(1 << 20) FROM c`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "b.db")
	stopped := 0
	for after := 50 * time.Millisecond; after < 3*time.Second; after += 150 * time.Millisecond {
		msg, err := interrupted(t, after, "backup", "--state", state, "--out", out)
		if err == nil || strings.Contains(msg, "database copied") {
			break // done before the signal
		}
		stopped++
		if msg != "" && !strings.Contains(msg, "interrupted") { // no message: killed before it began
			t.Errorf("backup interrupted after %v: %s", after, msg)
		}
		if m, _ := filepath.Glob(out + "*"); len(m) > 0 {
			t.Fatalf("backup interrupted after %v left %v", after, m)
		}
	}
	if stopped == 0 {
		t.Fatal("no backup was interrupted: the database is copied too fast for this test")
	}
	os.Remove(out)
	keyarc(t, "backup", "--state", state, "--out", out)

	st, _ := os.Stat(dbPath)
	stopped = 0
	for after := 50 * time.Millisecond; after < 5*time.Second; after += 150 * time.Millisecond {
		msg, err := interrupted(t, after, "restore", "--state", state, "--from", out)
		if err == nil || strings.Contains(msg, "restore recorded") {
			break // done before the signal
		}
		stopped++
		if msg != "" && !strings.Contains(msg, "interrupted; nothing was changed") {
			t.Errorf("restore interrupted after %v: %s", after, msg)
		}
		if now, err := os.Stat(dbPath); err != nil || now.Size() != st.Size() || !now.ModTime().Equal(st.ModTime()) {
			t.Fatalf("restore interrupted after %v changed the database", after)
		}
		m, _ := filepath.Glob(filepath.Join(state, "*.restoring*"))
		k, _ := filepath.Glob(filepath.Join(state, "*before-restore*"))
		if len(m)+len(k) > 0 {
			t.Fatalf("restore interrupted after %v left %v %v", after, m, k)
		}
	}
	if stopped == 0 {
		t.Fatal("no restore was interrupted: the database is copied too fast for this test")
	}
	if out := keyarc(t, "audit", "verify", "--state", state); !strings.Contains(out, "OK") {
		t.Errorf("audit verify after the restores:\n%s", out)
	}
}

// TestRestoreKeepsOwner: a restore run as root on a state folder that belongs to the service's
// user leaves the database and the head file to that user, so the appliance can open them.
func TestRestoreKeepsOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the state folder to another user")
	}
	state := devState(t)
	const uid, gid = 65534, 65534 // nobody
	if err := filepath.Walk(state, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "b.db")
	keyarc(t, "backup", "--state", state, "--out", backup)
	keyarc(t, "restore", "--state", state, "--from", backup)
	for _, f := range []string{"keyarc.db", "audit-head.json"} {
		st, err := os.Stat(filepath.Join(state, f))
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Sys().(*syscall.Stat_t); s.Uid != uid || s.Gid != gid {
			t.Errorf("%s belongs to %d:%d after the restore, want the state folder's %d:%d", f, s.Uid, s.Gid, uid, gid)
		}
	}
}

// TestMissingDatabaseNotCreated: backup and the local admin commands on a state folder whose
// database is missing say so, and neither make an empty database nor back one up.
func TestMissingDatabaseNotCreated(t *testing.T) {
	t.Parallel()
	state := devState(t)
	dbPath := filepath.Join(state, "keyarc.db")
	if err := os.Rename(dbPath, dbPath+".away"); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "b.db")
	for _, args := range [][]string{
		{"backup", "--state", state, "--out", out},
		{"admin", "enroll-code", "create", "--state", state, "--email", "a@example.org"},
		{"admin", "credential", "issue", "--state", state, "--role", "admin", "--name", "ada", "--out", filepath.Join(t.TempDir(), "ada")},
	} {
		if msg := keyarcFails(t, args...); !strings.Contains(msg, "no database at") {
			t.Errorf("%s without a database: %s", args[0], msg)
		}
		if _, err := os.Stat(dbPath); err == nil {
			t.Fatalf("%s made an empty database", strings.Join(args[:2], " "))
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("backup copied a database that does not exist")
	}
	serveFails(t, state, "no database at")
	if _, err := os.Stat(dbPath); err == nil {
		t.Fatal("serve made an empty database")
	}
}

// TestRestoreKeepsRevocations: a revocation acknowledged after a backup was taken, and
// published on a CRL, survives a forced restore of that backup: the certificate is still
// revoked (same date and reason) on the next CRL and in OCSP, and the next CRL's number is
// above every one published before the restore (RFC 5280 5.2.3: CRL numbers only go up,
// and two different CRLs never share one). A revoked certificate the backup does not hold is
// named by the restore.
func TestRestoreKeepsRevocations(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	a := servePublic(t, state, pub)
	dir := t.TempDir()
	enrollUser(t, a, "ned@example.org", filepath.Join(dir, "ned"))
	nedCert := filepath.Join(dir, "ned", "cert.pem")
	ned := certSerial(t, dir, nedCert)
	old := filepath.Join(dir, "old.db")
	keyarc(t, "backup", "--state", state, "--out", old)

	keyarc(t, "revoke", "--serial", ned, "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
	// A certificate issued after the backup cannot be carried over: the restore names it.
	enrollUser(t, a, "oda@example.org", filepath.Join(dir, "oda"))
	oda := certSerial(t, dir, filepath.Join(dir, "oda", "cert.pem"))
	keyarc(t, "revoke", "--serial", oda, "--reason", "superseded", "--state", state, "--server", a.url, "--as", "officer")
	crlURL := "http://" + pub + "/crl/ca.crl"
	crlNumber := func() int64 {
		t.Helper()
		crl := filepath.Join(dir, "ca.crl")
		run(t, dir, "curl", "-sS", "-o", crl, crlURL)
		out := run(t, dir, "openssl", "crl", "-inform", "DER", "-in", crl, "-noout", "-crlnumber", "-text")
		var n int64
		if i := strings.Index(out, "crlNumber=0x"); i >= 0 {
			fmt.Sscanf(out[i+len("crlNumber=0x"):], "%x", &n)
		}
		if strings.Contains(strings.ToLower(out), strings.ToLower(ned)) {
			return n
		}
		return -n
	}
	var published int64
	for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(time.Second) {
		if published = crlNumber(); published > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the revocation is on no CRL after 40 s")
		}
	}
	a.stop(t)

	_, errOut, err := keyarcResult("restore", "--state", state, "--from", old, "--force")
	if err != nil {
		t.Fatalf("forced restore: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, oda) {
		t.Errorf("the restore does not name %s, revoked after the backup was taken and unknown to it:\n%s", oda, errOut)
	}
	if st, r := certStatus(t, state, ned); st != "revoked" || r != 1 {
		t.Errorf("after restoring a backup older than the revocation: %s reason %d, want revoked keyCompromise (1)\n%s", st, r, errOut)
	}
	if out := keyarc(t, "audit", "verify", "--state", state); !strings.Contains(strings.ToLower(out), "ok") {
		t.Errorf("audit verify after the restore:\n%s", out)
	}
	servePublic(t, state, pub)
	// Until the start publishes its CRL, the kept one (the same as published before) is served;
	// the new one must be numbered above it, and list ned.
	n := crlNumber()
	for deadline := time.Now().Add(40 * time.Second); max(n, -n) == published && time.Now().Before(deadline); n = crlNumber() {
		time.Sleep(time.Second)
	}
	if n <= published {
		t.Errorf("the CRL after the restore: number %d (listing ned: %v), want above %d, the number published before it", max(n, -n), n > 0, published)
	}
	if out := ocspWait(t, dir, state, "http://"+pub+"/ocsp", nedCert, nedCert+": revoked", 30*time.Second); !strings.Contains(out, "keyCompromise") {
		t.Errorf("OCSP after the restore:\n%s", out)
	}
}
