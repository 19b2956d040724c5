package loadgen

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
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
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false},
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
