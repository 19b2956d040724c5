package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/tests/internal/bidi"
)

// startFirefox starts headless Firefox (WebDriver BiDi, built in) on a throw-away profile that
// trusts the appliance's CA: the CA certificate is imported into the profile's own NSS database
// (cert9.db, where Firefox keeps its trust settings) as a trust anchor for TLS servers, and the
// session refuses insecure certificates, so the page loads only if Firefox verifies the
// appliance's chain to that CA, as a user's Firefox would after importing it. Downloads are
// saved to dl without a question. A failed test leaves a screenshot behind.
func startFirefox(t *testing.T, a *appliance, dl string) *bidi.Browser {
	t.Helper()
	home := t.TempDir()
	profile := filepath.Join(home, "profile")
	if err := os.MkdirAll(profile, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, home, "certutil", "-N", "-d", "sql:"+profile, "--empty-password")
	run(t, home, "certutil", "-A", "-d", "sql:"+profile, "-n", "keyarc test CA", "-t", "C,,", "-i", filepath.Join(a.state, "ca.pem"))
	prefs := map[string]any{
		"browser.download.folderList":                              2,
		"browser.download.dir":                                     dl,
		"browser.download.useDownloadDir":                          true,
		"browser.download.always_ask_before_handling_new_types":    false,
		"browser.download.start_downloads_in_tmp_dir":              false,
		"browser.helperApps.neverAsk.saveToDisk":                   "application/x-pkcs12,application/pem-certificate-chain,application/pkix-cert",
		"browser.download.alwaysOpenPanel":                         false,
		"browser.shell.checkDefaultBrowser":                        false,
		"datareporting.policy.dataSubmissionEnabled":               false,
		"toolkit.telemetry.reportingpolicy.firstRun":               false,
		"messaging-system.rsexperimentloader.enabled":              false,
		"app.normandy.enabled":                                     false,
		"browser.safebrowsing.downloads.enabled":                   false,
		"browser.safebrowsing.downloads.remote.enabled":            false,
		"security.enterprise_roots.enabled":                        false,
		"browser.newtabpage.activity-stream.feeds.system.topsites": false,
	}
	var userJS strings.Builder
	for k, v := range prefs {
		val := fmt.Sprint(v)
		if s, ok := v.(string); ok {
			val = strconv.Quote(s)
		}
		fmt.Fprintf(&userJS, "user_pref(%q, %s);\n", k, val)
	}
	writeFile(t, filepath.Join(profile, "user.js"), []byte(userJS.String()))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	b, err := bidi.Start(ctx, bidi.Options{Profile: profile, Env: bidi.Env(home), Log: func(s string) {
		// Firefox's own chatter on a machine without a display or network is noise; the
		// page's console and errors are not.
		if strings.HasPrefix(s, "browser ") {
			t.Log(s)
		}
	}})
	if err != nil {
		t.Fatalf("start firefox: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	t.Logf("%s started, with a BiDi session, in %s", b.Version, time.Since(start).Round(time.Millisecond))
	screenshotOnFailure(t, context.Background(), b.Screenshot)
	return b
}

// apiRefusal is the message the API answers a same-origin enrollment with a wrong code, as
// the page's own request would get it (same origin, which the cross-origin guard lets through).
func apiRefusal(t *testing.T, a *appliance, mailbox, code string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", a.url+"/api/v1/enroll", strings.NewReader(`{"template":"smime-encryption","csr":"MA=="}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", a.url)
	req.SetBasicAuth(mailbox, code)
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong code: %s %s, want 401", resp.Status, msg)
	}
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(string(msg)), `{"error":"`), `"}`)
}

// TestFirefoxEnrollment drives the enrollment page in headless Firefox against the real
// appliance: a wrong code shows the API's refusal; the right one makes the key in Firefox
// (Go's WebAssembly in a worker, Firefox's WebCrypto random numbers), enrolls with the key
// escrowed, and saves a PKCS#12 that OpenSSL opens with the chosen password, with the modern
// profile and the key of the certificate. One enrollment: the Chromium test covers the rest
// of the page.
func TestFirefoxEnrollment(t *testing.T) {
	t.Parallel()
	requireTools(t, "firefox", "openssl", "certutil")
	if _, err := os.Stat("../cmd/keyarc/internal/web/static/keyarc.wasm"); err != nil {
		t.Fatal("the enrollment page is not built (cmd/keyarc/internal/web/static/keyarc.wasm): run make wasm, or make test, which does")
	}
	state := devState(t)
	// Two lookups a minute: the lookup check makes two, a third is refused.
	appendFile(t, filepath.Join(state, "keyarc.yaml"), "directory:\n  lookups_per_minute: 2\n")
	a := serve(t, state)
	dir, dl := t.TempDir(), t.TempDir()
	const mailbox = "frank@example.org"
	const password = "correct horse battery staple"
	const wrongCode = "AAAAAAAAAAAAAAAAAAAAAAAA"
	newCode(t, state, mailbox, "smime-encryption")
	refusal := apiRefusal(t, a, mailbox, wrongCode)

	b := startFirefox(t, a, dl)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := b.Navigate(ctx, a.url+"/?mailbox=frank%40example.org"); err != nil {
		t.Fatalf("open the page (is the CA trusted?): %v", err)
	}
	if err := b.WaitFor(ctx, `!document.getElementById('submit').disabled`, time.Minute); err != nil {
		var msg string
		b.Eval(ctx, `document.getElementById('error').textContent`, &msg)
		t.Fatalf("the page did not start its WebAssembly: %v (page says %q)", err, msg)
	}
	t.Logf("page open and its WebAssembly started after %s", time.Since(start).Round(time.Millisecond))
	var secure bool
	if err := b.Eval(ctx, `location.protocol === 'https:' && window.isSecureContext`, &secure); err != nil || !secure {
		t.Fatalf("the page is not a secure HTTPS context: %v", err)
	}
	var got string
	if err := b.Eval(ctx, `document.getElementById('mailbox').value`, &got); err != nil || got != mailbox {
		t.Errorf("the link's mailbox is not filled in: %q %v", got, err)
	}

	// A wrong code: the page shows the appliance's message.
	for _, f := range []struct{ sel, text string }{{"#code-encryption", wrongCode}, {"#password", password}, {"#confirm", password}} {
		if err := b.Type(ctx, f.sel, f.text); err != nil {
			t.Fatalf("type into %s: %v", f.sel, err)
		}
	}
	if err := b.Click(ctx, "#submit"); err != nil {
		t.Fatal(err)
	}
	// The step is marked failed before the answer's body is read into the message: wait for
	// the message.
	if err := b.WaitFor(ctx, `!document.getElementById('error').hidden && document.getElementById('error').textContent !== ''`, 2*time.Minute); err != nil {
		t.Fatalf("submit a wrong code: %v", err)
	}
	var shown string
	if err := b.Eval(ctx, `document.getElementById('error').textContent`, &shown); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(shown, refusal) || !strings.Contains(shown, "401") {
		t.Fatalf("the page shows %q for a wrong code, want the API's message %q", shown, refusal)
	}
	var failed bool
	if err := b.Eval(ctx, `document.querySelector('#steps li.failed') !== null`, &failed); err != nil || !failed {
		t.Errorf("the step that asked the appliance is not marked failed (%v)", err)
	}

	// The right code.
	code := newCode(t, state, mailbox, "smime-encryption")
	if err := b.WaitFor(ctx, `!document.getElementById('submit').disabled`, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := b.Eval(ctx, `document.getElementById('code-encryption').value = ''`, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Type(ctx, "#code-encryption", code); err != nil {
		t.Fatal(err)
	}
	enrollStart := time.Now()
	if err := b.Click(ctx, "#submit"); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFor(ctx, `document.querySelectorAll('#downloads a').length === 1 || !document.getElementById('error').hidden`, 3*time.Minute); err != nil {
		t.Fatalf("enroll through the page: %v", err)
	}
	var refused string
	if err := b.Eval(ctx, `document.getElementById('error').hidden ? '' : document.getElementById('error').textContent`, &refused); err != nil || refused != "" {
		t.Fatalf("the page refused the enrollment: %s %v", refused, err)
	}
	p12 := filepath.Join(dl, mailbox+"-encryption.p12")
	waitFile(t, p12, time.Minute)
	var timings map[string]float64
	if err := b.Eval(ctx, `window.keyarcTimings`, &timings); err != nil {
		t.Fatal(err)
	}
	t.Logf("in headless %s: key generation (RSA 2048) %.0f ms, envelope and enrollment %.0f ms, PKCS#12 (600,000 iterations) %.0f ms; submit to saved file %s",
		b.Version, timings["encryption_keygen_ms"], timings["encryption_enroll_ms"], timings["encryption_pkcs12_ms"], time.Since(enrollStart).Round(time.Millisecond))

	// Nothing secret is left in the form, nor stored by the page.
	for _, id := range []string{"code-encryption", "password", "confirm"} {
		var v string
		if err := b.Eval(ctx, `document.getElementById('`+id+`').value`, &v); err != nil || v != "" {
			t.Errorf("field %s still holds a value after the enrollment (%v)", id, err)
		}
	}
	var stored float64
	if err := b.Eval(ctx, `localStorage.length + sessionStorage.length + document.cookie.length`, &stored); err != nil || stored != 0 {
		t.Errorf("the page stored something in the browser: %v, %v", stored, err)
	}

	// OpenSSL opens the file with the chosen password, and finds the modern profile and the key
	// of the certificate.
	pw := filepath.Join(dir, "pw")
	writeFile(t, pw, []byte(password+"\n"))
	info := run(t, dir, "openssl", "pkcs12", "-info", "-noout", "-in", p12, "-passin", "file:"+pw)
	for _, want := range []string{"MAC: sha256, Iteration 600000", "PBES2, PBKDF2, AES-256-CBC, Iteration 600000, PRF hmacWithSHA256"} {
		if !strings.Contains(info, want) {
			t.Errorf("openssl pkcs12 -info lacks %q:\n%s", want, info)
		}
	}
	if _, err := runResult(dir, nil, "openssl", "pkcs12", "-info", "-noout", "-in", p12, "-passin", "pass:not the password"); err == nil {
		t.Error("openssl opened the file with a wrong password")
	}
	run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "firefox.key")
	run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-clcerts", "-nokeys", "-out", "firefox.crt")
	keyPub := run(t, dir, "openssl", "pkey", "-in", "firefox.key", "-pubout")
	certPub := run(t, dir, "openssl", "x509", "-in", "firefox.crt", "-noout", "-pubkey")
	if keyPub == "" || keyPub != certPub {
		t.Fatalf("the key in the file is not the certificate's:\n%s\n%s", keyPub, certPub)
	}
	if san := run(t, dir, "openssl", "x509", "-in", "firefox.crt", "-noout", "-ext", "subjectAltName"); !strings.Contains(san, mailbox) {
		t.Errorf("the certificate is not for %s: %s", mailbox, san)
	}
	if chain := run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-cacerts", "-nokeys"); !strings.Contains(chain, "keyarc Root CA") {
		t.Errorf("the file holds no CA certificate:\n%s", chain)
	}
	// "Find a colleague's certificate" works in Firefox too; past the appliance's limit
	// (directory.lookups_per_minute) the page says to wait, and how long.
	checkLookup(t, firefoxPage{ctx, b}, dir, dl, mailbox, filepath.Join(dir, "firefox.crt"))
	if s := lookUp(t, firefoxPage{ctx, b}, mailbox); s.Kind != "error" || len(s.Fingerprints) != 0 ||
		!strings.Contains(s.Message, "Too many lookups") || !strings.Contains(s.Message, "Try again in ") || !strings.Contains(s.Message, "HTTP 429") {
		t.Errorf("a lookup over the limit shows %+v", s)
	}

	// Neither the password nor the code reached the appliance's log.
	for what, secret := range map[string]string{"PKCS#12 password": password, "enrollment code": code} {
		if strings.Contains(a.logs.String(), secret) {
			t.Errorf("the %s appears in the appliance log", what)
		}
	}
}
