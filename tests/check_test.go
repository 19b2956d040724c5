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
	for _, u := range []string{"flip", "repoint"} {
		id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serials[u], "--reason", "tamper test")...))
		keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
		keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
		p12 := filepath.Join(dir, u+".p12")
		msg := keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", filepath.Join(dir, u+".pw"))...)
		if !strings.Contains(msg, "consistency check") {
			t.Errorf("recovery of the %s certificate: %s", u, msg)
		}
		if _, err := os.Stat(p12); err == nil {
			t.Errorf("a PKCS#12 was written for the %s certificate", u)
		}
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
