// Package bidi drives Firefox from Go tests through WebDriver BiDi, the protocol Firefox has
// built in (no geckodriver): [Start] runs firefox headless on a given profile, connects to its
// BiDi WebSocket and opens a session; [Browser] navigates, evaluates script, clicks and types
// as a user's input would, and takes screenshots.
//
// It holds only what keyarc's browser tests need: one top-level browsing context, JSON results
// of script, console messages to a callback. It imports only the standard library (its
// WebSocket client is ws.go) and is meant for tests only.
//
// # Concurrency
//
// A Browser's methods may be called from several goroutines; the browser answers each command
// in turn.
package bidi

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Error is a command the browser refused: its BiDi error code and message.
type Error struct {
	Method  string
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("bidi: %s: %s: %s", e.Method, e.Code, e.Message)
}

// ScriptError is an exception thrown by script the test evaluated.
type ScriptError struct{ Text string }

func (e *ScriptError) Error() string { return "bidi: script threw: " + e.Text }

// ErrClosed is returned for commands after the connection to the browser ended.
var ErrClosed = errors.New("bidi: connection to the browser closed")

// Options say how to start the browser.
type Options struct {
	// Exe is the browser's executable ("firefox" when empty, looked up in PATH).
	Exe string
	// Profile is the profile folder: the test puts its prefs (user.js) and trust anchors
	// (cert9.db) there before the start.
	Profile string
	// Env is the browser's whole environment (os.Environ() when nil).
	Env []string
	// Log receives the browser's own output (stderr and stdout lines) and the page's console
	// messages; nil drops them.
	Log func(string)
	// Width and Height are the viewport's size in CSS pixels (900 x 1400 when zero).
	Width, Height int
}

// Browser is a running browser with a BiDi session and its first tab.
type Browser struct {
	// Context is the top-level browsing context (the tab) the methods act on.
	Context string
	// Version is the browser's name and version, as the session reports them.
	Version string

	cmd  *exec.Cmd
	ws   *wsConn
	log  func(string)
	exit chan struct{}

	mu      sync.Mutex
	nextID  int
	pending map[int]chan reply
	err     error
}

type reply struct {
	result json.RawMessage
	err    error
}

var listening = regexp.MustCompile(`WebDriver BiDi listening on (ws://\S+)`)

// Start runs the browser headless on opts.Profile with WebDriver BiDi on a free loopback port,
// connects and opens a session that does not accept insecure certificates: a page whose
// certificate the profile does not trust fails to load. The context bounds the start only.
func Start(ctx context.Context, opts Options) (*Browser, error) {
	exe := opts.Exe
	if exe == "" {
		exe = "firefox"
	}
	if opts.Width == 0 {
		opts.Width, opts.Height = 900, 1400
	}
	logf := opts.Log
	if logf == nil {
		logf = func(string) {}
	}
	cmd := exec.Command(exe, "--headless", "--no-remote", "--profile", opts.Profile,
		"--remote-debugging-port", "0", "about:blank")
	cmd.Env = opts.Env
	// Its own process group: the content processes go with it in Close. And it dies with the
	// test process if that is killed (a test binary's timeout) before Close runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bidi: start %s: %w", exe, err)
	}
	b := &Browser{cmd: cmd, log: logf, exit: make(chan struct{}), pending: map[int]chan reply{}}
	found := make(chan string, 1)
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() {
		defer pipes.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
			logf("firefox: " + line)
		}
	}()
	go func() {
		defer pipes.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			logf("firefox: " + sc.Text())
		}
	}()
	go func() {
		pipes.Wait()
		cmd.Wait()
		close(b.exit)
	}()
	var addr string
	select {
	case addr = <-found:
	case <-b.exit:
		return nil, fmt.Errorf("bidi: %s exited before it listened for WebDriver BiDi: %v", exe, cmd.ProcessState)
	case <-ctx.Done():
		b.kill()
		return nil, fmt.Errorf("bidi: %s did not listen for WebDriver BiDi: %w", exe, ctx.Err())
	}
	b.ws, err = dialWS(ctx, addr+"/session")
	if err != nil {
		b.kill()
		return nil, err
	}
	go b.read()

	var sess struct {
		Capabilities struct {
			BrowserName         string `json:"browserName"`
			BrowserVersion      string `json:"browserVersion"`
			AcceptInsecureCerts bool   `json:"acceptInsecureCerts"`
		} `json:"capabilities"`
	}
	if err := b.Call(ctx, "session.new", map[string]any{"capabilities": map[string]any{
		"alwaysMatch": map[string]any{"acceptInsecureCerts": false},
	}}, &sess); err != nil {
		b.kill()
		return nil, err
	}
	if sess.Capabilities.AcceptInsecureCerts {
		b.kill()
		return nil, errors.New("bidi: the session accepts insecure certificates")
	}
	b.Version = sess.Capabilities.BrowserName + " " + sess.Capabilities.BrowserVersion
	var tree struct {
		Contexts []struct {
			Context string `json:"context"`
		} `json:"contexts"`
	}
	if err := b.Call(ctx, "browsingContext.getTree", map[string]any{"maxDepth": 0}, &tree); err != nil {
		b.kill()
		return nil, err
	}
	if len(tree.Contexts) == 0 {
		b.kill()
		return nil, errors.New("bidi: the browser has no tab")
	}
	b.Context = tree.Contexts[0].Context
	if err := b.Call(ctx, "browsingContext.setViewport", map[string]any{
		"context": b.Context, "viewport": map[string]any{"width": opts.Width, "height": opts.Height},
	}, nil); err != nil {
		b.kill()
		return nil, err
	}
	// The page's console and uncaught errors go to the log.
	if err := b.Call(ctx, "session.subscribe", map[string]any{"events": []string{"log.entryAdded"}}, nil); err != nil {
		b.kill()
		return nil, err
	}
	return b, nil
}

// read dispatches the browser's messages: answers to their callers, log events to the log.
func (b *Browser) read() {
	for {
		msg, err := b.ws.ReadMessage()
		if err != nil {
			b.mu.Lock()
			b.err = fmt.Errorf("%w: %v", ErrClosed, err)
			for id, ch := range b.pending {
				ch <- reply{err: b.err}
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		var m struct {
			Type    string          `json:"type"`
			ID      *int            `json:"id"`
			Result  json.RawMessage `json:"result"`
			Error   string          `json:"error"`
			Message string          `json:"message"`
			Method  string          `json:"method"`
			Params  json.RawMessage `json:"params"`
		}
		if err := json.Unmarshal(msg, &m); err != nil {
			b.log("bidi: unreadable message: " + err.Error())
			continue
		}
		switch m.Type {
		case "event":
			if m.Method == "log.entryAdded" {
				var e struct {
					Type  string `json:"type"`
					Level string `json:"level"`
					Text  string `json:"text"`
				}
				json.Unmarshal(m.Params, &e)
				b.log(fmt.Sprintf("browser %s %s: %s", e.Type, e.Level, e.Text))
			}
		case "success", "error":
			if m.ID == nil {
				b.log(fmt.Sprintf("bidi: error without a command: %s: %s", m.Error, m.Message))
				continue
			}
			b.mu.Lock()
			ch := b.pending[*m.ID]
			delete(b.pending, *m.ID)
			b.mu.Unlock()
			if ch == nil {
				continue
			}
			if m.Type == "error" {
				ch <- reply{err: &Error{Code: m.Error, Message: m.Message}}
			} else {
				ch <- reply{result: m.Result}
			}
		}
	}
}

// Call sends a command and decodes its result into result (when not nil).
func (b *Browser) Call(ctx context.Context, method string, params any, result any) error {
	if params == nil {
		params = map[string]any{}
	}
	ch := make(chan reply, 1)
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return b.err
	}
	b.nextID++
	id := b.nextID
	b.pending[id] = ch
	b.mu.Unlock()
	msg, err := json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	if err != nil {
		return err
	}
	if err := b.ws.WriteText(msg); err != nil {
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		return fmt.Errorf("bidi: %s: %w", method, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			var be *Error
			if errors.As(r.err, &be) {
				be.Method = method
			}
			return r.err
		}
		if result != nil {
			if err := json.Unmarshal(r.result, result); err != nil {
				return fmt.Errorf("bidi: %s: result: %w", method, err)
			}
		}
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		return fmt.Errorf("bidi: %s: %w", method, ctx.Err())
	}
}

// Navigate loads url in the tab and waits until the document is complete. A page the browser
// cannot load (an untrusted certificate, a refused connection) is an error.
func (b *Browser) Navigate(ctx context.Context, url string) error {
	return b.Call(ctx, "browsingContext.navigate", map[string]any{"context": b.Context, "url": url, "wait": "complete"}, nil)
}

// evaluate runs expr in the page and returns its serialised result.
func (b *Browser) evaluate(ctx context.Context, expr string) (json.RawMessage, error) {
	var res struct {
		Type             string          `json:"type"`
		Result           json.RawMessage `json:"result"`
		ExceptionDetails struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := b.Call(ctx, "script.evaluate", map[string]any{
		"expression": expr, "target": map[string]any{"context": b.Context}, "awaitPromise": true, "resultOwnership": "none",
	}, &res); err != nil {
		return nil, err
	}
	if res.Type == "exception" {
		return nil, &ScriptError{Text: res.ExceptionDetails.Text}
	}
	return res.Result, nil
}

// Eval evaluates a JavaScript expression in the page (a promise is awaited) and decodes its
// value, passed through JSON.stringify, into out (when not nil).
func (b *Browser) Eval(ctx context.Context, expr string, out any) error {
	raw, err := b.evaluate(ctx, "(async () => { const v = await ("+expr+"); return v === undefined ? 'null' : JSON.stringify(v); })()")
	if err != nil {
		return err
	}
	var rv struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	}
	if err := json.Unmarshal(raw, &rv); err != nil || rv.Type != "string" {
		return fmt.Errorf("bidi: eval %q: result %s", expr, raw)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal([]byte(rv.Value), out); err != nil {
		return fmt.Errorf("bidi: eval %q: %w", expr, err)
	}
	return nil
}

// WaitFor evaluates expr until it is true, or fails after within.
func (b *Browser) WaitFor(ctx context.Context, expr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var ok bool
		err := b.Eval(ctx, "Boolean("+expr+")", &ok)
		if err == nil && ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("bidi: waited %s for %s: %w", within, expr, err)
			}
			return fmt.Errorf("bidi: waited %s for %s", within, expr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// element returns the shared reference of the first element that matches a CSS selector,
// scrolled into the middle of the viewport (pointer actions do not scroll).
func (b *Browser) element(ctx context.Context, selector string) (map[string]any, error) {
	sel, _ := json.Marshal(selector)
	raw, err := b.evaluate(ctx, "(() => { const e = document.querySelector("+string(sel)+"); if (e) e.scrollIntoView({block: 'center'}); return e; })()")
	if err != nil {
		return nil, err
	}
	var rv struct {
		Type     string `json:"type"`
		SharedID string `json:"sharedId"`
	}
	if err := json.Unmarshal(raw, &rv); err != nil || rv.Type != "node" || rv.SharedID == "" {
		return nil, fmt.Errorf("bidi: no element %s", selector)
	}
	return map[string]any{"sharedId": rv.SharedID}, nil
}

// Click moves the pointer to the middle of the element a CSS selector finds and clicks it with
// the primary button, as a user's mouse would.
func (b *Browser) Click(ctx context.Context, selector string) error {
	el, err := b.element(ctx, selector)
	if err != nil {
		return err
	}
	return b.Call(ctx, "input.performActions", map[string]any{"context": b.Context, "actions": []any{map[string]any{
		"type": "pointer", "id": "mouse", "parameters": map[string]any{"pointerType": "mouse"},
		"actions": []any{
			map[string]any{"type": "pointerMove", "x": 0, "y": 0, "origin": map[string]any{"type": "element", "element": el}},
			map[string]any{"type": "pointerDown", "button": 0},
			map[string]any{"type": "pointerUp", "button": 0},
		},
	}}}, nil)
}

// Type clicks into the element a CSS selector finds and types text key by key.
func (b *Browser) Type(ctx context.Context, selector, text string) error {
	if err := b.Click(ctx, selector); err != nil {
		return err
	}
	var keys []any
	for _, r := range text {
		keys = append(keys, map[string]any{"type": "keyDown", "value": string(r)}, map[string]any{"type": "keyUp", "value": string(r)})
	}
	return b.Call(ctx, "input.performActions", map[string]any{"context": b.Context, "actions": []any{map[string]any{
		"type": "key", "id": "keyboard", "actions": keys,
	}}}, nil)
}

// Screenshot returns a PNG of the whole document.
func (b *Browser) Screenshot(ctx context.Context) ([]byte, error) {
	var res struct {
		Data string `json:"data"`
	}
	if err := b.Call(ctx, "browsingContext.captureScreenshot", map[string]any{"context": b.Context, "origin": "document"}, &res); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(res.Data)
}

// Close ends the session and the browser, and waits for it to exit (killing its process group
// after 15 seconds). It is safe to call twice.
func (b *Browser) Close() error {
	select {
	case <-b.exit:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.Call(ctx, "browser.close", nil, nil)
	select {
	case <-b.exit:
	case <-time.After(15 * time.Second):
		b.kill()
	}
	if b.ws != nil {
		b.ws.Close()
	}
	return nil
}

// kill ends the browser's process group and waits for it.
func (b *Browser) kill() {
	if b.cmd.Process != nil {
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-b.exit:
	case <-time.After(10 * time.Second):
	}
	if b.ws != nil {
		b.ws.Close()
	}
}

// Env returns the environment for a browser with its own HOME (so nothing of the machine's
// user is read or written), and crash reports off.
func Env(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "HOME" || k == "XDG_CACHE_HOME" || k == "XDG_CONFIG_HOME" || k == "DISPLAY" || k == "WAYLAND_DISPLAY" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home, "MOZ_CRASHREPORTER_DISABLE=1")
}

var _ io.Closer = (*Browser)(nil)
