package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEnrollFinishFaultKeepsCode: a storage fault that lets an archived enrollment's
// reservation through but fails its last transaction (every fsync after the first fails)
// answers 503 "retry later". The appliance must keep that promise without a restart: once the
// fault clears, the same code enrolls, and the failed attempt's certificate and record end
// failed and abandoned, not pending. No certificate of the failed attempt reached the client.
func TestEnrollFinishFaultKeepsCode(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "strace")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	// strace counts a syscall's invocations per thread, so "every fsync after the first" does
	// not always split an enrollment between its reservation and its finish: try fresh mailboxes
	// and codes until one attempt got through its reservation and failed in its finish.
	var mailbox, code string
	enroll := func(out string) (string, string, error) {
		return keyarcResult("enroll", "--state", state, "--server", a.url, "--template", "smime-encryption",
			"--email", mailbox, "--code", code, "--out", out)
	}
	var tally []string
	hit := false
	for i := 0; i < 12 && !hit; i++ {
		mailbox = fmt.Sprintf("sf5-%d@example.org", i)
		code = newCode(t, state, mailbox, "smime-encryption")
		st := startStrace(t, a, "-e", "trace=fdatasync,fsync", "-e", "inject=fdatasync,fsync:error=EIO:when=2+")
		first := filepath.Join(dir, fmt.Sprint("first", i))
		stdout, stderr, err := enroll(first)
		st.Process.Signal(os.Interrupt)
		st.Wait()
		rows := countRows(t, state, "SELECT count(*) FROM certificates WHERE email = ?", mailbox)
		switch {
		case err == nil:
			tally = append(tally, "issued")
			continue
		case !strings.Contains(stderr, "storage unavailable"):
			t.Fatalf("enroll during the fault: want a 503 storage unavailable, got:\n%s%s", stdout, stderr)
		case rows == 0:
			tally = append(tally, "reservation failed")
			// Wait for the fault's aftermath to clear before the next attempt.
			time.Sleep(200 * time.Millisecond)
			continue
		}
		hit = true
		if _, err := os.Stat(filepath.Join(first, "cert.pem")); err == nil {
			t.Error("the failed enroll wrote a certificate")
		}
	}
	if !hit {
		t.Fatalf("no attempt failed between its reservation and its finish: %v", tally)
	}
	t.Logf("attempts: %v, then one that failed in its finish", tally)
	var (
		stdout, stderr string
		err            error
	)

	// The fault is over: the same code goes through, without a restart.
	second := filepath.Join(dir, "second")
	for range 50 {
		if stdout, stderr, err = enroll(second); err == nil || !strings.Contains(stderr, "storage unavailable") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("enroll with the same code after the fault: %v\n%s%s\nlog:\n%s", err, stdout, stderr, a.logs.String())
	}
	if _, err := os.Stat(filepath.Join(second, "cert.pem")); err != nil {
		t.Fatalf("the enroll after the fault wrote no certificate: %v", err)
	}
	serial := opensslSerial(t, dir, filepath.Join(second, "cert.pem"))
	requireActiveRecord(t, state, serial)

	// The faulted attempt: its certificate failed, its record abandoned, nothing left pending.
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE state = 'pending'"); n != 0 {
		t.Errorf("%d certificates still pending", n)
	}
	if n := countRows(t, state, "SELECT count(*) FROM records WHERE state = 'pending'"); n != 0 {
		t.Errorf("%d records still pending", n)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE email = ? AND state = 'failed'", mailbox); n != 1 {
		t.Errorf("%d failed certificates for %s, want 1 (the faulted attempt)", n, mailbox)
	}
	// It was signed, never delivered: the failed row keeps the certificate, and its record is
	// abandoned, not active.
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE email = ? AND state = 'failed' AND der IS NOT NULL", mailbox); n != 1 {
		t.Errorf("the faulted attempt's signed certificate is not kept on its failed row")
	}
	if n := countRows(t, state, `SELECT count(*) FROM records r JOIN certificates c ON c.record_id = r.id
		WHERE c.email = ? AND c.state = 'failed' AND r.state = 'abandoned'`, mailbox); n != 1 {
		t.Errorf("the faulted attempt's record is not abandoned")
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE email = ? AND state = 'issued'", mailbox); n != 1 {
		t.Errorf("%d issued certificates for %s, want 1", n, mailbox)
	}
	if !strings.Contains(a.logs.String(), "storage") {
		t.Errorf("the log does not record the storage fault:\n%s", a.logs.String())
	}
}
