package tests

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/cms"
)

// faultStatus is a job's status with the fields that tell a paused job.
type faultStatus struct {
	bulkStatus
	Reason string `json:"reason"`
}

func getFaultStatus(c *http.Client, url string) (faultStatus, error) {
	var st faultStatus
	resp, err := c.Get(url)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return st, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// enrollLines makes n enroll items (P-256 keys, each CSR with its key in a CMS envelope to the
// transport certificate) for mailboxes prefix1..prefixN.
func enrollLines(t *testing.T, state, prefix string, n int) []string {
	t.Helper()
	tr := readCert(t, filepath.Join(state, "transport.pem"))
	lines := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		mailbox := fmt.Sprintf("%s%d@example.org", prefix, i)
		k := p256Key(t)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: mailbox}, EmailAddresses: []string{mailbox}}, k)
		if err != nil {
			t.Fatal(err)
		}
		env, err := cms.Encrypt(pkcs8DER(t, k), tr, cms.EnvelopedAESCBC, crypto.SHA1)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, mustJSON(t, map[string]string{"email": mailbox,
			"csr": base64.StdEncoding.EncodeToString(csr), "encrypted_key": base64.StdEncoding.EncodeToString(env)}))
	}
	return lines
}

// waitPaused waits (30 s at most) for the bulk job at url to pause for cause (storage or token):
// paused, not done, with a reason naming the cause, and counted in keyarc_bulk_job_paused.
func waitPaused(t *testing.T, a *appliance, c *http.Client, url, cause string) faultStatus {
	t.Helper()
	st := waitJob(t, c, url, 30*time.Second, "job paused", func(st faultStatus) bool {
		return st.State == "paused" || st.State == "done"
	})
	if st.State != "paused" {
		t.Fatalf("the job ended under the %s's fault without pausing: %+v", cause, st)
	}
	if !strings.Contains(st.Reason, cause) {
		t.Errorf("paused with reason %q, want one naming the %s", st.Reason, cause)
	}
	metric := `keyarc_bulk_job_paused{cause="` + cause + `"}`
	if v := metricValue(t, a, metric); v != 1 {
		t.Errorf("%s = %v while paused, want 1", metric, v)
	}
	return st
}

// waitJob polls a job until cond holds, failing after the deadline.
func waitJob(t *testing.T, c *http.Client, url string, within time.Duration, what string, cond func(faultStatus) bool) faultStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := getFaultStatus(c, url)
		if err != nil {
			t.Fatalf("job status: %v", err)
		}
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; last status %+v", what, within, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startStrace attaches strace to a running appliance with the given fault injection on its database
// files and returns once every thread is attached. Interrupting it (SIGINT) detaches it and
// ends the fault.
func startStrace(t *testing.T, a *appliance, inject ...string) *exec.Cmd {
	t.Helper()
	args := []string{"-f", "-p", fmt.Sprint(a.cmd.Process.Pid), "-o", "/dev/null",
		"-P", filepath.Join(a.state, "keyarc.db"), "-P", filepath.Join(a.state, "keyarc.db-wal")}
	cmd := exec.Command("strace", append(args, inject...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	attached := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "attached") {
				once = true
				close(attached)
			}
		}
	}()
	select {
	case <-attached:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("strace did not attach")
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
	})
	return cmd
}

// metricValue returns the value of a metric line (name with its labels) on the metrics
// listener, or -1 when it is absent.
func metricValue(t *testing.T, a *appliance, series string) float64 {
	t.Helper()
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// waitMetric waits until a metric line (name with its labels) reaches at least want.
func waitMetric(t *testing.T, a *appliance, series string, want float64, limit time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(200 * time.Millisecond) {
		v := metricValue(t, a, series)
		if v >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v after %v, want at least %v", series, v, limit, want)
		}
	}
}

// checkEveryItemOnce checks a finished job: done == total, nothing failed, every item once in
// the results with its certificate issued and its record active, one issued certificate per
// item in the archive, and no reservation left.
func checkEveryItemOnce(t *testing.T, a *appliance, id string, total int, template string) {
	t.Helper()
	st, res := readResults(t, a, id)
	if st.State != "done" || st.Done != total || st.Failed != 0 {
		t.Fatalf("job %+v; want done with %d done and none failed", st, total)
	}
	checkResults(t, a.state, total, res)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(a.state, "keyarc.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if n := queryInt(t, db, `SELECT COUNT(*) FROM certificates WHERE template = ? AND state = 'issued'`, template); n != total {
		t.Errorf("%d issued certificates for %d items", n, total)
	}
	if n := queryInt(t, db, `SELECT COUNT(*) FROM job_items WHERE job_id = ? AND state = 'reserved'`, id); n != 0 {
		t.Errorf("%d items left reserved", n)
	}
	if n := queryInt(t, db, `SELECT COUNT(DISTINCT c.email) FROM job_items i JOIN certificates c ON c.serial = i.serial
		WHERE i.job_id = ? AND i.state = 'done'`, id); n != total {
		t.Errorf("%d distinct mailboxes among the done items, want %d", n, total)
	}
}

// TestBulkStorageFault injects storage faults with strace into a running appliance in the
// middle of an enroll job: failed writes (ENOSPC on pwrite64) and, separately, failed syncs (EIO
// on fdatasync). The job must pause while the fault lasts (state and reason in its status, a
// metric), resume by itself when the fault clears, and end with every item done once: a fault
// of the appliance is never a fault of the items.
func TestBulkStorageFault(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "strace")
	faults := []struct {
		name   string
		inject []string
	}{
		{"ENOSPC on pwrite64", []string{"-e", "trace=pwrite64", "-e", "inject=pwrite64:error=ENOSPC"}},
		{"EIO on fdatasync", []string{"-e", "trace=fdatasync,fsync", "-e", "inject=fdatasync,fsync:error=EIO"}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			const total = 800
			state := devState(t)
			a := serve(t, state)
			file := filepath.Join(t.TempDir(), "enroll.jsonl")
			writeJobFile(t, file, `{"kind":"enroll","template":"smime-encryption"}`, enrollLines(t, state, "fault", total))
			id := strings.TrimSpace(keyarc(t, "bulk", "submit", file, "--state", state, "--as", "admin", "--server", a.url))
			c := adminClient(t, state)
			url := a.url + "/api/v1/bulk/" + id
			st := waitJob(t, c, url, time.Minute, "job started", func(st faultStatus) bool { return st.Done >= 10 })
			if st.Done+st.Failed >= total {
				t.Fatalf("the job finished before the fault (%+v): make it longer", st)
			}

			tr := startStrace(t, a, f.inject...)
			waitPaused(t, a, c, url, "storage")
			time.Sleep(2 * time.Second)
			if st, err := getFaultStatus(c, url); err != nil || st.State != "paused" {
				t.Errorf("status while the fault lasts: %+v %v; want paused", st, err)
			}
			tr.Process.Signal(os.Interrupt) // detach: the fault clears
			tr.Wait()

			waitJob(t, c, url, 2*time.Minute, "job done", func(st faultStatus) bool { return st.State == "done" })
			checkEveryItemOnce(t, a, id, total, "smime-encryption")
			if v := metricValue(t, a, `keyarc_bulk_job_paused{cause="storage"}`); v != 0 {
				t.Errorf("keyarc_bulk_job_paused{cause=\"storage\"} = %v after the job, want 0", v)
			}
			if logs := a.logs.String(); strings.Contains(logs, "record failed item") {
				t.Errorf("an item was failed for the storage's fault:\n%s", logs)
			}
		})
	}
}

// TestBulkSigtermResume stops the appliance with SIGTERM several times in the middle of a job:
// each stop must be orderly (in-flight batches commit or undo before the store closes, so no
// "database closed" and no undo failure in the log), and after the last restart the job ends with
// every item done once and no reservation left.
func TestBulkSigtermResume(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	const total, stops = 3000, 3 // long enough that three stops, 150 items apart, come before the end
	state := devState(t)
	a := serve(t, state)
	var lines []string
	for i := 1; i <= total; i++ {
		lines = append(lines, fmt.Sprintf(`{"email":"term%d@example.org"}`, i))
	}
	file := filepath.Join(t.TempDir(), "keygen.jsonl")
	writeJobFile(t, file, `{"kind":"keygen","template":"smime-encryption","key":"p256"}`, lines)
	id := strings.TrimSpace(keyarc(t, "bulk", "submit", file, "--state", state, "--as", "admin", "--server", a.url))
	c := adminClient(t, state)
	var logs bytes.Buffer
	for i := range stops {
		url := a.url + "/api/v1/bulk/" + id
		from := 0
		st := waitJob(t, c, url, time.Minute, "job running", func(st faultStatus) bool {
			if from == 0 {
				from = st.Done + 1
			}
			return st.Done >= from+150
		})
		if st.Done+st.Failed >= total {
			t.Fatalf("the job finished before stop %d (%+v): make it longer", i+1, st)
		}
		addr := strings.TrimPrefix(a.url, "https://")
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.exited:
			if err != nil {
				t.Errorf("stop %d: keyarc serve exited with %v after SIGTERM", i+1, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("stop %d: the appliance did not stop after SIGTERM", i+1)
		}
		a.exited = make(chan error, 1)
		a.exited <- nil
		logs.WriteString(a.logs.String())
		a = serveWith(t, state, nil, addr)
	}
	waitJob(t, c, a.url+"/api/v1/bulk/"+id, 3*time.Minute, "job done", func(st faultStatus) bool { return st.State == "done" })
	checkEveryItemOnce(t, a, id, total, "smime-encryption")
	logs.WriteString(a.logs.String())
	for _, bad := range []string{"database closed", "undo failed issuance", "record failed item"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("the log says %q:\n%s", bad, logs.String())
		}
	}
}
