package tests

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	_ "crypto/md5" // registers MD5 for the hand-signed MD5 request
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// The hostile-input scenarios: every request here is refused with a 4xx whose message names the
// problem, nothing is stored, the enrollment codes they carried stay usable, and the appliance
// stays healthy. One appliance serves all of them; the slow-client cases run alongside the rest.

const hostileMailbox = "hostile@example.org"

// hostileEnv is the shared appliance and what the cases send to it.
type hostileEnv struct {
	a     *appliance
	state string
	host  string // host:port of the HTTPS listener
	pool  *x509.CertPool
	anon  *http.Client // no client certificate
	// sigUser and encUser are mailbox:code for smime-signature and smime-encryption; no case
	// may use them up.
	sigUser, encUser string
	// validCSR is an ECDSA P-256 request for hostileMailbox; validRSACSR and envelope are an RSA
	// request and its key in an AuthEnvelopedData to the transport certificate.
	validCSR, validRSACSR, envelope []byte
}

// hostileCounts is what a refused request must not change.
type hostileCounts struct {
	Certificates, Records, Pending, UsedCodes, Recoveries, RecoverySets int
}

// hostileSnapshot counts rows in the appliance's SQLite file, opened read-only.
func hostileSnapshot(t *testing.T, state string) hostileCounts {
	t.Helper()
	u := url.URL{Path: filepath.ToSlash(filepath.Join(state, "keyarc.db"))}
	db, err := sql.Open("sqlite", "file:"+u.EscapedPath()+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var c hostileCounts
	for q, dst := range map[string]*int{
		"SELECT count(*) FROM certificates":                    &c.Certificates,
		"SELECT count(*) FROM records":                         &c.Records,
		"SELECT count(*) FROM pending":                         &c.Pending,
		"SELECT count(*) FROM codes WHERE used_at IS NOT NULL": &c.UsedCodes,
		"SELECT count(*) FROM recoveries":                      &c.Recoveries,
		"SELECT count(*) FROM recovery_sets":                   &c.RecoverySets,
	} {
		if err := db.QueryRow(q).Scan(dst); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return c
}

// hostileClient is an HTTPS client trusting the appliance's CA, with an optional client
// certificate (PEM files).
func (h *hostileEnv) client(t *testing.T, cert, key string) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: h.pool}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// do sends one request and returns the status and the body; a request with no HTTP answer fails
// the test.
func (h *hostileEnv) do(t *testing.T, c *http.Client, method, path, user, contentType string, body []byte) (int, string) {
	t.Helper()
	code, text, err := h.try(c, method, path, user, contentType, body)
	if err != nil {
		t.Fatalf("%s %s: no answer: %v", method, path, err)
	}
	return code, text
}

func (h *hostileEnv) try(c *http.Client, method, path, user, contentType string, body []byte) (int, string, error) {
	req, err := http.NewRequest(method, h.a.url+path, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if user != "" {
		u, p, _ := strings.Cut(user, ":")
		req.SetBasicAuth(u, p)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// est posts DER as an EST simpleenroll body (base64) for template smime-signature.
func (h *hostileEnv) est(t *testing.T, user string, der []byte) (int, string) {
	t.Helper()
	return h.do(t, h.anon, "POST", "/.well-known/est/smime-signature/simpleenroll", user, "application/pkcs10",
		[]byte(base64.StdEncoding.EncodeToString(der)))
}

// enrollJSON posts a JSON enrollment.
func (h *hostileEnv) enrollJSON(t *testing.T, user string, req apiEnrollJSON) (int, string) {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return h.do(t, h.anon, "POST", "/api/v1/enroll", user, "application/json", b)
}

// wantRefusal checks a status and that the message (JSON "error" member or plain text) names
// the problem.
func wantRefusal(t *testing.T, name string, code int, body string, wantCode int, wantMsg string) {
	t.Helper()
	msg := body
	if e := apiError([]byte(body)); e != "" {
		msg = e
	}
	if code != wantCode || !strings.Contains(msg, wantMsg) {
		t.Errorf("%s: got %d %q, want %d naming %q", name, code, strings.TrimSpace(msg), wantCode, wantMsg)
	}
}

// rawExchange writes head and then body (in the background, ignoring write errors: the server
// may answer and close before the body is sent) on a fresh TLS connection, and reads one
// response. It returns the response, its body, and how long the server took to answer or close.
func (h *hostileEnv) rawExchange(t *testing.T, head string, body io.Reader, wait time.Duration) (*http.Response, string, time.Duration, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", h.host, &tls.Config{RootCAs: h.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	go func() {
		if _, err := io.WriteString(conn, head); err != nil {
			return
		}
		if body != nil {
			io.Copy(conn, body)
		}
	}()
	conn.SetReadDeadline(start.Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, "", time.Since(start), err
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp, string(b), time.Since(start), nil
}

func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user))
}

// TestHostile: oversized bodies, malformed DER and JSON, requests that break the policy, slow
// clients, missing or wrong credentials and 400 fuzzed requests, all against one appliance.
func TestHostile(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	dir := t.TempDir()

	// Credentials a client could hold but must not get in with: one revoked, one unknown to
	// the store (its row renamed), made before the appliance starts.
	keyarc(t, "admin", "credential", "issue", "--state", state, "--role", "admin", "--name", "revoked", "--out", dir)
	keyarc(t, "admin", "credential", "issue", "--state", state, "--role", "admin", "--name", "ghost", "--out", dir)
	rw, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	for name, stmt := range map[string]string{
		"revoked": "UPDATE certificates SET state = 'revoked', revoked_at = 1 WHERE serial = ?",
		"ghost":   "UPDATE certificates SET serial = 'f' || serial WHERE serial = ?",
	} {
		serial := certSerialOf(t, filepath.Join(dir, name+".pem"))
		if res, err := rw.Exec(stmt, serial); err != nil {
			t.Fatal(err)
		} else if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("%s credential: %d rows for serial %s", name, n, serial)
		}
	}
	rw.Close()

	// Short server timeouts, so the slow clients are cut off in seconds; no login throttling,
	// which the many refused credentials here would trip (TestHTTPLoginThrottle covers it).
	setHTTPConfig(t, state, map[string]string{"read_header_timeout": hostileHeaderTimeout.String(), "read_timeout": hostileReadTimeout.String(),
		"login_failures_per_source": "1000000", "login_failures_per_mailbox": "1000000"})
	a := serve(t, state)
	u, _ := url.Parse(a.url)
	h := &hostileEnv{a: a, state: state, host: u.Host, pool: x509.NewCertPool()}
	h.pool.AddCert(readCert(t, filepath.Join(state, "ca.pem")))
	h.anon = h.client(t, "", "")
	h.sigUser = hostileMailbox + ":" + newCode(t, state, hostileMailbox, "smime-signature")
	h.encUser = hostileMailbox + ":" + newCode(t, state, hostileMailbox, "smime-encryption")

	// The valid requests the cases start from (sent for real only at the end).
	ecKey := filepath.Join(dir, "ec.key")
	run(t, dir, "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ecKey)
	h.validCSR = opensslCSR(t, dir, "valid", ecKey, "/CN="+hostileMailbox)
	transport, oaep := fetchTransport(t, a, dir)
	rsaKey, rsaCSR := rsaKeyAndCSR(t, dir, "valid-rsa", hostileMailbox, 2048)
	h.validRSACSR = readBytes(t, rsaCSR)
	sealArgs := oaepTo("-aes-256-gcm", transport)
	if oaep == "sha256" {
		sealArgs = append(sealArgs, "-keyopt", "rsa_oaep_md:sha256")
	}
	h.envelope = readBytes(t, sealKey(t, dir, rsaKey, "valid", sealArgs...))

	before := hostileSnapshot(t, state)
	var fuzzIssued int
	t.Run("cases", func(t *testing.T) {
		// The slow clients first: they wait on the server's timeouts while the rest runs.
		t.Run("SlowBody", func(t *testing.T) { t.Parallel(); h.slowBody(t) })
		t.Run("SlowHeaders", func(t *testing.T) { t.Parallel(); h.slowHeaders(t) })
		t.Run("Oversized", func(t *testing.T) { t.Parallel(); h.oversized(t) })
		t.Run("MalformedDER", func(t *testing.T) { t.Parallel(); h.malformedDER(t) })
		t.Run("MalformedJSON", func(t *testing.T) { t.Parallel(); h.malformedJSON(t) })
		t.Run("Policy", func(t *testing.T) { t.Parallel(); h.policy(t, dir) })
		t.Run("Credentials", func(t *testing.T) { t.Parallel(); h.credentials(t, dir) })
		t.Run("Fuzz", func(t *testing.T) { t.Parallel(); fuzzIssued = h.fuzz(t) })
	})

	// Nothing was stored (but what a mutation that kept the request intact legitimately got).
	after := hostileSnapshot(t, state)
	want := before
	want.Certificates += fuzzIssued
	want.Records += fuzzIssued
	want.UsedCodes += fuzzIssued
	if after != want {
		t.Errorf("hostile requests changed the database: before %+v, after %+v (expected %d fuzz issuances)", before, after, fuzzIssued)
	}
	if code, body := h.do(t, h.anon, "GET", "/healthz", "", "", nil); code != 200 {
		t.Fatalf("/healthz after the hostile requests: %d %s", code, body)
	}

	// The codes every refused request carried still work.
	if code, body := h.est(t, h.sigUser, h.validCSR); code != 200 {
		t.Errorf("the smime-signature code no longer works after the refusals: %d %s", code, body)
	}
	if code, body := h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
		CSR: base64.StdEncoding.EncodeToString(h.validRSACSR), EncryptedKey: base64.StdEncoding.EncodeToString(h.envelope)}); code != 200 {
		t.Errorf("the smime-encryption code no longer works after the refusals: %d %s", code, body)
	}
	final := hostileSnapshot(t, state)
	if final.Certificates != want.Certificates+2 || final.Records != want.Records+1 || final.UsedCodes != want.UsedCodes+2 {
		t.Errorf("the two valid enrollments took the database from %+v to %+v", want, final)
	}
}

func readBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// certSerialOf returns the serial of a PEM certificate in the store's form (lower-case hex).
func certSerialOf(t *testing.T, path string) string {
	t.Helper()
	return fmt.Sprintf("%x", readCert(t, path).SerialNumber)
}

// opensslCSR makes a DER request with openssl for an existing key.
func opensslCSR(t *testing.T, dir, name, key, subj string, args ...string) []byte {
	t.Helper()
	out := filepath.Join(dir, name+".csr.der")
	run(t, dir, "openssl", append([]string{"req", "-new", "-key", key, "-subj", subj, "-outform", "DER", "-out", out}, args...)...)
	return readBytes(t, out)
}

// The server timeouts TestHostile configures (http.read_header_timeout, http.read_timeout).
const (
	hostileHeaderTimeout = 3 * time.Second
	hostileReadTimeout   = 6 * time.Second
)

// slowHeaders: a client that sends its headers one byte a second is cut off by the server's
// ReadHeaderTimeout (hostileHeaderTimeout); the bound checked is generous (25 s), it is not a
// rate.
func (h *hostileEnv) slowHeaders(t *testing.T) {
	conn, err := tls.Dial("tcp", h.host, &tls.Config{RootCAs: h.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	head := "GET /healthz HTTP/1.1\r\nHost: keyarc\r\nX-Slow: " + strings.Repeat("a", 60)
	go func() {
		for i := 0; i < len(head); i++ {
			if _, err := conn.Write([]byte{head[i]}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	conn.SetReadDeadline(start.Add(25 * time.Second))
	n, err := io.Copy(io.Discard, conn)
	took := time.Since(start)
	if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		t.Fatalf("the server still holds a slow-header connection after %v", took.Round(time.Second))
	}
	if took < hostileHeaderTimeout/2 {
		t.Errorf("the connection closed after %v, before the header timeout could have run (read %d bytes, %v)", took, n, err)
	}
	t.Logf("slow headers: closed after %v (%d bytes back)", took.Round(100*time.Millisecond), n)
}

// slowBody: complete headers, then a body one byte a second: the server's ReadTimeout
// (hostileReadTimeout) ends the request with 408 (or closes the connection), well before the
// body is complete.
func (h *hostileEnv) slowBody(t *testing.T) {
	body := base64.StdEncoding.EncodeToString(h.validCSR)
	head := "POST /.well-known/est/smime-signature/simpleenroll HTTP/1.1\r\nHost: keyarc\r\nContent-Type: application/pkcs10\r\n" +
		"Authorization: " + basicAuth(h.sigUser) + "\r\n" + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body))
	resp, text, took, err := h.rawExchange(t, head, &slowReader{b: []byte(body)}, 25*time.Second)
	if err != nil {
		if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
			t.Fatalf("the server still reads a slow body after %v", took.Round(time.Second))
		}
		t.Logf("slow body: connection closed after %v without an answer (%v)", took.Round(100*time.Millisecond), err)
		return
	}
	wantRefusal(t, "slow body", resp.StatusCode, text, http.StatusRequestTimeout, "did not arrive in time")
	t.Logf("slow body: %d after %v", resp.StatusCode, took.Round(100*time.Millisecond))
}

// slowReader yields one byte a second.
type slowReader struct{ b []byte }

func (s *slowReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	time.Sleep(time.Second)
	p[0] = s.b[0]
	s.b = s.b[1:]
	return 1, nil
}

// patternReader yields n bytes of one character, then EOF.
type patternReader struct {
	c byte
	n int
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n)
	for i := range k {
		p[i] = r.c
	}
	r.n -= k
	return k, nil
}

// chunked encodes r as an HTTP/1.1 chunked body of 32 KiB chunks.
func chunked(r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if _, werr := fmt.Fprintf(pw, "%x\r\n%s\r\n", n, buf[:n]); werr != nil {
					pw.CloseWithError(werr)
					return
				}
			}
			if err != nil {
				io.WriteString(pw, "0\r\n\r\n")
				pw.Close()
				return
			}
		}
	}()
	return pr
}

// oversized: 10 MB bodies, declared (Content-Length) or streamed (chunked), are refused with 413
// as soon as the limit is passed; a declared length over the limit is refused before anything is
// read.
func (h *hostileEnv) oversized(t *testing.T) {
	const tenMB = 10 << 20
	cases := []struct {
		name, path, auth, ctype string
		declared                bool
		limit                   string
	}{
		{"EST, declared length", "/.well-known/est/smime-signature/simpleenroll", h.sigUser, "application/pkcs10", true, "65536"},
		{"EST, chunked", "/.well-known/est/smime-signature/simpleenroll", h.sigUser, "application/pkcs10", false, "65536"},
		{"JSON enroll, declared length", "/api/v1/enroll", h.encUser, "application/json", true, "262144"},
		{"JSON enroll, chunked", "/api/v1/enroll", h.encUser, "application/json", false, "262144"},
		{"KRA enroll (no credential needed), declared length", "/api/v1/kra/enroll", "", "application/json", true, "262144"},
		{"KRA enroll (no credential needed), chunked", "/api/v1/kra/enroll", "", "application/json", false, "262144"},
	}
	for _, c := range cases {
		head := "POST " + c.path + " HTTP/1.1\r\nHost: keyarc\r\nContent-Type: " + c.ctype + "\r\n"
		if c.auth != "" {
			head += "Authorization: " + basicAuth(c.auth) + "\r\n"
		}
		// A JSON body that stays valid as far as it is read: a string that never ends.
		var body io.Reader = &patternReader{c: 'A', n: tenMB}
		if c.ctype == "application/json" {
			body = io.MultiReader(strings.NewReader(`{"csr":"`), body)
		}
		if c.declared {
			head += fmt.Sprintf("Content-Length: %d\r\n\r\n", tenMB)
		} else {
			head += "Transfer-Encoding: chunked\r\n\r\n"
			body = chunked(body)
		}
		resp, text, took, err := h.rawExchange(t, head, body, 20*time.Second)
		if err != nil {
			t.Errorf("%s: no answer after %v: %v", c.name, took.Round(time.Millisecond), err)
			continue
		}
		wantRefusal(t, c.name, resp.StatusCode, text, http.StatusRequestEntityTooLarge, "over "+c.limit+" bytes")
		t.Logf("%s: %d after %v", c.name, resp.StatusCode, took.Round(time.Millisecond))
	}
}

// nestedDER is depth SEQUENCE headers around nothing, with definite lengths.
func nestedDER(depth int) []byte {
	var b []byte
	for range depth {
		n := len(b)
		var hdr []byte
		switch {
		case n < 0x80:
			hdr = []byte{0x30, byte(n)}
		case n < 0x100:
			hdr = []byte{0x30, 0x81, byte(n)}
		case n < 0x10000:
			hdr = []byte{0x30, 0x82, byte(n >> 8), byte(n)}
		default:
			hdr = []byte{0x30, 0x83, byte(n >> 16), byte(n >> 8), byte(n)}
		}
		b = append(hdr, b...)
	}
	return b
}

// indefiniteDER is depth BER SEQUENCEs of indefinite length, closed (or not) by end-of-contents.
func indefiniteDER(depth int, closed bool) []byte {
	b := bytes.Repeat([]byte{0x30, 0x80}, depth)
	if closed {
		b = append(b, bytes.Repeat([]byte{0, 0}, depth)...)
	}
	return b
}

// malformedDER: nested, indefinite, truncated and padded DER as the CSR (EST and JSON) and as
// the encrypted key.
func (h *hostileEnv) malformedDER(t *testing.T) {
	blobs := []struct {
		name string
		der  []byte
	}{
		{"10,000 nested SEQUENCEs", nestedDER(10000)},
		{"10,000 indefinite-length SEQUENCEs", indefiniteDER(10000, true)},
		{"10,000 unterminated indefinite-length SEQUENCEs", indefiniteDER(10000, false)},
		{"a SEQUENCE claiming 4 GB", []byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0x00}},
		{"a length of 128 bytes of length", append([]byte{0x30, 0xff}, bytes.Repeat([]byte{0xff}, 127)...)},
		{"a high tag number that never ends", append([]byte{0x3f}, bytes.Repeat([]byte{0x81}, 1000)...)},
		{"empty", nil},
		{"one byte", []byte{0x30}},
	}
	for _, b := range blobs {
		code, body := h.est(t, h.sigUser, b.der)
		wantRefusal(t, "EST CSR: "+b.name, code, body, 400, "PKCS#10")
		if len(b.der) > 0 {
			code, body = h.enrollJSON(t, h.sigUser, apiEnrollJSON{Template: "smime-signature", CSR: base64.StdEncoding.EncodeToString(b.der)})
			wantRefusal(t, "JSON csr: "+b.name, code, body, 400, "field csr")
			code, body = h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
				CSR: base64.StdEncoding.EncodeToString(h.validRSACSR), EncryptedKey: base64.StdEncoding.EncodeToString(b.der)})
			wantRefusal(t, "encrypted_key: "+b.name, code, body, 400, "encrypted_key")
		}
	}
	// A deeper envelope, still within the JSON limit.
	code, body := h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
		CSR: base64.StdEncoding.EncodeToString(h.validRSACSR), EncryptedKey: base64.StdEncoding.EncodeToString(indefiniteDER(40000, true))})
	wantRefusal(t, "encrypted_key: 40,000 indefinite-length SEQUENCEs", code, body, 400, "encrypted_key")

	// A valid request cut short, or followed by more bytes.
	for _, cut := range []int{1, 2, 4, len(h.validCSR) / 2, len(h.validCSR) - 1} {
		code, body := h.est(t, h.sigUser, h.validCSR[:cut])
		wantRefusal(t, fmt.Sprintf("EST CSR truncated to %d bytes", cut), code, body, 400, "PKCS#10")
	}
	code, body = h.est(t, h.sigUser, append(bytes.Clone(h.validCSR), 0, 0))
	wantRefusal(t, "EST CSR with trailing bytes", code, body, 400, "PKCS#10")
	for _, cut := range []int{1, 4, len(h.envelope) / 2, len(h.envelope) - 1} {
		code, body := h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
			CSR: base64.StdEncoding.EncodeToString(h.validRSACSR), EncryptedKey: base64.StdEncoding.EncodeToString(h.envelope[:cut])})
		wantRefusal(t, fmt.Sprintf("encrypted_key truncated to %d bytes", cut), code, body, 400, "encrypted_key")
	}
	// Not base64 at all.
	code, body = h.do(t, h.anon, "POST", "/.well-known/est/smime-signature/simpleenroll", h.sigUser, "application/pkcs10", []byte("MII*not base64*"))
	wantRefusal(t, "EST body not base64", code, body, 400, "base64")
	code, body = h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
		CSR: base64.StdEncoding.EncodeToString(h.validRSACSR), EncryptedKey: "%%%"})
	wantRefusal(t, "encrypted_key not base64", code, body, 400, "encrypted_key is not base64")
}

// malformedJSON: bodies the JSON decoder must refuse with a message.
func (h *hostileEnv) malformedJSON(t *testing.T) {
	cases := []struct {
		name, body string
		wantCode   int
		want       string
	}{
		{"100,000 nested arrays", strings.Repeat("[", 100000), 400, "max depth"},
		{"40,000 nested objects", strings.Repeat(`{"a":`, 40000), 400, "max depth"},
		{"unknown field", `{"template":"smime-signature","csr":"","admin":true}`, 400, "unknown field"},
		{"two values", `{"template":"smime-signature"} {"template":"smime-signature"}`, 400, "more than one JSON value"},
		{"wrong type", `{"template":["smime-signature"]}`, 400, "field template must be a string"},
		{"truncated", `{"template":"smime-sig`, 400, "not the expected JSON"},
		{"NUL bytes", "\x00\x00\x00", 400, "not the expected JSON"},
		{"no template", `{"csr":"MA=="}`, 400, "field template is required"},
		{"invalid UTF-8 template", "{\"template\":\"\xff\xfe\",\"csr\":\"" + base64.StdEncoding.EncodeToString(h.validRSACSR) + "\"}", 404, "template"},
	}
	for _, c := range cases {
		code, body := h.do(t, h.anon, "POST", "/api/v1/enroll", h.encUser, "application/json", []byte(c.body))
		wantRefusal(t, "enroll: "+c.name, code, body, c.wantCode, c.want)
	}
	code, body := h.do(t, h.anon, "POST", "/api/v1/kra/enroll", "", "application/json", []byte(strings.Repeat("[", 100000)))
	wantRefusal(t, "kra enroll: nested arrays", code, body, 400, "max depth")
}

// signCSR makes a request with crypto/x509 and, when alg is not nil, signs it again by hand
// with that algorithm (crypto/x509 refuses to sign with MD5 or SHA-1).
func signCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest, alg asn1.ObjectIdentifier, hash crypto.Hash) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	if alg == nil {
		return der
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	hh := hash.New()
	hh.Write(csr.RawTBSCertificateRequest)
	sig, err := key.(*rsa.PrivateKey).Sign(rand.Reader, hh.Sum(nil), hash)
	if err != nil {
		t.Fatal(err)
	}
	out, err := asn1.Marshal(struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{asn1.RawValue{FullBytes: csr.RawTBSCertificateRequest}, pkix.AlgorithmIdentifier{Algorithm: alg, Parameters: asn1.NullRawValue},
		asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// policy: well-formed requests the policy refuses, each with a message naming the rule.
func (h *hostileEnv) policy(t *testing.T, dir string) {
	dir = filepath.Join(dir, "policy")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	subj := "/CN=" + hostileMailbox
	key := func(name string, args ...string) string {
		path := filepath.Join(dir, name+".key")
		run(t, dir, "openssl", append([]string{"genpkey", "-out", path}, args...)...)
		return path
	}
	ec := key("p256", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
	rsa2048 := key("rsa2048", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
	cases := []struct {
		name string
		der  []byte
		want string
	}{
		{"RSA public exponent 3", opensslCSR(t, dir, "e3", key("e3", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-pkeyopt", "rsa_keygen_pubexp:3"), subj), "exponent is 3"},
		{"RSA key of 1024 bits", opensslCSR(t, dir, "b1024", key("b1024", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"), subj), "1024 bits"},
		{"curve secp256k1", opensslCSR(t, dir, "k1", key("k1", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"), subj), "unsupported elliptic curve"},
		{"curve brainpoolP256r1", opensslCSR(t, dir, "bp", key("bp", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:brainpoolP256r1"), subj), "unsupported elliptic curve"},
		{"Ed25519 key", opensslCSR(t, dir, "ed", key("ed", "-algorithm", "ED25519"), subj), "Ed25519"},
		{"SHA-1 signature (ECDSA)", opensslCSR(t, dir, "sha1ec", ec, subj, "-sha1"), "ECDSA-SHA1"},
		{"SHA-1 signature (RSA)", opensslCSR(t, dir, "sha1rsa", rsa2048, subj, "-sha1"), "SHA1-RSA"},
		{"basicConstraints CA:TRUE", opensslCSR(t, dir, "ca", ec, subj, "-addext", "basicConstraints=critical,CA:TRUE"), "basicConstraints"},
		{"extendedKeyUsage serverAuth", opensslCSR(t, dir, "eku", ec, subj, "-addext", "extendedKeyUsage=serverAuth"), "serverAuth"},
		{"keyUsage keyCertSign", opensslCSR(t, dir, "ku", ec, subj, "-addext", "keyUsage=keyCertSign"), "keyUsage"},
		{"SAN with another mailbox", opensslCSR(t, dir, "other", ec, subj, "-addext", "subjectAltName=email:"+hostileMailbox+",email:boss@example.org"), "boss@example.org"},
		{"SAN with a DNS name", opensslCSR(t, dir, "dns", ec, subj, "-addext", "subjectAltName=email:"+hostileMailbox+",DNS:www.example.org"), "DNS name"},
		{"SAN with a URI", opensslCSR(t, dir, "uri", ec, subj, "-addext", "subjectAltName=URI:https://example.org/"), "URI"},
		{"subject emailAddress of another mailbox", opensslCSR(t, dir, "subjmail", ec, "/CN=Hostile/emailAddress=boss@example.org"), "boss@example.org"},
		{"CN that is another mailbox", opensslCSR(t, dir, "cnmail", ec, "/CN=boss@example.org"), "boss@example.org"},
	}
	// MD5 and control characters: made in Go, since openssl will not.
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	md5WithRSA := asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 4}
	sha1WithRSA := asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	plain := &x509.CertificateRequest{Subject: pkix.Name{CommonName: hostileMailbox}}
	named := func(cn string, extra ...pkix.AttributeTypeAndValue) *x509.CertificateRequest {
		return &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn, ExtraNames: extra}}
	}
	// openssl rounds a 2049-bit request down to 2048; crypto/rsa makes one.
	k2049, err := rsa.GenerateKey(rand.Reader, 2049)
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases, []struct {
		name string
		der  []byte
		want string
	}{
		{"RSA key of 2049 bits", signCSR(t, k2049, plain, nil, 0), "multiple of 8"},
		{"MD5 signature", signCSR(t, rk, plain, md5WithRSA, crypto.MD5), "MD5-RSA"},
		{"SHA-1 signature made in Go", signCSR(t, rk, plain, sha1WithRSA, crypto.SHA1), "SHA1-RSA"},
		{"CRLF in the CN", signCSR(t, ek, named("Hostile\r\nCN=admin"), nil, 0), "control character"},
		{"BEL in the CN", signCSR(t, ek, named("Hostile\a"), nil, 0), "control character"},
		{"NUL in the O", signCSR(t, ek, named("Hostile", pkix.AttributeTypeAndValue{Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: "Evil\x00Corp"}), nil, 0), "control character"},
		{"LF in the OU", signCSR(t, ek, named("Hostile", pkix.AttributeTypeAndValue{Type: asn1.ObjectIdentifier{2, 5, 4, 11}, Value: "a\nb"}), nil, 0), "control character"},
		{"right-to-left override in the CN", signCSR(t, ek, named("Hostile\u202egro.elpmaxe"), nil, 0), "control character"},
		{"an unknown subject attribute", signCSR(t, ek, named("Hostile", pkix.AttributeTypeAndValue{Type: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: "x"}), nil, 0), "1.2.3.4"},
	}...)
	// A request whose signature does not match its content.
	bad := bytes.Clone(cases[len(cases)-1].der)
	bad[len(bad)-3] ^= 0x55
	cases = append(cases, struct {
		name string
		der  []byte
		want string
	}{"signature changed", bad, "signature does not verify"})

	for _, c := range cases {
		code, body := h.est(t, h.sigUser, c.der)
		wantRefusal(t, "EST: "+c.name, code, body, 400, c.want)
	}
	// The same rules hold for the JSON API, with an archived key.
	for _, c := range cases[:3] {
		code, body := h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
			CSR: base64.StdEncoding.EncodeToString(c.der), EncryptedKey: base64.StdEncoding.EncodeToString(h.envelope)})
		wantRefusal(t, "JSON: "+c.name, code, body, 400, c.want)
	}
	// A valid request whose key is not the envelope's.
	code, body := h.enrollJSON(t, h.encUser, apiEnrollJSON{Template: "smime-encryption",
		CSR: base64.StdEncoding.EncodeToString(opensslCSR(t, dir, "otherkey", rsa2048, subj)), EncryptedKey: base64.StdEncoding.EncodeToString(h.envelope)})
	wantRefusal(t, "JSON: envelope of another key", code, body, 400, "not the pair")
}

// credentials: calls without a credential, with the wrong role, with a certificate of another
// CA, and with a revoked or unknown certificate of this CA.
func (h *hostileEnv) credentials(t *testing.T, dir string) {
	creds := filepath.Join(h.state, "credentials")
	officer := h.client(t, filepath.Join(creds, "officer.pem"), filepath.Join(creds, "officer-key.pem"))
	auditor := h.client(t, filepath.Join(creds, "auditor.pem"), filepath.Join(creds, "auditor-key.pem"))
	revoked := h.client(t, filepath.Join(dir, "revoked.pem"), filepath.Join(dir, "revoked-key.pem"))
	ghost := h.client(t, filepath.Join(dir, "ghost.pem"), filepath.Join(dir, "ghost-key.pem"))
	setBody := []byte(`{"quorum":1,"kras":["1"]}`)
	recBody := []byte(`{"email":"` + hostileMailbox + `","reason":"hostile test"}`)
	approval := []byte(`{"shares":[],"signature":""}`)
	cases := []struct {
		name         string
		c            *http.Client
		method, path string
		body         []byte
		wantCode     int
		wantMsg      string
	}{
		{"pending list, no credential", h.anon, "GET", "/api/v1/pending", nil, 401, "credential"},
		{"pending list, officer", officer, "GET", "/api/v1/pending", nil, 403, "admin role"},
		{"pending issue, officer", officer, "POST", "/api/v1/pending/x/issue", nil, 403, "admin role"},
		{"recovery-set change, no credential", h.anon, "POST", "/api/v1/recovery-set", setBody, 401, "credential"},
		{"recovery-set change, officer", officer, "POST", "/api/v1/recovery-set", setBody, 403, "admin role"},
		{"recovery-set change, auditor", auditor, "POST", "/api/v1/recovery-set", setBody, 403, "admin role"},
		{"recovery request, no credential", h.anon, "POST", "/api/v1/recoveries", recBody, 401, "credential"},
		{"recovery request, auditor", auditor, "POST", "/api/v1/recoveries", recBody, 403, "officer role"},
		{"approval, officer", officer, "POST", "/api/v1/recoveries/x/approvals", approval, 403, "kra role"},
		{"fetch, auditor", auditor, "POST", "/api/v1/recoveries/x/fetch", []byte(`{}`), 403, "officer role"},
		{"reseal, officer", officer, "POST", "/api/v1/reseals", []byte(`{"reason":"x"}`), 403, "admin role"},
		{"pending list, revoked admin", revoked, "GET", "/api/v1/pending", nil, 401, "revoked"},
		{"recovery-set change, revoked admin", revoked, "POST", "/api/v1/recovery-set", setBody, 401, "revoked"},
		{"pending list, admin unknown to the store", ghost, "GET", "/api/v1/pending", nil, 401, "unknown"},
		{"EST re-enroll, no credential", h.anon, "POST", "/.well-known/est/smime-signature/simplereenroll", []byte(base64.StdEncoding.EncodeToString(h.validCSR)), 401, "client certificate"},
	}
	for _, c := range cases {
		ctype := "application/json"
		if strings.HasPrefix(c.path, "/.well-known/est/") {
			ctype = "application/pkcs10"
		}
		code, body := h.do(t, c.c, c.method, c.path, "", ctype, c.body)
		wantRefusal(t, c.name, code, body, c.wantCode, c.wantMsg)
	}

	// A client certificate from another CA: the handshake is refused, no request gets through.
	key, cert := filepath.Join(dir, "foreign.key"), filepath.Join(dir, "foreign.pem")
	run(t, dir, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
		"-subj", "/CN=keyarc admin", "-days", "1")
	foreign := h.client(t, cert, key)
	for _, path := range []string{"/api/v1/pending", "/healthz"} {
		if code, body, err := h.try(foreign, "GET", path, "", "", nil); err == nil {
			t.Errorf("GET %s with a certificate of another CA: answered %d %q, want the TLS handshake refused", path, code, body)
		} else if !strings.Contains(err.Error(), "tls") {
			t.Errorf("GET %s with a certificate of another CA: %v, want a TLS alert", path, err)
		}
	}
	// A certificate of another CA that copies this CA's name changes nothing.
	caCert := readCert(t, filepath.Join(h.state, "ca.pem"))
	fake := filepath.Join(dir, "fake.pem")
	run(t, dir, "openssl", "req", "-x509", "-key", key, "-out", fake, "-subj", opensslDN(caCert.Subject), "-days", "1")
	if code, body, err := h.try(h.client(t, fake, key), "GET", "/api/v1/pending", "", "", nil); err == nil {
		t.Errorf("a self-signed certificate with this CA's name: answered %d %q, want the TLS handshake refused", code, body)
	}
}

// opensslDN writes a name as openssl -subj wants it.
func opensslDN(n pkix.Name) string {
	var b strings.Builder
	for _, rdn := range n.ToRDNSequence() {
		for _, atv := range rdn {
			short := map[string]string{"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C"}[atv.Type.String()]
			if short == "" {
				short = atv.Type.String()
			}
			fmt.Fprintf(&b, "/%s=%v", short, atv.Value)
		}
	}
	return b.String()
}

// fuzz posts 200 random mutations of a valid request and 200 of a valid envelope. Every answer
// must be a 4xx; a mutated request may only succeed if it is the same request (only bytes
// outside the signed part changed), a mutated envelope only if it opened to the right key
// (the appliance checks the pair). It returns how many such successes it saw. The mutations are
// seeded, so a failure can be replayed; the seed is logged.
func (h *hostileEnv) fuzz(t *testing.T) int {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KEYARC_HOSTILE_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("mutation seed %d (KEYARC_HOSTILE_SEED to replay)", seed)
	rng := mrand.New(mrand.NewPCG(seed, 0x6b6579617263))
	orig, err := x509.ParseCertificateRequest(h.validCSR)
	if err != nil {
		t.Fatal(err)
	}
	// Codes of their own: a mutation that legitimately succeeds uses one up, and the other
	// cases share h.sigUser and h.encUser.
	sigUser := hostileMailbox + ":" + newCode(t, h.state, hostileMailbox, "smime-signature")
	encUser := hostileMailbox + ":" + newCode(t, h.state, hostileMailbox, "smime-encryption")
	issued := 0
	check := func(what string, i int, in []byte, code int, body string, sameRequest func() bool, fresh func() string) string {
		switch {
		case code >= 400 && code < 500:
			return ""
		case code == 200 && sameRequest():
			issued++
			t.Logf("%s mutation %d kept the request intact and was issued: %x", what, i, in)
			return fresh()
		}
		t.Errorf("%s mutation %d: got %d %q for %x", what, i, code, body, in)
		return ""
	}
	for i := range 200 {
		in := mutate(rng, h.validCSR)
		code, body, err := h.try(h.anon, "POST", "/.well-known/est/smime-signature/simpleenroll", sigUser, "application/pkcs10",
			[]byte(base64.StdEncoding.EncodeToString(in)))
		if err != nil {
			t.Fatalf("CSR mutation %d: no answer: %v (input %x)", i, err, in)
		}
		same := func() bool {
			c, err := x509.ParseCertificateRequest(in)
			return err == nil && bytes.Equal(c.RawTBSCertificateRequest, orig.RawTBSCertificateRequest) && c.CheckSignature() == nil
		}
		if u := check("CSR", i, in, code, body, same, func() string {
			return hostileMailbox + ":" + newCode(t, h.state, hostileMailbox, "smime-signature")
		}); u != "" {
			sigUser = u
		}
	}
	csr := base64.StdEncoding.EncodeToString(h.validRSACSR)
	for i := range 200 {
		in := mutate(rng, h.envelope)
		b, _ := json.Marshal(apiEnrollJSON{Template: "smime-encryption", CSR: csr, EncryptedKey: base64.StdEncoding.EncodeToString(in)})
		code, body, err := h.try(h.anon, "POST", "/api/v1/enroll", encUser, "application/json", b)
		if err != nil {
			t.Fatalf("envelope mutation %d: no answer: %v (input %x)", i, err, in)
		}
		if code >= 400 && code < 500 && !namesEnvelope(apiError([]byte(body))) {
			t.Errorf("envelope mutation %d: %d %q does not name the envelope", i, code, body)
		}
		// The appliance issues only when the envelope opened to the key of the CSR.
		if u := check("envelope", i, in, code, body, func() bool { return true }, func() string {
			return hostileMailbox + ":" + newCode(t, h.state, hostileMailbox, "smime-encryption")
		}); u != "" {
			encUser = u
		}
	}
	if code, body := h.do(t, h.anon, "GET", "/healthz", "", "", nil); code != 200 {
		t.Fatalf("/healthz after the mutations: %d %s", code, body)
	}
	return issued
}

// namesEnvelope tells whether a refusal of a mutated envelope says what was wrong with it.
func namesEnvelope(msg string) bool {
	for _, w := range []string{"encrypted_key", "encrypted key", "pair", "mechanism"} {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}

// mutate returns a copy of in with one to four random changes (flipped bits, random bytes, a
// cut, an insertion, a deletion, a duplicated range, a byte set to a length or tag value) that
// differs from in.
func mutate(rng *mrand.Rand, in []byte) []byte {
	for {
		if b := mutateOnce(rng, in); !bytes.Equal(b, in) {
			return b
		}
	}
}

func mutateOnce(rng *mrand.Rand, in []byte) []byte {
	b := bytes.Clone(in)
	for range 1 + rng.IntN(4) {
		if len(b) == 0 {
			b = append(b, byte(rng.Uint32()))
			continue
		}
		i := rng.IntN(len(b))
		switch rng.IntN(8) {
		case 0:
			b[i] ^= 1 << rng.IntN(8)
		case 1:
			b[i] = byte(rng.Uint32())
		case 2:
			b = b[:i]
		case 3:
			ins := make([]byte, 1+rng.IntN(16))
			for k := range ins {
				ins[k] = byte(rng.Uint32())
			}
			b = append(b[:i], append(ins, b[i:]...)...)
		case 4:
			j := min(len(b), i+1+rng.IntN(32))
			b = append(b[:i], b[j:]...)
		case 5:
			j := min(len(b), i+1+rng.IntN(64))
			b = append(b[:j], append(bytes.Clone(b[i:j]), b[j:]...)...)
		case 6:
			b[i] = []byte{0x00, 0x7f, 0x80, 0x81, 0x84, 0xff}[rng.IntN(6)]
		case 7:
			// A tag byte swapped for another universal tag.
			b[i] = []byte{0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x30, 0x31, 0xa0, 0xa1}[rng.IntN(10)]
		}
	}
	return b
}
