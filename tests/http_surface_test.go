package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The HTTP surface: content types, refusal classes in the metrics, storage faults as 503,
// login throttling, which credential may enroll for which template, and the TLS suites.

// httpClient is an HTTPS client trusting the appliance's CA, with an optional client
// certificate (PEM files) and an optional local (source) address.
func httpClient(t *testing.T, a *appliance, cert, key, source string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(a.state, "ca.pem")))
	cfg := &tls.Config{RootCAs: pool}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	if source != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
		tr.DialContext = d.DialContext
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: tr}
}

// httpResult is one answer.
type httpResult struct {
	code   int
	body   string
	header http.Header
}

// httpDo sends one request; headers are name, value pairs.
func httpDo(t *testing.T, c *http.Client, a *appliance, method, path, user string, body []byte, headers ...string) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, a.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	if user != "" {
		u, p, _ := strings.Cut(user, ":")
		req.SetBasicAuth(u, p)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	msg := string(b)
	if e := apiError(b); e != "" {
		msg = e
	}
	return httpResult{resp.StatusCode, strings.TrimSpace(msg), resp.Header}
}

func (r httpResult) want(t *testing.T, name string, code int, msg string) {
	t.Helper()
	if r.code != code || !strings.Contains(r.body, msg) {
		t.Errorf("%s: got %d %q, want %d naming %q", name, r.code, r.body, code, msg)
	}
}

// httpCSR makes a base64 PKCS#10 (P-256) for subj with openssl.
func httpCSR(t *testing.T, dir, name, mailbox string) []byte {
	t.Helper()
	return readBytes(t, estCSR(t, dir, name, "/CN="+mailbox))
}

// TestHTTPContentTypes: the API takes application/json only and EST application/pkcs10 only
// (parameters allowed); anything else is refused with 415 before the body is read, and a
// cross-site browser request is refused whatever its type. Nothing is used up by a refusal.
func TestHTTPContentTypes(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "ctype@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	user := mailbox + ":" + code
	anon := httpClient(t, a, "", "", "")
	admin := httpClient(t, a, filepath.Join(state, "credentials", "admin.pem"), filepath.Join(state, "credentials", "admin-key.pem"), "")
	csr := httpCSR(t, dir, "c", mailbox)
	der, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(csr)))
	enrollBody, _ := json.Marshal(apiEnrollJSON{Template: "smime-signature", CSR: base64.StdEncoding.EncodeToString(der)})
	est := "/.well-known/est/smime-signature/simpleenroll"

	for _, c := range []struct {
		name, method, path, user string
		client                   *http.Client
		body                     []byte
		headers                  []string
		wantCode                 int
		wantMsg                  string
	}{
		{"enroll as text/plain", "POST", "/api/v1/enroll", user, anon, enrollBody, []string{"Content-Type", "text/plain"}, 415, "application/json"},
		{"enroll as a form", "POST", "/api/v1/enroll", user, anon, enrollBody, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, "application/json"},
		{"enroll without a type", "POST", "/api/v1/enroll", user, anon, enrollBody, nil, 415, "application/json"},
		{"recovery set as text/plain", "POST", "/api/v1/recovery-set", "", admin, []byte(`{"quorum":1,"kras":[]}`), []string{"Content-Type", "text/plain"}, 415, "application/json"},
		{"pending issue as a form, no body", "POST", "/api/v1/pending/nosuch/issue", "", admin, nil, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, "application/json"},
		{"cross-site pending deny", "POST", "/api/v1/pending/nosuch/deny", "", admin, nil, []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}, 403, "cross-origin"},
		{"cross-site enroll as JSON", "POST", "/api/v1/enroll", user, anon, enrollBody, []string{"Content-Type", "application/json", "Sec-Fetch-Site", "cross-site"}, 403, "cross-origin"},
		{"EST as JSON", "POST", est, user, anon, csr, []string{"Content-Type", "application/json"}, 415, "application/pkcs10"},
		{"EST as text/plain", "POST", est, user, anon, csr, []string{"Content-Type", "text/plain"}, 415, "application/pkcs10"},
		{"EST without a type", "POST", est, user, anon, csr, nil, 415, "application/pkcs10"},
		{"serverkeygen as JSON", "POST", "/.well-known/est/smime-encryption/serverkeygen", user, anon, csr, []string{"Content-Type", "application/json"}, 415, "application/pkcs10"},
		// The right type with a parameter passes the type check and meets the next one.
		{"pending issue as JSON", "POST", "/api/v1/pending/nosuch/issue", "", admin, nil, []string{"Content-Type", "application/json; charset=utf-8"}, 404, "nosuch"},
	} {
		r := httpDo(t, c.client, a, c.method, c.path, c.user, c.body, c.headers...)
		r.want(t, c.name, c.wantCode, c.wantMsg)
	}

	// The code survived every refusal; parameters are allowed.
	r := httpDo(t, anon, a, "POST", est, user, csr, "Content-Type", "application/pkcs10; charset=us-ascii")
	r.want(t, "EST with application/pkcs10 and a parameter", 200, "")
	code2 := newCode(t, state, mailbox, "smime-signature")
	der2, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(httpCSR(t, dir, "c2", mailbox))))
	body2, _ := json.Marshal(apiEnrollJSON{Template: "smime-signature", CSR: base64.StdEncoding.EncodeToString(der2)})
	r = httpDo(t, anon, a, "POST", "/api/v1/enroll", mailbox+":"+code2, body2, "Content-Type", "Application/JSON; charset=utf-8")
	r.want(t, "enroll with application/json and a parameter", 200, "")

	// The refusals are counted under their routes.
	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	if want := `keyarc_http_requests_total{code="415",route="POST /api/v1/enroll"} 3`; !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(metrics, `code="415"`))
	}
}

// TestHTTPTLSSuites: TLS 1.2 offers only ECDHE with AES-GCM or ChaCha20-Poly1305 (the Mozilla
// "intermediate" set); CBC and SHA-1 suites, static RSA key exchange and TLS 1.1 are refused;
// TLS 1.3 works. The client is openssl s_client.
func TestHTTPTLSSuites(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	host := strings.TrimPrefix(a.url, "https://")
	handshake := func(args ...string) (string, bool) {
		cmd := exec.Command("openssl", append([]string{"s_client", "-connect", host, "-servername", "localhost"}, args...)...)
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		m := regexp.MustCompile(`Cipher is (\S+)`).FindStringSubmatch(string(out))
		if m == nil || m[1] == "(NONE)" {
			return "", false
		}
		return m[1], true
	}
	for _, suite := range []string{"ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
		"AES256-SHA", "AES128-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
		"DES-CBC3-SHA", "ECDHE-RSA-DES-CBC3-SHA"} {
		if got, ok := handshake("-tls1_2", "-cipher", suite); ok {
			t.Errorf("TLS 1.2 with %s: the server agreed to %s", suite, got)
		}
	}
	agreed := 0
	for _, suite := range []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
		"ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"} {
		if got, ok := handshake("-tls1_2", "-cipher", suite); ok {
			agreed++
			if got != suite {
				t.Errorf("TLS 1.2 offering only %s: agreed to %s", suite, got)
			}
		}
	}
	if agreed < 3 {
		t.Errorf("TLS 1.2 agreed to %d of the intermediate suites for the server's key type, want 3", agreed)
	}
	if got, ok := handshake("-tls1_3"); !ok || !strings.HasPrefix(got, "TLS_") {
		t.Errorf("TLS 1.3: got %q %v, want a TLS 1.3 suite", got, ok)
	}
	if got, ok := handshake("-tls1_1", "-cipher", "ALL:@SECLEVEL=0"); ok {
		t.Errorf("TLS 1.1: the server agreed to %s", got)
	}
}

// TestHTTPRefusalClasses: keyarc_enrollment_refusals_total counts refusals by the classes the
// README lists, never by HTTP status text.
func TestHTTPRefusalClasses(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "classes@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	anon := httpClient(t, a, "", "", "")
	est := func(template, user string, csr []byte) httpResult {
		return httpDo(t, anon, a, "POST", "/.well-known/est/"+template+"/simpleenroll", user, csr, "Content-Type", "application/pkcs10")
	}
	est("smime-signature", mailbox+":"+code, readBytes(t, estCSR(t, dir, "ca", "/CN="+mailbox, "-addext", "basicConstraints=critical,CA:TRUE"))).
		want(t, "basicConstraints", 400, "basicConstraints")
	est("smime-signature", mailbox+":"+code, readBytes(t, estCSR(t, dir, "bob", "/CN=bob@example.org", "-addext", "subjectAltName=email:bob@example.org"))).
		want(t, "another mailbox", 400, "bob@example.org")
	est("smime-encryption", mailbox+":"+code, httpCSR(t, dir, "enc", mailbox)).want(t, "code of another template", 403, "smime-signature")
	est("smime-signature", mailbox+":"+code, []byte("bm90IGEgQ1NS\n")).want(t, "garbage", 400, "PKCS#10")
	// The request is read before the code is checked, but a refused code is still the answer.
	est("smime-signature", mailbox+":AAAAAAAAAAAAAAAAAAAAAAAA", []byte("bm90IGEgQ1NS\n")).want(t, "garbage with a wrong code", 401, "not accepted")

	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	lines := grepLines(metrics, "keyarc_enrollment_refusals_total{")
	readme := readBytes(t, "../README.md")
	for _, l := range strings.Split(lines, "\n") {
		m := regexp.MustCompile(`reason="([^"]*)"`).FindStringSubmatch(l)
		if m == nil {
			t.Errorf("refusal series without a reason: %q", l)
			continue
		}
		if !bytes.Contains(readme, []byte("`"+m[1]+"`")) {
			t.Errorf("refusal reason %q is not a class the README documents (%s)", m[1], l)
		}
	}
	for _, want := range []string{
		`keyarc_enrollment_refusals_total{reason="policy",template="smime-signature"} 2`,
		`keyarc_enrollment_refusals_total{reason="forbidden",template="smime-encryption"} 1`,
		`keyarc_enrollment_refusals_total{reason="invalid",template="smime-signature"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s:\n%s", want, lines)
		}
	}
}

// TestHTTPStorageUnavailable: a storage fault injected into a running appliance (ENOSPC on the
// database's writes, EIO on its syncs or its reads) answers a single enrollment 503 with
// Retry-After and "storage unavailable", not a bare 500 nor a client error; the details go to
// the log; the code is not used up, and once the fault clears the same request succeeds.
func TestHTTPStorageUnavailable(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "strace")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "disk@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	anon := httpClient(t, a, "", "", "")
	csr := httpCSR(t, dir, "d", mailbox)
	est := "/.well-known/est/smime-signature/simpleenroll"

	for _, inject := range [][]string{
		{"-e", "trace=pwrite64", "-e", "inject=pwrite64:error=ENOSPC"},
		{"-e", "trace=fdatasync,fsync", "-e", "inject=fdatasync,fsync:error=EIO"},
		{"-e", "trace=pread64", "-e", "inject=pread64:error=EIO"},
	} {
		st := startStrace(t, a, inject...)
		r := httpDo(t, anon, a, "POST", est, mailbox+":"+code, csr, "Content-Type", "application/pkcs10")
		st.Process.Signal(os.Interrupt)
		st.Wait()
		r.want(t, "enrollment during "+inject[3], 503, "storage unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", inject[3])
		}
		if strings.Contains(r.body, "sqlite") || strings.Contains(r.body, "SQLITE") {
			t.Errorf("%s: the answer carries the storage's details: %q", inject[3], r.body)
		}
	}
	// The fault is over: the same code and request go through.
	var r httpResult
	for range 50 {
		r = httpDo(t, anon, a, "POST", est, mailbox+":"+code, csr, "Content-Type", "application/pkcs10")
		if r.code != 503 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.want(t, "enrollment after the fault", 200, "")
	if !strings.Contains(a.logs.String(), "storage") {
		t.Errorf("the log does not record the storage fault:\n%s", a.logs.String())
	}
}

// setHTTPConfig appends settings to the http section of the state's configuration.
func setHTTPConfig(t *testing.T, state string, kv map[string]string) {
	t.Helper()
	path := filepath.Join(state, "keyarc.yaml")
	b := string(readBytes(t, path))
	if !strings.Contains(b, "\nhttp:\n") {
		t.Fatalf("%s has no http section:\n%s", path, b)
	}
	for k, v := range kv {
		re := regexp.MustCompile(`(?m)^(  ` + regexp.QuoteMeta(k) + `:) .*$`)
		if !re.MatchString(b) {
			t.Fatalf("%s has no http.%s", path, k)
		}
		b = re.ReplaceAllString(b, "${1} "+v)
	}
	writeFile(t, path, []byte(b))
}

// TestHTTPLoginThrottle: wrong enrollment codes are throttled per source address and per
// mailbox (429 with Retry-After), and a storm of them leaves a bounded number of audit entries:
// the first failure of a source in an interval, then one summary with a count.
func TestHTTPLoginThrottle(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	setHTTPConfig(t, state, map[string]string{"login_failures_per_source": "5", "login_failures_per_mailbox": "8", "login_failure_window": "10m"})
	a := serve(t, state)
	dir := t.TempDir()
	const victim = "victim@example.org"
	csr := httpCSR(t, dir, "v", victim)
	est := "/.well-known/est/smime-signature/simpleenroll"

	// A storm from one source: 200 wrong codes over 20 connections.
	storm := httpClient(t, a, "", "", "127.0.0.2")
	var mu sync.Mutex
	codes := map[int]int{}
	var retryAfter string
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				req, _ := http.NewRequestWithContext(context.Background(), "POST", a.url+est, bytes.NewReader(csr))
				req.Header.Set("Content-Type", "application/pkcs10")
				req.SetBasicAuth(victim, "AAAAAAAAAAAAAAAAAAAAAAAA")
				resp, err := storm.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				codes[resp.StatusCode]++
				if resp.StatusCode == 429 {
					retryAfter = resp.Header.Get("Retry-After")
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// The limit is 5; requests already past the check when the fifth failure lands may fail
	// too, so the bound is the limit plus the 20 connections in flight.
	if codes[401] > 5+20 || codes[401]+codes[429] != 200 {
		t.Errorf("storm from one source: answers %v, want at most 25 × 401 and the rest 429", codes)
	}
	if retryAfter == "" {
		t.Error("429 without Retry-After")
	}

	// Per mailbox: one failure each from 8 other sources adds up to the mailbox's limit...
	const victim2 = "victim2@example.org"
	wrong2 := victim2 + ":AAAAAAAAAAAAAAAAAAAAAAAA"
	for i := 3; i < 3+8; i++ {
		c := httpClient(t, a, "", "", fmt.Sprintf("127.0.0.%d", i))
		httpDo(t, c, a, "POST", est, wrong2, csr, "Content-Type", "application/pkcs10").want(t, "one failure of a source", 401, "")
	}
	fresh := httpClient(t, a, "", "", "127.0.0.20")
	r := httpDo(t, fresh, a, "POST", est, wrong2, csr, "Content-Type", "application/pkcs10")
	r.want(t, "a mailbox after failures from many sources", 429, "too many failed logins")
	// ... while another mailbox from a fresh source is not throttled, and its good code works.
	other := "other@example.org"
	code := newCode(t, state, other, "smime-signature")
	r = httpDo(t, fresh, a, "POST", est, other+":"+code, httpCSR(t, dir, "o", other), "Content-Type", "application/pkcs10")
	r.want(t, "another mailbox from a fresh source", 200, "")

	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	for _, re := range []string{`keyarc_login_failures_total\{outcome="throttled"\} (1[7-9]\d|2\d\d)\n`, `keyarc_login_failures_total\{outcome="refused"\} \d+\n`} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("metrics do not match %s:\n%s", re, grepLines(metrics, "keyarc_login_failures_total"))
		}
	}
	logins := strings.Count(a.logs.String(), "request refused")
	stopServe(t, a)
	db := openDB(t, state)
	defer db.Close()
	var n, summarised int
	rows, err := db.Query(`SELECT details FROM audit WHERE kind = 'login-failed'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var details string
		rows.Scan(&details)
		n++
		var d struct {
			Count  int    `json:"count"`
			Remote string `json:"remote"`
		}
		json.Unmarshal([]byte(details), &d)
		if d.Remote == "127.0.0.2" && d.Count > 1 {
			summarised += d.Count
		}
	}
	rows.Close()
	if n > 16 {
		t.Errorf("%d login-failed audit entries for about 210 failed or throttled logins, want a bounded number", n)
	}
	if want := codes[401] + codes[429] - 1; summarised != want {
		t.Errorf("the summary entries of 127.0.0.2 count %d failed or throttled logins, want all of the storm's but the first (%d)", summarised, want)
	}
	if logins > 30 {
		t.Errorf("%d refusal log lines for the storm, want a bounded number", logins)
	}
}

// TestHTTPTemplateCredential: a client certificate enrolls only for the templates its own
// template's rules allow (by default its own, RFC 7030 4.2.2), once; an operator credential at
// EST is refused with a message saying so.
func TestHTTPTemplateCredential(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "sig@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	anon := httpClient(t, a, "", "", "")
	r := httpDo(t, anon, a, "POST", "/.well-known/est/smime-signature/simpleenroll", mailbox+":"+code, httpCSR(t, dir, "s1", mailbox), "Content-Type", "application/pkcs10")
	if r.code != 200 {
		t.Fatalf("simpleenroll: %d %s", r.code, r.body)
	}
	cert := pkcs7ToPEM(t, dir, "s1-cert", r.body)
	sig := httpClient(t, a, cert, filepath.Join(dir, "s1.key.pem"), "")
	records := countRows(t, state, "SELECT count(*) FROM records")

	for _, path := range []string{"/.well-known/est/smime-encryption/serverkeygen", "/.well-known/est/smime-encryption/simplereenroll"} {
		r = httpDo(t, sig, a, "POST", path, "", httpCSR(t, dir, "x", mailbox), "Content-Type", "application/pkcs10")
		r.want(t, "smime-signature certificate on "+path, 403, "reenroll_from")
	}
	der, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(httpCSR(t, dir, "api", mailbox))))
	apiBody, _ := json.Marshal(apiEnrollJSON{Template: "smime-encryption", CSR: base64.StdEncoding.EncodeToString(der), EncryptedKey: "AAAA"})
	r = httpDo(t, sig, a, "POST", "/api/v1/enroll", "", apiBody, "Content-Type", "application/json")
	r.want(t, "smime-signature certificate on the JSON API for smime-encryption", 403, "reenroll_from")
	if n := countRows(t, state, "SELECT count(*) FROM records"); n != records {
		t.Errorf("a signature certificate obtained %d archived keys", n-records)
	}

	// Its own template: once.
	r = httpDo(t, sig, a, "POST", "/.well-known/est/smime-signature/simplereenroll", "", httpCSR(t, dir, "s2", mailbox), "Content-Type", "application/pkcs10")
	r.want(t, "re-enrollment of its own template", 200, "")
	sig2 := httpClient(t, a, cert, filepath.Join(dir, "s1.key.pem"), "") // a fresh TLS session
	r = httpDo(t, sig2, a, "POST", "/.well-known/est/smime-signature/simplereenroll", "", httpCSR(t, dir, "s3", mailbox), "Content-Type", "application/pkcs10")
	r.want(t, "second re-enrollment with the same certificate", 403, "newer")

	// An operator credential at EST.
	admin := httpClient(t, a, filepath.Join(state, "credentials", "admin.pem"), filepath.Join(state, "credentials", "admin-key.pem"), "")
	for _, path := range []string{"/.well-known/est/smime-signature/simpleenroll", "/.well-known/est/smime-encryption/serverkeygen"} {
		r = httpDo(t, admin, a, "POST", path, "", httpCSR(t, dir, "adm", mailbox), "Content-Type", "application/pkcs10")
		r.want(t, "operator credential on "+path, 403, "operator credential")
	}
}

// TestHTTPBadClientValues: a serial or a state the client got wrong is the client's fault: 400,
// never a 500. A state is named; what is no serial is not repeated (it may be a code or a
// password pasted in the wrong place), and the answer says what a serial is. A recovery request
// names its certificate by serial (over the API and with `keyarc recovery request`), and the
// pending requests are listed by state; the serials are those a revocation already refuses
// with 400.
func TestHTTPBadClientValues(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	creds := filepath.Join(state, "credentials")
	officer := httpClient(t, a, filepath.Join(creds, "officer.pem"), filepath.Join(creds, "officer-key.pem"), "")
	admin := httpClient(t, a, filepath.Join(creds, "admin.pem"), filepath.Join(creds, "admin-key.pem"), "")

	long := strings.Repeat("a", 65)
	for _, serial := range []string{"zz", "-1", "g", "12 34", long} {
		body, _ := json.Marshal(map[string]string{"serial": serial, "reason": "laptop stolen"})
		r := httpDo(t, officer, a, "POST", "/api/v1/recoveries", "", body, "Content-Type", "application/json")
		r.want(t, fmt.Sprintf("recovery request for serial %q", serial), 400, "hexadecimal")
		if len(serial) > 1 && strings.Contains(r.body, serial) {
			t.Errorf("recovery request for serial %q: %q repeats the value", serial, r.body)
		}
		body, _ = json.Marshal(map[string]string{"serial": serial, "reason": "superseded"})
		httpDo(t, officer, a, "POST", "/api/v1/revocations", "", body, "Content-Type", "application/json").
			want(t, fmt.Sprintf("revocation of serial %q", serial), 400, "serial")
	}
	// A well-formed serial of no certificate is not found, in any accepted spelling.
	for _, serial := range []string{"abc", "0xABC", "0a:bc"} {
		body, _ := json.Marshal(map[string]string{"serial": serial, "reason": "laptop stolen"})
		httpDo(t, officer, a, "POST", "/api/v1/recoveries", "", body, "Content-Type", "application/json").
			want(t, fmt.Sprintf("recovery request for the unknown serial %q", serial), 404, "abc")
	}
	errOut := keyarcFails(t, "recovery", "request", "--state", state, "--server", a.url, "--as", "officer", "--serial", "zz", "--reason", "x")
	if !strings.Contains(errOut, "400") || !strings.Contains(errOut, "hexadecimal") || strings.Contains(errOut, "zz") {
		t.Errorf("keyarc recovery request --serial zz: %q, want HTTP 400 saying what a serial is, without the value", errOut)
	}

	httpDo(t, admin, a, "GET", "/api/v1/pending?state=bogus", "", nil).want(t, "pending list of state bogus", 400, "bogus")
	for _, st := range []string{"", "pending", "issued", "denied", "all"} {
		httpDo(t, admin, a, "GET", "/api/v1/pending?state="+st, "", nil).want(t, "pending list of state "+st, 200, "")
	}
	httpDo(t, officer, a, "GET", "/api/v1/recoveries?state=bogus", "", nil).want(t, "recovery list of state bogus", 400, "bogus")
	for _, st := range []string{"", "open", "consumed", "cancelled", "expired"} {
		httpDo(t, officer, a, "GET", "/api/v1/recoveries?state="+st, "", nil).want(t, "recovery list of state "+st, 200, "")
	}
	// The other routes that take an ID or a state from the client: never a 500.
	for _, probe := range []struct {
		c            *http.Client
		method, path string
	}{
		{officer, "GET", "/api/v1/recoveries/zz%20zz"},
		{admin, "GET", "/api/v1/bulk/zz"},
		{admin, "POST", "/api/v1/pending/-1/issue"},
		{admin, "POST", "/api/v1/pending/zz/deny"},
	} {
		var body []byte
		var headers []string
		if probe.method == "POST" {
			body, headers = []byte("{}"), []string{"Content-Type", "application/json"}
		}
		if r := httpDo(t, probe.c, a, probe.method, probe.path, "", body, headers...); r.code >= 500 {
			t.Errorf("%s %s: %d %q, want no 5xx", probe.method, probe.path, r.code, r.body)
		}
	}
	if strings.Contains(a.logs.String(), "request failed") {
		t.Errorf("a client's bad value was logged as the appliance's failure:\n%s", a.logs.String())
	}
}
