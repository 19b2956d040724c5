// Package hsm is keyarc's only door to PKCS#11 tokens.
//
// It owns the module and the token: loading the PKCS#11 library named by an RFC 7512
// URI, logging in once with a PIN read from a pin-source, generating keys inside the
// token with explicit attributes (sensitive, never extractable, one purpose, random
// CKA_ID, a label), finding them by label, and handing them out as plain
// [crypto.Signer] and [crypto.Decrypter] values that count and time every operation.
// It knows nothing of certificates, escrow, users or HTTP.
//
// hsm is the only keyarc package that may import github.com/ThalesGroup/crypto11 and
// github.com/miekg/pkcs11; no other keyarc package may be imported by it.
//
// # Ownership of the module
//
// A PKCS#11 module has one owner per process. crypto11 initialises the module (it
// refcounts it per path and finalises it when its last context closes); this package
// then opens one raw miekg session of its own per [Token] (for C_GetTokenInfo,
// C_FindObjects over every object class, C_GetSessionInfo, and C_CopyObject of the session
// copies of keys, see below) and treats
// CKR_CRYPTOKI_ALREADY_INITIALIZED as success. [Token.Close] closes that raw session
// before the crypto11 context, so C_Finalize never runs under a live session.
//
// # Login
//
// Open logs in exactly once. A wrong PIN returns [ErrPINIncorrect] and is never retried:
// many HSMs lock the user PIN after a few failures (SoftHSM does not; lockout is then the
// appliance's job). A token may be open only once per process ([ErrTokenInUse]): a second
// login on an already logged-in token returns CKR_USER_ALREADY_LOGGED_IN without checking
// the PIN, which would make a wrong PIN look right.
//
// When a token that stopped answering comes back and refuses the PIN, the Token stops
// there: one C_Login. It tries once more only when the pin-source changes (a PIN file's
// content or modification time) or when asked ([Token.RetryLogin], SIGHUP in keyarc
// serve); each such attempt is again a single C_Login. A wrong PIN on a second crypto11
// context can break every context of the module (crypto11 issue 113): the old context is
// always closed before a new login.
//
// # Key identities
//
// [Token.Expect] pins the public key a label must name (the key of a certificate the
// caller checked). After every reconnection the Token finds each pinned label again and
// compares; a token that comes back holding another key under a known label is not used
// ([ErrKeyChanged]) until the expected keys are back.
//
// # Concurrency
//
// A [Token] and the keys it returns are safe for concurrent use. At most
// [Options.MaxSessions] operations run at once; an operation that cannot get a session
// within [Options.PoolWaitTimeout] fails with [ErrPoolExhausted] instead of waiting for
// ever. Operations run on their caller's goroutine. Key generations run one at a time;
// one waiting behind a generation stuck in a hung token fails with [ErrTokenGone] once the
// token is found not answering, without waiting for the module. Close waits for running
// operations (at most CallTimeout) and is safe to call more than once.
//
// # Time limits
//
// A token can stop answering without disconnecting (a network HSM whose server froze):
// its calls then block in C code that cannot be cancelled. An operation (sign, decrypt,
// generate, find, destroy) runs its calls inline on its caller's goroutine, watched by a
// timer set to [Options.CallTimeout] ([Options.KeyGenTimeout] for key generation). When
// the limit passes while the call is still inside the module, the timer does at once what
// a failure would: it counts the operation (result token_gone), retires the connection (no
// new call starts on it; its sessions are closed, and its crypto11 context with them, once
// its last call has returned), marks the token as not answering and logs once. From then
// on [Token.Ping] fails and every new operation fails at once with [ErrTokenGone], and the
// next Ping reconnects once the token answers again. The callers already inside the module
// stay there until it returns (nothing can take them out); each then gets [ErrTokenHung],
// which is also ErrTokenGone, whatever the module answered.
//
// What must never block runs on a goroutine of its own and its caller waits at most
// CallTimeout: Ping, a login (Open and reconnection), the key checks of [Token.Expect] and
// of a reconnection, and Close. Past the limit they return ErrTokenHung and leave the
// call behind; Close then leaves the stuck calls behind too: a process can always stop.
//
// # Session copies of keys
//
// A key handed out by [Token.Signer] or [Token.Decrypter] works through a session copy of
// its private half, made on its first use on each connection (C_CopyObject with CKA_TOKEN
// false and a label of its own; private, sensitive and never extractable like the original):
// SoftHSM looks a token object up in its store on every operation's init, and a session
// object lives in memory. A token that refuses the copy is used as before, after one log
// line. Copies die with their connection and with [Token.DestroyKey] of their key.
//
// # Secrets
//
// PINs are read from a file or an environment variable, kept only for the login, and
// never appear in an error, a log line or a metric. Private keys never leave the token.
package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors returned by this package. Test them with errors.Is; the wrapping error adds
// the operation, the key label and the PKCS#11 return value.
var (
	// ErrModuleNotLoadable: the PKCS#11 library is missing or is not a PKCS#11 module.
	ErrModuleNotLoadable = errors.New("hsm: PKCS#11 module not loadable")
	// ErrTokenNotFound: no slot holds a token with the requested label.
	ErrTokenNotFound = errors.New("hsm: token not found")
	// ErrPINIncorrect: the token refused the PIN (CKR_PIN_INCORRECT and friends). Fix
	// the pin-source; the login is not retried.
	ErrPINIncorrect = errors.New("hsm: PIN incorrect")
	// ErrKeyNotFound: no key pair has the requested label.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyAmbiguous: more than one private key has the requested label.
	ErrKeyAmbiguous = errors.New("hsm: more than one key has this label")
	// ErrKeyExists: an object with the label already exists; keys are never overwritten.
	ErrKeyExists = errors.New("hsm: an object with this label already exists")
	// ErrPoolExhausted: no session became free within Options.PoolWaitTimeout. Retry
	// later (HTTP 503).
	ErrPoolExhausted = errors.New("hsm: all sessions busy")
	// ErrTokenGone: the token is not usable now: it or its module stopped answering
	// (removed, restarted, session lost), or on coming back it refused the PIN
	// ([ErrPINIncorrect] is then in the chain too) or holds other keys than those the
	// caller pinned ([ErrKeyChanged] in the chain), or did not answer in time
	// ([ErrTokenHung], which matches ErrTokenGone). It is always a fault of the token, never
	// of a request. [Token.Ping] reconnects.
	ErrTokenGone = errors.New("hsm: token gone")
	// ErrTokenFault: the token answered an operation with a PKCS#11 error that is no verdict
	// on what it was asked (CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR, CKR_DEVICE_MEMORY, a code
	// this package does not name...): the token failed, not the request. Unlike
	// [ErrTokenGone] the token is still used (the next operation may well succeed); retry
	// later (HTTP 503). The PKCS#11 return value stays in the chain.
	ErrTokenFault = errors.New("hsm: the token failed the operation")
	// ErrKeyChanged: a label names another key pair than the one pinned with
	// [Token.Expect] or first found (the token was swapped for one holding other keys
	// under the same labels), or the pinned key is missing or ambiguous.
	ErrKeyChanged = errors.New("hsm: the token holds another key under this label")
	// ErrTokenStoreNotFound: the module could not find its token store (for SoftHSM, its
	// configuration file or its token directory); the message says where it looked.
	ErrTokenStoreNotFound = errors.New("hsm: token store not found")
	// ErrMechanism: the token does not support the mechanism or its parameters, or the
	// caller asked for one this package refuses (PKCS#1 v1.5 decryption, for example).
	ErrMechanism = errors.New("hsm: mechanism not supported")

	// ErrInvalidURI: the PKCS#11 URI is malformed or asks for something refused.
	ErrInvalidURI = errors.New("hsm: invalid PKCS#11 URI")
	// ErrPINSource: the pin-source could not be read.
	ErrPINSource = errors.New("hsm: cannot read PIN")
	// ErrTokenInUse: this process has the token open already.
	ErrTokenInUse = errors.New("hsm: token already open in this process")
	// ErrClosed: the Token was closed.
	ErrClosed = errors.New("hsm: token closed")
	// ErrKeyUsage: the key exists but its attributes forbid this use (a decrypt-only key
	// asked for as a Signer, for example).
	ErrKeyUsage = errors.New("hsm: key not permitted for this use")
	// ErrDecrypt: the token could not decrypt the ciphertext (wrong key, wrong padding
	// or hash, or corrupt data).
	ErrDecrypt = errors.New("hsm: decryption failed")
)

// Defaults for [Options].
const (
	DefaultMaxSessions     = 8
	DefaultPoolWaitTimeout = 5 * time.Second
	DefaultCallTimeout     = 10 * time.Second
	DefaultKeyGenTimeout   = 60 * time.Second
)

// Options tunes [Open]. The zero value is usable.
type Options struct {
	// MaxSessions bounds the operations running at once on the token (default 8).
	// The token sees MaxSessions+2 sessions: one crypto11 keeps logged in and one raw
	// session for Ping and object searches.
	MaxSessions int
	// PoolWaitTimeout bounds the wait for a free session (default 5s); a timeout is
	// ErrPoolExhausted, never a hang.
	PoolWaitTimeout time.Duration
	// CallTimeout is the time limit on each call into the module (default 10s). It must
	// exceed the slowest operation but key generation.
	//
	// An operation (once it has a session) runs inline on its caller's goroutine: at the
	// limit, a watchdog marks the token as not answering and retires the connection, so
	// that Ping and every later operation fail at once with [ErrTokenGone]; the caller
	// inside the module waits for it to return, and then gets [ErrTokenHung]. Ping, a
	// login and Close return ErrTokenHung at the limit itself and leave the call behind.
	// The token is reconnected by Ping once it answers again.
	CallTimeout time.Duration
	// KeyGenTimeout is CallTimeout for key generation, which takes seconds for RSA-4096
	// (default 60s).
	KeyGenTimeout time.Duration
	// Registerer receives the metrics; nil means no metrics. Several Tokens may share
	// one Registerer: they share the collectors.
	Registerer prometheus.Registerer
	// Logger receives operational logs (never a PIN); nil discards them.
	Logger *slog.Logger
}

// Token is an open, logged-in PKCS#11 token. Make one with [Open]; Close it when done.
type Token struct {
	label  string
	module string
	key    string // registry key: module path + token label

	sem         chan struct{}
	wait        time.Duration
	callTimeout time.Duration
	genTimeout  time.Duration
	met         *metrics
	log         *slog.Logger

	// genSem serialises GenerateKey's check-then-create (a mutex that a waiter can give up;
	// see lockGen).
	genSem chan struct{}

	// What a reconnection needs: the PIN is read again from its source, never kept.
	pinSource   string
	maxSessions int

	// recMu serialises reconnections (Ping, when the token is broken or faulty).
	recMu sync.Mutex

	mu     sync.RWMutex // guards the fields below; never held across a call that may hang
	closed bool
	// cur is the connection operations run on; nil between a retirement and the next login.
	cur *conn
	// gen counts connections; keys found under an older one are found again.
	gen uint64
	// retiring, when not nil, is the close of a retired connection still running (a call
	// on it has not returned): no new login is tried before it ends.
	retiring *closing
	// dialing, when not nil, is a login that did not end in time.
	dialing *dialing
	// broken is set when the token stops answering: operations then fail at once with
	// ErrTokenGone, and Ping tries to reconnect.
	broken atomic.Bool
	// fault, when not nil, is why the token is not used although it may answer (a refused
	// PIN, a changed key); faulty mirrors fault != nil for the lock-free fast path.
	fault  error
	faulty atomic.Bool
	// refused is the pin-source's stamp when the token last refused the PIN, nil otherwise:
	// no login is tried again until the source changes or retry is set.
	refused *pinStamp
	retry   atomic.Bool
	// expected are the pinned key identities, checked after every reconnection.
	expected []expectation
	// failing, when not nil, is the last key operation the token failed although it answers
	// ([ErrTokenFault]); Ping probes it (see failing.go).
	failing atomic.Pointer[failure]
}

// expectation is a label and the public key it must name.
type expectation struct {
	label string
	pub   crypto.PublicKey
}

// openTokens is the process-wide registry of open tokens (module path + token label).
var openTokens = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// Open loads the module named by the URI's module-path, finds the token by its label,
// reads the PIN from pin-source and logs in once.
//
// # Errors
//
// [ErrInvalidURI] (malformed URI, or no token, module-path or pin-source),
// [ErrModuleNotLoadable], [ErrTokenNotFound], [ErrPINSource], [ErrPINIncorrect],
// [ErrTokenInUse], [ErrTokenGone].
func Open(uri string, opts Options) (*Token, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Token == "":
		return nil, fmt.Errorf("%w: token label (token=) required", ErrInvalidURI)
	case u.ModulePath == "":
		return nil, fmt.Errorf("%w: module-path required", ErrInvalidURI)
	case u.PINSource == "":
		return nil, fmt.Errorf("%w: pin-source required", ErrInvalidURI)
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	if opts.PoolWaitTimeout <= 0 {
		opts.PoolWaitTimeout = DefaultPoolWaitTimeout
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.KeyGenTimeout <= 0 {
		opts.KeyGenTimeout = DefaultKeyGenTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("token", u.Token)
	met, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}

	module := u.ModulePath
	if p, err := filepath.EvalSymlinks(module); err == nil {
		module = p
	}
	if err := probeModule(module); err != nil {
		return nil, err
	}
	key := module + "\x00" + u.Token
	openTokens.Lock()
	if openTokens.m[key] {
		openTokens.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrTokenInUse, u.Token)
	}
	openTokens.m[key] = true
	openTokens.Unlock()
	ok := false
	defer func() {
		if !ok {
			openTokens.Lock()
			delete(openTokens.m, key)
			openTokens.Unlock()
		}
	}()

	var d *dialing
	for attempt := 1; ; attempt++ {
		d = dial(module, u.Token, u.PINSource, opts.MaxSessions, opts.PoolWaitTimeout, met)
		if !d.await(opts.CallTimeout) {
			d.abandon()
			err := fmt.Errorf("%w: login: no answer within %v", ErrTokenHung, opts.CallTimeout)
			log.Error("hsm: open failed", "module", module, "err", err)
			return nil, fmt.Errorf("hsm: open token %q: %w", u.Token, err)
		}
		if d.err == nil || !transientAtOpen(d.err) || attempt == openAttempts {
			break
		}
		wait := openBackoff(attempt)
		log.Warn("hsm: open: the token was not found or answered with a transient error; trying again", "attempt", attempt, "wait", wait, "err", d.err)
		time.Sleep(wait)
	}
	if err := d.err; err != nil {
		err = explainStore(module, err)
		log.Error("hsm: open failed", "module", module, "err", err)
		return nil, fmt.Errorf("hsm: open token %q: %w", u.Token, err)
	}
	d.c.gen = 1
	t := &Token{
		label:       u.Token,
		module:      module,
		key:         key,
		cur:         d.c,
		gen:         1,
		sem:         make(chan struct{}, opts.MaxSessions),
		genSem:      make(chan struct{}, 1),
		wait:        opts.PoolWaitTimeout,
		callTimeout: opts.CallTimeout,
		genTimeout:  opts.KeyGenTimeout,
		met:         met,
		log:         log,

		pinSource:   u.PINSource,
		maxSessions: opts.MaxSessions,
	}
	met.sessionsMax(float64(opts.MaxSessions))
	log.Info("hsm: token open", "module", module, "max_sessions", opts.MaxSessions)
	ok = true
	return t, nil
}

// Opening a token is tried up to openAttempts times when it fails with a transient error
// (transientAtOpen), after a pause of openBackoff.
const openAttempts = 5

// transientAtOpen reports whether err, from a failed attempt to open the token, may say
// that the token was caught changing rather than that something is wrong:
// CKR_BUFFER_TOO_SMALL (the slot list changed between the size query and the list, inside
// crypto11's or miekg's C_GetSlotList), CKR_GENERAL_ERROR (C_GetTokenInfo or C_Login could
// not read the token) and ErrTokenNotFound (the module loaded the token folder while it was
// rewritten, and lists no token in its slot). All three come from SoftHSM 2.6 when several
// processes open one token at once (nodes starting together, directly or through one
// p11-kit server whose connections are each a process loading SoftHSM over the same token
// folder): one reads the token's files while another rewrites them. A label that no slot
// has is therefore reported after the attempts (about 1.5 s), not at the first. A refused
// PIN is never transient: the login is not tried again (see Login in the package doc); a
// CKR_GENERAL_ERROR is no verdict on the PIN, and the attempts are few.
func transientAtOpen(err error) bool {
	if errors.Is(err, ErrTokenNotFound) {
		return true
	}
	var rv pkcs11.Error
	if !errors.As(err, &rv) || errors.Is(err, ErrPINIncorrect) {
		return false
	}
	return rv == pkcs11.CKR_BUFFER_TOO_SMALL || rv == pkcs11.CKR_GENERAL_ERROR
}

// openBackoff is the pause after failed attempt n (1, 2, ...): 100 ms doubling, with up to
// half of it again at random, so that processes that collided do not collide again.
func openBackoff(n int) time.Duration {
	d := 100 * time.Millisecond << (n - 1)
	var b [2]byte
	if _, err := rand.Read(b[:]); err == nil {
		d += time.Duration(binary.BigEndian.Uint16(b[:])) * d / 2 / 65536
	}
	return d
}

// connect logs in to the token through crypto11 and opens the raw session.
func connect(module, label, pinSource string, maxSessions int, wait time.Duration, met *metrics) (*crypto11.Context, *rawSession, error) {
	pin, err := readPIN(pinSource)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	c11, err := crypto11.Configure(&crypto11.Config{
		Path:       module,
		TokenLabel: label,
		Pin:        pin,
		// crypto11 keeps one of its sessions logged in and pools the rest.
		MaxSessions: maxSessions + 1,
		// Backstop only: our own semaphore (sem) times out first.
		PoolWaitTimeout: wait + time.Second,
		GCMIVLength:     12,
	})
	pin = ""
	if err != nil {
		err = classifyOpen(err)
		met.observe("login", start, err)
		return nil, nil, err
	}
	met.observe("login", start, nil)
	raw, err := openRaw(module, label, pinSource)
	if err != nil {
		_ = c11.Close()
		return nil, nil, err
	}
	return c11, raw, nil
}

// probeModule checks that path exists and is a loadable PKCS#11 library, without
// initialising it (crypto11 must be the first to call C_Initialize).
func probeModule(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%w: %w", ErrModuleNotLoadable, err)
	}
	p := pkcs11.New(path) // dlopen + C_GetFunctionList; nil (no error) on failure
	if p == nil {
		return fmt.Errorf("%w: %s is not a PKCS#11 library", ErrModuleNotLoadable, path)
	}
	p.Destroy() // dlclose only: no C_Finalize, as nothing was initialised
	return nil
}

// Label returns the token label.
func (t *Token) Label() string { return t.label }

// Close closes the raw session, then the crypto11 context (which finalises the module
// when no other Token uses it). It waits for running operations, but at most
// [Options.CallTimeout] for the module, and not at all for a connection already dropped
// because a call on it hung: it then returns an error wrapping [ErrTokenHung] and leaves
// the close to finish on its own if the token ever answers (a login still running is
// closed when it ends, too). Operations fail with [ErrClosed] from
// its start. Calling Close again returns nil.
func (t *Token) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	// A connection retired because a call on it hung is only looked at: that call is known
	// not to return soon. The current one may just be busy: it gets CallTimeout.
	done, wait := t.retiring, time.Duration(0)
	if c := t.cur; c != nil {
		done, wait = c.closeAsync(), t.callTimeout
	}
	t.cur, t.retiring = nil, nil
	if t.dialing != nil {
		t.dialing.abandon()
		t.dialing = nil
	}
	t.mu.Unlock()
	var err error
	if done != nil {
		err = done.wait(wait)
	}
	openTokens.Lock()
	delete(openTokens.m, t.key)
	openTokens.Unlock()
	t.met.sessionsMax(-float64(cap(t.sem)))
	if errors.Is(err, ErrTokenHung) {
		t.log.Error("hsm: token closed without waiting for the module any longer", "err", err)
	} else {
		t.log.Info("hsm: token closed")
	}
	if err != nil {
		return fmt.Errorf("hsm: close token %q: %w", t.label, err)
	}
	return nil
}

// do runs f as operation op on the current connection: it refuses a closed Token or one
// that is not answering (at once, with an error wrapping [ErrTokenGone]), takes a session
// slot (or fails with ErrPoolExhausted after PoolWaitTimeout), runs f inline on the
// caller's goroutine under a watchdog timer set to the operation's time limit, classifies
// its error and records the metrics.
//
// A PKCS#11 call cannot be cancelled, so a call still inside the module at the limit keeps
// its caller until the module returns. The watchdog does not wait for that: at the limit
// it counts the operation as token_gone, drops the connection (no operation starts on it
// any more; it is closed once its calls have returned), marks the token as not answering
// and logs once, so that Ping and every later operation fail at once. When the call
// finally returns, whatever it returned is discarded and do reports an error wrapping
// [ErrTokenHung].
func (t *Token) do(op string, f func(c *conn) error) error {
	start := time.Now()
	t.mu.RLock()
	if t.closed {
		t.mu.RUnlock()
		return ErrClosed
	}
	c := t.cur
	if t.broken.Load() || t.faulty.Load() || c == nil {
		err := t.unusable()
		t.mu.RUnlock()
		t.met.observe(op, start, err)
		return err
	}
	c.enter()
	t.mu.RUnlock()
	if err := t.acquire(); err != nil {
		c.calls.Done()
		t.met.observe(op, start, err)
		return err
	}
	t.met.pool(1, 0)
	limit := t.callTimeout
	if op == "generate" {
		limit = t.genTimeout
	}
	var err error
	inTime := true
	if c.retired.Load() {
		// Dropped while this operation waited for a slot.
		c.calls.Done()
		t.release()
		err = fmt.Errorf("%w: not answering; the appliance reconnects by itself", ErrTokenGone)
	} else {
		inTime, err = t.watched(c, op, start, limit, f)
	}
	if !inTime {
		// expire has counted it, dropped c and marked the token.
		return hungAfter(limit)
	}
	err = classify(err)
	t.met.observe(op, start, err)
	if errors.Is(err, ErrTokenGone) && !t.broken.Swap(true) {
		t.log.Error("hsm: token stopped answering", "op", op, "err", err)
	}
	return err
}

// watched runs f on c, already counted by enter, on the caller's goroutine, with a watch
// that calls expire if f is still running after limit. inTime is false when it did. It
// gives back the caller's session slot.
func (t *Token) watched(c *conn, op string, start time.Time, limit time.Duration, f func(c *conn) error) (inTime bool, err error) {
	w := t.startWatch(c, op, start, limit)
	// Deferred so that a panic in f (caught by an HTTP server, say) still disarms the watch,
	// uncounts the call (otherwise c could never close) and frees the slot.
	defer func() {
		inTime = w.stop()
		c.calls.Done()
		t.release()
	}()
	return true, f(c)
}

// expire is the watchdog of an operation op on c, begun at start, still inside the module
// after limit: it does at once what its caller will report when the module returns. It
// counts the operation as hung, retires c, marks the token as not answering and logs once.
// It runs on a timer's goroutine.
func (t *Token) expire(c *conn, op string, start time.Time, limit time.Duration) {
	err := hungAfter(limit)
	t.met.observe(op, start, err)
	t.drop(c)
	if !t.broken.Swap(true) {
		t.log.Error("hsm: token stopped answering: a call did not return in time; its connection is dropped", "op", op, "err", err)
	}
}

// lockGen takes genSem for GenerateKey; unlockGen gives it back. A generation stuck in a
// hung token holds it until the module returns, so a waiter looks every genPoll whether
// the token was found not answering (or closed) meanwhile, and then fails at once with
// the error do would give.
func (t *Token) lockGen() error {
	select {
	case t.genSem <- struct{}{}:
		return nil
	default:
	}
	start := time.Now()
	tick := time.NewTicker(genPoll)
	defer tick.Stop()
	for {
		select {
		case t.genSem <- struct{}{}:
			return nil
		case <-tick.C:
		}
		t.mu.RLock()
		var err error
		switch {
		case t.closed:
			err = ErrClosed
		case t.broken.Load() || t.faulty.Load() || t.cur == nil:
			err = t.unusable()
		}
		t.mu.RUnlock()
		if err != nil {
			if err != ErrClosed {
				t.met.observe("generate", start, err)
			}
			return err
		}
	}
}

func (t *Token) unlockGen() { <-t.genSem }

// genPoll is how often a GenerateKey waiting for another looks at the token.
const genPoll = 50 * time.Millisecond

// drop retires c, the connection of a call that did not return in time: no operation
// starts on it any more, and its close starts now, to end when its calls have returned, so
// that the next Ping knows at once that no login can be tried yet.
func (t *Token) drop(c *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropLocked(c)
}

// dropLocked is drop for a caller that holds t.mu for writing.
func (t *Token) dropLocked(c *conn) {
	c.retired.Store(true)
	if t.cur == c && !t.closed {
		t.cur = nil
		t.retiring = c.closeAsync()
	}
}

// release gives back the session slot taken by acquire.
func (t *Token) release() {
	<-t.sem
	t.met.pool(-1, 0)
}

// acquire takes a session slot, waiting at most t.wait.
func (t *Token) acquire() error {
	select {
	case t.sem <- struct{}{}:
		return nil
	default:
	}
	t.met.pool(0, 1)
	defer t.met.pool(0, -1)
	ctx, cancel := context.WithTimeout(context.Background(), t.wait)
	defer cancel()
	select {
	case t.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ErrPoolExhausted
	}
}

// Ping proves the token still answers: C_GetTokenInfo on its slot and C_GetSessionInfo
// on the raw session, which must still be logged in. It returns [ErrTokenGone] when the
// token or module no longer answers ([ErrTokenHung] too when it did not answer within
// [Options.CallTimeout]) and [ErrClosed] after Close. It does not take a pool session, so
// it answers even when every session is busy, and it never waits for the module longer
// than about CallTimeout: its calls run on a goroutine of their own, left behind at the
// limit. An operation found still inside the module at its limit (see [Options.CallTimeout])
// makes Ping fail at once from then on, although that operation's caller is still waiting.
//
// When the token has stopped answering, Ping tries once to reconnect: it closes the old
// context, loads the module again, logs in (reading the PIN again from its source),
// checks the keys pinned with [Token.Expect] and lets keys be found anew; operations fail
// at once with ErrTokenGone until then. A connection with a call that never returned is
// closed only once that call returns, and no login is tried before: such a Ping returns an
// error wrapping [ErrTokenHung] at once. A login that does not end in time is kept, and a
// later Ping uses it when it ends. A token that refused the PIN is tried again only
// after the pin-source changed or [Token.RetryLogin]: the error then wraps
// [ErrPINIncorrect]. A token holding other keys under pinned labels gives an error
// wrapping [ErrKeyChanged], and each Ping checks the keys again.
func (t *Token) Ping() error {
	if t.broken.Load() || t.faulty.Load() {
		if err := t.recover(); err != nil {
			return fmt.Errorf("hsm: ping token %q: %w", t.label, err)
		}
	}
	t.mu.RLock()
	if t.closed {
		t.mu.RUnlock()
		return ErrClosed
	}
	c := t.cur
	if t.broken.Load() || t.faulty.Load() || c == nil {
		// Another Ping reconnected meanwhile and found a fault.
		err := t.unusable()
		t.mu.RUnlock()
		return fmt.Errorf("hsm: ping token %q: %w", t.label, err)
	}
	c.enter()
	t.mu.RUnlock()
	err := c.run(t.callTimeout, c.raw.ping)
	if err == nil && c.retired.Load() {
		// The token answered, but on a connection dropped meanwhile: not ready until a new
		// login.
		err = fmt.Errorf("%w: reconnecting", ErrTokenGone)
	}
	if err != nil {
		err = classify(err)
		if !errors.Is(err, ErrTokenGone) {
			err = fmt.Errorf("%w: %w", ErrTokenGone, err)
		}
		broken := t.broken.Swap(true)
		if errors.Is(err, ErrTokenHung) {
			t.drop(c)
		}
		if !broken {
			t.log.Error("hsm: token stopped answering", "op", "ping", "err", err)
		}
		return fmt.Errorf("hsm: ping token %q: %w", t.label, err)
	}
	if err := t.probeFailing(); err != nil {
		return fmt.Errorf("hsm: ping token %q: %w", t.label, err)
	}
	return nil
}

// RetryLogin asks the next reconnection (the next [Token.Ping]) to try the PIN once more
// although its source has not changed: for an operator who fixed the token rather than the
// PIN file. It is one login, whatever the number of calls before it.
func (t *Token) RetryLogin() {
	t.retry.Store(true)
}

// Expect pins the key pair labelled label to the public key pub (the key of a certificate
// the caller checked). It checks now and again after every reconnection; while the token
// holds another key under the label, or none, or two, operations fail with an error
// wrapping [ErrTokenGone] and [ErrKeyChanged].
//
// # Errors
//
// [ErrKeyChanged] when label does not name exactly one key pair with public key pub;
// [ErrTokenGone] (and [ErrTokenHung]), [ErrClosed].
func (t *Token) Expect(label string, pub crypto.PublicKey) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	e := expectation{label: label, pub: pub}
	if !t.broken.Load() && t.cur != nil {
		if err := t.checkKey(t.cur, e); err != nil {
			return err
		}
	}
	t.expected = append(t.expected, e)
	return nil
}

// unusable is the error of an operation refused while the token is broken or faulty. The
// caller holds t.mu for reading.
func (t *Token) unusable() error {
	if t.fault != nil {
		return t.fault
	}
	return fmt.Errorf("%w: not answering; the appliance reconnects by itself", ErrTokenGone)
}

// setFault records why the token is not used (nil: it is). The caller holds t.mu.
func (t *Token) setFault(err error) {
	t.fault = err
	t.faulty.Store(err != nil)
}

// recover reconnects a broken token, or checks the pinned keys of a faulty one again.
func (t *Token) recover() error {
	t.recMu.Lock()
	defer t.recMu.Unlock()
	t.mu.Lock()
	switch {
	case t.closed:
		t.mu.Unlock()
		return ErrClosed
	case t.broken.Load():
		t.mu.Unlock()
		return t.reconnect()
	case t.fault != nil && errors.Is(t.fault, ErrKeyChanged) && t.cur != nil:
		defer t.mu.Unlock()
		if err := t.checkExpected(t.cur); err != nil {
			return err
		}
		t.setFault(nil)
		t.log.Info("hsm: the token holds the expected keys again")
	default:
		t.mu.Unlock()
	}
	return nil
}

// reconnect rebuilds the connection to a token that stopped answering. The caller holds
// t.recMu, not t.mu: it waits for the module with time limits, never under t.mu.
func (t *Token) reconnect() error {
	stamp := stampPIN(t.pinSource)
	t.mu.RLock()
	refused, fault := t.refused, t.fault
	t.mu.RUnlock()
	if refused != nil {
		switch {
		case t.retry.Swap(false):
			t.log.Info("hsm: trying the PIN once more, as asked")
		case stamp != *refused:
			t.log.Info("hsm: the pin-source changed; trying the PIN once more")
		default:
			return fault // no login: the PIN the token refused has not changed
		}
	}
	t.retry.Store(false)
	if err := t.retire(); err != nil {
		return err
	}
	c, err := t.login()
	if err != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		if errors.Is(err, ErrPINIncorrect) {
			t.refused = &stamp
			t.setFault(&faultError{cause: err, msg: fmt.Sprintf(
				"hsm: the token refused the PIN from %s (%v); put the right PIN there, or fix the token and send SIGHUP: one login is tried then", t.pinSource, err)})
			t.log.Error("hsm: the token refused the PIN on reconnecting; no login is tried until the pin-source changes or SIGHUP",
				"pin_source", t.pinSource, "err", err)
			return t.fault
		}
		if t.refused != nil && errors.Is(err, ErrPINSource) {
			// A PIN file being rewritten may be empty for a moment: the next change is tried.
			t.setFault(&faultError{cause: err, msg: fmt.Sprintf("hsm: the token refused the PIN, and the pin-source cannot be read: %v", err)})
			return t.fault
		}
		return fmt.Errorf("%w: reconnect: %w", ErrTokenGone, explainStore(t.module, err))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		c.closeAsync()
		return ErrClosed
	}
	t.refused = nil
	t.gen++
	c.gen = t.gen
	t.cur = c
	t.setFault(nil)
	// broken stays set until the keys are checked: nothing uses the token before.
	err = t.checkExpected(c)
	if err != nil && !errors.Is(err, ErrKeyChanged) {
		return err
	}
	t.broken.Store(false)
	if err != nil {
		return err
	}
	t.log.Info("hsm: token answers again; reconnected")
	return nil
}

// retire closes the current connection of a broken token, waiting at most CallTimeout for
// it; a close that does not end in time (a call on the connection has not returned) goes
// on, and a later reconnect waits for it without blocking. The caller holds t.recMu.
func (t *Token) retire() error {
	t.mu.Lock()
	wait := time.Duration(0) // a close started earlier (by drop or a Ping) is only looked at
	if c := t.cur; c != nil {
		t.cur = nil
		t.retiring = c.closeAsync()
		wait = t.callTimeout
	}
	done := t.retiring
	t.mu.Unlock()
	if done == nil {
		return nil
	}
	if err := done.wait(wait); errors.Is(err, ErrTokenHung) {
		return fmt.Errorf("%w: a call into the module has not returned; no login is tried before it does", ErrTokenHung)
	}
	// The old context is closed (its error does not matter: the module may be dead).
	t.mu.Lock()
	if t.retiring == done {
		t.retiring = nil
	}
	t.mu.Unlock()
	return nil
}

// login makes a new connection, waiting at most CallTimeout for it. A login that does not
// end in time is kept, and the next call looks whether it has ended. The caller holds
// t.recMu.
func (t *Token) login() (*conn, error) {
	t.mu.Lock()
	d := t.dialing
	wait := time.Duration(0) // a login started by an earlier Ping is only looked at
	if d == nil {
		d = dial(t.module, t.label, t.pinSource, t.maxSessions, t.wait, t.met)
		t.dialing = d
		wait = t.callTimeout
	}
	t.mu.Unlock()
	if !d.await(wait) {
		return nil, fmt.Errorf("%w: login: no answer within %v", ErrTokenHung, t.callTimeout)
	}
	t.mu.Lock()
	if t.dialing == d {
		t.dialing = nil
	}
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, ErrClosed // Close abandoned d: its connection is closed when it ends
	}
	return d.c, d.err
}

// checkExpected checks every pinned key on c; on a difference it records the fault, logs
// the key's label and returns the fault. The caller holds t.mu for writing.
func (t *Token) checkExpected(c *conn) error {
	var first error
	for _, e := range t.expected {
		err := t.checkKey(c, e)
		switch {
		case err == nil:
			continue
		case !errors.Is(err, ErrKeyChanged):
			return err
		}
		if first == nil {
			first = err
		}
		if !t.faulty.Load() {
			// Once per finding, naming each key; not again at every check while it lasts.
			t.log.Error("hsm: the token holds another key under a pinned label; it is not used until the expected key is back",
				"key", e.label, "err", err)
		}
	}
	if first != nil && !t.faulty.Load() {
		t.setFault(first)
	}
	return first
}

// checkKey finds the one key pair labelled e.label on c and compares its public key. The
// caller holds t.mu (the find is bounded by CallTimeout).
func (t *Token) checkKey(c *conn, e expectation) error {
	var pairs []crypto11.Signer
	c.enter()
	err := c.run(t.callTimeout, func() error {
		var err error
		pairs, err = c.c11.FindKeyPairs(nil, []byte(e.label))
		return err
	})
	if err != nil {
		err = classify(err)
		if errors.Is(err, ErrTokenGone) {
			t.broken.Store(true)
		}
		if errors.Is(err, ErrTokenHung) {
			t.dropLocked(c)
		}
		return fmt.Errorf("hsm: check key %q: %w", e.label, err)
	}
	var why string
	switch {
	case len(pairs) == 0:
		why = "is missing"
	case len(pairs) > 1:
		why = fmt.Sprintf("names %d key pairs", len(pairs))
	default:
		k, ok := pairs[0].Public().(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !k.Equal(e.pub) {
			why = "is another key than the one checked against its certificate"
		}
	}
	if why == "" {
		return nil
	}
	return &faultError{cause: ErrKeyChanged, msg: fmt.Sprintf("hsm: key %q in token %q %s", e.label, t.label, why)}
}

// faultError is a fault of the token that is also [ErrTokenGone]: a refused PIN, a
// changed key. Its message is its own; cause stays in the chain for errors.Is.
type faultError struct {
	cause error
	msg   string
}

func (e *faultError) Error() string { return e.msg }

func (e *faultError) Unwrap() error { return e.cause }

func (e *faultError) Is(target error) bool { return target == ErrTokenGone }

// Mechanisms reports what the token's self-test found.
type Mechanisms struct {
	// OAEPHash is the best hash (crypto.SHA256, else crypto.SHA1) for which RSA-OAEP
	// decryption in the token round-trips; it is also the MGF1 hash.
	OAEPHash crypto.Hash
}
