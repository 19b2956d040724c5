package tests

import (
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// updateScreenshot rewrites the README's picture of the enrollment page.
var updateScreenshot = flag.Bool("update-screenshot", false, "write the enrollment page's screenshot for the README (cmd/keyarc/internal/web/page.png)")

// readmeScreenshot is the picture of the page the README shows.
const readmeScreenshot = "../cmd/keyarc/internal/web/page.png"

// startChromium starts headless Chromium with the appliance's CA trusted: a throw-away HOME
// whose NSS database (where Chromium on Linux looks for trust anchors) holds the CA
// certificate, so TLS is verified as a user's browser would verify it, without
// --ignore-certificate-errors. Downloads go to dl.
func startChromium(t *testing.T, a *appliance, dl string) context.Context {
	t.Helper()
	home := t.TempDir()
	nss := filepath.Join(home, ".pki", "nssdb")
	if err := os.MkdirAll(nss, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, home, "certutil", "-N", "-d", "sql:"+nss, "--empty-password")
	run(t, home, "certutil", "-A", "-d", "sql:"+nss, "-n", "keyarc test CA", "-t", "C,,", "-i", filepath.Join(a.state, "ca.pem"))

	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Env("HOME="+home),
		chromedp.UserDataDir(filepath.Join(home, "profile")),
		chromedp.WindowSize(900, 1400),
		chromedp.DisableGPU,
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to run as root with its sandbox (CI containers run as root).
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	tctx, cancelTimeout := context.WithTimeout(ctx, 5*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		cancelAlloc()
	})
	// The browser belongs to the first context that runs it: ctx, which lives until the
	// cleanup; the actions run under tctx, which bounds the test.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	// The page's console and uncaught exceptions go to the test log.
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			t.Logf("browser console: %s", m)
		}
	}()
	if _, err := chromedp.CallBrowser(tctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dl,
	}); err != nil {
		t.Fatalf("set the download folder: %v", err)
	}
	// A failed test leaves a screenshot of the page behind (cleanups run last-in first-out:
	// this one before the browser stops).
	screenshotOnFailure(t, ctx, func(ctx context.Context) ([]byte, error) {
		return chromedp.Run(ctx, chromedp.FullScreenshot(100))
	})
	return tctx
}

// screenshotOnFailure saves the page, as shoot takes it, to a file in the temporary folder when
// t has failed by its end, and logs where. Cleanups run last-in first-out: register it after
// the browser's own, so that it runs while the browser is still there.
func screenshotOnFailure(t *testing.T, ctx context.Context, shoot func(context.Context) ([]byte, error)) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		sctx, c := context.WithTimeout(ctx, 20*time.Second)
		defer c()
		png, err := shoot(sctx)
		if err != nil {
			t.Logf("no screenshot of the failure: %v", err)
			return
		}
		out := filepath.Join(os.TempDir(), "keyarc-"+strings.ReplaceAll(t.Name(), "/", "_")+"-failure.png")
		if err := os.WriteFile(out, png, 0o644); err == nil {
			t.Logf("screenshot of the page at the failure: %s", out)
		}
	})
}

// waitFile waits until path exists (Chromium writes a download as NAME.crdownload and renames it
// when done).
func waitFile(t *testing.T, path string, within time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return b
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(filepath.Dir(path))
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("no download %s after %s (folder holds %v)", filepath.Base(path), within, names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func grepFriendly(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "friendlyName") || strings.Contains(l, "Bag Attributes") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// pageSize fetches a page file as a browser does (gzip accepted), checks its headers, and
// returns its raw and transferred sizes.
func pageSize(t *testing.T, a *appliance, path string) (raw, sent int) {
	t.Helper()
	req, _ := http.NewRequest("GET", a.url+path, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	tr := a.client.Transport.(*http.Transport).Clone()
	tr.DisableCompression = true
	// The appliance gzips a file on its first request: the WebAssembly, some megabytes at the
	// best compression, takes long in a race-detector build on a loaded machine.
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
	}
	// The appliance serves each file with the page's policy and its exact type.
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'self'; script-src 'self' 'wasm-unsafe-eval';") ||
		resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("GET %s: CSP %q, X-Content-Type-Options %q, Referrer-Policy %q", path, csp, resp.Header.Get("X-Content-Type-Options"), resp.Header.Get("Referrer-Policy"))
	}
	want := map[string]string{".wasm": "application/wasm", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}[filepath.Ext(path)]
	if want == "" {
		want = "text/html; charset=utf-8"
	}
	if ct := resp.Header.Get("Content-Type"); ct != want {
		t.Errorf("GET %s: Content-Type %q, want %q", path, ct, want)
	}
	sent = len(body)
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(zr)
	}
	return len(body), sent
}

// TestBrowserEnrollment drives the enrollment page in headless Chromium against the real
// appliance: a wrong code shows the API's refusal on the page; the right one makes the key in
// the browser, enrolls with the key escrowed, and downloads a PKCS#12 that OpenSSL opens with
// the chosen password (AES-256-CBC, PBKDF2-SHA-256, 600,000 iterations, the chain, the key of
// the certificate, a friendly name on both). Two KRAs then recover the archived key: it is the key in the download.
func TestBrowserEnrollment(t *testing.T) {
	t.Parallel()
	requireTools(t, "chromium", "openssl", "certutil")
	if _, err := os.Stat("../cmd/keyarc/internal/web/static/keyarc.wasm"); err != nil {
		t.Fatal("the enrollment page is not built (cmd/keyarc/internal/web/static/keyarc.wasm): run make wasm, or make test, which does")
	}
	state := devState(t)
	a := serve(t, state)
	dir, dl := t.TempDir(), t.TempDir()
	const mailbox = "alice@example.org"
	const password = "correct horse battery staple"

	var rawTotal, sentTotal int
	for _, f := range []string{"/", "/web/app.js", "/web/lookup.js", "/web/worker.js", "/web/style.css", "/web/wasm_exec.js", "/web/keyarc.wasm"} {
		raw, sent := pageSize(t, a, f)
		rawTotal, sentTotal = rawTotal+raw, sentTotal+sent
		t.Logf("page file %-18s %9d bytes, %9d sent gzipped", f, raw, sent)
	}
	t.Logf("page download: %d bytes (%.1f MiB), %d bytes gzipped (%.1f MiB)", rawTotal, float64(rawTotal)/(1<<20), sentTotal, float64(sentTotal)/(1<<20))

	// The API's refusal of a wrong code, as a client without the page sees it.
	newCode(t, state, mailbox, "smime-encryption")
	const wrongCode = "AAAAAAAAAAAAAAAAAAAAAAAA"
	refusal := apiRefusal(t, a, mailbox, wrongCode)

	ctx := startChromium(t, a, dl)
	start := time.Now()
	if err := chromedp.Do(ctx,
		chromedp.Navigate(a.url+"/?mailbox=alice%40example.org"),
		chromedp.WaitEnabled(chromedp.ID("submit")),
	); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	t.Logf("page open and its WebAssembly started after %s", time.Since(start).Round(time.Millisecond))
	if got, _ := chromedp.Run(ctx, chromedp.Value(chromedp.ID("mailbox"))); got != mailbox {
		t.Errorf("the link's mailbox is not filled in: %q", got)
	}

	// Passwords that differ, a short one, or one the PKCS#12 format cannot encode are refused on
	// the page, before any request.
	setValue := func(id, v string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`document.getElementById('`+id+`').value = '`+v+`', true`)(ctx, t)
			return err
		})
	}
	for _, c := range []struct{ pw, confirm, want string }{
		{password, password + "!", "The two passwords differ."},
		{"short pw 1", "short pw 1", "at least 12 characters"},
		{"key 🔑 correct horse battery", "key 🔑 correct horse battery", "cannot contain emoji"},
	} {
		if err := chromedp.Do(ctx,
			setValue("code-encryption", wrongCode), setValue("password", c.pw), setValue("confirm", c.confirm),
			chromedp.Click(chromedp.ID("submit")),
			chromedp.WaitVisible(chromedp.ID("error")),
		); err != nil {
			t.Fatalf("submit a bad password: %v", err)
		}
		if shown, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("error"))); !strings.Contains(shown, c.want) {
			t.Errorf("password %q/%q: the page shows %q, want %q", c.pw, c.confirm, shown, c.want)
		}
	}

	// A wrong code: the page shows the appliance's message.
	if err := chromedp.Do(ctx,
		setValue("code-encryption", ""), setValue("password", ""), setValue("confirm", ""),
		chromedp.SendKeys(chromedp.ID("code-encryption"), wrongCode),
		chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.SendKeys(chromedp.ID("confirm"), password),
		chromedp.Click(chromedp.ID("submit")),
		// The step is marked failed before the answer's body is read into the message: wait
		// for the message.
		chromedp.Poll[chromedp.Void](`!document.getElementById('error').hidden && document.getElementById('error').textContent !== ''`, chromedp.WithPollingTimeout(time.Minute)),
	); err != nil {
		t.Fatalf("submit a wrong code: %v", err)
	}
	if failed, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('#steps li.failed') !== null`)); err != nil || !failed {
		t.Errorf("the step that asked the appliance is not marked failed (%v)", err)
	}
	shown, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("error")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(shown, refusal) || !strings.Contains(shown, "401") {
		t.Errorf("the page shows %q for a wrong code, want the API's message %q", shown, refusal)
	}

	// The right code, and a second one for a signing certificate: both certificates at once.
	code := newCode(t, state, mailbox, "smime-encryption")
	signCode := newCode(t, state, mailbox, "smime-signature")
	if err := chromedp.Do(ctx,
		chromedp.WaitEnabled(chromedp.ID("submit")),
		chromedp.Click(chromedp.ID("kind-both")),
		chromedp.WaitVisible(chromedp.ID("code-signing")),
		setValue("code-encryption", ""),
		chromedp.SendKeys(chromedp.ID("code-encryption"), code),
		chromedp.SendKeys(chromedp.ID("code-signing"), signCode),
		chromedp.Click(chromedp.ID("submit")),
	); err != nil {
		t.Fatalf("enroll through the page: %v", err)
	}
	// The files' links, or a refusal.
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelectorAll('#downloads a').length === 2 || !document.getElementById('error').hidden`, chromedp.WithPollingTimeout(3*time.Minute))); err != nil {
		t.Fatalf("enroll through the page: %v", err)
	}
	if msg, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('error').hidden ? '' : document.getElementById('error').textContent`)); msg != "" {
		t.Fatalf("the page refused the enrollment: %s", msg)
	}
	p12 := filepath.Join(dl, mailbox+"-encryption.p12")
	waitFile(t, p12, time.Minute)
	timings, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]float64](`window.keyarcTimings`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("in headless Chromium: key generation (RSA 2048) %.0f ms, envelope and enrollment %.0f ms, PKCS#12 (600,000 iterations) %.0f ms",
		timings["encryption_keygen_ms"], timings["encryption_enroll_ms"], timings["encryption_pkcs12_ms"])

	// Nothing secret is left in the form, nor stored by the page.
	for _, id := range []string{"code-encryption", "code-signing", "password", "confirm"} {
		if v, _ := chromedp.Run(ctx, chromedp.Value(chromedp.ID(id))); v != "" {
			t.Errorf("field %s still holds a value after the enrollment", id)
		}
	}
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`localStorage.length + sessionStorage.length + document.cookie.length`))
	if err != nil || stored != 0 {
		t.Errorf("the page stored something in the browser: %v, %v", stored, err)
	}
	escrowText, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("escrow-notice")))
	if !strings.Contains(escrowText, "quorum of key recovery agents") {
		t.Errorf("the page does not say the key is escrowed: %q", escrowText)
	}

	if *updateScreenshot {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, readmeScreenshot, png)
	}

	// OpenSSL opens the file with the chosen password, and finds the modern profile.
	pw := filepath.Join(dir, "pw")
	writeFile(t, pw, []byte(password+"\n"))
	info := run(t, dir, "openssl", "pkcs12", "-info", "-noout", "-in", p12, "-passin", "file:"+pw)
	for _, want := range []string{"MAC: sha256, Iteration 600000", "PBES2, PBKDF2, AES-256-CBC, Iteration 600000, PRF hmacWithSHA256"} {
		if !strings.Contains(info, want) {
			t.Errorf("openssl pkcs12 -info lacks %q:\n%s", want, info)
		}
	}
	if names := run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nodes"); strings.Count(names, "friendlyName: "+mailbox+" (encryption)") != 2 {
		t.Errorf("the key and the certificate do not both carry the friendly name:\n%s", grepFriendly(names))
	}
	if _, err := runResult(dir, nil, "openssl", "pkcs12", "-info", "-noout", "-in", p12, "-passin", "pass:not the password"); err == nil {
		t.Error("openssl opened the file with a wrong password")
	}
	run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "browser.key")
	run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-clcerts", "-nokeys", "-out", "browser.crt")
	chain := run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-cacerts", "-nokeys")
	if !strings.Contains(chain, "keyarc Root CA") {
		t.Errorf("the file holds no CA certificate:\n%s", chain)
	}
	keyPub := run(t, dir, "openssl", "pkey", "-in", "browser.key", "-pubout")
	certPub := run(t, dir, "openssl", "x509", "-in", "browser.crt", "-noout", "-pubkey")
	if keyPub != certPub {
		t.Fatalf("the key in the file is not the certificate's:\n%s\n%s", keyPub, certPub)
	}
	if subj := run(t, dir, "openssl", "x509", "-in", "browser.crt", "-noout", "-ext", "subjectAltName"); !strings.Contains(subj, mailbox) {
		t.Errorf("the certificate is not for %s: %s", mailbox, subj)
	}
	// "Find a colleague's certificate" finds it (and not the signing one).
	checkLookup(t, chromePage{ctx}, dir, dl, mailbox, filepath.Join(dir, "browser.crt"))

	// The signing file: its own key, named, never archived.
	sp12 := filepath.Join(dl, mailbox+"-signing.p12")
	waitFile(t, sp12, time.Minute)
	run(t, dir, "openssl", "pkcs12", "-in", sp12, "-passin", "file:"+pw, "-nocerts", "-nodes", "-out", "sign.key")
	run(t, dir, "openssl", "pkcs12", "-in", sp12, "-passin", "file:"+pw, "-clcerts", "-nokeys", "-out", "sign.crt")
	if run(t, dir, "openssl", "pkey", "-in", "sign.key", "-pubout") != run(t, dir, "openssl", "x509", "-in", "sign.crt", "-noout", "-pubkey") {
		t.Error("the key in the signing file is not its certificate's")
	}
	if run(t, dir, "openssl", "pkey", "-in", "sign.key", "-pubout") == keyPub {
		t.Error("the signing and the encryption certificate share a key")
	}
	if ku := run(t, dir, "openssl", "x509", "-in", "sign.crt", "-noout", "-ext", "keyUsage"); !strings.Contains(ku, "Digital Signature") {
		t.Errorf("the signing certificate's key usage: %s", ku)
	}
	if names := run(t, dir, "openssl", "pkcs12", "-in", sp12, "-passin", "file:"+pw, "-nodes"); strings.Count(names, "friendlyName: "+mailbox+" (signing)") != 2 {
		t.Errorf("the signing file is not named:\n%s", grepFriendly(names))
	}
	signSerial := certSerial(t, dir, filepath.Join(dir, "sign.crt"))
	if out, _, err := keyarcResult("recovery", "request", "--serial", signSerial, "--reason", "browser test", "--state", state, "--server", a.url, "--as", "officer"); err == nil {
		t.Errorf("a recovery of the signing key was opened: %s", out)
	}

	// Two KRAs recover the archived key: it is the key the browser made.
	serial := certSerial(t, dir, filepath.Join(dir, "browser.crt"))
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "browser test")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	rp12, rpw := filepath.Join(dir, "recovered.p12"), filepath.Join(dir, "recovered.pw")
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", rp12, "--password-file", rpw)...)
	run(t, dir, "openssl", "pkcs12", "-in", rp12, "-passin", "file:"+rpw, "-nocerts", "-nodes", "-out", "recovered.key")
	browserDER := run(t, dir, "openssl", "pkey", "-in", "browser.key", "-outform", "DER")
	recoveredDER := run(t, dir, "openssl", "pkey", "-in", "recovered.key", "-outform", "DER")
	if browserDER == "" || browserDER != recoveredDER {
		t.Fatal("the recovered key differs from the key in the browser's file")
	}

	// A browser without WebAssembly or WebCrypto's key derivation is told so, and gets no form:
	// a new tab where they are removed before the page's scripts run.
	bare, cancelBare := chromedp.NewContext(ctx)
	defer cancelBare()
	if err := chromedp.Do(bare); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(bare, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `delete globalThis.WebAssembly; Object.defineProperty(Crypto.prototype, 'subtle', {get() { return undefined; }});`}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bare, chromedp.Navigate(a.url+"/"),
		chromedp.Poll[chromedp.Void](`!document.getElementById('unsupported').hidden`, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("the page without WebAssembly: %v", err)
	}
	if msg, _ := chromedp.Run(bare, chromedp.Text(chromedp.ID("unsupported"))); !strings.Contains(msg, "lacks WebAssembly") || !strings.Contains(msg, "PBKDF2") {
		t.Errorf("without WebAssembly the page says %q", msg)
	}
	if hidden, _ := chromedp.Run(bare, chromedp.Evaluate[bool](`document.getElementById('enroll').hidden`)); !hidden {
		t.Error("without WebAssembly the form is still shown")
	}
	// The lookup needs no WebAssembly: it works there too.
	if s := lookUp(t, chromePage{bare}, mailbox); len(s.Fingerprints) != 1 {
		t.Errorf("without WebAssembly the lookup shows %+v", s)
	}

	// Neither the password nor the code reached the appliance's log.
	for what, secret := range map[string]string{"PKCS#12 password": password, "enrollment code": code} {
		if strings.Contains(a.logs.String(), secret) {
			t.Errorf("the %s appears in the appliance log", what)
		}
	}
}
