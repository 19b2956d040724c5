// Package loadgen is the load generator of `keyarc bench`: it drives a server over real TCP
// with a set of prepared HTTP/1.1 requests on N keep-alive connections, for timed windows, and
// reports per window the requests answered, the errors, the rate, the latency distribution and
// its own CPU time. It runs in its own process (the hidden `keyarc loadgen` command, see
// [Main]), so that what a window measures of the server (its CPU time read from /proc) is the
// server's alone.
//
// The client is kept cheap, as it shares the machine's cores with the server it measures:
// requests are encoded once, before the first window, and answers are read by a minimal
// HTTP/1.1 reader on the connection, which still checks the status code against the expected
// one and reads the body by its Content-Length or its chunks. An answer with another status,
// one that cannot be framed, or a connection fault counts as an error; after a fault the
// client reconnects and goes on.
//
// With [Config.TLS] each connection is HTTPS, set up by crypto/tls as any Go client does it
// (the CA pool of the server, HTTP/1.1 by ALPN), and kept for the whole run: the handshake is
// paid once per connection, as by a real keep-alive client, not per request.
//
// # What it must not import
//
// The standard library only: no server package, so that it measures the appliance from
// outside, as any client would.
//
// # Concurrency
//
// A [Generator]'s windows run one at a time ([Generator.Window] is not safe for concurrent
// use); each window runs one goroutine per client connection and waits for them.
package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Request is one prepared HTTP/1.1 request.
type Request struct {
	Method string `json:"method"`
	// Path is the request target as sent: already escaped.
	Path string `json:"path"`
	// Header holds extra header fields (Content-Type, Authorization...); Host, Content-Length
	// and User-Agent are added.
	Header map[string]string `json:"header,omitempty"`
	Body   []byte            `json:"body,omitempty"`
}

// encode returns the request's bytes on the wire for host.
func (r Request) encode(host string) []byte {
	var b bytes.Buffer
	m := r.Method
	if m == "" {
		m = "GET"
	}
	b.WriteString(m + " " + r.Path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: keyarc-loadgen\r\n")
	for k, v := range r.Header {
		b.WriteString(k + ": " + v + "\r\n")
	}
	if len(r.Body) > 0 || m == "POST" || m == "PUT" {
		b.WriteString("Content-Length: " + strconv.Itoa(len(r.Body)) + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(r.Body)
	return b.Bytes()
}

// Config is what a [Generator] drives.
type Config struct {
	// Addr is the server's host:port.
	Addr string
	// Clients is the number of keep-alive connections, each with one request in flight.
	Clients int
	// Requests are sent in turn, shared by all clients.
	Requests []Request
	// Once sends each request at most once over all windows (one-time enrollment codes): a
	// window ends early when they run out. Otherwise requests are sent round and round.
	Once bool
	// Status is the HTTP status every answer must have (default 200).
	Status int
	// Timeout bounds one request and its answer (default 30 s).
	Timeout time.Duration
	// TLS, when set, makes every connection HTTPS with this client configuration (its
	// RootCAs, ServerName...); NextProtos is set to HTTP/1.1 only.
	TLS *tls.Config
	// RecordOK keeps the index in Requests of every request answered with Status, in
	// [Result.OKIndex]: with Once, which one-time requests the server says it served.
	RecordOK bool
}

// ErrConfig means the configuration cannot be run: no address, no client or no request.
var ErrConfig = errors.New("loadgen: configuration")

// Generator holds the prepared requests and the open connections between windows.
type Generator struct {
	cfg     Config
	wire    [][]byte
	next    atomic.Int64
	clients []*client
	window  int
}

type client struct {
	g    *Generator
	conn net.Conn
	br   *bufio.Reader
	hist Histogram
	ok   int64
	errs int64
	// Statuses other than the expected one, and faults, by text; at most a few messages.
	statuses map[int]int64
	messages []string
	okIdx    []int64
}

// New prepares the requests of cfg and opens its connections.
//
// # Errors
//
// [ErrConfig] for a configuration without address, clients or requests; the dialer's error
// when the server cannot be reached.
func New(cfg Config) (*Generator, error) {
	switch {
	case cfg.Addr == "":
		return nil, fmt.Errorf("%w: no server address", ErrConfig)
	case cfg.Clients < 1:
		return nil, fmt.Errorf("%w: %d clients, at least 1", ErrConfig, cfg.Clients)
	case len(cfg.Requests) == 0:
		return nil, fmt.Errorf("%w: no requests", ErrConfig)
	}
	if cfg.Status == 0 {
		cfg.Status = 200
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.TLS != nil {
		cfg.TLS = cfg.TLS.Clone()
		cfg.TLS.NextProtos = []string{"http/1.1"}
	}
	g := &Generator{cfg: cfg, wire: make([][]byte, len(cfg.Requests))}
	for i, r := range cfg.Requests {
		g.wire[i] = r.encode(cfg.Addr)
	}
	for range cfg.Clients {
		c := &client{g: g, statuses: map[int]int64{}}
		if err := c.dial(); err != nil {
			g.Close()
			return nil, fmt.Errorf("loadgen: connect to %s: %w", cfg.Addr, err)
		}
		g.clients = append(g.clients, c)
	}
	return g, nil
}

// Close closes the connections.
func (g *Generator) Close() {
	for _, c := range g.clients {
		if c.conn != nil {
			c.conn.Close()
			c.conn = nil
		}
	}
}

// Result is what one window measured.
type Result struct {
	Window int `json:"window"`
	// OK counts answers with the expected status; Errors everything else (another status,
	// an answer that cannot be read, a connection fault).
	OK     int64 `json:"ok"`
	Errors int64 `json:"errors"`
	// Seconds is the window's length, from its start until the last answer.
	Seconds float64 `json:"seconds"`
	// Rate is OK per second.
	Rate float64 `json:"rate"`
	// Latencies counts the latencies recorded: one per answer or fault.
	Latencies int64 `json:"latencies"`
	// Latency quantiles of the answers counted in OK and Errors, in microseconds.
	P50 float64 `json:"p50_us"`
	P90 float64 `json:"p90_us"`
	P99 float64 `json:"p99_us"`
	Max float64 `json:"max_us"`
	// Statuses counts answers by HTTP status other than the expected one.
	Statuses map[string]int64 `json:"statuses,omitempty"`
	// Messages are the first few distinct error messages.
	Messages []string `json:"messages,omitempty"`
	// Exhausted: [Config.Once] and the requests ran out before the window's end.
	Exhausted bool `json:"exhausted,omitempty"`
	// ClientCPUSeconds is the load generator's own CPU time (user and system) over the
	// window, when the system reports it.
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
	// OKIndex holds, with [Config.RecordOK], the index in [Config.Requests] of each request
	// counted in OK, in no particular order.
	OKIndex []int64 `json:"ok_index,omitempty"`
}

const maxMessages = 5

// Window drives the server for d (or until ctx ends, or the requests run out with
// [Config.Once]) and returns what it measured. Requests in flight at the end are waited for
// and counted.
func (g *Generator) Window(ctx context.Context, d time.Duration) Result {
	g.window++
	cpu0 := selfCPU()
	start := time.Now()
	deadline := start.Add(d)
	var exhausted atomic.Bool
	var wg sync.WaitGroup
	for _, c := range g.clients {
		c.hist.Reset()
		c.ok, c.errs = 0, 0
		clear(c.statuses)
		c.messages = c.messages[:0]
		c.okIdx = c.okIdx[:0]
		wg.Go(func() {
			if !c.loop(ctx, deadline) {
				exhausted.Store(true)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	r := Result{Window: g.window, Seconds: el.Seconds(), Exhausted: exhausted.Load(), ClientCPUSeconds: (selfCPU() - cpu0).Seconds()}
	var h Histogram
	seen := map[string]bool{}
	for _, c := range g.clients {
		h.Merge(&c.hist)
		r.OK += c.ok
		r.Errors += c.errs
		r.OKIndex = append(r.OKIndex, c.okIdx...)
		for s, n := range c.statuses {
			if r.Statuses == nil {
				r.Statuses = map[string]int64{}
			}
			r.Statuses[strconv.Itoa(s)] += n
		}
		for _, m := range c.messages {
			if !seen[m] && len(r.Messages) < maxMessages {
				seen[m] = true
				r.Messages = append(r.Messages, m)
			}
		}
	}
	if el > 0 {
		r.Rate = float64(r.OK) / el.Seconds()
	}
	r.Latencies = h.Count()
	r.P50, r.P90, r.P99, r.Max = h.Quantile(0.5), h.Quantile(0.9), h.Quantile(0.99), h.Max()
	return r
}

// loop sends requests until the deadline; it returns false when the requests ran out.
func (c *client) loop(ctx context.Context, deadline time.Time) bool {
	g := c.g
	n := int64(len(g.wire))
	for {
		t0 := time.Now()
		if !t0.Before(deadline) || ctx.Err() != nil {
			return true
		}
		i := g.next.Add(1) - 1
		if i >= n {
			if g.cfg.Once {
				return false
			}
			i %= n
		}
		if c.conn == nil {
			if err := c.dial(); err != nil {
				c.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		status, err := c.do(g.wire[i])
		c.hist.Record(time.Since(t0))
		switch {
		case err != nil:
			c.fail(err)
			c.conn.Close()
			c.conn = nil
		case status != g.cfg.Status:
			c.errs++
			c.statuses[status]++
			c.note(fmt.Sprintf("HTTP %d, want %d", status, g.cfg.Status))
		default:
			c.ok++
			if g.cfg.RecordOK {
				c.okIdx = append(c.okIdx, i)
			}
		}
	}
}

func (c *client) fail(err error) {
	c.errs++
	c.note(err.Error())
}

func (c *client) note(m string) {
	if len(c.messages) < maxMessages {
		c.messages = append(c.messages, m)
	}
}

func (c *client) dial() error {
	d := &net.Dialer{Timeout: c.g.cfg.Timeout}
	var conn net.Conn
	var err error
	if c.g.cfg.TLS != nil {
		conn, err = (&tls.Dialer{NetDialer: d, Config: c.g.cfg.TLS}).Dial("tcp", c.g.cfg.Addr)
	} else {
		conn, err = d.Dial("tcp", c.g.cfg.Addr)
	}
	if err != nil {
		return err
	}
	c.conn = conn
	if c.br == nil {
		c.br = bufio.NewReaderSize(conn, 32<<10)
	} else {
		c.br.Reset(conn)
	}
	return nil
}

// do writes one request and reads its answer; it returns the answer's status. An error
// leaves the connection unusable.
func (c *client) do(req []byte) (int, error) {
	c.conn.SetDeadline(time.Now().Add(c.g.cfg.Timeout))
	if _, err := c.conn.Write(req); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}
	status, closeAfter, err := ReadResponse(c.br)
	if err != nil {
		return 0, err
	}
	if closeAfter {
		c.conn.Close()
		c.conn = nil
	}
	return status, nil
}

// Errors of [ReadResponse].
var (
	// ErrResponse means the answer is not an HTTP/1.1 response this reader can frame.
	ErrResponse = errors.New("loadgen: bad response")
)

// ReadResponse reads one HTTP/1.x response from br and discards its body, which must be
// framed by a Content-Length or by chunks (Transfer-Encoding: chunked), or be empty by its
// status (1xx, 204, 304). It returns the status code and whether the server closes the
// connection after it (Connection: close, or HTTP/1.0 without keep-alive).
//
// # Errors
//
// [ErrResponse], saying what is wrong, for a malformed status line, header or chunk, or a
// body framed neither way; the reader's error (io.EOF, io.ErrUnexpectedEOF, a timeout) when
// the connection ends or stalls first.
func ReadResponse(br *bufio.Reader) (status int, closeAfter bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, false, fmt.Errorf("%w: status line %q", ErrResponse, trim(line))
	}
	http10 := line[7] == '0'
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil || status < 100 {
		return 0, false, fmt.Errorf("%w: status line %q", ErrResponse, trim(line))
	}
	closeAfter = http10
	length := int64(-1)
	chunked := false
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				err = fmt.Errorf("%w: header line longer than the buffer", ErrResponse)
			}
			return 0, false, err
		}
		h := trim(line)
		if len(h) == 0 {
			break
		}
		colon := bytes.IndexByte(h, ':')
		if colon <= 0 {
			return 0, false, fmt.Errorf("%w: header line %q", ErrResponse, h)
		}
		name, value := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 {
				return 0, false, fmt.Errorf("%w: Content-Length %q", ErrResponse, value)
			}
			length = n
		case asciiEqualFold(name, "transfer-encoding"):
			if !asciiEqualFold(value, "chunked") {
				return 0, false, fmt.Errorf("%w: Transfer-Encoding %q (only chunked is read)", ErrResponse, value)
			}
			chunked = true
		case asciiEqualFold(name, "connection"):
			if asciiEqualFold(value, "close") {
				closeAfter = true
			} else if asciiEqualFold(value, "keep-alive") {
				closeAfter = false
			}
		}
	}
	if status < 200 || status == 204 || status == 304 {
		if status < 200 {
			// An interim answer (100 Continue): the final one follows.
			return ReadResponse(br)
		}
		return status, closeAfter, nil
	}
	if chunked {
		if err := discardChunks(br); err != nil {
			return 0, false, err
		}
		return status, closeAfter, nil
	}
	if length < 0 {
		return 0, false, fmt.Errorf("%w: HTTP %d without Content-Length", ErrResponse, status)
	}
	if n, err := br.Discard(int(length)); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, false, fmt.Errorf("body: %d of %d bytes: %w", n, length, err)
	}
	return status, closeAfter, nil
}

// discardChunks reads and discards a chunked body (RFC 9112 §7.1), its trailer included.
func discardChunks(br *bufio.Reader) error {
	eof := func(err error) error {
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return eof(err)
		}
		h := trim(line)
		if i := bytes.IndexByte(h, ';'); i >= 0 {
			h = h[:i] // chunk extensions
		}
		h = bytes.TrimSpace(h)
		size, err := strconv.ParseUint(string(h), 16, 62)
		if err != nil || len(h) == 0 {
			return fmt.Errorf("%w: chunk size %q", ErrResponse, h)
		}
		if size == 0 {
			// The trailer: header lines up to an empty one.
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return eof(err)
				}
				if len(trim(line)) == 0 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(size)); err != nil {
			return fmt.Errorf("chunk of %d bytes: %w", size, eof(err))
		}
		line, err = br.ReadSlice('\n')
		if err != nil {
			return eof(err)
		}
		if len(trim(line)) != 0 {
			return fmt.Errorf("%w: chunk longer than its size %d", ErrResponse, size)
		}
	}
}

func trim(b []byte) []byte { return bytes.TrimRight(b, "\r\n") }

// asciiEqualFold compares b with the lower-case ASCII string s, ignoring case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// selfCPU returns this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
