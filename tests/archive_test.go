package tests

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	_ "modernc.org/sqlite"
)

// The archival scenarios: a client that has nothing but openssl and curl makes its own key,
// encrypts it to the appliance's transport certificate and enrolls; the appliance archives the
// key before it hands out the certificate, and refuses bad requests without leaving anything
// behind. Also `keyarc enroll`, EST serverkeygen and EST simplereenroll.

// newCode makes a one-time enrollment code with `keyarc admin enroll-code create`.
func newCode(t *testing.T, state, mailbox, template string) string {
	t.Helper()
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", template))
	if code == "" {
		t.Fatal("enroll-code create printed no code")
	}
	return code
}

// fetchTransport downloads the transport certificate with curl and returns its path and the
// RSA-OAEP hash the appliance says its token can open ("sha1" or "sha256").
func fetchTransport(t *testing.T, a *appliance, dir string) (string, string) {
	t.Helper()
	path := filepath.Join(dir, "transport.pem")
	headers := filepath.Join(dir, "transport.headers")
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(a.state, "ca.pem"), "-D", headers, "-o", path, a.url+"/api/v1/transport-certificate")
	if out := run(t, dir, "openssl", "x509", "-in", path, "-noout", "-ext", "keyUsage"); !strings.Contains(out, "Key Encipherment") {
		t.Fatalf("transport certificate is not for key encipherment:\n%s", out)
	}
	h, _ := os.ReadFile(headers)
	oaep := "sha1"
	if m := regexp.MustCompile(`(?im)^keyarc-transport-oaep:\s*(\S+)`).FindSubmatch(h); m != nil {
		oaep = strings.ToLower(string(m[1]))
	}
	return path, oaep
}

// rsaKeyAndCSR makes an RSA key and a DER PKCS#10 request for mailbox with openssl; it returns
// the paths of the key (PEM) and of the request (DER).
func rsaKeyAndCSR(t *testing.T, dir, name, mailbox string, bits int) (string, string) {
	t.Helper()
	key, csr := filepath.Join(dir, name+".key.pem"), filepath.Join(dir, name+".csr.der")
	run(t, dir, "openssl", "req", "-new", "-newkey", "rsa:"+strconv.Itoa(bits), "-nodes", "-keyout", key,
		"-subj", "/CN="+mailbox, "-addext", "subjectAltName=email:"+mailbox, "-outform", "DER", "-out", csr)
	return key, csr
}

// sealKey is `openssl pkcs8 -topk8 -nocrypt -outform DER | openssl cms -encrypt -binary
// -outform DER ARGS`: it encrypts the PKCS#8 form of key in a CMS envelope and returns its path.
// args choose the cipher, the recipient and the key-transport options.
func sealKey(t *testing.T, dir, key, name string, args ...string) string {
	t.Helper()
	p8 := filepath.Join(dir, name+".p8.der")
	run(t, dir, "openssl", "pkcs8", "-topk8", "-nocrypt", "-in", key, "-outform", "DER", "-out", p8)
	out := filepath.Join(dir, name+".cms")
	run(t, dir, "openssl", append(append([]string{"cms", "-encrypt", "-binary", "-in", p8, "-outform", "DER"}, args...), "-out", out)...)
	os.Remove(p8)
	return out
}

// oaepTo returns the openssl cms arguments for a recipient with RSA-OAEP (SHA-1, openssl's
// default OAEP hash) and a cipher.
func oaepTo(cipher, recip string) []string {
	return []string{cipher, "-recip", recip, "-keyopt", "rsa_padding_mode:oaep"}
}

func readB64(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// apiEnrollJSON is the body of POST /api/v1/enroll.
type apiEnrollJSON struct {
	Template     string `json:"template"`
	CSR          string `json:"csr"`
	EncryptedKey string `json:"encrypted_key,omitempty"`
}

// issuedResponse is the appliance's answer to a successful enrollment.
type issuedResponse struct {
	Serial      string `json:"serial"`
	Certificate string `json:"certificate"`
	Chain       string `json:"chain"`
	RecordID    string `json:"record_id"`
	NotAfter    string `json:"not_after"`
}

// curlStatus runs curl with -o and -w %{http_code} and returns the status and the body. A curl
// failure (no HTTP answer at all) gives status 0 and curl's own output as the body, so that a
// test can report it rather than stop.
func curlStatus(t *testing.T, dir string, args ...string) (int, []byte) {
	t.Helper()
	out := filepath.Join(dir, "curl.out")
	os.Remove(out)
	got, err := runResult(dir, nil, "curl", append([]string{"-sS", "-o", out, "-w", "%{http_code}"}, args...)...)
	body, _ := os.ReadFile(out)
	if err != nil {
		return 0, []byte("curl failed: " + err.Error() + ": " + got)
	}
	code, err := strconv.Atoi(strings.TrimSpace(got))
	if err != nil {
		t.Fatalf("curl printed %q, not an HTTP status", got)
	}
	return code, body
}

// postEnroll posts a JSON enrollment with curl, authenticated with HTTP Basic as user
// (mailbox:code).
func postEnroll(t *testing.T, a *appliance, dir, user string, req apiEnrollJSON) (int, []byte) {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	body := filepath.Join(dir, "enroll.json")
	writeFile(t, body, b)
	args := []string{"--cacert", filepath.Join(a.state, "ca.pem"), "-H", "Content-Type: application/json", "--data-binary", "@" + body}
	if user != "" {
		args = append(args, "--user", user)
	}
	return curlStatus(t, dir, append(args, a.url+"/api/v1/enroll")...)
}

// apiError returns the "error" member of a JSON refusal, or "" if the body is not one.
func apiError(body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return e.Error
}

// openDB opens the appliance's SQLite file next to the running appliance (reads only).
func openDB(t *testing.T, state string) *sql.DB {
	t.Helper()
	u := url.URL{Path: filepath.ToSlash(filepath.Join(state, "keyarc.db"))}
	db, err := sql.Open("sqlite", "file:"+u.EscapedPath()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func countRows(t *testing.T, state, query string, args ...any) int {
	t.Helper()
	var n int
	if err := openDB(t, state).QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// escrowRecord is the row of table records for a serial.
type escrowRecord struct {
	id, state string
	epoch     int
}

// recordForSerial returns the escrow record of serial; ok is false when there is none.
func recordForSerial(t *testing.T, state, serial string) (escrowRecord, bool) {
	t.Helper()
	var r escrowRecord
	err := openDB(t, state).QueryRow("SELECT id, state, epoch FROM records WHERE serial = ?", serial).Scan(&r.id, &r.state, &r.epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return r, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return r, true
}

// requireActiveRecord checks that an active escrow record exists for serial and returns it.
func requireActiveRecord(t *testing.T, state, serial string) escrowRecord {
	t.Helper()
	r, ok := recordForSerial(t, state, serial)
	if !ok {
		t.Fatalf("no escrow record for serial %s", serial)
	}
	if r.state != "active" {
		t.Fatalf("escrow record %s of serial %s is %q, want active", r.id, serial, r.state)
	}
	return r
}

// opensslSerial returns the serial of a PEM certificate as openssl prints it, in the appliance's
// canonical form (lower-case hex, no leading zeros).
func opensslSerial(t *testing.T, dir, cert string) string {
	t.Helper()
	out := strings.TrimSpace(run(t, dir, "openssl", "x509", "-in", cert, "-noout", "-serial"))
	s := strings.TrimLeft(strings.ToLower(strings.TrimPrefix(out, "serial=")), "0")
	if s == "" {
		t.Fatalf("openssl printed no serial: %q", out)
	}
	return s
}

// samePublicKey checks with openssl that the private key (PEM, or DER with keyDER) is the pair
// of the certificate.
func samePublicKey(t *testing.T, dir, key, cert string, keyArgs ...string) bool {
	t.Helper()
	keyPub := run(t, dir, "openssl", append(append([]string{"pkey"}, keyArgs...), "-in", key, "-pubout")...)
	certPub := run(t, dir, "openssl", "x509", "-in", cert, "-noout", "-pubkey")
	return keyPub == certPub
}

func flipBytes(t *testing.T, in, out string, at, n int) {
	t.Helper()
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	if at < 0 {
		at += len(b)
	}
	for i := at; i < at+n && i < len(b); i++ {
		b[i] ^= 0xff
	}
	writeFile(t, out, b)
}

// TestArchivalWithOpenSSL: openssl and curl as the only client, as the README shows it: the key
// is made locally, sent in a CMS EnvelopedData (AES-256-CBC) or AuthEnvelopedData (AES-256-GCM)
// to the transport certificate, and archived before the certificate is returned.
func TestArchivalWithOpenSSL(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	transport, _ := fetchTransport(t, a, dir)
	ca := filepath.Join(state, "ca.pem")

	for _, tc := range []struct{ name, cipher, mailbox string }{
		{"EnvelopedData AES-256-CBC", "-aes-256-cbc", "bob@example.org"},
		{"AuthEnvelopedData AES-256-GCM", "-aes-256-gcm", "carol@example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			key, csr := rsaKeyAndCSR(t, dir, "user", tc.mailbox, 2048)
			env := sealKey(t, dir, key, "user", oaepTo(tc.cipher, transport)...)
			code := newCode(t, state, tc.mailbox, "smime-encryption")
			recordsBefore := countRows(t, state, "SELECT count(*) FROM records")

			status, body := postEnroll(t, a, dir, tc.mailbox+":"+code, apiEnrollJSON{Template: "smime-encryption", CSR: readB64(t, csr), EncryptedKey: readB64(t, env)})
			if status != 200 {
				t.Fatalf("enroll: HTTP %d: %s", status, body)
			}
			var is issuedResponse
			if err := json.Unmarshal(body, &is); err != nil {
				t.Fatalf("enroll answer is not JSON: %v\n%s", err, body)
			}
			if is.Serial == "" || !strings.Contains(is.Certificate, "-----BEGIN CERTIFICATE-----") {
				t.Fatalf("enroll answer lacks serial or certificate:\n%s", body)
			}
			cert := filepath.Join(dir, "cert.pem")
			writeFile(t, cert, []byte(is.Certificate))
			if out := run(t, dir, "openssl", "verify", "-CAfile", ca, "-purpose", "smimeencrypt", cert); !strings.Contains(out, ": OK") {
				t.Fatalf("openssl verify: %s", out)
			}
			text := run(t, dir, "openssl", "x509", "-in", cert, "-noout", "-text")
			for _, want := range []string{"email:" + tc.mailbox, "Key Encipherment", "E-mail Protection"} {
				if !strings.Contains(text, want) {
					t.Errorf("certificate lacks %q:\n%s", want, text)
				}
			}
			if !samePublicKey(t, dir, key, cert) {
				t.Fatal("the certificate does not carry the public key of the key openssl made")
			}
			serial := opensslSerial(t, dir, cert)
			if is.Serial != serial {
				t.Errorf("answer says serial %q, the certificate has %q", is.Serial, serial)
			}
			rec := requireActiveRecord(t, state, serial)
			if is.RecordID != "" && rec.id != is.RecordID {
				t.Errorf("answer names record %s, the database holds %s for the serial", is.RecordID, rec.id)
			}
			if rec.epoch != 1 {
				t.Errorf("record sealed under epoch %d, want the dev recovery set's 1", rec.epoch)
			}
			if n := countRows(t, state, "SELECT count(*) FROM records"); n != recordsBefore+1 {
				t.Errorf("records went from %d to %d, want one more", recordsBefore, n)
			}
			if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE serial = ? AND state = 'issued' AND record_id = ?", serial, rec.id); n != 1 {
				t.Errorf("certificate row for %s is not issued with record %s", serial, rec.id)
			}
		})
	}
	if logs := a.logs.String(); strings.Contains(logs, "PRIVATE KEY") {
		t.Error("the appliance log holds key material")
	}
}

// TestArchivalRefusals: each bad archival request gets a 4xx whose JSON error says what is wrong,
// leaves nothing in the database, and does not use the code up.
func TestArchivalRefusals(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	transport, oaep := fetchTransport(t, a, dir)
	const mailbox, other = "dana@example.org", "erik@example.org"
	skipSHA256 := ""
	if oaep == "sha256" {
		skipSHA256 = "the token opens OAEP with SHA-256"
	}

	key, csr := rsaKeyAndCSR(t, dir, "dana", mailbox, 2048)
	good := sealKey(t, dir, key, "good-cbc", oaepTo("-aes-256-cbc", transport)...)
	goodGCM := sealKey(t, dir, key, "good-gcm", oaepTo("-aes-256-gcm", transport)...)

	// A code used up by an earlier, successful enrollment.
	usedCode := newCode(t, state, mailbox, "smime-encryption")
	earlierKey, earlierCSR := rsaKeyAndCSR(t, dir, "earlier", mailbox, 2048)
	earlierEnv := sealKey(t, dir, earlierKey, "earlier", oaepTo("-aes-256-cbc", transport)...)
	if status, body := postEnroll(t, a, dir, mailbox+":"+usedCode, apiEnrollJSON{Template: "smime-encryption", CSR: readB64(t, earlierCSR), EncryptedKey: readB64(t, earlierEnv)}); status != 200 {
		t.Fatalf("enrollment that uses the code up: HTTP %d: %s", status, body)
	}

	code := newCode(t, state, mailbox, "smime-encryption")
	sigCode := newCode(t, state, mailbox, "smime-signature")
	otherCode := newCode(t, state, other, "smime-encryption")

	// The bad inputs.
	otherKey := filepath.Join(dir, "other.key.pem")
	run(t, dir, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", otherKey)
	notPair := sealKey(t, dir, otherKey, "notpair", oaepTo("-aes-256-cbc", transport)...)
	corruptCBC, corruptGCM := filepath.Join(dir, "corrupt-cbc.cms"), filepath.Join(dir, "corrupt-gcm.cms")
	for in, out := range map[string]string{good: corruptCBC, goodGCM: corruptGCM} {
		st, err := os.Stat(in)
		if err != nil {
			t.Fatal(err)
		}
		flipBytes(t, in, out, int(st.Size())/2, 8)
	}
	strangerCert := filepath.Join(dir, "stranger.pem")
	run(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(dir, "stranger.key"),
		"-subj", "/CN=stranger", "-days", "30", "-out", strangerCert)
	toStranger := sealKey(t, dir, key, "stranger", oaepTo("-aes-256-cbc", strangerCert)...)
	smallKey, smallCSR := rsaKeyAndCSR(t, dir, "small", mailbox, 1024)
	small := sealKey(t, dir, smallKey, "small", oaepTo("-aes-256-cbc", transport)...)
	badSigCSR := filepath.Join(dir, "badsig.csr.der")
	flipBytes(t, csr, badSigCSR, -1, 1) // the last byte is in the signature BIT STRING
	v15 := sealKey(t, dir, key, "v15", "-aes-256-cbc", "-recip", transport)
	sha256OAEP := sealKey(t, dir, key, "sha256", append(oaepTo("-aes-256-cbc", transport), "-keyopt", "rsa_oaep_md:sha256")...)

	recordsBefore := countRows(t, state, "SELECT count(*) FROM records")
	certsBefore := countRows(t, state, "SELECT count(*) FROM certificates")
	issuedBefore := countRows(t, state, "SELECT count(*) FROM certificates WHERE state = 'issued'")

	cases := []struct {
		name     string
		user     string
		template string
		csr, env string
		status   int
		// want: every one of these appears in the error message (case-insensitive).
		want []string
		skip string
	}{
		{name: "private key not the pair of the CSR", user: mailbox + ":" + code, csr: csr, env: notPair, status: 400, want: []string{"not the pair"}},
		{name: "envelope corrupted (CBC)", user: mailbox + ":" + code, csr: csr, env: corruptCBC, status: 400, want: []string{"encrypted"}},
		{name: "envelope corrupted (GCM)", user: mailbox + ":" + code, csr: csr, env: corruptGCM, status: 400, want: []string{"encrypted_key"}},
		{name: "envelope to another certificate", user: mailbox + ":" + code, csr: csr, env: toStranger, status: 400, want: []string{"transport certificate"}},
		{name: "RSA-1024 key and CSR", user: mailbox + ":" + code, csr: smallCSR, env: small, status: 400, want: []string{"1024"}},
		{name: "CSR with a bad signature", user: mailbox + ":" + code, csr: badSigCSR, env: good, status: 400, want: []string{"signature"}},
		{name: "code of another mailbox", user: mailbox + ":" + otherCode, csr: csr, env: good, status: 401, want: []string{"not accepted"}},
		{name: "code already used", user: mailbox + ":" + usedCode, csr: csr, env: good, status: 401, want: []string{"already used"}},
		{name: "PKCS#1 v1.5 key transport", user: mailbox + ":" + code, csr: csr, env: v15, status: 400, want: []string{"OAEP"}},
		{name: "archival on smime-signature", user: mailbox + ":" + sigCode, template: "smime-signature", csr: csr, env: good, status: 400, want: []string{"does not archive"}},
		{name: "OAEP SHA-256 on the SoftHSM token", user: mailbox + ":" + code, csr: csr, env: sha256OAEP, status: 400, want: []string{"SHA-1"},
			skip: skipSHA256},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.skip != "" {
				t.Skip(c.skip)
			}
			tmpl := c.template
			if tmpl == "" {
				tmpl = "smime-encryption"
			}
			status, body := postEnroll(t, a, dir, c.user, apiEnrollJSON{Template: tmpl, CSR: readB64(t, c.csr), EncryptedKey: readB64(t, c.env)})
			msg := apiError(body)
			if status != c.status {
				t.Errorf("HTTP %d %s, want %d", status, body, c.status)
				return
			}
			if msg == "" {
				t.Errorf("the refusal is not JSON {\"error\": ...}: %s", body)
				return
			}
			for _, w := range c.want {
				if !strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
		})
	}

	// Nothing was left behind.
	if n := countRows(t, state, "SELECT count(*) FROM records"); n != recordsBefore {
		t.Errorf("refusals changed the number of escrow records from %d to %d", recordsBefore, n)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE state = 'issued'"); n != issuedBefore {
		t.Errorf("refusals issued %d certificates", n-issuedBefore)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates"); n != certsBefore {
		t.Errorf("refusals left %d certificate rows behind", n-certsBefore)
	}
	if n := countRows(t, state, "SELECT count(*) FROM codes WHERE used_at IS NOT NULL"); n != 1 {
		t.Errorf("%d codes are used, want only the one used up on purpose", n)
	}

	// The codes still work: the refusals did not use them up.
	status, body := postEnroll(t, a, dir, mailbox+":"+code, apiEnrollJSON{Template: "smime-encryption", CSR: readB64(t, csr), EncryptedKey: readB64(t, good)})
	if status != 200 {
		t.Fatalf("good enrollment with the code after the refusals: HTTP %d: %s", status, body)
	}
	var is issuedResponse
	if err := json.Unmarshal(body, &is); err != nil {
		t.Fatal(err)
	}
	requireActiveRecord(t, state, is.Serial)
	sigKey, sigCSR := filepath.Join(dir, "sig.key.pem"), filepath.Join(dir, "sig.csr.der")
	run(t, dir, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", sigKey,
		"-subj", "/CN="+mailbox, "-outform", "DER", "-out", sigCSR)
	if status, body := postEnroll(t, a, dir, mailbox+":"+sigCode, apiEnrollJSON{Template: "smime-signature", CSR: readB64(t, sigCSR)}); status != 200 {
		t.Errorf("good signature enrollment with the smime-signature code after the refusal: HTTP %d: %s", status, body)
	}
}

// TestKeyarcEnroll: the `keyarc enroll` client makes the key, archives it and writes key, certificate
// and chain; a used code is refused and nothing is written.
func TestKeyarcEnroll(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "fiona@example.org"
	code := newCode(t, state, mailbox, "smime-encryption")
	out := filepath.Join(dir, "fiona")
	keyarc(t, "enroll", "--state", state, "--server", a.url, "--template", "smime-encryption", "--email", mailbox, "--code", code, "--out", out)

	key, cert, chain := filepath.Join(out, "key.pem"), filepath.Join(out, "cert.pem"), filepath.Join(out, "chain.pem")
	for _, p := range []string{key, cert, chain} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("keyarc enroll did not write %s: %v", p, err)
		}
	}
	if st, _ := os.Stat(key); st.Mode().Perm() != 0o600 {
		t.Errorf("key.pem has mode %v, want 0600", st.Mode().Perm())
	}
	ca := filepath.Join(state, "ca.pem")
	if got := run(t, dir, "openssl", "verify", "-CAfile", ca, "-purpose", "smimeencrypt", cert); !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify: %s", got)
	}
	if got := run(t, dir, "openssl", "verify", "-CAfile", chain, cert); !strings.Contains(got, ": OK") {
		t.Errorf("cert.pem does not verify against chain.pem: %s", got)
	}
	if !samePublicKey(t, dir, key, cert) {
		t.Fatal("key.pem is not the pair of cert.pem")
	}
	if text := run(t, dir, "openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName"); !strings.Contains(text, "email:"+mailbox) {
		t.Errorf("cert.pem does not name %s:\n%s", mailbox, text)
	}
	requireActiveRecord(t, state, opensslSerial(t, dir, cert))
	records := countRows(t, state, "SELECT count(*) FROM records")

	// The same code again, into a fresh folder: refused, nothing written.
	again := filepath.Join(dir, "again")
	stdout, stderr, err := keyarcResult("enroll", "--state", state, "--server", a.url, "--template", "smime-encryption", "--email", mailbox, "--code", code, "--out", again)
	if err == nil {
		t.Fatalf("second enroll with the same code succeeded:\n%s%s", stdout, stderr)
	}
	if !strings.Contains(stderr, "already used") {
		t.Errorf("second enroll does not say the code is used:\n%s", stderr)
	}
	if entries, err := os.ReadDir(again); err == nil && len(entries) > 0 {
		t.Errorf("the refused enroll wrote %d files into %s", len(entries), again)
	}
	if n := countRows(t, state, "SELECT count(*) FROM records"); n != records {
		t.Errorf("the refused enroll added %d records", n-records)
	}
}

// estPart is one part of a multipart EST answer.
type estPart struct {
	contentType string
	body        []byte
}

// TestServerKeygen: EST serverkeygen (RFC 7030 4.4) with curl: the appliance makes the key,
// archives it, and answers multipart/mixed with the PKCS#8 key and a certs-only PKCS#7.
func TestServerKeygen(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "gina@example.org"
	code := newCode(t, state, mailbox, "smime-encryption")
	csrKey, csrDER := rsaKeyAndCSR(t, dir, "gina", mailbox, 2048)
	csrB64 := filepath.Join(dir, "gina.csr.b64")
	writeFile(t, csrB64, []byte(readB64(t, csrDER)+"\n"))

	headers := filepath.Join(dir, "skg.headers")
	status, body := curlStatus(t, dir, "--cacert", filepath.Join(state, "ca.pem"), "-D", headers, "--user", mailbox+":"+code,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+csrB64, a.url+"/.well-known/est/smime-encryption/serverkeygen")
	if status != 200 {
		t.Fatalf("serverkeygen: HTTP %d: %s", status, body)
	}
	h, _ := os.ReadFile(headers)
	m := regexp.MustCompile(`(?im)^content-type:\s*(.+?)\r?$`).FindSubmatch(h)
	if m == nil {
		t.Fatalf("no Content-Type in:\n%s", h)
	}
	mediaType, params, err := mime.ParseMediaType(string(m[1]))
	if err != nil || mediaType != "multipart/mixed" || params["boundary"] == "" {
		t.Fatalf("Content-Type %q, want multipart/mixed with a boundary (%v)", m[1], err)
	}
	var parts []estPart
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, estPart{p.Header.Get("Content-Type"), b})
	}
	if len(parts) != 2 {
		t.Fatalf("%d parts, want 2 (key and certificate)", len(parts))
	}
	var keyB64, p7B64 string
	for _, p := range parts {
		mt, ps, _ := mime.ParseMediaType(p.contentType)
		switch {
		case mt == "application/pkcs8":
			keyB64 = string(p.body)
		case mt == "application/pkcs7-mime" && ps["smime-type"] == "certs-only":
			p7B64 = string(p.body)
		default:
			t.Errorf("unexpected part %q", p.contentType)
		}
	}
	if keyB64 == "" || p7B64 == "" {
		t.Fatalf("parts %q and %q, want application/pkcs8 and application/pkcs7-mime; smime-type=certs-only", parts[0].contentType, parts[1].contentType)
	}
	keyDER, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(keyB64))
	if err != nil {
		t.Fatalf("the key part is not base64: %v", err)
	}
	keyFile := filepath.Join(dir, "server.key.der")
	writeFile(t, keyFile, keyDER)
	cert := pkcs7ToPEM(t, dir, "server-cert", p7B64)
	if out := run(t, dir, "openssl", "verify", "-CAfile", filepath.Join(state, "ca.pem"), "-purpose", "smimeencrypt", cert); !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	if !samePublicKey(t, dir, keyFile, cert, "-inform", "DER") {
		t.Fatal("the returned key is not the pair of the returned certificate")
	}
	if samePublicKey(t, dir, csrKey, cert) {
		t.Error("the certificate carries the CSR's key, not a key the appliance generated")
	}
	if text := run(t, dir, "openssl", "pkey", "-inform", "DER", "-in", keyFile, "-noout", "-text"); !strings.Contains(text, "2048 bit") {
		t.Errorf("the generated key is not RSA 2048 like the CSR's:\n%.200s", text)
	}
	requireActiveRecord(t, state, opensslSerial(t, dir, cert))

	// Not on a template that does not archive.
	sigCode := newCode(t, state, mailbox, "smime-signature")
	records := countRows(t, state, "SELECT count(*) FROM records")
	status, body = curlStatus(t, dir, "--cacert", filepath.Join(state, "ca.pem"), "--user", mailbox+":"+sigCode,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+csrB64, a.url+"/.well-known/est/smime-signature/serverkeygen")
	if status != 400 || !strings.Contains(string(body), "server-side key generation") {
		t.Errorf("serverkeygen on smime-signature: HTTP %d %q, want 400 about server-side key generation", status, body)
	}
	if n := countRows(t, state, "SELECT count(*) FROM records"); n != records {
		t.Errorf("the refused serverkeygen added %d records", n-records)
	}
}

// TestSimpleReenroll: EST simplereenroll (RFC 7030 4.2.2) with curl, authenticated by the current
// certificate as TLS client certificate.
func TestSimpleReenroll(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "hana@example.org"
	code := newCode(t, state, mailbox, "smime-signature")
	got, body := curlEST(t, a, dir, "/.well-known/est/smime-signature/simpleenroll", mailbox+":"+code, estCSR(t, dir, "first", "/CN="+mailbox))
	if got != "200" {
		t.Fatalf("simpleenroll: HTTP %s: %s", got, body)
	}
	first := pkcs7ToPEM(t, dir, "first-cert", body)
	firstKey := filepath.Join(dir, "first.key.pem")
	firstSerial := opensslSerial(t, dir, first)
	ca := filepath.Join(state, "ca.pem")
	reenroll := a.url + "/.well-known/est/smime-signature/simplereenroll"

	renewCSR := estCSR(t, dir, "renew", "/CN="+mailbox)
	status, resp := curlStatus(t, dir, "--cacert", ca, "--cert", first, "--key", firstKey,
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+renewCSR, reenroll)
	if status != 200 {
		t.Errorf("simplereenroll with the current certificate: HTTP %d: %s", status, resp)
	} else {
		renewed := pkcs7ToPEM(t, dir, "renewed-cert", string(resp))
		if out := run(t, dir, "openssl", "verify", "-CAfile", ca, "-purpose", "smimesign", renewed); !strings.Contains(out, ": OK") {
			t.Errorf("openssl verify: %s", out)
		}
		if text := run(t, dir, "openssl", "x509", "-in", renewed, "-noout", "-ext", "subjectAltName"); !strings.Contains(text, "email:"+mailbox) {
			t.Errorf("the new certificate does not name %s:\n%s", mailbox, text)
		}
		if opensslSerial(t, dir, renewed) == firstSerial {
			t.Error("re-enrollment returned the old certificate")
		}
		if !samePublicKey(t, dir, filepath.Join(dir, "renew.key.pem"), renewed) {
			t.Error("the new certificate does not carry the new CSR's key")
		}
	}

	// Without a client certificate: 401.
	status, resp = curlStatus(t, dir, "--cacert", ca, "-H", "Content-Type: application/pkcs10", "--data-binary", "@"+estCSR(t, dir, "anon", "/CN="+mailbox), reenroll)
	if status != 401 || !strings.Contains(string(resp), "client certificate") {
		t.Errorf("simplereenroll without a client certificate: HTTP %d %q, want 401 asking for the certificate", status, resp)
	}
}

// TestArchivalOneKeyTwoMailboxes: a key openssl made, archived for one mailbox, is refused for
// another with 409 and a message that says so, without an escrow record or a certificate and
// without using the code; the same mailbox may archive it again, in a second record.
func TestArchivalOneKeyTwoMailboxes(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	transport, _ := fetchTransport(t, a, dir)
	const alice, bob = "alice@example.org", "bob@example.org"

	key, aliceCSR := rsaKeyAndCSR(t, dir, "alice", alice, 2048)
	env := sealKey(t, dir, key, "alice", oaepTo("-aes-256-gcm", transport)...)
	bobCSR := filepath.Join(dir, "bob.csr.der")
	run(t, dir, "openssl", "req", "-new", "-key", key, "-subj", "/CN="+bob, "-addext", "subjectAltName=email:"+bob, "-outform", "DER", "-out", bobCSR)

	enroll := func(mailbox, code, csr string) (int, []byte) {
		return postEnroll(t, a, dir, mailbox+":"+code, apiEnrollJSON{Template: "smime-encryption", CSR: readB64(t, csr), EncryptedKey: readB64(t, env)})
	}
	if status, body := enroll(alice, newCode(t, state, alice, "smime-encryption"), aliceCSR); status != 200 {
		t.Fatalf("alice enrolls: HTTP %d: %s", status, body)
	}

	bobCode := newCode(t, state, bob, "smime-encryption")
	status, body := enroll(bob, bobCode, bobCSR)
	if status != 409 || !strings.Contains(apiError(body), "already archived for another mailbox") {
		t.Errorf("bob enrolls alice's key: HTTP %d: %s; want 409 saying the key is archived for another mailbox", status, body)
	}
	if strings.Contains(string(body), alice) {
		t.Errorf("the refusal names the other mailbox: %s", body)
	}
	if n := countRows(t, state, "SELECT count(*) FROM records WHERE email = ?", bob); n != 0 {
		t.Errorf("bob has %d escrow record(s) of alice's key", n)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE email = ? AND state = 'issued'", bob); n != 0 {
		t.Errorf("bob has %d certificate(s) for alice's key", n)
	}

	// bob's code is still good for a key of his own.
	bobKey, bobOwnCSR := rsaKeyAndCSR(t, dir, "bob-own", bob, 2048)
	bobEnv := sealKey(t, dir, bobKey, "bob-own", oaepTo("-aes-256-gcm", transport)...)
	if status, body := postEnroll(t, a, dir, bob+":"+bobCode, apiEnrollJSON{Template: "smime-encryption", CSR: readB64(t, bobOwnCSR), EncryptedKey: readB64(t, bobEnv)}); status != 200 {
		t.Errorf("bob enrolls his own key with the same code: HTTP %d: %s", status, body)
	}

	if status, body := enroll(alice, newCode(t, state, alice, "smime-encryption"), aliceCSR); status != 200 {
		t.Fatalf("alice enrolls her key again: HTTP %d: %s", status, body)
	}
	if n := countRows(t, state, "SELECT count(*) FROM records WHERE email = ? AND state = 'active'", alice); n != 2 {
		t.Errorf("alice has %d active records, want 2 (one per certificate)", n)
	}
	if n := countRows(t, state, "SELECT count(DISTINCT email) FROM records WHERE fingerprint = (SELECT fingerprint FROM records WHERE email = ? LIMIT 1)", alice); n != 1 {
		t.Errorf("alice's key is archived for %d mailboxes, want 1", n)
	}
}
