// Package softhsmtest hands tests a process-wide SoftHSM [softhsm.Install] and fresh,
// uniquely labelled tokens that are deleted when the test ends.
//
// It lives apart from package softhsm so that `testing` is linked only into test
// binaries, never into the keyarc binary. It imports the standard library, testing and
// softhsm; only _test.go files may import it.
//
// # Concurrency
//
// [Tokens] may be called from parallel tests: the Install is created once per process
// and token creation is serialised by softhsm.
package softhsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/keyarc/keyarc/softhsm"
)

// testInstall is the one process-wide Install used by Tokens: libsofthsm2 reads
// SOFTHSM2_CONF only once per process, so every test shares it.
var testInstall struct {
	once sync.Once
	in   *softhsm.Install
	skip string // why SoftHSM is unusable; empty when in is set
}

// Tokens returns the process-wide test Install and one fresh token per label. Each
// token's label is the given label (cut to 23 bytes) plus "-" and 8 random hex
// characters, so tests may run in parallel and may reuse labels; the tokens are deleted
// in tb.Cleanup.
//
// The Install is created once per process in os.TempDir() and SOFTHSM2_CONF is set for
// the process (see [softhsm.Install.UseInProcess]) before it is returned, so call Tokens before
// loading the PKCS#11 module. The Install directory itself is left behind (it holds only
// the configuration and empty directories once the tokens are gone).
//
// libsofthsm2 lists its tokens when the module is initialised, so a token made while the
// module is loaded in the process (an hsm.Token is open) stays invisible until every
// Token is closed: ask Tokens for all the labels a test needs before opening any, and
// do not run such tests in parallel with tests that hold a Token open.
//
// Tokens skips the test when SoftHSM is not installed and $CI is empty, and fails it
// when $CI is set.
func Tokens(tb testing.TB, labels ...string) (*softhsm.Install, []*softhsm.Token) {
	tb.Helper()
	testInstall.once.Do(func() {
		if _, err := softhsm.ModulePath(); err != nil {
			testInstall.skip = err.Error()
			return
		}
		if _, err := exec.LookPath("softhsm2-util"); err != nil {
			testInstall.skip = "softhsm2-util: " + err.Error()
			return
		}
		dir, err := os.MkdirTemp("", "keyarc-softhsm-")
		if err != nil {
			testInstall.skip = err.Error()
			return
		}
		in, err := softhsm.Provision(dir)
		if err != nil {
			testInstall.skip = err.Error()
			return
		}
		if err := in.UseInProcess(); err != nil {
			testInstall.skip = err.Error()
			return
		}
		testInstall.in = in
	})
	if testInstall.in == nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("softhsmtest: SoftHSM unusable and $CI is set: %s", testInstall.skip)
		}
		tb.Skipf("softhsmtest: SoftHSM unusable: %s", testInstall.skip)
	}
	in := testInstall.in
	tokens := make([]*softhsm.Token, 0, len(labels))
	for _, l := range labels {
		if len(l) > 23 {
			l = l[:23]
		}
		suffix := make([]byte, 4)
		if _, err := rand.Read(suffix); err != nil {
			tb.Fatalf("softhsmtest: random label: %v", err)
		}
		label := l + "-" + hex.EncodeToString(suffix)
		t, err := in.InitToken(label)
		if err != nil {
			tb.Fatalf("softhsmtest: %v", err)
		}
		tb.Cleanup(func() {
			if err := in.DeleteToken(label); err != nil {
				tb.Errorf("softhsmtest: %v", err)
			}
		})
		tokens = append(tokens, t)
	}
	return in, tokens
}
