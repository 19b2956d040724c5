package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWindowCountsFailures: against a real HTTP server that answers 500 to some paths, a
// window counts the 500s as errors by status, the rest as OK, and records a latency for each.
func TestWindowCountsFailures(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/fail") {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
			return
		}
		w.Write([]byte("fine"))
	}))
	defer srv.Close()
	var reqs []Request
	for i := range 100 {
		switch {
		case i%10 < 3:
			reqs = append(reqs, Request{Path: "/fail"})
		case i%2 == 0:
			reqs = append(reqs, Request{Method: "POST", Path: "/echo", Header: map[string]string{"Content-Type": "text/plain"}, Body: []byte("hello")})
		default:
			reqs = append(reqs, Request{Path: "/ok"})
		}
	}
	g, err := New(Config{Addr: srv.Listener.Addr().String(), Clients: 4, Requests: reqs, Once: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	r := g.Window(context.Background(), time.Minute)
	if !r.Exhausted {
		t.Errorf("Once with 100 requests and a minute: not exhausted: %+v", r)
	}
	if r.OK != 70 || r.Errors != 30 || r.Statuses["500"] != 30 {
		t.Fatalf("ok %d, errors %d, statuses %v; want 70, 30, 30 × 500", r.OK, r.Errors, r.Statuses)
	}
	if r.Latencies != 100 || r.P50 <= 0 || r.P99 < r.P50 || r.Max < r.P99 || r.Rate <= 0 {
		t.Fatalf("latencies not recorded: %+v", r)
	}
	if len(r.Messages) == 0 || !strings.Contains(r.Messages[0], "HTTP 500") {
		t.Errorf("messages %q", r.Messages)
	}
	// A second window on the same connections: the requests are used up.
	if r2 := g.Window(context.Background(), time.Second); r2.OK != 0 || r2.Errors != 0 || !r2.Exhausted || r2.Window != 2 {
		t.Errorf("second window after the requests ran out: %+v", r2)
	}
}

// rawServer answers every request on every connection with answer, then closes the
// connection if closeAfter.
func rawServer(t *testing.T, answer string, closeAfter bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, answer); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestWindowCountsBadFraming: answers that lie about their length, or that cannot be framed,
// are errors, and the client reconnects and goes on.
func TestWindowCountsBadFraming(t *testing.T) {
	tests := []struct {
		name   string
		answer string
		close  bool
	}{
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true},
		{"chunk longer than its size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", true},
		{"gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", true},
		{"no length", "HTTP/1.1 200 OK\r\n\r\nabc", true},
		{"not HTTP", "SSH-2.0-OpenSSH\r\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawServer(t, tt.answer, tt.close)
			g, err := New(Config{Addr: addr, Clients: 2, Requests: []Request{{Path: "/"}}})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			r := g.Window(ctx, time.Minute)
			if r.OK != 0 || r.Errors < 2 || len(r.Messages) == 0 {
				t.Fatalf("ok %d, errors %d (%q): want only errors, from both clients and after reconnecting", r.OK, r.Errors, r.Messages)
			}
		})
	}
}

// TestWindowKeepsAlive: a well-framed server is answered on the same connections.
func TestWindowKeepsAlive(t *testing.T) {
	addr := rawServer(t, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
	g, err := New(Config{Addr: addr, Clients: 2, Requests: []Request{{Path: "/a"}, {Path: "/b"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	conns := []net.Conn{g.clients[0].conn, g.clients[1].conn}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	r := g.Window(ctx, time.Minute)
	if r.OK == 0 || r.Errors != 0 {
		t.Fatalf("%+v", r)
	}
	if g.clients[0].conn != conns[0] || g.clients[1].conn != conns[1] {
		t.Error("the clients reconnected: keep-alive not kept")
	}
}

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		wantStatus int
		wantClose  bool
		wantErr    error
	}{
		{"ok", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200, false, nil},
		{"case of names", "HTTP/1.1 503 Service Unavailable\r\ncontent-LENGTH: 0\r\nCONNECTION: Close\r\n\r\n", 503, true, nil},
		{"304 without length", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", 304, false, nil},
		{"100 then 200", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, false, nil},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, true, nil},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 0, false, ErrResponse},
		{"no colon", "HTTP/1.1 200 OK\r\nbroken\r\n\r\n", 0, false, ErrResponse},
		{"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", 0, false, ErrResponse},
		{"truncated header", "HTTP/1.1 200 OK\r\nContent-Len", 0, false, io.ErrUnexpectedEOF},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 0, false, io.ErrUnexpectedEOF},
		{"nothing", "", 0, false, io.EOF},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200, false, nil},
		{"chunks, extension, trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n1a;x=y\r\nabcdefghijklmnopqrstuvwxyz\r\n2\r\nhi\r\n0\r\nDigest: z\r\n\r\n", 200, false, nil},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 0, false, ErrResponse},
		{"truncated chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", 0, false, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, closeAfter, err := ReadResponse(bufio.NewReader(strings.NewReader(tt.in)))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if status != tt.wantStatus || closeAfter != tt.wantClose {
				t.Fatalf("status %d close %v, want %d %v", status, closeAfter, tt.wantStatus, tt.wantClose)
			}
		})
	}
}

// TestReadResponseChunkedThenNext: after a chunked body, the next answer on the connection
// is read from its first byte.
func TestReadResponseChunkedThenNext(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx"))
	for _, want := range []int{200, 404} {
		status, _, err := ReadResponse(br)
		if err != nil || status != want {
			t.Fatalf("status %d, err %v; want %d", status, err, want)
		}
	}
}

// TestWindowTLS: against a real HTTPS server (crypto/tls, net/http), the clients verify its
// certificate with the CA pool given, speak HTTP/1.1 on kept connections, read the chunked
// answers net/http sends for a large body, and record which one-time requests were served.
func TestWindowTLS(t *testing.T) {
	big := strings.Repeat("x", 5000) // over net/http's buffer: sent chunked
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 || r.TLS == nil {
			http.Error(w, "want HTTP/1.1 over TLS", http.StatusBadRequest)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/used") {
			http.Error(w, "code used", http.StatusUnauthorized)
			return
		}
		io.WriteString(w, big)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	var reqs []Request
	for i := range 50 {
		p := "/code/" + strconv.Itoa(i)
		if i%5 == 0 {
			p = "/used/" + strconv.Itoa(i)
		}
		reqs = append(reqs, Request{Method: "POST", Path: p, Body: []byte("csr")})
	}
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	g, err := New(Config{Addr: srv.Listener.Addr().String(), Clients: 3, Requests: reqs, Once: true, RecordOK: true,
		TLS: &tls.Config{RootCAs: pool, ServerName: "example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	conns := []net.Conn{g.clients[0].conn, g.clients[1].conn, g.clients[2].conn}
	r := g.Window(context.Background(), time.Minute)
	if r.OK != 40 || r.Errors != 10 || r.Statuses["401"] != 10 {
		t.Fatalf("ok %d, errors %d, statuses %v, messages %q; want 40, 10 × 401", r.OK, r.Errors, r.Statuses, r.Messages)
	}
	slices.Sort(r.OKIndex)
	var want []int64
	for i := range int64(50) {
		if i%5 != 0 {
			want = append(want, i)
		}
	}
	if !slices.Equal(r.OKIndex, want) {
		t.Errorf("OKIndex %v, want %v", r.OKIndex, want)
	}
	for i, c := range g.clients {
		if c.conn != conns[i] {
			t.Errorf("client %d reconnected: keep-alive not kept", i)
		}
	}

	// Without the CA, no connection: the certificate is checked.
	if _, err := New(Config{Addr: srv.Listener.Addr().String(), Clients: 1, Requests: reqs, TLS: &tls.Config{}}); err == nil {
		t.Error("a server whose CA is not in the pool was accepted")
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 {
		t.Fatal("empty histogram: quantile not 0")
	}
	// 1..10000 µs, uniformly: the quantiles are known within a bucket's width (3%).
	for us := 1; us <= 10_000; us++ {
		h.Record(time.Duration(us) * time.Microsecond)
	}
	for _, tc := range []struct{ q, want float64 }{{0.5, 5000}, {0.9, 9000}, {0.99, 9900}, {1, 10_000}} {
		if got := h.Quantile(tc.q); got < tc.want*0.97 || got > tc.want*1.03 {
			t.Errorf("quantile %v: %v, want about %v", tc.q, got, tc.want)
		}
	}
	var o Histogram
	o.Record(time.Hour)
	h.Merge(&o)
	if h.Count() != 10_001 || h.Max() != float64(time.Hour/time.Microsecond) {
		t.Errorf("after merge: count %d max %v", h.Count(), h.Max())
	}
	for i := range histBuckets {
		lo, hi := bucketBounds(i)
		if bucketOf(lo) != i || bucketOf(hi-1) != i || (i+1 < histBuckets && bucketOf(hi) != i+1) {
			t.Fatalf("bucket %d: bounds %d..%d do not map back", i, lo, hi)
		}
	}
}

func TestRequestsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reqs.jsonl")
	in := []Request{{Path: "/ocsp/MEow"}, {Method: "POST", Path: "/ocsp", Header: map[string]string{"Content-Type": "application/ocsp-request"}, Body: []byte{0x30, 0x00}}}
	if err := WriteRequests(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadRequests(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[1].Method != "POST" || string(out[1].Body) != "\x30\x00" || out[0].Path != "/ocsp/MEow" {
		t.Fatalf("%+v", out)
	}
	wire := string(out[1].encode("h:1"))
	if !strings.HasPrefix(wire, "POST /ocsp HTTP/1.1\r\nHost: h:1\r\n") || !strings.Contains(wire, "Content-Length: 2\r\n") || !strings.HasSuffix(wire, "\r\n\r\n\x30\x00") {
		t.Fatalf("wire form %q", wire)
	}
}
