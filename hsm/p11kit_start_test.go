package hsm

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// Environment of the child processes of TestOpenAtOnceP11Kit.
const (
	childURIEnv = "KEYARC_HSM_CHILD_URI"
)

// TestOpenAtOnceP11KitChild is one node of TestOpenAtOnceP11Kit: a process of its own
// (PKCS#11 modules are one per process) that opens the token through p11-kit's client and
// does what `keyarc serve` does at start-up: the self-test, the keys found and pinned, a
// signature and a decryption. It does nothing unless started by that test.
func TestOpenAtOnceP11KitChild(t *testing.T) {
	uri := os.Getenv(childURIEnv)
	if uri == "" {
		t.Skip("started by TestOpenAtOnceP11Kit only")
	}
	tok, err := Open(uri, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer tok.Close()
	mech, err := tok.SelfTest()
	if err != nil {
		t.Fatalf("self-test: %v", err)
	}
	s, err := tok.Signer("sign")
	if err != nil {
		t.Fatalf("signer: %v", err)
	}
	if err := tok.Expect("sign", s.Public()); err != nil {
		t.Fatalf("expect sign: %v", err)
	}
	d, err := tok.Decrypter("decrypt")
	if err != nil {
		t.Fatalf("decrypter: %v", err)
	}
	if err := tok.Expect("decrypt", d.Public()); err != nil {
		t.Fatalf("expect decrypt: %v", err)
	}
	digest := sha256.Sum256([]byte("keyarc"))
	if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("sign: %v", err)
	}
	ct, err := rsa.EncryptOAEP(mech.OAEPHash.New(), rand.Reader, d.Public().(*rsa.PublicKey), []byte("keyarc"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: mech.OAEPHash}); err != nil {
		t.Fatalf("decrypt: %v", err)
	}
}

// TestOpenAtOnceP11Kit starts three processes at once against a p11-kit server that has just
// started, as three nodes of a cluster starting together would, several rounds over: every
// process must open the token and use its keys.
func TestOpenAtOnceP11Kit(t *testing.T) {
	client := "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
	if _, err := exec.LookPath("p11-kit"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit is required in CI")
		}
		t.Skip("p11-kit not installed")
	}
	if _, err := os.Stat(client); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("p11-kit-client.so is required in CI")
		}
		t.Skip("p11-kit-client.so missing")
	}
	in, toks := softhsmtest.Tokens(t, "atonce")
	st := toks[0]
	socket := filepath.Join(t.TempDir(), "p11.sock")
	var server *exec.Cmd
	start := func() {
		t.Helper()
		os.Remove(socket)
		server = exec.Command("p11-kit", "server", "-f", "-n", socket, "--provider", st.Module, "pkcs11:token="+st.Label)
		server.Env = append(os.Environ(), in.Env()...)
		server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := server.Start(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			if _, err := os.Stat(socket); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("p11-kit server made no socket")
	}
	stop := func() {
		syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
		server.Wait()
	}
	u, err := ParseURI(st.URI(""))
	if err != nil {
		t.Fatal(err)
	}
	u.ModulePath = client
	uri := u.String()
	env := append(os.Environ(), "P11_KIT_SERVER_ADDRESS=unix:path="+socket, childURIEnv+"="+uri)

	// The keys, made through a first server.
	start()
	setup := exec.Command(os.Args[0], "-test.run=^TestOpenAtOnceP11KitSetup$", "-test.count=1")
	setup.Env = env
	if out, err := setup.CombinedOutput(); err != nil {
		stop()
		t.Fatalf("setup: %v\n%s", err, out)
	}
	stop()

	const rounds, nodes = 8, 3
	failed := 0
	for r := 0; r < rounds; r++ {
		start()
		cmds := make([]*exec.Cmd, nodes)
		outs := make([]*bytes.Buffer, nodes)
		for i := range cmds {
			outs[i] = new(bytes.Buffer)
			cmds[i] = exec.Command(os.Args[0], "-test.run=^TestOpenAtOnceP11KitChild$", "-test.count=1", "-test.v")
			cmds[i].Env = env
			cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
		}
		for _, c := range cmds {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range cmds {
			if err := c.Wait(); err != nil {
				failed++
				t.Errorf("round %d, process %d: %v\n%s", r+1, i+1, err, lastLinesOf(outs[i].String(), 8))
			}
		}
		stop()
	}
	if failed > 0 {
		t.Errorf("%d of %d processes could not open and use the token at once", failed, rounds*nodes)
	}
}

// TestOpenAtOnceP11KitSetup makes the keys of TestOpenAtOnceP11Kit in its token. It does
// nothing unless started by that test.
func TestOpenAtOnceP11KitSetup(t *testing.T) {
	uri := os.Getenv(childURIEnv)
	if uri == "" {
		t.Skip("started by TestOpenAtOnceP11Kit only")
	}
	tok, err := Open(uri, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer tok.Close()
	if _, err := tok.GenerateKey("sign", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.GenerateKey("decrypt", RSA2048, UsageDecrypt); err != nil {
		t.Fatal(err)
	}
}

func lastLinesOf(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestTransientAtOpen: only the answers of a token caught changing (a token missing from its
// slot included) are tried again at open; a refused PIN never is.
func TestTransientAtOpen(t *testing.T) {
	slots := fmt.Errorf("failed to list PKCS#11 slots: %w", pkcs11.Error(pkcs11.CKR_BUFFER_TOO_SMALL))
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{name: "slot list changed (crypto11)", err: slots, want: true},
		{name: "slot list changed (raw session)", err: classify(pkcs11.Error(pkcs11.CKR_BUFFER_TOO_SMALL)), want: true},
		{name: "token unreadable at login", err: fmt.Errorf("failed to log into long term session: %w", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)), want: true},
		{name: "PIN incorrect", err: classify(pkcs11.Error(pkcs11.CKR_PIN_INCORRECT))},
		{name: "PIN locked", err: classify(pkcs11.Error(pkcs11.CKR_PIN_LOCKED))},
		{name: "token not found (crypto11)", err: classifyOpen(errors.New("could not find PKCS#11 token")), want: true},
		{name: "token not found (raw session)", err: fmt.Errorf("%w: %q", ErrTokenNotFound, "x"), want: true},
		{name: "device removed", err: classify(pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED))},
		{name: "PIN source", err: ErrPINSource},
	} {
		if got := transientAtOpen(tt.err); got != tt.want {
			t.Errorf("%s: transientAtOpen(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
	for n := 1; n < openAttempts; n++ {
		if d := openBackoff(n); d < 100*time.Millisecond<<(n-1) || d > 150*time.Millisecond<<(n-1) {
			t.Errorf("openBackoff(%d) = %s, want within [%s, %s]", n, d, 100*time.Millisecond<<(n-1), 150*time.Millisecond<<(n-1))
		}
	}
}

// TestFindSlot: a token whose information could not be read while another process rewrote
// it is reported as that transient failure, to be tried again, not as a token that does not
// exist; a readable token in another slot is still found, and a label nobody has is
// ErrTokenNotFound.
func TestFindSlot(t *testing.T) {
	general := pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	tokens := map[uint]error{1: nil, 2: general, 3: nil}
	info := func(s uint) (pkcs11.TokenInfo, error) {
		if err := tokens[s]; err != nil {
			return pkcs11.TokenInfo{}, err
		}
		return pkcs11.TokenInfo{Label: fmt.Sprintf("token%d", s)}, nil
	}
	if s, err := findSlot([]uint{1, 2, 3}, "token3", info); err != nil || s != 3 {
		t.Errorf("findSlot(token3 behind an unreadable slot) = %d, %v; want 3", s, err)
	}
	_, err := findSlot([]uint{1, 2, 3}, "keyarc", info)
	if !errors.Is(err, general) || errors.Is(err, ErrTokenNotFound) {
		t.Errorf("findSlot with slot 2 unreadable = %v; want its CKR_GENERAL_ERROR, tried again at open", err)
	}
	if _, err := findSlot([]uint{1, 3}, "keyarc", info); !errors.Is(err, ErrTokenNotFound) {
		t.Errorf("findSlot of a label no slot has = %v; want ErrTokenNotFound", err)
	}
}
