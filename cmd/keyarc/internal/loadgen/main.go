package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// Main is the hidden `keyarc loadgen` command, which `keyarc bench` starts as a child process:
//
//	keyarc loadgen --addr HOST:PORT --requests FILE [--clients 8] [--duration 20s]
//	    [--windows 3] [--warmup 2s] [--once] [--record-ok] [--status 200] [--control]
//	    [--tls-ca CA.pem [--tls-server-name NAME]]
//
// FILE holds one JSON [Request] per line. With --tls-ca the connections are HTTPS, the
// server's certificate checked against the PEM certificates of CA.pem (and NAME, by default
// the host of --addr). With --record-ok each result lists the requests answered with --status
// ([Result.OKIndex]). Each window's [Result] is written to standard output
// as one JSON line. With --control, a line {"ready":true} is written once the connections are
// open and the warm-up is done, and each window starts when a line is read from standard input,
// so that the parent can read the server's CPU time just before and just after each window.
//
//	keyarc loadgen static --addr HOST:PORT [--size 1500]
//
// serves a fixed body of --size bytes to every request with net/http, until SIGINT or SIGTERM:
// the ceiling a Go HTTP server reaches on this machine with the same load generator.
//
// # Errors
//
// A bad command line or requests file, and [New]'s errors.
func Main(args []string) error {
	if len(args) > 0 && args[0] == "static" {
		return mainStatic(args[1:])
	}
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address HOST:PORT (required)")
	file := fs.String("requests", "", "file of requests, one JSON object a line (required)")
	clients := fs.Int("clients", 8, "keep-alive connections, one request in flight each")
	duration := fs.Duration("duration", 20*time.Second, "length of each window")
	windows := fs.Int("windows", 3, "windows")
	warmup := fs.Duration("warmup", 2*time.Second, "unreported warm-up before the first window")
	once := fs.Bool("once", false, "send each request at most once (a window ends early when they run out)")
	status := fs.Int("status", 200, "the HTTP status every answer must have")
	recordOK := fs.Bool("record-ok", false, "list in each result the index of every request answered with --status")
	tlsCA := fs.String("tls-ca", "", "HTTPS: PEM file of the CA certificates that verify the server")
	tlsName := fs.String("tls-server-name", "", "HTTPS: the name the server's certificate must have (default: the host of --addr)")
	control := fs.Bool("control", false, "write {\"ready\":true} when ready, and start each window on a line read from standard input")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *addr == "" || *file == "" || fs.NArg() > 0 {
		return errors.New("loadgen: --addr and --requests are required, and no arguments")
	}
	reqs, err := ReadRequests(*file)
	if err != nil {
		return err
	}
	cfg := Config{Addr: *addr, Clients: *clients, Requests: reqs, Once: *once, Status: *status, RecordOK: *recordOK}
	if *tlsCA != "" {
		if cfg.TLS, err = clientTLS(*tlsCA, *tlsName, *addr); err != nil {
			return err
		}
	}
	g, err := New(cfg)
	if err != nil {
		return err
	}
	defer g.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *warmup > 0 {
		g.Window(ctx, *warmup)
		g.window = 0
	}
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewReader(os.Stdin)
	if *control {
		if err := out.Encode(map[string]bool{"ready": true}); err != nil {
			return err
		}
	}
	for range *windows {
		if *control {
			if _, err := in.ReadString('\n'); err != nil {
				if errors.Is(err, io.EOF) {
					return nil // the parent is done
				}
				return fmt.Errorf("loadgen: read control line: %w", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := out.Encode(g.Window(ctx, *duration)); err != nil {
			return err
		}
	}
	return nil
}

// clientTLS is the TLS configuration of an HTTPS client that trusts the PEM certificates of
// caFile and expects name (default: the host of addr).
func clientTLS(caFile, name, addr string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("loadgen: --tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("loadgen: --tls-ca %s: no PEM certificate in it", caFile)
	}
	if name == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("loadgen: --addr %q: %w", addr, err)
		}
		name = host
	}
	return &tls.Config{RootCAs: pool, ServerName: name}, nil
}

// ReadRequests reads a requests file: one JSON [Request] a line.
func ReadRequests(path string) ([]Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	defer f.Close()
	var out []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r Request
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("loadgen: %s line %d: %w", path, n, err)
		}
		if r.Path == "" {
			return nil, fmt.Errorf("loadgen: %s line %d: no path", path, n)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("loadgen: %s: %w", path, err)
	}
	return out, nil
}

// WriteRequests writes reqs as a requests file for [ReadRequests].
func WriteRequests(path string, reqs []Request) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("loadgen: %w", err)
	}
	bw := bufio.NewWriter(f)
	enc := json.NewEncoder(bw)
	for _, r := range reqs {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return fmt.Errorf("loadgen: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("loadgen: %w", err)
	}
	return f.Close()
}

// mainStatic is `keyarc loadgen static`.
func mainStatic(args []string) error {
	fs := flag.NewFlagSet("loadgen static", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	size := fs.Int("size", 1500, "bytes of the body served")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	srv := &http.Server{Handler: StaticHandler(*size), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// StaticHandler answers every request with the same size bytes, as application/octet-stream:
// a trivial handler, the ceiling of net/http with a given load generator.
func StaticHandler(size int) http.Handler {
	body := make([]byte, size)
	n := strconv.Itoa(size)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", n)
		w.Write(body)
	})
}
