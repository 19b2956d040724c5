// Package web serves the enrollment page at https://<appliance>/: a form where a person enters
// their mailbox and enrollment code, chooses an encryption certificate, a signing certificate or
// both, and a password, and leaves with a PKCS#12 file built in their own browser. Below it,
// "find a colleague's certificate" (lookup.js) asks GET /api/v1/directory for a mailbox's
// encryption certificates and offers each for download with its SHA-256 fingerprint; it needs
// no WebAssembly.
//
// # Technology
//
// The page's cryptography is Go compiled to WebAssembly (sub-package wasm, run in a Web Worker),
// not a JavaScript PKI library from npm. The browser thereby runs the same envelope code the
// appliance opens (escrow/cms, whose tests prove it against `openssl cms -encrypt`) and the same
// PKCS#12 encoder the recovery path uses (go-pkcs12, Modern2023 at 600,000 iterations): one
// implementation of each on both ends. There is no npm dependency tree to pin and audit, and
// the build needs only the Go toolchain (`GOOS=js GOARCH=wasm go build -trimpath`, reproducible:
// see TestWasmReproducible). The costs: a larger download than a bundle of JavaScript (the
// README gives the size, raw and gzipped), and 'wasm-unsafe-eval' in the Content-Security-Policy.
// The page itself is plain HTML, one style sheet and two scripts, with no inline script or style.
//
// # Files
//
// static/ holds the committed files (index.html, app.js, lookup.js, worker.js, style.css,
// icon.svg) and the three that `make wasm` (a step of `make build`) generates and git ignores:
// keyarc.wasm, its gzipped copy keyarc.wasm.gz, and wasm_exec.js, the loader of the Go release
// that built it. All are embedded in the binary. A binary built without them (`go build` on a fresh clone) serves the page but
// answers 503 "page not built: run make build" for those two, and the page says so.
//
// # Headers
//
// Every answer carries the Content-Security-Policy [CSP], X-Content-Type-Options nosniff,
// Referrer-Policy no-referrer and X-Frame-Options DENY, an exact Content-Type, and an ETag of
// its content (SHA-256) with Cache-Control no-cache: a browser keeps the files and revalidates
// them with If-None-Match, so a new binary is never mixed with old files. Compressible files are
// sent gzipped to a client that accepts it: a file with a copy NAME.gz made by the build is sent
// as that copy, once its content is checked to be the file's (the WebAssembly: gzipping
// megabytes at the best compression took seconds of CPU, in the first request's time); the
// others are compressed once, on first use.
//
// # Imports and concurrency
//
// The package imports only the standard library; package api mounts [Handler] on the HTTPS
// listener. The handler is safe for concurrent use.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
)

// CSP is the Content-Security-Policy of the page and its files. WebAssembly needs
// 'wasm-unsafe-eval' (it allows compiling WebAssembly, not JavaScript's eval); nothing else is
// loosened and nothing comes from another origin.
const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

// Prefix is the path under which the page's files are served; the page itself is at /.
const Prefix = "/web/"

// notBuilt is the answer for a generated file missing from the binary.
const notBuilt = "page not built: run make build\n"

//go:embed static
var static embed.FS

// generated are the files `make wasm` writes into static/.
var generated = map[string]bool{"keyarc.wasm": true, "wasm_exec.js": true}

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".wasm": "application/wasm",
	".svg":  "image/svg+xml",
}

// file is a served file: where it is read from, its size, SHA-256 and ETag, and its gzipped
// copy. Its bytes are read from the embedded files at each request, never copied into the heap:
// the WebAssembly alone is megabytes, and the appliance's heap limit is sized for issuance (GOGC
// multiplies every long-lived byte).
type file struct {
	fsys  fs.FS
	name  string
	size  int64
	sum   []byte
	ctype string
	etag  string
	// gzName is the copy the build gzipped (NAME.gz), if there is one.
	gzName string

	once sync.Once
	// After once: gzSize is the size of the gzipped copy (0: the file is sent as it is),
	// which is gzName when that holds the file, else gz, made here.
	gzSize int64
	gz     []byte
}

// gzipped returns the size of the file's gzipped copy, 0 when it is sent only as it is.
func (f *file) gzipped() int64 {
	f.once.Do(func() {
		if f.gzName != "" {
			if n, ok := f.buildCopy(); ok && n < f.size {
				f.gzSize = n
				return
			}
			f.gzName = "" // stale or damaged: made here instead
		}
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		if err := f.copyTo(zw, f.name); err != nil {
			return
		}
		zw.Close()
		if int64(b.Len()) < f.size {
			f.gz, f.gzSize = b.Bytes(), int64(b.Len())
		}
	})
	return f.gzSize
}

// buildCopy checks that the build's gzipped copy unpacks to the file (the gzip reader reads
// to its end: trailing bytes fail it), and returns its size.
func (f *file) buildCopy() (int64, bool) {
	r, err := f.fsys.Open(f.gzName)
	if err != nil {
		return 0, false
	}
	defer r.Close()
	info, err := r.Stat()
	if err != nil {
		return 0, false
	}
	zr, err := gzip.NewReader(r)
	if err != nil {
		return 0, false
	}
	h := sha256.New()
	if _, err := io.Copy(h, zr); err != nil || !bytes.Equal(h.Sum(nil), f.sum) {
		return 0, false
	}
	return info.Size(), true
}

// writeGzipped writes the gzipped copy to w; call it only after gzipped returned non-zero.
func (f *file) writeGzipped(w io.Writer) {
	if f.gz != nil {
		w.Write(f.gz)
		return
	}
	f.copyTo(w, f.gzName)
}

// copyTo writes the bytes of the embedded file name to w.
func (f *file) copyTo(w io.Writer, name string) error {
	r, err := f.fsys.Open(name)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(w, r)
	return err
}

type handler struct {
	files map[string]*file
}

// Handler serves GET / (the page) and GET /web/NAME (its files) from the embedded files.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed pattern names static: it is always there
	}
	return newHandler(sub)
}

func newHandler(fsys fs.FS) *handler {
	h := &handler{files: map[string]*file{}}
	entries, _ := fs.ReadDir(fsys, ".")
	for _, e := range entries {
		ct, ok := contentTypes[path.Ext(e.Name())]
		if e.IsDir() || !ok {
			continue
		}
		f := &file{fsys: fsys, name: e.Name(), ctype: ct}
		sum := sha256.New()
		if err := f.copyTo(sum, f.name); err != nil {
			continue
		}
		if info, err := e.Info(); err == nil {
			f.size = info.Size()
		}
		f.sum = sum.Sum(nil)
		f.etag = `"` + hex.EncodeToString(f.sum[:16]) + `"`
		if _, err := fs.Stat(fsys, f.name+".gz"); err == nil {
			f.gzName = f.name + ".gz"
		}
		h.files[e.Name()] = f
	}
	return h
}

// SetHeaders sets the security headers of the page on w.
func SetHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	SetHeaders(w)
	name := ""
	switch {
	case r.URL.Path == "/":
		name = "index.html"
	case strings.HasPrefix(r.URL.Path, Prefix):
		name = strings.TrimPrefix(r.URL.Path, Prefix)
	}
	f, ok := h.files[name]
	if !ok || name == "index.html" && r.URL.Path != "/" {
		if generated[name] {
			w.Header().Set("Retry-After", "60")
			http.Error(w, notBuilt, http.StatusServiceUnavailable)
			return
		}
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", f.ctype)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("Vary", "Accept-Encoding")
	var gz int64
	etag := f.etag
	if acceptsGzip(r) {
		if gz = f.gzipped(); gz != 0 {
			hd.Set("Content-Encoding", "gzip")
			// Each encoding is its own representation, with its own strong ETag.
			etag = strings.TrimSuffix(f.etag, `"`) + `-gzip"`
		}
	}
	hd.Set("ETag", etag)
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatch(match, etag) {
		hd.Del("Content-Encoding")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if gz != 0 {
		hd.Set("Content-Length", strconv.FormatInt(gz, 10))
	} else {
		hd.Set("Content-Length", strconv.FormatInt(f.size, 10))
	}
	if r.Method == http.MethodHead {
		return
	}
	// An embedded file reads without error; a failed write is the client gone.
	if gz != 0 {
		f.writeGzipped(w)
		return
	}
	f.copyTo(w, f.name)
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		return !ok || strings.Trim(q, "0.") != "" // q=0 (or 0.0, 0.000) refuses gzip

	}
	return false
}
