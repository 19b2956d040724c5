package tests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/keyarc/keyarc/tests/internal/bidi"
)

// pageDriver is what the lookup check needs of a browser: typing and clicking as a user does,
// on the first element a CSS selector finds, and script whose value comes back as JSON.
type pageDriver interface {
	typeInto(sel, text string) error
	click(sel string) error
	waitFor(expr string, within time.Duration) error
	eval(expr string, out any) error
}

// chromePage drives a Chromium tab (chromedp).
type chromePage struct{ ctx context.Context }

func (p chromePage) typeInto(sel, text string) error {
	return chromedp.Do(p.ctx, chromedp.SendKeys(chromedp.CSS(sel), text))
}
func (p chromePage) click(sel string) error {
	return chromedp.Do(p.ctx, chromedp.Click(chromedp.CSS(sel)))
}
func (p chromePage) waitFor(expr string, within time.Duration) error {
	return chromedp.Do(p.ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(within)))
}
func (p chromePage) eval(expr string, out any) error {
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify(`+expr+`)`))
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(s), out)
}

// firefoxPage drives a Firefox tab (WebDriver BiDi).
type firefoxPage struct {
	ctx context.Context
	b   *bidi.Browser
}

func (p firefoxPage) typeInto(sel, text string) error { return p.b.Type(p.ctx, sel, text) }
func (p firefoxPage) click(sel string) error          { return p.b.Click(p.ctx, sel) }
func (p firefoxPage) waitFor(expr string, within time.Duration) error {
	return p.b.WaitFor(p.ctx, expr, within)
}
func (p firefoxPage) eval(expr string, out any) error { return p.b.Eval(p.ctx, expr, out) }

// lookupShown is what the page shows after a lookup.
type lookupShown struct {
	Message      string   `json:"message"`
	Kind         string   `json:"kind"`
	Mailboxes    []string `json:"mailboxes"`
	Serials      []string `json:"serials"`
	Fingerprints []string `json:"fingerprints"`
	Downloads    []string `json:"downloads"`
}

// lookUp asks the page's "find a colleague's certificate" for mailbox and returns what it shows.
func lookUp(t *testing.T, p pageDriver, mailbox string) lookupShown {
	t.Helper()
	var ignored bool
	// The last answer's message goes first, so the wait below sees this answer's.
	if err := p.eval(`(document.getElementById('lookup-mailbox').value = '', document.getElementById('lookup-message').hidden = true)`, &ignored); err != nil {
		t.Fatal(err)
	}
	if err := p.typeInto("#lookup-mailbox", mailbox); err != nil {
		t.Fatalf("type the colleague's mailbox: %v", err)
	}
	if err := p.click("#lookup-submit"); err != nil {
		t.Fatal(err)
	}
	if err := p.waitFor(`!document.getElementById('lookup-message').hidden && !document.getElementById('lookup-submit').disabled`, time.Minute); err != nil {
		t.Fatalf("look up %s: %v", mailbox, err)
	}
	var s lookupShown
	if err := p.eval(`(() => {
		const texts = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
		const m = document.getElementById('lookup-message');
		return {
			message: m.textContent, kind: m.classList.contains('error') ? 'error' : 'info',
			mailboxes: texts('#lookup-certs dd:first-of-type'), serials: texts('#lookup-certs dd.serial'),
			fingerprints: texts('#lookup-certs dd.fingerprint'),
			downloads: [...document.querySelectorAll('#lookup-certs a')].map((a) => a.download),
		};
	})()`, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkLookup: the page finds the mailbox's one encryption certificate (signing certificates
// are not offered), shows the fingerprint of the issued certificate (certPath, PEM) and its
// serial, and downloads that certificate; a mailbox without a certificate gets the message
// that says so. The downloads land in dl.
func checkLookup(t *testing.T, p pageDriver, dir, dl, mailbox, certPath string) {
	t.Helper()
	s := lookUp(t, p, mailbox)
	want := strings.TrimSpace(strings.TrimPrefix(run(t, dir, "openssl", "x509", "-in", certPath, "-noout", "-fingerprint", "-sha256"), "sha256 Fingerprint="))
	serial := certSerial(t, dir, certPath)
	if len(s.Fingerprints) != 1 || s.Fingerprints[0] != want || len(s.Serials) != 1 || !strings.EqualFold(s.Serials[0], serial) ||
		len(s.Mailboxes) != 1 || s.Mailboxes[0] != mailbox {
		t.Fatalf("the lookup of %s shows %+v; want one certificate, serial %s, SHA-256 %s", mailbox, s, serial, want)
	}
	if s.Kind != "info" || !strings.Contains(s.Message, "One valid encryption certificate") {
		t.Errorf("the lookup's message: %q (%s)", s.Message, s.Kind)
	}
	// The PEM download is the issued certificate.
	if len(s.Downloads) != 2 || !strings.HasSuffix(s.Downloads[0], ".pem") || !strings.HasSuffix(s.Downloads[1], ".cer") {
		t.Fatalf("the lookup offers %v, want a .pem and a .cer", s.Downloads)
	}
	if err := p.click("#lookup-certs a"); err != nil {
		t.Fatal(err)
	}
	got := waitFile(t, filepath.Join(dl, s.Downloads[0]), time.Minute)
	issued, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != strings.TrimSpace(pemCertificate(t, issued)) {
		t.Errorf("the downloaded %s is not the issued certificate:\n%s", s.Downloads[0], got)
	}

	// A mailbox with none: the page says so.
	const nobody = "nobody@example.org"
	s = lookUp(t, p, nobody)
	if len(s.Fingerprints) != 0 || !strings.Contains(s.Message, "No valid encryption certificate was found for "+nobody) {
		t.Errorf("the lookup of a mailbox without a certificate shows %+v", s)
	}
}

// pemCertificate returns the CERTIFICATE block of a PEM file (openssl writes Bag Attributes
// before it).
func pemCertificate(t *testing.T, b []byte) string {
	t.Helper()
	s := string(b)
	i := strings.Index(s, "-----BEGIN CERTIFICATE-----")
	j := strings.Index(s, "-----END CERTIFICATE-----")
	if i < 0 || j < i {
		t.Fatalf("no certificate in\n%s", s)
	}
	return s[i : j+len("-----END CERTIFICATE-----")]
}
