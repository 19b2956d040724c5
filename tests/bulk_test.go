package tests

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/keyarc/keyarc/escrow/cms"
)

// bulkStatus is the appliance's job status (the fields the tests read).
type bulkStatus struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Total  int    `json:"total"`
	Done   int    `json:"done"`
	Failed int    `json:"failed"`
}

type bulkResult struct {
	Seq         int    `json:"seq"`
	State       string `json:"state"`
	Serial      string `json:"serial"`
	RecordID    string `json:"record_id"`
	Certificate string `json:"certificate"`
	PKCS12      string `json:"pkcs12"`
	Error       string `json:"error"`
}

func writeJobFile(t *testing.T, path string, header string, lines []string) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(header + "\n")
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	writeFile(t, path, b.Bytes())
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// submitBulk runs `keyarc bulk submit --wait` and returns the job ID. Exit status 3 (the job
// finished with failed items) is expected: the callers check the items themselves.
func submitBulk(t *testing.T, a *appliance, file string) string {
	t.Helper()
	args := []string{"bulk", "submit", file, "--wait", "--state", a.state, "--as", "admin", "--server", a.url}
	out, errOut, code := exitCode(t, args...)
	if code != 0 && code != 3 {
		t.Fatalf("keyarc %s: exit status %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return strings.TrimSpace(out)
}

// readResults runs `keyarc bulk results` and parses the file.
func readResults(t *testing.T, a *appliance, id string, extra ...string) (bulkStatus, map[int]bulkResult) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "results.jsonl")
	keyarc(t, append([]string{"bulk", "results", id, "--out", out, "--state", a.state, "--as", "admin", "--server", a.url}, extra...)...)
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	var st bulkStatus
	res := map[int]bulkResult{}
	first := true
	for sc.Scan() {
		if first {
			if err := json.Unmarshal(sc.Bytes(), &st); err != nil {
				t.Fatal(err)
			}
			first = false
			continue
		}
		var r bulkResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if _, dup := res[r.Seq]; dup {
			t.Fatalf("item %d twice in the results", r.Seq)
		}
		res[r.Seq] = r
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return st, res
}

// checkResults checks states and, in the database, that every done item's certificate is issued
// with an active record bound to its serial; no serial appears twice.
func checkResults(t *testing.T, state string, total int, res map[int]bulkResult, failed ...int) {
	t.Helper()
	bad := map[int]bool{}
	for _, f := range failed {
		bad[f] = true
	}
	if len(res) != total {
		t.Fatalf("%d results, want %d", len(res), total)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	serials := map[string]int{}
	for seq := 1; seq <= total; seq++ {
		r, ok := res[seq]
		if !ok {
			t.Fatalf("no result for item %d", seq)
		}
		if bad[seq] {
			if r.State != "failed" || r.Error == "" {
				t.Fatalf("item %d: %s %q, want failed with a reason", seq, r.State, r.Error)
			}
			continue
		}
		if r.State != "done" {
			t.Fatalf("item %d: %s (%s), want done", seq, r.State, r.Error)
		}
		if prev, dup := serials[r.Serial]; dup {
			t.Fatalf("serial %s for items %d and %d", r.Serial, prev, seq)
		}
		serials[r.Serial] = seq
		der, err := base64.StdEncoding.DecodeString(r.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("item %d: %v", seq, err)
		}
		if fmt.Sprintf("%x", cert.SerialNumber) != strings.TrimLeft(r.Serial, "0") && fmt.Sprintf("%x", cert.SerialNumber) != r.Serial {
			t.Fatalf("item %d: serial %s, certificate %x", seq, r.Serial, cert.SerialNumber)
		}
		var certState, recState, recSerial string
		err = db.QueryRow(`SELECT c.state, r.state, r.serial FROM certificates c JOIN records r ON r.id = c.record_id
			WHERE c.serial = ? AND r.id = ?`, r.Serial, r.RecordID).Scan(&certState, &recState, &recSerial)
		if err != nil {
			t.Fatalf("item %d (serial %s): certificate and record: %v", seq, r.Serial, err)
		}
		if certState != "issued" || recState != "active" || recSerial != r.Serial {
			t.Fatalf("item %d: certificate %s, record %s for %s; want issued, active", seq, certState, recState, recSerial)
		}
	}
}

func p256Key(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pkcs8DER(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBulkEnroll(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	tr := readCert(t, filepath.Join(state, "transport.pem"))
	var lines []string
	for i := 1; i <= 20; i++ {
		mailbox := fmt.Sprintf("user%d@example.org", i)
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
		item := map[string]string{"email": mailbox, "csr": base64.StdEncoding.EncodeToString(csr), "encrypted_key": base64.StdEncoding.EncodeToString(env)}
		switch i {
		case 4: // CSR for another mailbox
			item["email"] = "someone-else@example.org"
		case 9: // envelope of another item's key
			var prev map[string]string
			json.Unmarshal([]byte(lines[0]), &prev)
			item["encrypted_key"] = prev["encrypted_key"]
		case 13: // not base64
			item["csr"] = "%%%"
		}
		lines = append(lines, mustJSON(t, item))
	}
	lines[16] = `{"email": "broken`
	file := filepath.Join(t.TempDir(), "enroll.jsonl")
	writeJobFile(t, file, `{"kind":"enroll","template":"smime-encryption"}`, lines)
	id := submitBulk(t, a, file)
	st, res := readResults(t, a, id)
	if st.State != "done" || st.Done != 16 || st.Failed != 4 {
		t.Fatalf("status %+v", st)
	}
	checkResults(t, state, 20, res, 4, 9, 13, 17)

	// Status from the CLI; bad requests: a job file that is not one, a stranger's credential.
	var cli bulkStatus
	if err := json.Unmarshal([]byte(keyarc(t, "bulk", "status", id, "--state", state, "--as", "admin", "--server", a.url)), &cli); err != nil {
		t.Fatal(err)
	}
	if cli.Done != 16 || cli.Total != 20 {
		t.Fatalf("bulk status: %+v", cli)
	}
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	writeFile(t, bad, []byte(`{"kind":"enroll","template":"smime-signature"}`+"\n{}\n"))
	if _, errOut, err := keyarcResult("bulk", "submit", bad, "--state", state, "--as", "admin", "--server", a.url); err == nil || !strings.Contains(errOut, "400") {
		t.Fatalf("a job on a non-archiving template was accepted: %v %s", err, errOut)
	}
	if _, errOut, err := keyarcResult("bulk", "submit", file, "--state", state, "--as", "officer", "--server", a.url); err == nil || !strings.Contains(errOut, "403") {
		t.Fatalf("an officer submitted a job: %v %s", err, errOut)
	}
}

func TestBulkKeygen(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	var lines []string
	for i := 1; i <= 20; i++ {
		item := map[string]string{"email": fmt.Sprintf("kg%d@example.org", i)}
		switch i {
		case 2:
			item["key"] = "rsa2048"
		case 5:
			item["email"] = "no-at-sign"
		case 6:
			item["key"] = "dsa1024"
		}
		lines = append(lines, mustJSON(t, item))
	}
	file := filepath.Join(t.TempDir(), "keygen.jsonl")
	writeJobFile(t, file, `{"kind":"keygen","template":"smime-encryption","key":"p256"}`, lines)
	id := submitBulk(t, a, file)
	pwFile := filepath.Join(t.TempDir(), "passwords.jsonl")
	_, res := readResults(t, a, id, "--passwords", pwFile)
	checkResults(t, state, 20, res, 5, 6)
	// The passwords are in their own file, once; each opens its PKCS#12 with openssl.
	pw, err := os.ReadFile(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(pwFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("passwords file mode %v", fi.Mode())
	}
	n := 0
	dir := t.TempDir()
	for _, line := range strings.Split(strings.TrimSpace(string(pw)), "\n") {
		var p struct {
			Seq      int    `json:"seq"`
			Serial   string `json:"serial"`
			Password string `json:"password"`
		}
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatal(err)
		}
		n++
		if p.Seq != 1 && p.Seq != 2 {
			continue // openssl on two of them is enough
		}
		der, _ := base64.StdEncoding.DecodeString(res[p.Seq].PKCS12)
		pfx := filepath.Join(dir, fmt.Sprintf("%d.p12", p.Seq))
		writeFile(t, pfx, der)
		out := run(t, dir, "openssl", "pkcs12", "-in", pfx, "-passin", "pass:"+p.Password, "-nodes", "-info")
		if !strings.Contains(out, "PRIVATE KEY") || !strings.Contains(out, fmt.Sprintf("kg%d@example.org", p.Seq)) {
			t.Fatalf("openssl pkcs12 of item %d:\n%s", p.Seq, out)
		}
	}
	if n != 18 {
		t.Fatalf("%d passwords, want 18", n)
	}
	if strings.Contains(a.logs.String(), "password\":") {
		t.Fatal("a password reached the appliance log")
	}
	again := filepath.Join(t.TempDir(), "again.jsonl")
	if _, errOut, err := keyarcResult("bulk", "results", id, "--out", filepath.Join(t.TempDir(), "r"), "--passwords", again,
		"--state", state, "--as", "admin", "--server", a.url); err == nil || !strings.Contains(errOut, "409") {
		t.Fatalf("passwords released twice: %v %s", err, errOut)
	}
	// The job's submission and its one release of passwords are in the audit trail, by the
	// admin who did them, and the refused second release is not.
	for kind, want := range map[string]int{"bulk-submitted": 1, "bulk-passwords": 1} {
		if got := bulkAuditEntries(t, state, kind, id); got != want {
			t.Errorf("%d %s audit entries for job %s, want %d", got, kind, id, want)
		}
	}
}

// bulkAuditEntries counts the audit entries of kind about job id, made by an authenticated
// actor (not the appliance itself).
func bulkAuditEntries(t *testing.T, state, kind, id string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	err = db.QueryRow(`SELECT count(*) FROM audit WHERE kind = ? AND subject = ? AND actor NOT IN ('', 'local', 'system')`,
		kind, "job "+id).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// importLines makes n import items from a foreign CA, PEM and PKCS#8.
func importLines(t *testing.T, n int) []string {
	t.Helper()
	caKey := p256Key(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	base := time.Now().UnixNano()
	lines := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		k := p256Key(t)
		mailbox := fmt.Sprintf("old%d@example.org", i)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(base + int64(i)), Subject: pkix.Name{CommonName: mailbox},
			EmailAddresses: []string{mailbox}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageKeyEncipherment}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, k.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, mustJSON(t, map[string]string{
			"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			"key":         string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8DER(t, k)})),
		}))
	}
	return lines
}

func TestBulkImport(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	lines := importLines(t, 20)
	// Item 7: the key of item 8; item 12: not a certificate.
	var i7, i8 map[string]string
	json.Unmarshal([]byte(lines[6]), &i7)
	json.Unmarshal([]byte(lines[7]), &i8)
	i7["key"] = i8["key"]
	lines[6] = mustJSON(t, i7)
	lines[11] = `{"certificate":"AAAA","key":"AAAA"}`
	file := filepath.Join(t.TempDir(), "import.jsonl")
	writeJobFile(t, file, `{"kind":"import"}`, lines)
	id := submitBulk(t, a, file)
	_, res := readResults(t, a, id)
	checkResults(t, state, 20, res, 7, 12)
}

// adminClient is an HTTPS client with the development admin credential.
func adminClient(t *testing.T, state string) *http.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(state, "credentials", "admin.pem"), filepath.Join(state, "credentials", "admin-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(state, "ca.pem")))
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
}

func getBulkStatus(c *http.Client, url string) (bulkStatus, error) {
	var st bulkStatus
	resp, err := c.Get(url)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// TestBulkCrashResume kills the appliance with SIGKILL in the middle of a keygen job, starts it
// again on the same state, and checks that the job finishes with every item issued once, and
// that the subscriber of every item is told by mail (a kill between a batch's commit and its
// notices loses none of them).
func TestBulkCrashResume(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	if testing.Short() {
		t.Skip("long")
	}
	const total = 2000
	state := devState(t)
	relay := freePort(t)
	appendFile(t, filepath.Join(state, "keyarc.yaml"), noticesConfig(relay))
	told := startMailSink(t, relay).log()
	a := serve(t, state)
	var lines []string
	for i := 1; i <= total; i++ {
		lines = append(lines, fmt.Sprintf(`{"email":"crash%d@example.org"}`, i))
	}
	file := filepath.Join(t.TempDir(), "keygen.jsonl")
	writeJobFile(t, file, `{"kind":"keygen","template":"smime-encryption","key":"p256"}`, lines)
	id := strings.TrimSpace(keyarc(t, "bulk", "submit", file, "--state", state, "--as", "admin", "--server", a.url))
	c := adminClient(t, state)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := getBulkStatus(c, a.url+"/api/v1/bulk/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Done+st.Failed >= total {
			t.Fatalf("the job finished before the kill (%+v): make it longer", st)
		}
		if st.Done >= 200 {
			t.Logf("killing the appliance at %d/%d", st.Done, total)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not started: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	a.kill(t) // SIGKILL, and wait until it is gone

	b := serve(t, state)
	deadline = time.Now().Add(5 * time.Minute)
	var st bulkStatus
	for {
		var err error
		st, err = getBulkStatus(c, b.url+"/api/v1/bulk/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == "done" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not done after restart: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Done+st.Failed != total || st.Failed != 0 {
		t.Fatalf("status after resume %+v", st)
	}
	_, res := readResults(t, b, id)
	checkResults(t, state, total, res)
	// Nothing issued twice: the archive holds exactly one issued certificate per item.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var issued, active int
	if err := db.QueryRow(`SELECT COUNT(*) FROM certificates WHERE template = 'smime-encryption' AND state = 'issued'`).Scan(&issued); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT COUNT(*) FROM records WHERE state = 'active'`).Scan(&active); err != nil {
		t.Fatal(err)
	}
	if issued != total || active != total {
		t.Fatalf("%d issued certificates and %d active records for %d items", issued, active, total)
	}
	// Every subscriber is told, those of the items issued before the kill included.
	deadline = time.Now().Add(90 * time.Second)
	for metricValue(t, b, "keyarc_notices_sent_total") < total || metricValue(t, b, "keyarc_notice_queue") > 0 {
		if time.Now().After(deadline) {
			break // the check below names who was not told
		}
		time.Sleep(200 * time.Millisecond)
	}
	missing := 0
	for seq, r := range res {
		mailbox := fmt.Sprintf("crash%d@example.org", seq)
		if !strings.Contains(strings.Join(told.to(mailbox), "\n"), r.Serial) {
			if missing++; missing <= 5 {
				t.Errorf("%s was not told that the key of %s is escrowed", mailbox, r.Serial)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d subscribers were not told", missing, total)
	}
}

// TestBulkKeyArchivedElsewhere: in an import job, an item whose key is already archived for
// another mailbox (by an earlier job, or by another item of the same job) fails alone with a
// reason that says so and names no other mailbox; the job does not pause and ends with
// done + failed == total.
func TestBulkKeyArchivedElsewhere(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	caKey := p256Key(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	serial := time.Now().UnixNano()
	line := func(k *ecdsa.PrivateKey, mailbox string) string {
		serial++
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: mailbox},
			EmailAddresses: []string{mailbox}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageKeyEncipherment}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, k.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		return mustJSON(t, map[string]string{
			"certificate": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			"key":         string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8DER(t, k)})),
		})
	}
	taken, shared := p256Key(t), p256Key(t)
	first := filepath.Join(t.TempDir(), "first.jsonl")
	writeJobFile(t, first, `{"kind":"import"}`, []string{line(taken, "alice@example.org")})
	_, res := readResults(t, a, submitBulk(t, a, first))
	checkResults(t, state, 1, res)

	var lines []string
	for i := 1; i <= 10; i++ {
		k := p256Key(t)
		switch i {
		case 3:
			k = taken
		case 5, 6:
			k = shared
		}
		lines = append(lines, line(k, fmt.Sprintf("user%d@example.org", i)))
	}
	file := filepath.Join(t.TempDir(), "second.jsonl")
	writeJobFile(t, file, `{"kind":"import"}`, lines)
	st, res := readResults(t, a, submitBulk(t, a, file))
	if st.State != "done" || st.Done+st.Failed != st.Total || st.Failed != 2 {
		t.Fatalf("status %+v, want done with 2 failed and done+failed == total", st)
	}
	loser := 6
	if res[5].State == "failed" {
		loser = 5
	}
	checkResults(t, state, 10, res, 3, loser)
	for _, seq := range []int{3, loser} {
		if msg := res[seq].Error; !strings.Contains(msg, "already archived for another mailbox") ||
			strings.Contains(msg, "alice@") || strings.Contains(msg, "user5@") || strings.Contains(msg, "user6@") {
			t.Errorf("item %d: reason %q", seq, msg)
		}
	}
	if strings.Contains(a.logs.String(), "bulk job paused") {
		t.Errorf("the job paused for refused items:\n%s", a.logs.String())
	}
}

// jobFilesWithKeys lists the files of the state's job folder that hold a private key in clear.
func jobFilesWithKeys(t *testing.T, state string) []string {
	t.Helper()
	dir := filepath.Join(state, "jobs")
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && bytes.Contains(b, []byte("BEGIN PRIVATE KEY")) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestBulkJobFilesGo: the README says only the KRA quorum opens an archived key, but an import
// job's file holds the keys in clear. It goes once the job is done (its status, the listing and
// the results still answer), and the half of a file an upload left when the appliance was
// killed during it is removed when the appliance starts again.
func TestBulkJobFilesGo(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	file := filepath.Join(t.TempDir(), "import.jsonl")
	writeJobFile(t, file, `{"kind":"import"}`, importLines(t, 5))
	id := submitBulk(t, a, file)
	if left := jobFilesWithKeys(t, state); len(left) != 0 {
		t.Errorf("private keys in clear stay in DIR/jobs after the job: %v", left)
	}
	st, res := readResults(t, a, id)
	if st.State != "done" || st.Done != 5 {
		t.Errorf("status once the file is gone: %+v", st)
	}
	checkResults(t, state, 5, res)
	if list := keyarc(t, "bulk", "list", "--state", state, "--as", "admin", "--server", a.url); !strings.Contains(list, id) {
		t.Errorf("bulk list lacks job %s:\n%s", id, list)
	}

	// A slow upload, and the appliance killed during it.
	lines := importLines(t, 5)
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", a.url+"/api/v1/bulk", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/jsonl")
	go func() {
		if resp, err := adminClient(t, state).Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	fmt.Fprintf(pw, "{\"kind\":\"import\"}\n%s\n", strings.Join(lines, "\n"))
	for deadline := time.Now().Add(30 * time.Second); len(jobFilesWithKeys(t, state)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the upload's file does not appear in DIR/jobs")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.kill(t)
	pw.Close()
	partial := jobFilesWithKeys(t, state)
	b := serve(t, state)
	for deadline := time.Now().Add(30 * time.Second); len(jobFilesWithKeys(t, state)) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("the killed upload's file %v is still in DIR/jobs after the restart", partial)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if list := keyarc(t, "bulk", "list", "--state", state, "--as", "admin", "--server", b.url); !strings.Contains(list, id) || strings.Count(list, `"id"`) != 1 {
		t.Errorf("bulk list after the restart, want the one job %s:\n%s", id, list)
	}
}
