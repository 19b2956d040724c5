package tests

import (
	"database/sql"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	_ "modernc.org/sqlite"
)

// certStatus reads a certificate's state and CRLReason from the appliance's database, read
// only, as an independent witness of what the CLI reports.
func certStatus(t *testing.T, state, serial string) (string, int) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var st string
	var reason int
	if err := db.QueryRow("SELECT state, revocation_reason FROM certificates WHERE serial = ?", serial).Scan(&st, &reason); err != nil {
		t.Fatalf("certificate %s: %v", serial, err)
	}
	return st, reason
}

// auditCount counts the audit entries of kind.
func auditCount(t *testing.T, state, kind string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "keyarc.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM audit WHERE kind = ?", kind).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRevoke drives `keyarc revoke` and POST /api/v1/revocations against the real binary: by
// serial, twice (409 with the first revocation), the move to keyCompromise, an unknown serial
// (404), a reason outside the BR set (400, from curl: the CLI refuses it itself), a subscriber
// revoking someone else's certificate (403) and their own, by mailbox, by key, and a revoked
// operator credential no longer getting in. Each change is an audit entry.
func TestRevoke(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	user := func(name, mailbox string) (string, string) {
		out := filepath.Join(dir, name)
		enrollUser(t, a, mailbox, out)
		return out, certSerial(t, dir, filepath.Join(out, "cert.pem"))
	}
	alice, aliceSerial := user("alice", "alice@example.org")
	_, bobSerial := user("bob", "bob@example.org")
	_, carol1 := user("carol1", "carol@example.org")
	_, carol2 := user("carol2", "carol@example.org")
	_, daveSerial := user("dave", "dave@example.org")

	// By serial, then twice: the second is refused with the first revocation, which stays.
	out := keyarc(t, as("officer", "revoke", "--serial", bobSerial, "--reason", "superseded")...)
	if !strings.Contains(out, bobSerial) || !strings.Contains(out, "superseded") {
		t.Errorf("revoke printed:\n%s", out)
	}
	if st, r := certStatus(t, state, bobSerial); st != "revoked" || r != 4 {
		t.Fatalf("bob's certificate: %s reason %d, want revoked superseded (4)", st, r)
	}
	msg := keyarcFails(t, as("admin", "revoke", "--serial", bobSerial, "--reason", "cessationOfOperation")...)
	for _, want := range []string{"HTTP 409", "already revoked", "superseded"} {
		if !strings.Contains(msg, want) {
			t.Errorf("second revocation: %q lacks %q", msg, want)
		}
	}
	if _, r := certStatus(t, state, bobSerial); r != 4 {
		t.Fatalf("a refused revocation changed the reason to %d", r)
	}
	// The one change allowed: to keyCompromise, once.
	if out := keyarc(t, as("officer", "revoke", "--serial", bobSerial, "--reason", "keyCompromise")...); !strings.Contains(out, "moved to keyCompromise") {
		t.Errorf("move to keyCompromise printed:\n%s", out)
	}
	if _, r := certStatus(t, state, bobSerial); r != 1 {
		t.Fatalf("bob's reason is %d after the move, want keyCompromise (1)", r)
	}
	if msg := keyarcFails(t, as("officer", "revoke", "--serial", bobSerial, "--reason", "keyCompromise")...); !strings.Contains(msg, "HTTP 409") {
		t.Errorf("keyCompromise twice: %s", msg)
	}

	// The appliance's own certificates are not revoked: it goes on using their keys.
	tlsSerial := certSerial(t, dir, filepath.Join(state, "tls.pem"))
	if msg := keyarcFails(t, as("admin", "revoke", "--serial", tlsSerial, "--reason", "keyCompromise")...); !strings.Contains(msg, "HTTP 409") ||
		!strings.Contains(msg, "appliance's own tls certificate") {
		t.Errorf("revoking the appliance's TLS certificate: %s", msg)
	}
	if st, _ := certStatus(t, state, tlsSerial); st != "issued" {
		t.Fatalf("the appliance's TLS certificate is %s after a refused revocation", st)
	}

	// Unknown serial: 404. A reason outside the BR set: the CLI refuses it, and so does the API.
	if msg := keyarcFails(t, as("officer", "revoke", "--serial", "7e57ab1e", "--reason", "unspecified")...); !strings.Contains(msg, "HTTP 404") {
		t.Errorf("unknown serial: %s", msg)
	}
	if msg := keyarcFails(t, as("officer", "revoke", "--serial", daveSerial, "--reason", "certificateHold")...); !strings.Contains(msg, "keyCompromise") {
		t.Errorf("CLI with certificateHold: %s", msg)
	}
	creds := filepath.Join(state, "credentials")
	curlRevoke := func(cert, key, body string) (string, string) {
		t.Helper()
		out, err := runResult(dir, nil, "curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert", filepath.Join(state, "ca.pem"),
			"--cert", cert, "--key", key, "-H", "Content-Type: application/json", "-d", body, a.url+"/api/v1/revocations")
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		i := strings.LastIndexByte(out, '\n')
		return out[i+1:], out[:i]
	}
	officerCert, officerKey := filepath.Join(creds, "officer.pem"), filepath.Join(creds, "officer-key.pem")
	code, body := curlRevoke(officerCert, officerKey, `{"serial":"`+daveSerial+`","reason":"certificateHold"}`)
	if code != "400" || !strings.Contains(body, "privilegeWithdrawn") || !strings.Contains(body, "certificateHold") {
		t.Errorf("API with certificateHold: %s %s", code, body)
	}
	if code, body := curlRevoke(officerCert, officerKey, `{"serial":"`+daveSerial+`","email":"dave@example.org","reason":"unspecified"}`); code != "400" {
		t.Errorf("API with two selectors: %s %s", code, body)
	}
	if st, _ := certStatus(t, state, daveSerial); st != "issued" {
		t.Fatalf("dave's certificate is %s after refused revocations", st)
	}

	// A subscriber, with their own certificate as TLS client certificate: not someone else's
	// (403, nothing changes), their own yes.
	sub := []string{"--cert", filepath.Join(alice, "cert.pem"), "--key", filepath.Join(alice, "key.pem")}
	msg = keyarcFails(t, append([]string{"revoke", "--serial", daveSerial, "--reason", "keyCompromise", "--state", state, "--server", a.url}, sub...)...)
	if !strings.Contains(msg, "HTTP 403") || !strings.Contains(msg, "own mailbox") {
		t.Errorf("subscriber revoking someone else's certificate: %s", msg)
	}
	if st, _ := certStatus(t, state, daveSerial); st != "issued" {
		t.Fatalf("a subscriber revoked someone else's certificate: %s", st)
	}
	keyarc(t, append([]string{"revoke", "--serial", aliceSerial, "--reason", "keyCompromise", "--state", state, "--server", a.url}, sub...)...)
	if st, r := certStatus(t, state, aliceSerial); st != "revoked" || r != 1 {
		t.Fatalf("alice's own revocation: %s reason %d", st, r)
	}
	// Her key is compromised: no mailbox gets it certified again (S/MIME BR 6.1.1.3), over
	// EST, and the refusal leaves the enrollee's code usable.
	waltCode := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", "walt@example.org", "--template", "smime-signature"))
	der := filepath.Join(dir, "walt-alice-key.der")
	run(t, dir, "openssl", "req", "-new", "-key", filepath.Join(alice, "key.pem"), "-subj", "/CN=walt@example.org", "-outform", "DER", "-out", der)
	raw, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	b64 := filepath.Join(dir, "walt-alice-key.b64")
	writeFile(t, b64, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"))
	waltEnroll := "/.well-known/est/smime-signature/simpleenroll"
	if code, body := curlEST(t, a, dir, waltEnroll, "walt@example.org:"+waltCode, b64); code != "400" ||
		!strings.Contains(body, "keyCompromise") || !strings.Contains(body, aliceSerial) {
		t.Errorf("EST with alice's compromised key: %s %q, want 400 naming keyCompromise and %s", code, body, aliceSerial)
	}
	if code, body := curlEST(t, a, dir, waltEnroll, "walt@example.org:"+waltCode, estCSR(t, dir, "walt", "/CN=walt@example.org")); code != "200" {
		t.Errorf("EST with a new key and the same code after the refusal: %s %q", code, body)
	}

	// Her certificate is revoked: it no longer authenticates anything.
	msg = keyarcFails(t, append([]string{"revoke", "--email", "alice@example.org", "--reason", "unspecified", "--state", state, "--server", a.url}, sub...)...)
	if !strings.Contains(msg, "HTTP 401") {
		t.Errorf("a revoked subscriber certificate authenticating: %s", msg)
	}

	// By mailbox: both of carol's, nobody else's.
	out = keyarc(t, as("officer", "revoke", "--email", "carol@example.org", "--reason", "affiliationChanged")...)
	for _, s := range []string{carol1, carol2} {
		if !strings.Contains(out, s) {
			t.Errorf("revoke --email did not report %s:\n%s", s, out)
		}
		if st, r := certStatus(t, state, s); st != "revoked" || r != 3 {
			t.Errorf("carol's %s: %s reason %d", s, st, r)
		}
	}
	// By key: every certificate of dave's key.
	out = keyarc(t, as("admin", "revoke", "--key-of", daveSerial, "--reason", "keyCompromise", "--json")...)
	if !strings.Contains(out, `"serial": "`+daveSerial+`"`) {
		t.Errorf("revoke --key-of --json:\n%s", out)
	}
	if st, r := certStatus(t, state, daveSerial); st != "revoked" || r != 1 {
		t.Errorf("dave's certificate after --key-of: %s reason %d", st, r)
	}

	// An operator credential, revoked, no longer gets in.
	oscar := filepath.Join(dir, "oscar")
	keyarc(t, "admin", "credential", "issue", "--state", state, "--role", "officer", "--name", "oscar", "--out", oscar)
	oscarCert, oscarKey := filepath.Join(oscar, "oscar.pem"), filepath.Join(oscar, "oscar-key.pem")
	whoami := func() string {
		out, err := runResult(dir, nil, "curl", "-sS", "-o", os.DevNull, "-w", "%{http_code}", "--cacert", filepath.Join(state, "ca.pem"),
			"--cert", oscarCert, "--key", oscarKey, a.url+"/api/v1/whoami")
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		return out
	}
	if code := whoami(); code != "200" {
		t.Fatalf("oscar's fresh credential: HTTP %s", code)
	}
	keyarc(t, as("admin", "revoke", "--serial", certSerial(t, dir, oscarCert), "--reason", "privilegeWithdrawn")...)
	if code := whoami(); code != "401" {
		t.Errorf("oscar's revoked credential: HTTP %s, want 401", code)
	}
	if code, body := curlRevoke(oscarCert, oscarKey, `{"email":"bob@example.org","reason":"keyCompromise"}`); code != "401" {
		t.Errorf("revoking with a revoked credential: %s %s", code, body)
	}

	// Every change is one audit entry; the refusals none. Revocations so far: bob, bob's move,
	// alice, carol (one request), dave, oscar.
	if n := auditCount(t, state, "revoke"); n != 6 {
		t.Errorf("%d revoke audit entries, want 6", n)
	}
	keyarc(t, "audit", "verify", "--state", state)

	// And a count by reason per certificate (the move to keyCompromise counts as one), with no
	// mailbox or serial in the metrics.
	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	for reason, n := range map[string]int{"superseded": 1, "keyCompromise": 3, "affiliationChanged": 2, "privilegeWithdrawn": 1, "unspecified": 0} {
		if want := `keyarc_revocations_total{reason="` + reason + `"} ` + strconv.Itoa(n); !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, secret := range []string{"alice@example.org", bobSerial} {
		if strings.Contains(metrics, secret) {
			t.Errorf("the metrics name %s", secret)
		}
	}
}

// TestRevokeAtRecovery: the lost-laptop story. The officer's request says --revoke
// keyCompromise; the certificate stays valid while the KRAs approve, and is revoked by the
// fetch that delivers the key. A certificate revoked before still has its key recovered, to
// the archived bytes, and --keep leaves a certificate as it is.
func TestRevokeAtRecovery(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	erin := filepath.Join(dir, "erin")
	enrollUser(t, a, "erin@example.org", erin)
	serial := certSerial(t, dir, filepath.Join(erin, "cert.pem"))

	if msg := keyarcFails(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "x", "--revoke", "cessationOfOperation")...); !strings.Contains(msg, "keyCompromise") {
		t.Errorf("--revoke cessationOfOperation: %s", msg)
	}
	if msg := keyarcFails(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "x", "--revoke", "superseded", "--keep")...); !strings.Contains(msg, "not both") {
		t.Errorf("--revoke and --keep: %s", msg)
	}
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "laptop stolen", "--revoke", "keyCompromise")...))
	if show := keyarc(t, as("kra1", "recovery", "show", id)...); !strings.Contains(show, "revoked (keyCompromise) when the key is fetched") {
		t.Errorf("recovery show does not tell the KRAs what the fetch revokes:\n%s", show)
	}
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	if st, _ := certStatus(t, state, serial); st != "issued" {
		t.Fatalf("certificate %s before the fetch", st)
	}
	p12, pw := filepath.Join(dir, "erin.p12"), filepath.Join(dir, "erin.pw")
	_, errOut, err := keyarcResult(as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
	if err != nil {
		t.Fatalf("fetch: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "revoked as the request said") || !strings.Contains(errOut, serial) {
		t.Errorf("fetch did not report the revocation:\n%s", errOut)
	}
	if st, r := certStatus(t, state, serial); st != "revoked" || r != 1 {
		t.Fatalf("after the fetch: %s reason %d, want revoked keyCompromise", st, r)
	}
	recoveredMatches(t, dir, p12, pw, filepath.Join(erin, "key.pem"))

	// The revoked certificate's key is recovered again (old mail must still decrypt); --keep
	// changes nothing.
	id = strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "old mail", "--keep")...))
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra3", "recovery", "approve", id, "--yes")...)
	p12b, pwb := filepath.Join(dir, "erin2.p12"), filepath.Join(dir, "erin2.pw")
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", p12b, "--password-file", pwb)...)
	recoveredMatches(t, dir, p12b, pwb, filepath.Join(erin, "key.pem"))
	if st, r := certStatus(t, state, serial); st != "revoked" || r != 1 {
		t.Fatalf("after a --keep fetch: %s reason %d", st, r)
	}
	if n := auditCount(t, state, "revoke"); n != 1 {
		t.Errorf("%d revoke audit entries, want 1 (the first fetch's)", n)
	}

	// A KRA whose auth credential is revoked approves nothing any more.
	kra1 := certSerial(t, dir, filepath.Join(state, "credentials", "kra1-auth.pem"))
	keyarc(t, as("admin", "revoke", "--serial", kra1, "--reason", "keyCompromise")...)
	id = strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "again", "--keep")...))
	if msg := keyarcFails(t, as("kra1", "recovery", "approve", id, "--yes")...); !strings.Contains(msg, "HTTP 401") {
		t.Errorf("approval with a revoked KRA credential: %s", msg)
	}
}

// recoveredMatches checks that the PKCS#12 holds the private key of keyPEM (its public half).
func recoveredMatches(t *testing.T, dir, p12, pw, keyPEM string) {
	t.Helper()
	got := run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes")
	gotKey := filepath.Join(dir, filepath.Base(p12)+".key")
	writeFile(t, gotKey, []byte(got))
	want := run(t, dir, "openssl", "pkey", "-in", keyPEM, "-pubout")
	if have := run(t, dir, "openssl", "pkey", "-in", gotKey, "-pubout"); have != want {
		t.Fatalf("the recovered key is not the enrolled one")
	}
}

// TestRevokeRefusesExtraArguments: `keyarc revoke` names its certificates with one flag; a
// second serial given as an argument (a pasted list) is refused with a usage error before
// anything is revoked, rather than revoking the first and ignoring the rest.
func TestRevokeRefusesExtraArguments(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "olga@example.org", filepath.Join(dir, "olga"))
	enrollUser(t, a, "pete@example.org", filepath.Join(dir, "pete"))
	olga := certSerial(t, dir, filepath.Join(dir, "olga", "cert.pem"))
	pete := certSerial(t, dir, filepath.Join(dir, "pete", "cert.pem"))
	msg := keyarcFails(t, "revoke", "--state", state, "--server", a.url, "--as", "officer", "--serial", olga, pete, "--reason", "keyCompromise")
	if !strings.Contains(msg, pete) {
		t.Errorf("the refusal does not name the extra argument %s:\n%s", pete, msg)
	}
	for _, s := range []string{olga, pete} {
		if st, _ := certStatus(t, state, s); st != "issued" {
			t.Errorf("certificate %s is %s after a refused command", s, st)
		}
	}
}
