package tests

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestConsistencyCheck: with the appliance stopped, one byte of a stored certificate's DER is
// flipped and another certificate's row is pointed at a third user's escrow record. `keyarc
// check` and `keyarc audit verify` name both; serve starts (the other users are still served)
// but logs them and counts them in keyarc_consistency_failures; and a recovery of either
// certificate is refused before a PKCS#12 is made.
func TestConsistencyCheck(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	serials := map[string]string{}
	for _, u := range []string{"flip", "repoint", "other"} {
		enrollUser(t, a, u+"@example.org", filepath.Join(dir, u))
		serials[u] = certSerial(t, dir, filepath.Join(dir, u, "cert.pem"))
	}
	a.stop(t)
	if out := keyarc(t, "check", "--state", state); !strings.Contains(out, "OK") {
		t.Fatalf("check of an intact archive:\n%s", out)
	}

	db := openDB(t, state)
	var der []byte
	if err := db.QueryRow(`SELECT der FROM certificates WHERE serial = ?`, serials["flip"]).Scan(&der); err != nil {
		t.Fatal(err)
	}
	der[len(der)-10] ^= 0x01 // inside the signature: the certificate still parses
	if _, err := db.Exec(`UPDATE certificates SET der = ? WHERE serial = ?`, der, serials["flip"]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE certificates SET record_id = (SELECT record_id FROM certificates WHERE serial = ?) WHERE serial = ?`,
		serials["other"], serials["repoint"]); err != nil {
		t.Fatal(err)
	}
	db.Close()

	msg := keyarcFails(t, "check", "--state", state)
	for _, want := range []string{serials["flip"], "signature", serials["repoint"], "record"} {
		if !strings.Contains(msg, want) {
			t.Errorf("keyarc check does not name %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, serials["other"]+":") {
		t.Errorf("keyarc check blames the untouched certificate %s:\n%s", serials["other"], msg)
	}
	if msg := keyarcFails(t, "audit", "verify", "--state", state); !strings.Contains(msg, serials["flip"]) || !strings.Contains(msg, serials["repoint"]) {
		t.Errorf("audit verify does not report the inconsistent certificates:\n%s", msg)
	}

	a = serve(t, state)
	if !strings.Contains(a.logs.String(), serials["flip"]) {
		t.Errorf("the start-up check does not name %s:\n%s", serials["flip"], a.logs.String())
	}
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if m := regexp.MustCompile(`(?m)^keyarc_consistency_failures (\S+)$`).FindSubmatch(body); m == nil || string(m[1]) != "2" {
		t.Errorf("keyarc_consistency_failures: %q, want 2", m)
	}
	if !regexp.MustCompile(`(?m)^keyarc_consistency_last_check_timestamp_seconds [1-9]`).Match(body) {
		t.Error("no keyarc_consistency_last_check_timestamp_seconds")
	}

	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	// The request itself is refused, as an integrity fault, before a recovery key is made or a
	// KRA is asked: nothing can be approved or fetched.
	for _, u := range []string{"flip", "repoint"} {
		msg := keyarcFails(t, as("officer", "recovery", "request", "--serial", serials[u], "--reason", "tamper test")...)
		if !strings.Contains(msg, "consistency check") || !strings.Contains(msg, "keyarc check") {
			t.Errorf("recovery request for the %s certificate: %s", u, msg)
		}
	}
	if n := countRows(t, state, `SELECT count(*) FROM recoveries`); n != 0 {
		t.Errorf("%d refused request(s) stored, want 0", n)
	}
	// The untouched user is still recovered.
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serials["other"], "--reason", "tamper test")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "other.p12"), "--password-file", filepath.Join(dir, "other.pw"))...)
}

// TestConsistencyCheckImports: certificates imported from another CA (a bulk import job, one
// audit entry per batch) pass the check on their audited hash and record links; a byte changed
// in one of them is found although its signature is not the CA's to check.
func TestConsistencyCheckImports(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	file := filepath.Join(t.TempDir(), "import.jsonl")
	writeJobFile(t, file, `{"kind":"import"}`, importLines(t, 5))
	id := submitBulk(t, a, file)
	_, res := readResults(t, a, id)
	checkResults(t, state, 5, res)
	a.stop(t)
	if out := keyarc(t, "check", "--state", state); !strings.Contains(out, "OK") {
		t.Fatalf("check after an import:\n%s", out)
	}

	db := openDB(t, state)
	var serial string
	var der []byte
	if err := db.QueryRow(`SELECT serial, der FROM certificates WHERE template = 'import' LIMIT 1`).Scan(&serial, &der); err != nil {
		t.Fatal(err)
	}
	der[len(der)-10] ^= 0x01
	if _, err := db.Exec(`UPDATE certificates SET der = ? WHERE serial = ?`, der, serial); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if msg := keyarcFails(t, "check", "--state", state); !strings.Contains(msg, serial) || !strings.Contains(msg, "recorded at issuance") {
		t.Errorf("check after changing an imported certificate:\n%s", msg)
	}
}

// TestConsistencyCheckColumns: with the appliance stopped, an encryption certificate's mailbox is
// moved to another owner in both tables, and a signature certificate's template is changed to
// the archiving one. `keyarc check` and `keyarc audit verify` name both; the start-up check logs
// and counts them; and a recovery for the new mailbox is refused as an integrity fault before
// anything is made.
func TestConsistencyCheckColumns(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "ex@example.org", filepath.Join(dir, "ex"))
	exSerial := certSerial(t, dir, filepath.Join(dir, "ex", "cert.pem"))
	const signer = "sig@example.org"
	code := newCode(t, state, signer, "smime-signature")
	got, body := curlEST(t, a, dir, "/.well-known/est/smime-signature/simpleenroll", signer+":"+code, estCSR(t, dir, "sig", "/CN="+signer))
	if got != "200" {
		t.Fatalf("simpleenroll: HTTP %s: %s", got, body)
	}
	sigSerial := opensslSerial(t, dir, pkcs7ToPEM(t, dir, "sig-cert", body))
	a.stop(t)

	db := openDB(t, state)
	for _, q := range []string{
		`UPDATE certificates SET email = 'mallory@example.org' WHERE email = 'ex@example.org'`,
		`UPDATE records SET email = 'mallory@example.org' WHERE email = 'ex@example.org'`,
		`UPDATE certificates SET template = 'smime-encryption' WHERE serial = '` + sigSerial + `'`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	msg := keyarcFails(t, "check", "--state", state)
	for _, want := range []string{exSerial, "mailbox", sigSerial, "template"} {
		if !strings.Contains(msg, want) {
			t.Errorf("keyarc check does not name %q:\n%s", want, msg)
		}
	}
	if msg := keyarcFails(t, "audit", "verify", "--state", state); !strings.Contains(msg, exSerial) || !strings.Contains(msg, sigSerial) {
		t.Errorf("audit verify does not report the inconsistent certificates:\n%s", msg)
	}

	a = serve(t, state)
	if logs := a.logs.String(); !strings.Contains(logs, exSerial) || !strings.Contains(logs, sigSerial) {
		t.Errorf("the start-up check does not name %s and %s:\n%s", exSerial, sigSerial, logs)
	}
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if m := regexp.MustCompile(`(?m)^keyarc_consistency_failures (\S+)$`).FindSubmatch(metrics); m == nil || string(m[1]) != "2" {
		t.Errorf("keyarc_consistency_failures: %q, want 2", m)
	}

	S := []string{"--state", state, "--server", a.url, "--as", "officer"}
	for _, args := range [][]string{{"--email", "mallory@example.org"}, {"--serial", exSerial}} {
		msg := keyarcFails(t, append(append([]string{"recovery", "request", "--reason", "tamper test"}, args...), S...)...)
		if !strings.Contains(msg, "consistency check") {
			t.Errorf("recovery request %v: %s", args, msg)
		}
	}
	if n := countRows(t, state, `SELECT count(*) FROM recoveries`); n != 0 {
		t.Errorf("%d refused request(s) stored, want 0", n)
	}

	// The signature certificate whose row now claims smime-encryption is no credential for
	// an archived encryption key: the row is checked before it is trusted, and the refusal is
	// the appliance's integrity fault, not the client's.
	before := countRows(t, state, `SELECT count(*) FROM certificates WHERE email = ?`, signer)
	out := filepath.Join(dir, "keygen.out")
	code2 := run(t, dir, "curl", "-sS", "--cacert", filepath.Join(state, "ca.pem"),
		"--cert", filepath.Join(dir, "sig-cert.pem"), "--key", filepath.Join(dir, "sig.key.pem"),
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+estCSR(t, dir, "sig2", "/CN="+signer),
		"-o", out, "-w", "%{http_code}", a.url+"/.well-known/est/smime-encryption/serverkeygen")
	body2, _ := os.ReadFile(out)
	if strings.TrimSpace(code2) != "500" || !strings.Contains(string(body2), "consistency check") {
		t.Errorf("serverkeygen with a certificate whose row was relabelled: HTTP %s: %s", code2, body2)
	}
	if n := countRows(t, state, `SELECT count(*) FROM certificates WHERE email = ?`, signer); n != before {
		t.Errorf("%d certificate(s) for %s after the refusal, want %d", n, signer, before)
	}
}
