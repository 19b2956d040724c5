package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
)

// page is a set of page files as the embed holds them, with or without the generated ones.
func page(built bool) fstest.MapFS {
	fs := fstest.MapFS{
		"index.html": {Data: []byte("<!doctype html><title>t</title>")},
		"app.js":     {Data: []byte(strings.Repeat("'use strict';\n", 200))},
		"worker.js":  {Data: []byte("'use strict';\n")},
		"style.css":  {Data: []byte("body{}\n")},
	}
	if built {
		fs["keyarc.wasm"] = &fstest.MapFile{Data: append([]byte("\x00asm\x01\x00\x00\x00"), bytes.Repeat([]byte{0}, 4096)...)}
		fs["wasm_exec.js"] = &fstest.MapFile{Data: []byte("'use strict';\n")}
	}
	return fs
}

func get(t *testing.T, h http.Handler, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest("GET", path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestHeaders: every answer, found or not, carries the strict CSP and the security headers;
// each file its exact content type.
func TestHeaders(t *testing.T) {
	h := newHandler(page(true))
	for _, c := range []struct {
		path  string
		code  int
		ctype string
	}{
		{"/", 200, "text/html; charset=utf-8"},
		{"/web/app.js", 200, "text/javascript; charset=utf-8"},
		{"/web/worker.js", 200, "text/javascript; charset=utf-8"},
		{"/web/wasm_exec.js", 200, "text/javascript; charset=utf-8"},
		{"/web/style.css", 200, "text/css; charset=utf-8"},
		{"/web/keyarc.wasm", 200, "application/wasm"},
		{"/web/index.html", 404, ""},
		{"/web/nosuch.js", 404, ""},
		{"/web/../web.go", 404, ""},
	} {
		w := get(t, h, c.path)
		if w.Code != c.code {
			t.Errorf("GET %s: %d, want %d", c.path, w.Code, c.code)
		}
		if c.ctype != "" && w.Header().Get("Content-Type") != c.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", c.path, w.Header().Get("Content-Type"), c.ctype)
		}
		for name, want := range map[string]string{
			"Content-Security-Policy": CSP,
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"X-Frame-Options":         "DENY",
		} {
			if got := w.Header().Get(name); got != want {
				t.Errorf("GET %s: %s %q, want %q", c.path, name, got, want)
			}
		}
	}
}

// TestCSP: the policy allows this origin only, no inline script or style, no eval but
// WebAssembly's, no plugins, no base, no framing, forms to this origin only.
func TestCSP(t *testing.T) {
	directives := map[string]string{}
	for _, d := range strings.Split(CSP, ";") {
		f := strings.Fields(d)
		if len(f) == 0 {
			continue
		}
		if _, dup := directives[f[0]]; dup {
			t.Errorf("directive %s twice", f[0])
		}
		directives[f[0]] = strings.Join(f[1:], " ")
	}
	for name, want := range map[string]string{
		"default-src":     "'self'",
		"script-src":      "'self' 'wasm-unsafe-eval'",
		"style-src":       "'self'",
		"connect-src":     "'self'",
		"worker-src":      "'self'",
		"object-src":      "'none'",
		"base-uri":        "'none'",
		"frame-ancestors": "'none'",
		"form-action":     "'self'",
	} {
		if got := directives[name]; got != want {
			t.Errorf("%s %q, want %q", name, got, want)
		}
	}
	for _, bad := range []string{"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:", "data:", "blob:"} {
		for _, tok := range strings.Fields(strings.ReplaceAll(CSP, ";", " ")) {
			if tok == bad {
				t.Errorf("the CSP allows %s", bad)
			}
		}
	}
}

// TestNotBuilt: a binary built without `make wasm` serves the page, and a clear 503 for the
// generated files.
func TestNotBuilt(t *testing.T) {
	h := newHandler(page(false))
	if w := get(t, h, "/"); w.Code != 200 {
		t.Errorf("GET /: %d", w.Code)
	}
	for _, p := range []string{"/web/keyarc.wasm", "/web/wasm_exec.js"} {
		w := get(t, h, p)
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "page not built: run make build") {
			t.Errorf("GET %s: %d %q, want 503 page not built", p, w.Code, w.Body.String())
		}
		if w.Header().Get("Content-Security-Policy") != CSP {
			t.Errorf("GET %s: no CSP on the 503", p)
		}
	}
}

// TestCaching: an ETag per content and encoding; If-None-Match answers 304; gzip to those who
// accept it (and not when q=0), the same bytes once unpacked.
func TestCaching(t *testing.T) {
	h := newHandler(page(true))
	w := get(t, h, "/web/app.js")
	etag := w.Header().Get("ETag")
	if etag == "" || w.Header().Get("Cache-Control") != "no-cache" || w.Header().Get("Content-Encoding") != "" {
		t.Fatalf("plain: ETag %q Cache-Control %q Content-Encoding %q", etag, w.Header().Get("Cache-Control"), w.Header().Get("Content-Encoding"))
	}
	plain := w.Body.Bytes()
	if w := get(t, h, "/web/app.js", "If-None-Match", etag); w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("If-None-Match: %d with %d bytes, want 304", w.Code, w.Body.Len())
	}
	if w := get(t, h, "/web/app.js", "If-None-Match", `"other"`); w.Code != 200 {
		t.Errorf("If-None-Match of another version: %d, want 200", w.Code)
	}
	gz := get(t, h, "/web/app.js", "Accept-Encoding", "br, gzip;q=0.8")
	if gz.Header().Get("Content-Encoding") != "gzip" || gz.Header().Get("ETag") == etag || gz.Header().Get("Vary") != "Accept-Encoding" {
		t.Fatalf("gzip: Content-Encoding %q ETag %q Vary %q", gz.Header().Get("Content-Encoding"), gz.Header().Get("ETag"), gz.Header().Get("Vary"))
	}
	zr, err := gzip.NewReader(gz.Body)
	if err != nil {
		t.Fatal(err)
	}
	unpacked, _ := io.ReadAll(zr)
	if !bytes.Equal(unpacked, plain) || gz.Body.Len() >= len(plain) {
		t.Errorf("gzip: %d bytes unpack to %d, want %d", gz.Body.Len(), len(unpacked), len(plain))
	}
	if w := get(t, h, "/web/app.js", "Accept-Encoding", "gzip;q=0"); w.Header().Get("Content-Encoding") != "" {
		t.Error("gzip sent to a client that refuses it (q=0)")
	}
	if w := get(t, h, "/web/app.js", "Accept-Encoding", "gzip", "If-None-Match", gz.Header().Get("ETag")); w.Code != http.StatusNotModified {
		t.Errorf("If-None-Match of the gzipped version: %d, want 304", w.Code)
	}
}

// embedded returns the bytes of an embedded page file.
func embedded(t *testing.T, name string) []byte {
	t.Helper()
	b, err := fs.ReadFile(static, "static/"+name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNotInHeap: serving the page keeps none of its files in the heap, the WebAssembly least
// of all (megabytes, which GOGC multiplies in the appliance's peak memory); the bytes served
// are still the embedded ones.
func TestNotInHeap(t *testing.T) {
	wasm := embedded(t, "keyarc.wasm")
	if len(wasm) < 1<<20 {
		t.Skip("keyarc.wasm is not built (make wasm)")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	h := Handler()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > int64(len(wasm))/4 {
		t.Errorf("the page's handler holds %d bytes of heap; keyarc.wasm alone is %d", grew, len(wasm))
	}
	w := get(t, h, "/web/keyarc.wasm")
	if !bytes.Equal(w.Body.Bytes(), wasm) || w.Header().Get("Content-Length") != strconv.Itoa(len(wasm)) {
		t.Errorf("served %d bytes (Content-Length %s), want the embedded %d", w.Body.Len(), w.Header().Get("Content-Length"), len(wasm))
	}
	runtime.KeepAlive(h)
}

// TestEmbedded: the committed files are embedded, and the page refers only to this origin's
// files, with no inline script or style.
func TestEmbedded(t *testing.T) {
	h := Handler().(*handler)
	for _, name := range []string{"index.html", "app.js", "lookup.js", "worker.js", "style.css"} {
		if h.files[name] == nil {
			t.Errorf("%s is not embedded", name)
		}
	}
	html := string(embedded(t, "index.html"))
	for _, bad := range []string{"<script>", "style=", " onclick", " onsubmit", "http://", "https://"} {
		if strings.Contains(html, bad) {
			t.Errorf("index.html holds %q", bad)
		}
	}
	// Every input, select and textarea has a label.
	for _, id := range []string{"mailbox", "code-encryption", "code-signing", "password", "confirm", "keytype", "kind-encryption", "kind-signing", "kind-both", "lookup-mailbox"} {
		if !strings.Contains(html, `id="`+id+`"`) || !strings.Contains(html, `for="`+id+`"`) {
			t.Errorf("field %s has no label", id)
		}
	}
	if n := strings.Count(html, "<input") + strings.Count(html, "<select"); n != 10 {
		t.Errorf("index.html has %d fields, the label check knows 10", n)
	}
	for _, name := range []string{"app.js", "lookup.js", "worker.js"} {
		js := string(embedded(t, name))
		for _, bad := range []string{"localStorage", "sessionStorage", "indexedDB", "document.cookie", "eval("} {
			if strings.Contains(js, bad) {
				t.Errorf("%s uses %s", name, bad)
			}
		}
	}
}

// TestWasmReproducible builds the page's WebAssembly twice with the Makefile's rule, into two
// folders, and gets the same bytes, with no path of this machine in them.
func TestWasmReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the WebAssembly twice")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	root, err := filepath.Abs("../../../..")
	if err != nil {
		t.Fatal(err)
	}
	var builds [2][]byte
	for i := range builds {
		out := t.TempDir()
		cmd := exec.Command("make", "-s", "-C", root, "wasm", "WEB="+out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make wasm: %v\n%s", err, b)
		}
		if builds[i], err = os.ReadFile(filepath.Join(out, "keyarc.wasm")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(out, "wasm_exec.js")); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(builds[0], builds[1]) {
		t.Fatalf("two builds differ (%d and %d bytes)", len(builds[0]), len(builds[1]))
	}
	if !bytes.HasPrefix(builds[0], []byte("\x00asm")) {
		t.Fatal("the build is not WebAssembly")
	}
	for _, p := range []string{root, os.Getenv("HOME")} {
		if p != "" && bytes.Contains(builds[0], []byte(p)) {
			t.Errorf("the build holds the local path %s", p)
		}
	}
	t.Logf("keyarc.wasm: %d bytes", len(builds[0]))
}

// gzipOf gzips b, with comment in the gzip header to tell copies apart.
func gzipOf(t *testing.T, b []byte, comment string) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Comment = comment
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestBuildGzipCopy: a file with a gzipped copy made by the build (NAME.gz) is sent as that
// copy; a copy that does not unpack to the file (stale, or damaged) is not sent: the file is
// gzipped here instead. The copy is never served under a name of its own.
func TestBuildGzipCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		copy func(wasm []byte) []byte
		sent bool
	}{
		{"matching", func(wasm []byte) []byte { return gzipOf(t, wasm, "build") }, true},
		{"stale", func(wasm []byte) []byte { return gzipOf(t, append([]byte("old"), wasm...), "build") }, false},
		{"damaged", func(wasm []byte) []byte { b := gzipOf(t, wasm, "build"); return b[:len(b)/2] }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := page(true)
			wasm := fsys["keyarc.wasm"].Data
			built := tc.copy(wasm)
			fsys["keyarc.wasm.gz"] = &fstest.MapFile{Data: built}
			h := newHandler(fsys)
			w := get(t, h, "/web/keyarc.wasm", "Accept-Encoding", "gzip")
			if w.Code != 200 || w.Header().Get("Content-Encoding") != "gzip" {
				t.Fatalf("HTTP %d, Content-Encoding %q", w.Code, w.Header().Get("Content-Encoding"))
			}
			if got := w.Header().Get("Content-Length"); got != strconv.Itoa(w.Body.Len()) {
				t.Errorf("Content-Length %s for %d bytes", got, w.Body.Len())
			}
			if sent := bytes.Equal(w.Body.Bytes(), built); sent != tc.sent {
				t.Errorf("the build's copy sent: %v, want %v", sent, tc.sent)
			}
			zr, err := gzip.NewReader(w.Body)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(zr); err != nil || !bytes.Equal(got, wasm) {
				t.Errorf("the gzipped answer unpacks to %d bytes (%v), want the file's %d", len(got), err, len(wasm))
			}
			if w := get(t, h, "/web/keyarc.wasm.gz"); w.Code != http.StatusNotFound {
				t.Errorf("GET of the copy by its own name: %d, want 404", w.Code)
			}
		})
	}
}
