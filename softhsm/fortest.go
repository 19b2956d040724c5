package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
)

// testInstall is the one process-wide Install used by ForTest: libsofthsm2 reads
// SOFTHSM2_CONF only once per process, so every test shares it.
var testInstall struct {
	once sync.Once
	in   *Install
	skip string // why SoftHSM is unusable; empty when in is set
}

// ForTest returns the process-wide test Install and one fresh token per label. Each
// token's label is the given label (cut to 23 bytes) plus "-" and 8 random hex
// characters, so tests may run in parallel and may reuse labels; the tokens are deleted
// in tb.Cleanup.
//
// The Install is created once per process in os.TempDir() and SOFTHSM2_CONF is set for
// the process (see [Install.UseInProcess]) before it is returned, so call ForTest before
// loading the PKCS#11 module. The Install directory itself is left behind (it holds only
// the configuration and empty directories once the tokens are gone).
//
// libsofthsm2 lists its tokens when the module is initialised, so a token made while the
// module is loaded in the process (an hsm.Token is open) stays invisible until every
// Token is closed: ask ForTest for all the labels a test needs before opening any, and
// do not run such tests in parallel with tests that hold a Token open.
//
// ForTest skips the test when SoftHSM is not installed and $CI is empty, and fails it
// when $CI is set.
func ForTest(tb testing.TB, labels ...string) (*Install, []*Token) {
	tb.Helper()
	testInstall.once.Do(func() {
		if _, err := ModulePath(); err != nil {
			testInstall.skip = err.Error()
			return
		}
		if _, err := utilPath(); err != nil {
			testInstall.skip = err.Error()
			return
		}
		dir, err := os.MkdirTemp("", "keyarc-softhsm-")
		if err != nil {
			testInstall.skip = err.Error()
			return
		}
		in, err := Provision(dir)
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
			tb.Fatalf("softhsm: SoftHSM unusable and $CI is set: %s", testInstall.skip)
		}
		tb.Skipf("softhsm: SoftHSM unusable: %s", testInstall.skip)
	}
	in := testInstall.in
	tokens := make([]*Token, 0, len(labels))
	for _, l := range labels {
		if len(l) > 23 {
			l = l[:23]
		}
		suffix := make([]byte, 4)
		if _, err := rand.Read(suffix); err != nil {
			tb.Fatalf("softhsm: random label: %v", err)
		}
		label := l + "-" + hex.EncodeToString(suffix)
		t, err := in.InitToken(label)
		if err != nil {
			tb.Fatalf("softhsm: %v", err)
		}
		tb.Cleanup(func() {
			if err := in.DeleteToken(label); err != nil {
				tb.Errorf("softhsm: %v", err)
			}
		})
		tokens = append(tokens, t)
	}
	return in, tokens
}
