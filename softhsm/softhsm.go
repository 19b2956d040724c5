// Package softhsm provisions SoftHSM 2 tokens for development (`keyarc init --dev`)
// and for tests.
//
// It owns one SoftHSM configuration directory (an [Install]): the softhsm2.conf file,
// the token directory and a directory of PIN files. Tokens are initialised with the
// softhsm2-util command; their user and SO PINs are random, written to files with mode
// 0600 and never printed, logged or put in an error.
//
// The package imports the standard library only (tests get their tokens from package
// softhsm/softhsmtest, which keeps `testing` out of the keyarc binary). It must
// not import crypto11, miekg/pkcs11 or any other keyarc package: talking PKCS#11 is
// the job of package hsm, which finds a token through [Token.URI].
//
// # Concurrency
//
// An [Install] may be used from several goroutines; token creation and deletion are
// serialised per Install. libsofthsm2 reads SOFTHSM2_CONF once per process, when the
// module is first loaded, so a process uses one Install in process (see
// [Install.UseInProcess] and softhsmtest.Tokens).
//
// # Security
//
// SoftHSM is a development and test token. softhsm2-util takes the PINs as command-line
// arguments, so they are briefly visible to other local users in the process table while
// a token is being initialised; do not provision production secrets with this package.
package softhsm

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Errors returned by this package. Test them with errors.Is.
var (
	// ErrNotInstalled means the SoftHSM module or softhsm2-util could not be found.
	ErrNotInstalled = errors.New("softhsm: SoftHSM 2 is not installed (package softhsm2)")
	// ErrTokenExists means a token with the requested label is already initialised.
	ErrTokenExists = errors.New("softhsm: token already exists")
	// ErrTokenNotFound means no initialised token has the requested label.
	ErrTokenNotFound = errors.New("softhsm: token not found")
	// ErrInvalidLabel means a token label is empty, longer than 32 bytes or uses a
	// character outside [A-Za-z0-9._-].
	ErrInvalidLabel = errors.New("softhsm: invalid token label (1 to 32 of A-Z a-z 0-9 . _ -)")
)

// modulePaths are the places Debian, Ubuntu and source builds install libsofthsm2.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// ModulePath returns the SoftHSM PKCS#11 module: $KEYARC_PKCS11_MODULE if set, else the
// first existing of the usual install locations. It returns [ErrNotInstalled] when none
// exists.
func ModulePath() (string, error) {
	if p := os.Getenv("KEYARC_PKCS11_MODULE"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: KEYARC_PKCS11_MODULE: %w", ErrNotInstalled, err)
		}
		return p, nil
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", ErrNotInstalled
}

// utilPath returns the softhsm2-util executable.
func utilPath() (string, error) {
	p, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return "", fmt.Errorf("%w: softhsm2-util: %w", ErrNotInstalled, err)
	}
	return p, nil
}

// Install is one SoftHSM configuration: Dir holds ConfPath (softhsm2.conf), TokenDir
// (the token store) and PINDir (one <label>.pin and <label>.so-pin file per token).
// Module is the PKCS#11 module that reads the configuration.
type Install struct {
	Dir, ConfPath, TokenDir, PINDir, Module string

	mu sync.Mutex // serialises softhsm2-util runs that change tokens
}

// Token is an initialised SoftHSM token: its label, the files holding its user PIN and
// SO PIN, and the PKCS#11 module that serves it.
type Token struct {
	Label, PINFile, SOPINFile, Module string
}

// Provision creates (or reuses) an Install in dir: dir/softhsm2.conf, dir/tokens and
// dir/pins, the directories with mode 0700. It is idempotent: calling it again on the
// same dir keeps the existing tokens and rewrites the same configuration.
func Provision(dir string) (*Install, error) {
	module, err := ModulePath()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("softhsm: provision: %w", err)
	}
	in := &Install{
		Dir:      dir,
		ConfPath: filepath.Join(dir, "softhsm2.conf"),
		TokenDir: filepath.Join(dir, "tokens"),
		PINDir:   filepath.Join(dir, "pins"),
		Module:   module,
	}
	for _, d := range []string{in.Dir, in.TokenDir, in.PINDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("softhsm: provision: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("softhsm: provision: %w", err)
		}
	}
	conf := fmt.Sprintf("# written by keyarc softhsm.Provision\n"+
		"directories.tokendir = %s\n"+
		"objectstore.backend = file\n"+
		"log.level = ERROR\n"+
		"slots.removable = false\n", in.TokenDir)
	if old, err := os.ReadFile(in.ConfPath); err != nil || string(old) != conf {
		if err := writeFile(in.ConfPath, []byte(conf)); err != nil {
			return nil, fmt.Errorf("softhsm: provision: %w", err)
		}
	}
	return in, nil
}

// Env returns the environment a child process (softhsm2-util, pkcs11-tool, keyarc)
// needs to use this Install: {"SOFTHSM2_CONF=<ConfPath>"}.
func (in *Install) Env() []string {
	return []string{"SOFTHSM2_CONF=" + in.ConfPath}
}

// UseInProcess points this process at the Install by setting SOFTHSM2_CONF. libsofthsm2
// reads the variable once, when the module is first loaded, so UseInProcess must be
// called before any PKCS#11 use of the module in the process.
func (in *Install) UseInProcess() error {
	if err := os.Setenv("SOFTHSM2_CONF", in.ConfPath); err != nil {
		return fmt.Errorf("softhsm: set SOFTHSM2_CONF: %w", err)
	}
	return nil
}

// InitToken initialises a new token with label in the first free slot, with a random
// user PIN and SO PIN written to PINDir/<label>.pin and PINDir/<label>.so-pin (mode
// 0600). It returns [ErrTokenExists] when a token already has the label and
// [ErrInvalidLabel] for a label that is not 1 to 32 of [A-Za-z0-9._-].
//
// A process that has the module loaded does not see the new token until it finalises
// and re-initialises the module (SoftHSM reads its token directory at C_Initialize).
func (in *Install) InitToken(label string) (*Token, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	labels, err := in.labels()
	if err != nil {
		return nil, err
	}
	if labels[label] {
		return nil, fmt.Errorf("%w: %q", ErrTokenExists, label)
	}
	pin, err := randomPIN()
	if err != nil {
		return nil, err
	}
	soPIN, err := randomPIN()
	if err != nil {
		return nil, err
	}
	t := in.token(label)
	if err := writeFile(t.PINFile, []byte(pin+"\n")); err != nil {
		return nil, fmt.Errorf("softhsm: init token %q: %w", label, err)
	}
	if err := writeFile(t.SOPINFile, []byte(soPIN+"\n")); err != nil {
		return nil, fmt.Errorf("softhsm: init token %q: %w", label, err)
	}
	if _, err := in.run("--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", pin); err != nil {
		_ = os.Remove(t.PINFile)
		_ = os.Remove(t.SOPINFile)
		return nil, fmt.Errorf("softhsm: init token %q: %w", label, err)
	}
	return t, nil
}

// Token returns the existing token with label, or [ErrTokenNotFound].
func (in *Install) Token(label string) (*Token, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	labels, err := in.labels()
	if err != nil {
		return nil, err
	}
	if !labels[label] {
		return nil, fmt.Errorf("%w: %q", ErrTokenNotFound, label)
	}
	return in.token(label), nil
}

// DeleteToken deletes the token with label and its PIN files. It returns
// [ErrTokenNotFound] when there is no such token.
func (in *Install) DeleteToken(label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	labels, err := in.labels()
	if err != nil {
		return err
	}
	if !labels[label] {
		return fmt.Errorf("%w: %q", ErrTokenNotFound, label)
	}
	if _, err := in.run("--delete-token", "--token", label); err != nil {
		return fmt.Errorf("softhsm: delete token %q: %w", label, err)
	}
	t := in.token(label)
	for _, f := range []string{t.PINFile, t.SOPINFile} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("softhsm: delete token %q: %w", label, err)
		}
	}
	return nil
}

func (in *Install) token(label string) *Token {
	return &Token{
		Label:     label,
		PINFile:   filepath.Join(in.PINDir, label+".pin"),
		SOPINFile: filepath.Join(in.PINDir, label+".so-pin"),
		Module:    in.Module,
	}
}

// labels lists the labels of the initialised tokens (softhsm2-util --show-slots).
func (in *Install) labels() (map[string]bool, error) {
	out, err := in.run("--show-slots")
	if err != nil {
		return nil, fmt.Errorf("softhsm: list tokens: %w", err)
	}
	return parseLabels(out), nil
}

// parseLabels extracts the "Label:" lines of initialised tokens from --show-slots output.
func parseLabels(out []byte) map[string]bool {
	labels := map[string]bool{}
	initialized := false
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "Slot "):
			initialized = false
		case strings.HasPrefix(line, "Initialized:"):
			initialized = strings.TrimSpace(strings.TrimPrefix(line, "Initialized:")) == "yes"
		case strings.HasPrefix(line, "Label:"):
			if l := strings.TrimSpace(strings.TrimPrefix(line, "Label:")); l != "" && initialized {
				labels[l] = true
			}
		}
	}
	return labels
}

// run runs softhsm2-util against this Install. The returned error carries the tool's
// output, which never contains a PIN.
func (in *Install) run(args ...string) ([]byte, error) {
	util, err := utilPath()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(util, args...)
	cmd.Env = append(os.Environ(), in.Env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String() + " " + stdout.String())
		return nil, fmt.Errorf("softhsm2-util %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}

func checkLabel(label string) error {
	if label == "" || len(label) > 32 || label == "." || label == ".." {
		return fmt.Errorf("%w: %q", ErrInvalidLabel, label)
	}
	for _, r := range label {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return fmt.Errorf("%w: %q", ErrInvalidLabel, label)
		}
	}
	return nil
}

// randomPIN returns 16 hex characters (64 bits) from crypto/rand.
func randomPIN() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("softhsm: random PIN: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// writeFile writes b to path with mode 0600, replacing any existing file.
func writeFile(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// URI returns the RFC 7512 PKCS#11 URI of object (a key label; empty for the token
// alone) on this token, with the module and the PIN file:
//
//	pkcs11:token=<label>;object=<object>?module-path=<Module>&pin-source=file:<PINFile>
//
// Every character outside the RFC 7512 unreserved set (and "/" in query values) is
// percent-encoded.
func (t *Token) URI(object string) string {
	var b strings.Builder
	b.WriteString("pkcs11:token=")
	b.WriteString(escape(t.Label, false))
	if object != "" {
		b.WriteString(";object=")
		b.WriteString(escape(object, false))
	}
	b.WriteString("?module-path=")
	b.WriteString(escape(t.Module, true))
	b.WriteString("&pin-source=file:")
	b.WriteString(escape(t.PINFile, true))
	return b.String()
}

// escape percent-encodes s for a PKCS#11 URI attribute value. Unreserved characters
// stay as they are; in query values ("/" allowed by RFC 7512 p11-qchar) so does "/".
func escape(s string, query bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		case query && c == '/':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}
