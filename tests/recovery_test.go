package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// certSerial returns a certificate's serial as keyarc writes it: lower-case hex, no leading zeros.
func certSerial(t *testing.T, dir, certPath string) string {
	t.Helper()
	out := run(t, dir, "openssl", "x509", "-in", certPath, "-noout", "-serial")
	s := strings.ToLower(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "serial=")))
	return strings.TrimLeft(s, "0")
}

// enrollUser enrolls mailbox for an archived encryption certificate with `keyarc enroll`.
func enrollUser(t *testing.T, a *appliance, mailbox, out string) string {
	t.Helper()
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", a.state, "--email", mailbox, "--template", "smime-encryption"))
	keyarc(t, "enroll", "--state", a.state, "--server", a.url, "--template", "smime-encryption", "--email", mailbox, "--code", code, "--out", out)
	return code
}

// keyarcFails runs the binary expecting failure, and returns its stderr.
func keyarcFails(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := keyarcResult(args...)
	if err == nil {
		t.Fatalf("keyarc %s succeeded, want a refusal\n%s", strings.Join(args, " "), out)
	}
	return errOut
}

// TestRecoveryEndToEnd is the seed workflow: a user's encryption key is archived at enrollment,
// mail is encrypted to the user, the user loses the key; an officer asks, two of the three KRAs
// approve with their own tokens, the officer fetches a PKCS#12 that OpenSSL and NSS open, and
// the old mail decrypts with the recovered key.
func TestRecoveryEndToEnd(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "pk12util", "certutil")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	user := filepath.Join(dir, "alice")
	const mailbox = "alice@example.org"
	code := enrollUser(t, a, mailbox, user)
	cert := filepath.Join(user, "cert.pem")
	serial := certSerial(t, dir, cert)

	// Mail encrypted to Alice, then her key is lost.
	message := []byte("the quarterly figures, for Alice's eyes only\n")
	writeFile(t, filepath.Join(dir, "msg.txt"), message)
	run(t, dir, "openssl", "cms", "-encrypt", "-binary", "-in", "msg.txt", "-outform", "DER", "-out", "msg.p7m", "-aes-256-cbc", cert)
	if err := os.Remove(filepath.Join(user, "key.pem")); err != nil {
		t.Fatal(err)
	}

	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "laptop stolen")...))
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("recovery request printed %q, want the ID alone", id)
	}
	show := keyarc(t, as("officer", "recovery", "show", id)...)
	for _, want := range []string{"approvals: 0 of 2", serial, mailbox, "laptop stolen"} {
		if !strings.Contains(show, want) {
			t.Errorf("recovery show lacks %q:\n%s", want, show)
		}
	}
	if list := keyarc(t, as("officer", "recovery", "list")...); !strings.Contains(list, id) {
		t.Errorf("recovery list lacks %s:\n%s", id, list)
	}

	// Refusals before the quorum: nobody but a KRA approves; one KRA alone opens nothing.
	if msg := keyarcFails(t, as("officer", "recovery", "approve", id, "--yes")...); !strings.Contains(msg, "KRA") {
		t.Errorf("officer approving: %s", msg)
	}
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	if msg := keyarcFails(t, as("kra1", "recovery", "approve", id, "--yes")...); !strings.Contains(msg, "already approved") {
		t.Errorf("second approval by kra1: %s", msg)
	}
	p12, pw := filepath.Join(dir, "alice.p12"), filepath.Join(dir, "alice.pw")
	if msg := keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...); !strings.Contains(msg, "1 of the 2") {
		t.Errorf("fetch with one approval: %s", msg)
	}
	if _, err := os.Stat(pw); err == nil {
		t.Fatal("a refused fetch wrote a password file")
	}
	if out, _, err := keyarcResult(as("kra1", "recovery", "approve", id)...); err == nil {
		t.Fatalf("approve without a terminal and without --yes succeeded: %s", out)
	}

	keyarc(t, as("kra3", "recovery", "approve", id, "--yes")...)
	if msg := keyarcFails(t, as("kra2", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...); !strings.Contains(msg, "officer") {
		t.Errorf("fetch by a KRA: %s", msg)
	}
	start := time.Now()
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
	t.Logf("recovery fetch after the 2nd approval took %s (PKCS#12 at 600,000 PBKDF2 iterations included)", time.Since(start))
	for _, f := range []string{p12, pw} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, err %v; want 0600", f, st.Mode().Perm(), err)
		}
	}
	password, _ := os.ReadFile(pw)
	if n := len(strings.ReplaceAll(strings.TrimSpace(string(password)), "-", "")); n < 23 {
		t.Errorf("password has %d characters of a 32-symbol alphabet, want >= 23 (112 bits)", n)
	}

	// OpenSSL 3 opens it without -legacy and reports the modern profile.
	info := run(t, dir, "openssl", "pkcs12", "-info", "-noout", "-in", p12, "-passin", "file:"+pw)
	for _, want := range []string{"MAC: sha256, Iteration 600000", "PBES2, PBKDF2, AES-256-CBC, Iteration 600000, PRF hmacWithSHA256"} {
		if !strings.Contains(info, want) {
			t.Errorf("openssl pkcs12 -info lacks %q:\n%s", want, info)
		}
	}
	run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "recovered.key")
	got := run(t, dir, "openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", "msg.p7m", "-recip", cert, "-inkey", "recovered.key")
	if !bytes.Equal([]byte(got), message) {
		t.Fatalf("decrypted with the recovered key: %q, want %q", got, message)
	}

	// NSS imports it.
	nss := filepath.Join(dir, "nssdb")
	os.Mkdir(nss, 0o700)
	run(t, dir, "certutil", "-N", "-d", "sql:"+nss, "--empty-password")
	run(t, dir, "pk12util", "-i", p12, "-d", "sql:"+nss, "-w", pw)
	if keys := run(t, dir, "certutil", "-K", "-d", "sql:"+nss); !strings.Contains(keys, "rsa") {
		t.Errorf("NSS holds no RSA key after the import:\n%s", keys)
	}

	// Consumed: never again.
	if msg := keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "again.p12"), "--password-file", filepath.Join(dir, "again.pw"))...); !strings.Contains(msg, "consumed") {
		t.Errorf("second fetch: %s", msg)
	}
	if show := keyarc(t, as("officer", "recovery", "show", id)...); !strings.Contains(show, "consumed") {
		t.Errorf("request not shown consumed:\n%s", show)
	}

	// No secret of the scenario reached the appliance's log or its metrics.
	secrets := map[string]string{"PKCS#12 password": strings.TrimSpace(string(password)), "enrollment code": code}
	for _, tok := range []string{"keyarc", "kra1", "kra2", "kra3"} {
		pin, _ := os.ReadFile(filepath.Join(state, "softhsm", "pins", tok+".pin"))
		secrets["PIN of "+tok] = strings.TrimSpace(string(pin))
	}
	metrics := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	for what, secret := range secrets {
		if secret == "" {
			t.Fatalf("%s is empty", what)
		}
		if strings.Contains(a.logs.String(), secret) {
			t.Errorf("the %s appears in the appliance log", what)
		}
		if strings.Contains(metrics, secret) {
			t.Errorf("the %s appears in the metrics", what)
		}
	}
	if strings.Contains(metrics, mailbox) {
		t.Error("a mailbox appears in the metrics")
	}
}

// TestRecoveryByMailbox recovers every archived key of a mailbox in one request, and checks
// that an officer cannot recover their own key.
func TestRecoveryByMailbox(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "bob@example.org"
	enrollUser(t, a, mailbox, filepath.Join(dir, "one"))
	enrollUser(t, a, mailbox, filepath.Join(dir, "two"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--email", mailbox, "--reason", "left the company")...))
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra3", "recovery", "approve", id, "--yes")...)
	out := keyarc(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "bob.p12"), "--password-file", filepath.Join(dir, "bob.pw"))...)
	files := strings.Fields(out)
	if len(files) != 2 {
		t.Fatalf("fetch wrote %v, want two PKCS#12 files", files)
	}
	for i, f := range files {
		run(t, dir, "openssl", "pkcs12", "-in", f, "-passin", "file:"+filepath.Join(dir, "bob.pw"), "-nocerts", "-nodes", "-out", "k.pem")
		keyPub := run(t, dir, "openssl", "pkey", "-in", "k.pem", "-pubout")
		want := map[bool]string{true: "one", false: "two"}
		found := false
		for _, sub := range want {
			orig := run(t, dir, "openssl", "pkey", "-in", filepath.Join(dir, sub, "key.pem"), "-pubout")
			found = found || orig == keyPub
		}
		if !found {
			t.Errorf("file %d holds a key that is neither of Bob's", i)
		}
	}

	// An officer who owns the key cannot ask for it.
	creds := filepath.Join(dir, "creds")
	keyarc(t, "admin", "credential", "issue", "--state", state, "--role", "officer", "--name", "bob", "--email", mailbox, "--out", creds)
	msg := keyarcFails(t, "recovery", "request", "--email", mailbox, "--reason", "mine", "--state", state, "--server", a.url,
		"--cert", filepath.Join(creds, "bob.pem"), "--key", filepath.Join(creds, "bob-key.pem"))
	if !strings.Contains(msg, "own") {
		t.Errorf("owner asking for their own key: %s", msg)
	}
}

// TestRecoveryLegacyPKCS12: `recovery fetch --legacy` writes a PKCS#12 for old clients (3DES,
// SHA-1 MAC) whose MAC and encryption keys are derived with at least 2,048 iterations, as
// OpenSSL's own legacy output is, and which OpenSSL opens with the password written.
func TestRecoveryLegacyPKCS12(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "lena@example.org"
	enrollUser(t, a, mailbox, filepath.Join(dir, "lena"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--email", mailbox, "--reason", "an old mail client")...))
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra3", "recovery", "approve", id, "--yes")...)
	pw := filepath.Join(dir, "lena.pw")
	files := strings.Fields(keyarc(t, as("officer", "recovery", "fetch", id, "--legacy", "--out", filepath.Join(dir, "lena.p12"), "--password-file", pw)...))
	if len(files) != 1 {
		t.Fatalf("fetch wrote %v, want one PKCS#12 file", files)
	}
	info := run(t, dir, "openssl", "pkcs12", "-info", "-legacy", "-noout", "-in", files[0], "-passin", "file:"+pw)
	if !regexp.MustCompile(`MAC: sha1, Iteration \d+`).MatchString(info) || !strings.Contains(info, "TripleDES") {
		t.Fatalf("not a legacy PKCS#12 (SHA-1 MAC, 3DES):\n%s", info)
	}
	counts := regexp.MustCompile(`Iteration (\d+)`).FindAllStringSubmatch(info, -1)
	if len(counts) < 3 {
		t.Fatalf("openssl shows %d iteration counts, want the MAC's and both bags':\n%s", len(counts), info)
	}
	for _, c := range counts {
		if n, _ := strconv.Atoi(c[1]); n < 2048 {
			t.Errorf("iteration count %d in the legacy PKCS#12, want at least 2048:\n%s", n, info)
		}
	}
	orig := run(t, dir, "openssl", "pkey", "-in", filepath.Join(dir, "lena", "key.pem"), "-pubout")
	run(t, dir, "openssl", "pkcs12", "-legacy", "-in", files[0], "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "k.pem")
	if got := run(t, dir, "openssl", "pkey", "-in", "k.pem", "-pubout"); got != orig {
		t.Error("the legacy PKCS#12 holds another key than the one archived")
	}
}

// TestRecoveryFetchWritesFirst: a fetch consumes the request and revokes its certificates as
// the request says, so `recovery fetch` makes every file it will write before it asks: a
// folder that does not exist, or a per-serial PKCS#12 name that is taken, refuses the fetch
// with nothing written, the request still open and the certificates still valid; once the
// name is free the same fetch writes everything.
func TestRecoveryFetchWritesFirst(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "carl@example.org"
	enrollUser(t, a, mailbox, filepath.Join(dir, "one"))
	enrollUser(t, a, mailbox, filepath.Join(dir, "two"))
	serials := []string{certSerial(t, dir, filepath.Join(dir, "one", "cert.pem")), certSerial(t, dir, filepath.Join(dir, "two", "cert.pem"))}
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--email", mailbox, "--reason", "stolen laptop", "--revoke", "keyCompromise")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	pw := filepath.Join(dir, "carl.pw")
	stillOpen := func(what string) {
		t.Helper()
		if _, err := os.Stat(pw); err == nil {
			t.Errorf("%s: the password file was written", what)
		}
		if show := keyarc(t, as("officer", "recovery", "show", id)...); strings.Contains(show, "consumed") {
			t.Fatalf("%s: the request was consumed:\n%s", what, show)
		}
		for _, s := range serials {
			if st, _ := certStatus(t, state, s); st != "issued" {
				t.Errorf("%s: certificate %s is %s, want issued", what, s, st)
			}
		}
	}

	msg := keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "nodir", "carl.p12"), "--password-file", pw)...)
	if !strings.Contains(msg, "nodir") || !strings.Contains(msg, "nothing was fetched") {
		t.Errorf("fetch into a missing folder: %q, want the file named and nothing fetched", msg)
	}
	stillOpen("fetch into a missing folder")

	taken := filepath.Join(dir, "carl-"+serials[1]+".p12")
	writeFile(t, taken, []byte("someone else's file\n"))
	msg = keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "carl.p12"), "--password-file", pw)...)
	if !strings.Contains(msg, taken) || !strings.Contains(msg, "exists") {
		t.Errorf("fetch onto a taken per-serial name: %q, want %s named as existing", msg, taken)
	}
	stillOpen("fetch onto a taken per-serial name")
	if b, _ := os.ReadFile(taken); string(b) != "someone else's file\n" {
		t.Errorf("the existing %s was changed: %q", taken, b)
	}
	if _, err := os.Stat(filepath.Join(dir, "carl-"+serials[0]+".p12")); err == nil {
		t.Error("a refused fetch left a PKCS#12 file behind")
	}

	os.Remove(taken)
	files := strings.Fields(keyarc(t, as("officer", "recovery", "fetch", id, "--out", filepath.Join(dir, "carl.p12"), "--password-file", pw)...))
	if len(files) != 2 {
		t.Fatalf("fetch wrote %v, want two PKCS#12 files", files)
	}
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 || st.Size() == 0 {
			t.Fatalf("%s: %v, err %v; want a non-empty file of mode 0600", f, st, err)
		}
		run(t, dir, "openssl", "pkcs12", "-in", f, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "k.pem")
	}
	for _, s := range serials {
		if st, _ := certStatus(t, state, s); st != "revoked" {
			t.Errorf("after the fetch, certificate %s is %s, want revoked", s, st)
		}
	}
}

// TestResealCancelsOpenRecovery: a recovery approved by kra1 and kra2 under a 2-of-3 set,
// then a reseal of its record to a 3-of-3 set of the same KRAs. The approvals hold shares of
// the record as it was sealed before; counted with kra3's share of the new seal they opened
// nothing, and the fetch failed with a 500. The reseal now cancels the recovery: show says so,
// neither an approval nor the fetch is taken, and a new request recovers the key.
func TestResealCancelsOpenRecovery(t *testing.T) {
	t.Parallel()
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	user := filepath.Join(dir, "carol")
	enrollUser(t, a, "carol@example.org", user)
	serial := certSerial(t, dir, filepath.Join(user, "cert.pem"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "laptop stolen")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)

	var shown recoverySetShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "recovery-set", "show", "--json")...)), &shown); err != nil {
		t.Fatal(err)
	}
	set := []string{"admin", "recovery-set", "set", "--quorum", "3"}
	for _, k := range shown.KRAs {
		set = append(set, "--kra", k.Serial)
	}
	keyarc(t, as("admin", set...)...)
	if msg := keyarcFails(t, as("admin", "admin", "recovery-set", "reseal", "--epoch", "2")...); !strings.Contains(msg, "not older than the current recovery set's (epoch 2)") {
		t.Errorf("a reseal of the current epoch: %s", msg)
	}
	reseal := strings.TrimSpace(keyarc(t, as("admin", "admin", "recovery-set", "reseal", "--reason", "three of three", "--epoch", "1")...))
	keyarc(t, as("kra1", "recovery", "approve", reseal, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", reseal, "--yes")...)
	if out := keyarc(t, as("admin", "admin", "recovery-set", "reseal", "--complete", reseal)...); !strings.Contains(out, "1 record(s) resealed to the current recovery set (epoch 2)") {
		t.Errorf("reseal --complete says:\n%s", out)
	}

	if show := keyarc(t, as("officer", "recovery", "show", id)...); !strings.Contains(show, "cancelled") {
		t.Errorf("recovery show after the reseal of its record:\n%s", show)
	}
	if msg := keyarcFails(t, as("kra3", "recovery", "approve", id, "--yes")...); !strings.Contains(msg, "cancelled") {
		t.Errorf("kra3 approving after the reseal: %s", msg)
	}
	p12, pw := filepath.Join(dir, "carol.p12"), filepath.Join(dir, "carol.pw")
	msg := keyarcFails(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
	if !strings.Contains(msg, "cancelled") || strings.Contains(msg, "500") {
		t.Errorf("fetch after the reseal: %s", msg)
	}

	id = strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "laptop stolen, again")...))
	for _, kra := range []string{"kra1", "kra2", "kra3"} {
		keyarc(t, as(kra, "recovery", "approve", id, "--yes")...)
	}
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
}

// TestCancelResealEndToEnd: `recovery cancel` of a reseal by the admin who requested it (it
// was refused: the route asked for the officer role). An officer cannot cancel it, and a
// cancelled reseal cannot be completed.
func TestCancelResealEndToEnd(t *testing.T) {
	t.Parallel()
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "dan@example.org", filepath.Join(dir, "dan"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }

	var shown recoverySetShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "recovery-set", "show", "--json")...)), &shown); err != nil {
		t.Fatal(err)
	}
	set := []string{"admin", "recovery-set", "set", "--quorum", "3"}
	for _, k := range shown.KRAs {
		set = append(set, "--kra", k.Serial)
	}
	keyarc(t, as("admin", set...)...)
	id := strings.TrimSpace(keyarc(t, as("admin", "admin", "recovery-set", "reseal")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)

	if msg := keyarcFails(t, as("officer", "recovery", "cancel", id)...); !strings.Contains(msg, "403") {
		t.Errorf("an officer cancels the admin's reseal: %s", msg)
	}
	keyarc(t, as("admin", "recovery", "cancel", id)...)
	if show := keyarc(t, as("admin", "recovery", "show", id)...); !strings.Contains(show, "cancelled") {
		t.Errorf("reseal not shown cancelled:\n%s", show)
	}
	if msg := keyarcFails(t, as("admin", "admin", "recovery-set", "reseal", "--complete", id)...); !strings.Contains(msg, "cancelled") {
		t.Errorf("completing a cancelled reseal: %s", msg)
	}
}

// TestRecoveryFetchInterrupted: Ctrl-C during `recovery fetch`. The fetch's answer is the only
// copy of the key and its password, and the request may be consumed as soon as the fetch is
// sent, so after any interruption either the request is still open and no file of the fetch
// is left (the same fetch then works), or it is consumed and every file is written in full.
// Killed by the signal mid-fetch, the command used to leave empty files and, at times, a
// consumed request with no PKCS#12.
func TestRecoveryFetchInterrupted(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	const mailbox = "ida@example.org"
	enrollUser(t, a, mailbox, filepath.Join(dir, "ida"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--email", mailbox, "--reason", "lost laptop")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)

	p12, pw := filepath.Join(dir, "ida.p12"), filepath.Join(dir, "ida.pw")
	underWay := 0
	for after := 20 * time.Millisecond; ; after += 40 * time.Millisecond {
		if after > 10*time.Second {
			t.Fatal("no fetch finished")
		}
		stderr, err := interrupted(t, after, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
		if strings.Contains(stderr, "under way") {
			underWay++
		}
		if show := keyarc(t, as("officer", "recovery", "show", id)...); !strings.Contains(show, "consumed") {
			if m, _ := filepath.Glob(filepath.Join(dir, "ida.p*")); len(m) > 0 {
				t.Fatalf("fetch interrupted after %v (%v: %s) left %v with the request still open", after, err, stderr, m)
			}
			continue
		}
		if err != nil {
			t.Fatalf("fetch interrupted after %v consumed the request and failed: %v\n%s", after, err, stderr)
		}
		for _, f := range []string{p12, pw} {
			if st, err := os.Stat(f); err != nil || st.Size() == 0 {
				t.Fatalf("fetch interrupted after %v consumed the request, but %s is %v (%v)", after, f, st, err)
			}
		}
		run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "k.pem")
		break
	}
	if underWay == 0 {
		t.Fatal("no interruption came while the fetch was under way: the fetch is too fast for this test")
	}
}
