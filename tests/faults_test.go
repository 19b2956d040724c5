package tests

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// openDBFile opens the appliance's SQLite file for the test's own queries.
func openDBFile(t *testing.T, state string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func queryInt(t *testing.T, db *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// setTokenModule points the state's token URI at another PKCS#11 module.
func setTokenModule(t *testing.T, state, module string) {
	t.Helper()
	cfgPath := filepath.Join(state, "keyarc.yaml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	i := strings.Index(cfg, "module-path=")
	j := strings.Index(cfg[i:], "&")
	if i < 0 || j < 0 {
		t.Fatalf("no module-path in %s", cfgPath)
	}
	cfg = cfg[:i] + "module-path=" + url.QueryEscape(module) + cfg[i+j:]
	writeFile(t, cfgPath, []byte(cfg))
}

// estEnroll enrolls a fresh P-256 key under smime-signature through EST with Go's HTTP client
// and returns the status code.
func estEnroll(t *testing.T, a *appliance, mailbox string) int {
	t.Helper()
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", a.state, "--email", mailbox, "--template", "smime-signature"))
	body, _ := os.ReadFile(estCSR(t, t.TempDir(), "k", "/CN="+mailbox))
	return estEnrollWithCode(t, a, mailbox, code, body)
}

func estEnrollWithCode(t *testing.T, a *appliance, mailbox, code string, body []byte) int {
	t.Helper()
	req, _ := http.NewRequest("POST", a.url+"/.well-known/est/smime-signature/simpleenroll", bytes.NewReader(body))
	req.SetBasicAuth(mailbox, code)
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatalf("simpleenroll: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getStatus(t *testing.T, a *appliance, path string) int {
	t.Helper()
	resp, err := a.client.Get(a.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// p11kitServer runs `p11-kit server` in the foreground for the state's appliance token.
func p11kitServer(t *testing.T, state, socket string) *exec.Cmd {
	t.Helper()
	os.Remove(socket)
	cmd := exec.Command("p11-kit", "server", "-f", "-n", socket, "--provider", softhsmModule(), "pkcs11:token=keyarc")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(state, "softhsm", "softhsm2.conf"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(socket); err == nil {
			return cmd
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("p11-kit server made no socket")
	return nil
}

// TestTokenLostAndBack serves through p11-kit's client module with SoftHSM behind a p11-kit
// server. Killing the server is a lost HSM: requests fail fast with 503, readiness turns false;
// starting it again brings service back without restarting the appliance.
func TestTokenLostAndBack(t *testing.T) {
	t.Parallel()
	requireTools(t, "p11-kit", "openssl")
	client := "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
	if _, err := os.Stat(client); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit-client.so missing")
		}
		t.Skip("p11-kit-client.so missing")
	}
	state := devState(t)
	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := p11kitServer(t, state, socket)
	setTokenModule(t, state, client)
	a := serveWith(t, state, []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + socket}, "")

	if got := estEnroll(t, a, "before@example.org"); got != 200 {
		t.Fatalf("enrollment with the token present: %d", got)
	}
	syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
	server.Wait()

	start := time.Now()
	if got := estEnroll(t, a, "during@example.org"); got != http.StatusServiceUnavailable {
		t.Fatalf("enrollment with the token gone: %d, want 503", got)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the refusal took %s: it must not hang on the lost token", took)
	}
	if got := getStatus(t, a, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz with the token gone: %d, want 503", got)
	}
	if got := getStatus(t, a, "/healthz"); got != 200 {
		t.Errorf("/healthz (the process is alive): %d", got)
	}

	p11kitServer(t, state, socket)
	deadline := time.Now().Add(30 * time.Second)
	for getStatus(t, a, "/readyz") != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("the appliance did not come back by itself:\n%s", a.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := estEnroll(t, a, "after@example.org"); got != 200 {
		t.Fatalf("enrollment after the token came back: %d\n%s", got, a.logs.String())
	}
	if !strings.Contains(a.logs.String(), "reconnected") {
		t.Error("the log does not say the token was reconnected")
	}
}

// TestWrongPINOneLogin proves with pkcs11-spy that a wrong PIN at start-up costs exactly one
// C_Login: the appliance refuses to start and never retries into a lockout.
func TestWrongPINOneLogin(t *testing.T) {
	t.Parallel()
	spy := "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"
	if _, err := os.Stat(spy); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-spy.so (opensc) missing")
		}
		t.Skip("pkcs11-spy.so missing")
	}
	state := devState(t)
	writeFile(t, filepath.Join(state, "softhsm", "pins", "keyarc.pin"), []byte("999999\n"))
	setTokenModule(t, state, spy)
	spyLog := filepath.Join(t.TempDir(), "spy.log")
	cmd := exec.Command(keyarcBin, "serve", "--state", state, "--addr", freePort(t), "--metrics-addr", freePort(t))
	cmd.Env = append(os.Environ(), "PKCS11SPY="+softhsmModule(), "PKCS11SPY_OUTPUT="+spyLog)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("serve started with a wrong PIN:\n%s", out)
	}
	if !strings.Contains(string(out), "PIN") {
		t.Errorf("the refusal does not name the PIN:\n%s", out)
	}
	calls, err := os.ReadFile(spyLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(calls), "C_Login"); n != 1 {
		t.Fatalf("%d C_Login calls with a wrong PIN, want exactly 1", n)
	}
	if strings.Contains(string(out), "999999") {
		t.Error("the PIN appears in the output")
	}
}

// enrollJSON sends an archival enrollment with a key made in Go, returning the status.
func enrollJSON(a *appliance, mailbox, code string, body []byte) (int, error) {
	req, _ := http.NewRequest("POST", a.url+"/api/v1/enroll", bytes.NewReader(body))
	req.SetBasicAuth(mailbox, code)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, nil
}

// TestCrashDuringEnrollment kills the appliance with SIGKILL in the middle of a storm of
// archival enrollments. After a restart: no certificate without its active escrow record, no
// row left pending, and none of the clients' private keys on disk in clear.
func TestCrashDuringEnrollment(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	tr := filepath.Join(dir, "transport.pem")
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(state, "ca.pem"), "-o", tr, a.url+"/api/v1/transport-certificate")

	const n = 40
	type job struct {
		mailbox, code string
		body          []byte
		keyDER        []byte
	}
	jobs := make([]job, n)
	for i := range jobs {
		mb := fmt.Sprintf("crash%d@example.org", i)
		key, csrDER, env := opensslArchivalInput(t, dir, fmt.Sprintf("c%d", i), mb, tr)
		body, _ := json.Marshal(map[string]string{"template": "smime-encryption",
			"csr": base64.StdEncoding.EncodeToString(csrDER), "encrypted_key": base64.StdEncoding.EncodeToString(env)})
		jobs[i] = job{mailbox: mb, body: body, keyDER: key,
			code: strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mb))}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	okSerials := 0
	for i := range jobs {
		wg.Add(1)
		go func(j job) {
			defer wg.Done()
			if code, err := enrollJSON(a, j.mailbox, j.code, j.body); err == nil && code == 200 {
				mu.Lock()
				okSerials++
				mu.Unlock()
			}
		}(jobs[i])
	}
	// Kill it once some enrollments are through and others are in flight.
	db := openDBFile(t, state)
	deadline := time.Now().Add(60 * time.Second)
	for queryInt(t, db, `SELECT count(*) FROM certificates WHERE state = 'issued' AND template = 'smime-encryption'`) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("no enrollment got through")
		}
		time.Sleep(5 * time.Millisecond)
	}
	a.kill(t)
	wg.Wait()
	t.Logf("%d of %d enrollments answered 200 before the crash", okSerials, n)

	// Restart on the same state; the sweep finishes what the crash left.
	serve(t, state)
	if p := queryInt(t, db, `SELECT count(*) FROM certificates WHERE state = 'pending'`); p != 0 {
		t.Errorf("%d certificate rows still pending after restart", p)
	}
	if bad := queryInt(t, db, `SELECT count(*) FROM certificates c WHERE c.template = 'smime-encryption' AND c.state = 'issued'
		AND NOT EXISTS (SELECT 1 FROM records r WHERE r.id = c.record_id AND r.serial = c.serial AND r.state = 'active')`); bad != 0 {
		t.Errorf("%d issued encryption certificates without an active escrow record", bad)
	}
	if issued := queryInt(t, db, `SELECT count(*) FROM certificates WHERE template = 'smime-encryption' AND state = 'issued'`); issued < okSerials {
		t.Errorf("%d issued certificates, but %d enrollments were answered 200", issued, okSerials)
	}
	// No client key in clear anywhere under the state folder.
	filepath.Walk(state, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, j := range jobs {
			if bytes.Contains(b, j.keyDER[len(j.keyDER)-64:]) {
				t.Errorf("%s holds the private key of %s in clear", path, j.mailbox)
			}
		}
		return nil
	})
}

// opensslArchivalInput makes an RSA key and CSR with openssl and encrypts the PKCS#8 key to the
// transport certificate with openssl cms. It returns the key's PKCS#8 DER, the CSR DER and the
// envelope.
func opensslArchivalInput(t *testing.T, dir, name, mailbox, transport string) (key, csr, env []byte) {
	t.Helper()
	k, c, e := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".csr"), filepath.Join(dir, name+".cms")
	run(t, dir, "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", k, "-subj", "/CN="+mailbox, "-outform", "DER", "-out", c)
	der := filepath.Join(dir, name+".p8")
	run(t, dir, "openssl", "pkcs8", "-topk8", "-nocrypt", "-in", k, "-outform", "DER", "-out", der)
	run(t, dir, "openssl", "cms", "-encrypt", "-binary", "-in", der, "-outform", "DER", "-out", e, "-aes-256-cbc", "-recip", transport, "-keyopt", "rsa_padding_mode:oaep")
	key, _ = os.ReadFile(der)
	csr, _ = os.ReadFile(c)
	env, _ = os.ReadFile(e)
	return key, csr, env
}

// TestDiskFull puts the database on a small tmpfs and fills it: an enrollment is refused with
// no certificate returned and its code left unused; once space is back the same code enrolls.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	mnt := smallDisk(t, "8m")
	state := devState(t)
	dbPath := moveDatabase(t, state, mnt)
	a := serve(t, state)
	if got := estEnroll(t, a, "roomy@example.org"); got != 200 {
		t.Fatalf("enrollment with space: %d", got)
	}
	const mailbox = "full@example.org"
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-signature"))
	body, _ := os.ReadFile(estCSR(t, t.TempDir(), "k", "/CN="+mailbox))

	filler, _ := fillDisk(t, mnt, 64<<10)
	issuedBefore := countFileRows(t, dbPath, `SELECT count(*) FROM certificates WHERE state = 'issued'`)
	if got := estEnrollWithCode(t, a, mailbox, code, body); got == 200 {
		t.Fatal("an enrollment succeeded on a full disk")
	} else if got < 500 {
		t.Errorf("a full disk answered %d, want a 5xx (the client did nothing wrong)", got)
	}
	os.Remove(filler)
	if got := countFileRows(t, dbPath, `SELECT count(*) FROM certificates WHERE state = 'issued'`); got != issuedBefore {
		t.Errorf("issued certificates went from %d to %d while the disk was full", issuedBefore, got)
	}
	if got := estEnrollWithCode(t, a, mailbox, code, body); got != 200 {
		t.Fatalf("the same code after space came back: %d, want 200 (a refused request must not use it up)\n%s", got, a.logs.String())
	}
	if err := exec.Command("sqlite3", dbPath, "PRAGMA integrity_check").Run(); err != nil {
		if _, lookErr := exec.LookPath("sqlite3"); lookErr == nil {
			t.Errorf("integrity check after the full disk: %v", err)
		}
	}
}

func countFileRows(t *testing.T, dbPath, q string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return queryInt(t, db, q)
}

// TestCorruptDatabaseRefused: a database file with damaged pages stops the appliance at start,
// with a message that says so.
func TestCorruptDatabaseRefused(t *testing.T) {
	t.Parallel()
	state := devState(t)
	path := filepath.Join(state, "keyarc.db")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for page := 4096; page+12 <= len(raw); page += 4096 {
		for i := page; i < page+12; i++ {
			raw[i] ^= 0x5a
		}
	}
	writeFile(t, path, raw)
	serveFails(t, state, "malformed")
}

// TestSwappedRecordRefused swaps the sealed blobs of two users' records in the database: a
// recovery of either is refused by name before any KRA is shown a share, so a record is never
// opened for the wrong certificate.
func TestSwappedRecordRefused(t *testing.T) {
	t.Parallel()
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "carol@example.org", filepath.Join(dir, "carol"))
	enrollUser(t, a, "dave@example.org", filepath.Join(dir, "dave"))
	db := openDBFile(t, state)
	if _, err := db.Exec(`UPDATE records SET blob = CASE email
		WHEN 'carol@example.org' THEN (SELECT blob FROM records WHERE email = 'dave@example.org')
		ELSE (SELECT blob FROM records WHERE email = 'carol@example.org') END`); err != nil {
		t.Fatal(err)
	}
	serial := certSerial(t, dir, filepath.Join(dir, "carol", "cert.pem"))
	S := []string{"--state", state, "--server", a.url}
	// The engine refuses the swapped record at the request (it checks the records first) or,
	// failing that, at the approval.
	out, msg, err := keyarcResult(append([]string{"recovery", "request", "--serial", serial, "--reason", "test", "--as", "officer"}, S...)...)
	if err == nil {
		msg = keyarcFails(t, append([]string{"recovery", "approve", strings.TrimSpace(out), "--yes", "--as", "kra1"}, S...)...)
	}
	if !strings.Contains(msg, "does not match") {
		t.Fatalf("approving a swapped record: %s", msg)
	}
}

// TestCrashDuringRecovery kills the appliance between two approvals: after the restart the first
// approval is still there, counted once, and the recovery completes with one more. A recovery
// key its fetch left in the token is destroyed at the next start.
func TestCrashDuringRecovery(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "pkcs11-tool")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "erin@example.org", filepath.Join(dir, "erin"))
	serial := certSerial(t, dir, filepath.Join(dir, "erin", "cert.pem"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "crash test")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	a.kill(t)

	addr := strings.TrimPrefix(a.url, "https://")
	b := serveWith(t, state, nil, addr)
	if msg := keyarcFails(t, as("kra1", "recovery", "approve", id, "--yes")...); !strings.Contains(msg, "already approved") {
		t.Fatalf("kra1 again after the restart: %s", msg)
	}
	if show := keyarc(t, as("officer", "recovery", "show", id)...); !strings.Contains(show, "approvals: 1 of 2") {
		t.Fatalf("after the restart:\n%s", show)
	}
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "erin.p12"), "--password-file", filepath.Join(dir, "erin.pw"))...)
	run(t, dir, "openssl", "pkcs12", "-in", "erin.p12", "-passin", "file:erin.pw", "-nocerts", "-nodes", "-out", "k.pem")
	if got, want := run(t, dir, "openssl", "pkey", "-in", "k.pem", "-pubout"), run(t, dir, "openssl", "pkey", "-in", filepath.Join(dir, "erin", "key.pem"), "-pubout"); got != want {
		t.Fatal("the recovered key is not Erin's")
	}

	// A crash between the fetch's commit and the destruction of the request's key would leave
	// the key in the token: made here with pkcs11-tool while the appliance is stopped, it is
	// gone once the appliance has started again.
	b.stop(t)
	env := []string{"SOFTHSM2_CONF=" + filepath.Join(state, "softhsm", "softhsm2.conf")}
	pin, err := os.ReadFile(filepath.Join(state, "softhsm", "pins", "keyarc.pin"))
	if err != nil {
		t.Fatal(err)
	}
	tool := []string{"--module", softhsmModule(), "--token-label", "keyarc", "--login", "--pin", strings.TrimSpace(string(pin))}
	label := "recovery-" + id
	run2(t, env, "pkcs11-tool", append(tool, "--keypairgen", "--key-type", "rsa:2048", "--label", label, "--usage-decrypt")...)
	if list := run2(t, env, "pkcs11-tool", append(tool, "--list-objects", "--type", "privkey")...); !strings.Contains(list, label) {
		t.Fatalf("the left-over key was not made:\n%s", list)
	}
	serveWith(t, state, nil, addr)
	if list := run2(t, env, "pkcs11-tool", append(tool, "--list-objects", "--type", "privkey")...); strings.Contains(list, label) {
		t.Fatalf("the key of a fetched recovery is still in the token after a start:\n%s", list)
	}
}

// smallDisk mounts a tmpfs of size (mount's words: 2m, 8m) on a temporary folder, unmounted
// when t ends. It needs root, which CI has; elsewhere the test is skipped.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the disk-full test needs root (to mount a tmpfs); CI runs as root")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot mount a tmpfs: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

// fillDisk fills the file system of folder dir with a file of its own, written in chunks of
// chunk bytes until a write fails, and returns the file's path (remove it to make room again)
// and size.
func fillDisk(t *testing.T, dir string, chunk int) (string, int64) {
	t.Helper()
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, chunk)
	for {
		if _, err := f.Write(b); err != nil {
			break
		}
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	f.Close()
	return filler, size
}

// moveDatabase moves state's database (with its -wal and -shm files) into folder dir and points
// the configuration at it; it returns the database's new path.
func moveDatabase(t *testing.T, state, dir string) string {
	t.Helper()
	for _, f := range []string{"keyarc.db", "keyarc.db-wal", "keyarc.db-shm"} {
		if b, err := os.ReadFile(filepath.Join(state, f)); err == nil {
			writeFile(t, filepath.Join(dir, f), b)
			os.Remove(filepath.Join(state, f))
		}
	}
	dbPath := filepath.Join(dir, "keyarc.db")
	cfgPath := filepath.Join(state, "keyarc.yaml")
	cfg, _ := os.ReadFile(cfgPath)
	writeFile(t, cfgPath, []byte(strings.Replace(string(cfg), "database: keyarc.db", "database: "+dbPath, 1)))
	return dbPath
}

// TestAuditVerifyDiskFull: `keyarc audit verify` on a database whose disk is full says that the
// disk is full and where (SQLite alone says "disk I/O error": it cannot make the -shm file it
// needs even to read), and verifies once there is room.
func TestAuditVerifyDiskFull(t *testing.T) {
	t.Parallel()
	mnt := smallDisk(t, "4m")
	state := devState(t)
	dbPath := moveDatabase(t, state, mnt)
	keyarc(t, "audit", "verify", "--state", state)

	filler, _ := fillDisk(t, mnt, 64<<10)
	_, errOut, err := keyarcResult("audit", "verify", "--state", state)
	if err == nil {
		t.Log("audit verify worked on a full disk")
	} else if !strings.Contains(errOut, "disk holding the database is full") || !strings.Contains(errOut, mnt) {
		t.Errorf("audit verify on a full disk: %v\n%s\nwant it to say that the disk holding %s is full", err, errOut, dbPath)
	}
	os.Remove(filler)
	keyarc(t, "audit", "verify", "--state", state)
}
