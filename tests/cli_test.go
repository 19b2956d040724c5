package tests

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// exitCode runs the binary and returns stdout, stderr and its exit status.
func exitCode(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	out, errOut, err := keyarcResult(args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, errOut, 0
	case errors.As(err, &ee):
		return out, errOut, ee.ExitCode()
	default:
		t.Fatalf("keyarc %s: %v", strings.Join(args, " "), err)
		return "", "", -1
	}
}

// TestCLIDialsWhereServeListens: a serve started with --addr records where it listens in its
// state folder, and client commands given only --state talk to it, not to the configuration's
// listen address. The record is gone after an orderly stop.
func TestCLIDialsWhereServeListens(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	a := serve(t, state)
	rec := filepath.Join(state, "serve.json")
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatalf("serve did not record where it listens: %v", err)
	}
	var got struct {
		URL string `json:"url"`
		PID int    `json:"pid"`
	}
	if err := json.Unmarshal(b, &got); err != nil || got.URL != a.url || got.PID != a.cmd.Process.Pid {
		t.Fatalf("serve.json = %s (%v), want url %s and pid %d", b, err, a.url, a.cmd.Process.Pid)
	}
	// No --server: the recorded address is used.
	out := keyarc(t, "admin", "recovery-set", "show", "--state", state, "--as", "admin")
	if !strings.Contains(out, "kra1") {
		t.Errorf("recovery-set show:\n%s", out)
	}
	a.stop(t)
	if _, err := os.Stat(rec); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serve.json after an orderly stop: %v, want it removed", err)
	}
	// Stopped: the client says nothing is serving there rather than dialling a stale address.
	msg := keyarcFails(t, "admin", "recovery-set", "show", "--state", state, "--as", "admin")
	if !strings.Contains(msg, "connect") {
		t.Errorf("with the appliance stopped: %s", msg)
	}
}

// TestCLIStaleServeRecord: a record left by a killed serve names a dead process; the client
// says so instead of dialling the address it names.
func TestCLIStaleServeRecord(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	a := serve(t, state)
	a.kill(t)
	if _, err := os.Stat(filepath.Join(state, "serve.json")); err != nil {
		t.Fatalf("serve.json after SIGKILL: %v, want it left behind (the test is about a stale one)", err)
	}
	msg := keyarcFails(t, "admin", "pending", "list", "--state", state, "--as", "admin")
	if !strings.Contains(msg, "not running") {
		t.Errorf("with a stale serve.json: %s", msg)
	}
	serve(t, state)
	keyarc(t, "admin", "pending", "list", "--state", state, "--as", "admin")
}

// TestCLIHelp: requested help goes to standard output with exit 0, names the command's usage
// line, arguments and description, and lists only the flags the command takes; a usage error
// exits 2 on standard error.
func TestCLIHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		want    []string
		notWant []string
	}{
		{[]string{"help"}, []string{"usage: keyarc <command>", "recovery", "keyarc help <command>"}, nil},
		{[]string{"--help"}, []string{"usage: keyarc <command>"}, nil},
		{[]string{"bulk", "--help"}, []string{"usage: keyarc bulk <command>", "submit", "results"}, nil},
		{[]string{"help", "bulk"}, []string{"usage: keyarc bulk <command>", "submit"}, nil},
		{[]string{"admin", "-h"}, []string{"usage: keyarc admin <command>", "pending", "recovery-set"}, nil},
		{[]string{"help", "admin", "pending"}, []string{"usage: keyarc admin pending <command>", "issue", "deny"}, nil},
		{[]string{"help", "admin", "pending", "issue"}, []string{"usage: keyarc admin pending issue ID", "--state", "--as"}, []string{"--token-label"}},
		{[]string{"recovery", "show", "-h"}, []string{"usage: keyarc recovery show ID", "--json"}, []string{"--pin-file"}},
		{[]string{"recovery", "approve", "--help"}, []string{"usage: keyarc recovery approve ID", "--token-label", "--pin-file", "--yes"}, nil},
		{[]string{"enroll", "-h"}, []string{"usage: keyarc enroll", "--email", "--code"}, []string{"--token-label", "--pin-file", "--module"}},
		{[]string{"help", "serve"}, []string{"usage: keyarc serve", "--addr", "serve.json"}, nil},
		{[]string{"help", "audit", "verify"}, []string{"usage: keyarc audit verify", "--state"}, nil},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, code := exitCode(t, tc.args...)
			if code != 0 || errOut != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing on stderr", code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("help lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("help lists %q, which this command does not take:\n%s", w, out)
				}
			}
		})
	}
	for _, args := range [][]string{{"admin"}, {"bulk"}, {"bulk", "frobnicate"}, {"frobnicate"}, {"recovery", "show"}, {"enroll", "--no-such-flag"}} {
		t.Run("usage error "+strings.Join(args, " "), func(t *testing.T) {
			out, errOut, code := exitCode(t, args...)
			if code != 2 || out != "" || errOut == "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 2, nothing on stdout, the mistake on stderr", code, out, errOut)
			}
		})
	}
}

// TestCLIConfigErrorNamesField: a misspelt configuration field is reported with the file, the
// line, the field and the nearest valid name, not Go's type internals.
func TestCLIConfigErrorNamesField(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	path := filepath.Join(state, "keyarc.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "code_ttl:", "code_tll:", 1)
	if bad == string(b) {
		t.Fatalf("no code_ttl in %s", b)
	}
	line := 1 + strings.Count(bad[:strings.Index(bad, "code_tll")], "\n")
	writeFile(t, path, []byte(bad))
	msg := keyarcFails(t, "audit", "verify", "--state", state)
	for _, want := range []string{path, "line " + itoa(line), "code_tll", "did you mean code_ttl?"} {
		if !strings.Contains(msg, want) {
			t.Errorf("config error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "main.") || strings.Contains(msg, "struct {") {
		t.Errorf("config error shows Go internals:\n%s", msg)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestCLIRefusesMisleadingInput: a non-positive code TTL is refused, locally and by the server
// side of the code service, and an unknown template names the valid ones.
func TestCLIRefusesMisleadingInput(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	for _, ttl := range []string{"-5m", "0s"} {
		out, errOut, code := exitCode(t, "admin", "enroll-code", "create", "--state", state, "--email", "a@example.org", "--ttl", ttl)
		if code != 2 || out != "" || !strings.Contains(errOut, "--ttl") {
			t.Errorf("--ttl %s: exit %d, stdout %q, stderr %q; want a usage error naming --ttl and no code", ttl, code, out, errOut)
		}
	}
	msg := keyarcFails(t, "admin", "enroll-code", "create", "--state", state, "--email", "a@example.org", "--template", "smime-encrypton")
	for _, want := range []string{"smime-encrypton", "smime-encryption", "smime-signature"} {
		if !strings.Contains(msg, want) {
			t.Errorf("unknown template error lacks %q:\n%s", want, msg)
		}
	}
}

// TestCLIBulkWaitFailsOnFailedItems: `bulk submit --wait` exits with status 3 when any item
// failed, and still prints the job ID on stdout.
func TestCLIBulkWaitFailsOnFailedItems(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	a := serve(t, state)
	file := filepath.Join(t.TempDir(), "bad.jsonl")
	writeJobFile(t, file, `{"kind":"import"}`, []string{
		`{"certificate":"bm90IGEgY2VydGlmaWNhdGU=","key":"bm90IGEga2V5"}`,
		`{"certificate":"bm90IGEgY2VydGlmaWNhdGU=","key":"bm90IGEga2V5"}`,
	})
	out, errOut, code := exitCode(t, "bulk", "submit", file, "--wait", "--state", state, "--as", "admin", "--server", a.url)
	if code != 3 {
		t.Fatalf("bulk submit --wait of a job whose items all failed: exit %d, want 3\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if strings.TrimSpace(out) == "" || !strings.Contains(errOut, "2 of 2 items failed") {
		t.Errorf("want the job ID on stdout and the count of failed items on stderr:\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

// TestCLIRecoveryShowEffectiveState: once the quorum is met, `recovery show` says so instead of
// "open".
func TestCLIRecoveryShowEffectiveState(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "carol@example.org", filepath.Join(dir, "carol"))
	serial := certSerial(t, dir, filepath.Join(dir, "carol", "cert.pem"))
	S := []string{"--state", state, "--server", a.url}
	id := strings.TrimSpace(keyarc(t, append([]string{"recovery", "request", "--serial", serial, "--reason", "test", "--as", "officer"}, S...)...))
	show := func() string {
		return keyarc(t, append([]string{"recovery", "show", id, "--as", "officer"}, S...)...)
	}
	if s := show(); !strings.Contains(s, ": open") {
		t.Errorf("before any approval:\n%s", s)
	}
	keyarc(t, append([]string{"recovery", "approve", id, "--yes", "--as", "kra1"}, S...)...)
	keyarc(t, append([]string{"recovery", "approve", id, "--yes", "--as", "kra2"}, S...)...)
	s := show()
	if strings.Contains(s, ": open") || !strings.Contains(s, "quorum met") {
		t.Errorf("after the quorum, recovery show says:\n%s", s)
	}
	list := keyarc(t, append([]string{"recovery", "list", "--as", "officer"}, S...)...)
	if !strings.Contains(list, "approved") {
		t.Errorf("after the quorum, recovery list says:\n%s", list)
	}
}

// TestCLIKRAEnrollWaitSaysWhatItWaitsFor: `kra enroll --wait` tells the KRA it waits for an
// admin and which command issues the request.
func TestCLIKRAEnrollWaitSaysWhatItWaitsFor(t *testing.T) {
	t.Parallel()
	requireTools(t, "softhsm2-util")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	env := []string{"SOFTHSM2_CONF=" + filepath.Join(state, "softhsm", "softhsm2.conf")}
	const pin = "1357135713571357"
	run2(t, env, "softhsm2-util", "--init-token", "--free", "--label", "kra5", "--so-pin", "0815081508150815", "--pin", pin)
	pinFile := filepath.Join(dir, "kra5.pin")
	writeFile(t, pinFile, []byte(pin+"\n"))
	stdout, stderr, err := keyarcEnv(env, "kra", "enroll", "--server", a.url, "--cacert", filepath.Join(state, "ca.pem"),
		"--token-label", "kra5", "--pin-file", pinFile, "--module", softhsmModule(), "--wait", "1s", "--out", filepath.Join(dir, "kra5"))
	if err == nil {
		t.Fatalf("kra enroll --wait 1s without an admin's decision succeeded:\n%s", stdout)
	}
	id := strings.TrimSpace(stdout)
	for _, want := range []string{"waiting", "admin", "keyarc admin pending issue " + id} {
		if id == "" || !strings.Contains(stderr, want) {
			t.Errorf("kra enroll --wait lacks %q (ID %q):\n%s", want, id, stderr)
		}
	}
}

// TestMakeSaysWhichGoToInstall: without Go, or with a Go too old to fetch the toolchain go.mod
// names, make run, make test and make build stop at once saying what to install.
func TestMakeSaysWhichGoToInstall(t *testing.T) {
	t.Parallel()
	requireTools(t, "make")
	oldGo := filepath.Join(t.TempDir(), "go")
	writeFile(t, oldGo, []byte("#!/bin/sh\necho 'go version go1.19.8 linux/amd64'\n"))
	if err := os.Chmod(oldGo, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, goBin, want string }{
		{"no Go", filepath.Join(t.TempDir(), "missing", "go"), "Go is not installed"},
		{"Go 1.19", oldGo, "Go 1.19 is too old"},
	} {
		for _, target := range []string{"run", "test", "build"} {
			t.Run(tc.name+" make "+target, func(t *testing.T) {
				cmd := exec.Command("make", "-C", "..", target, "GO="+tc.goBin)
				out, err := cmd.CombinedOutput()
				if err == nil {
					t.Fatalf("make %s with %s succeeded:\n%s", target, tc.name, out)
				}
				for _, w := range []string{tc.want, "install Go 1.21 or newer", "https://go.dev/dl/", "module proxy"} {
					if !strings.Contains(string(out), w) {
						t.Errorf("make %s lacks %q:\n%s", target, w, out)
					}
				}
				if strings.Contains(string(out), "deps:") || strings.Contains(string(out), "softhsm") {
					t.Errorf("make %s did more than stop:\n%s", target, out)
				}
			})
		}
	}
}

// TestCLINamesMissingOperator: --as naming an operator without a credential in the state folder
// says so, rather than a bare "no such file".
func TestCLINamesMissingOperator(t *testing.T) {
	t.Parallel()
	state := devState(t)
	msg := keyarcFails(t, "admin", "pending", "list", "--state", state, "--as", "nobody")
	if !strings.Contains(msg, `no operator "nobody"`) || strings.Contains(msg, "no such file") {
		t.Errorf("--as nobody: %s", msg)
	}
}

// TestInitTokenMistakes: an init whose token cannot be opened leaves no configuration behind
// (a run with the corrected --token starts afresh), and an init over a state folder says that
// a different --token is not the one it keeps using.
func TestInitTokenMistakes(t *testing.T) {
	t.Parallel()
	state := devState(t)
	cfg, err := os.ReadFile(filepath.Join(state, "keyarc.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var uri string
	for _, line := range strings.Split(string(cfg), "\n") {
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "uri: "); ok {
			uri = u
		}
	}
	wrong := strings.Replace(uri, "token=keyarc", "token=nosuch", 1)
	if uri == "" || wrong == uri {
		t.Fatalf("no token URI in the configuration:\n%s", cfg)
	}
	fresh := filepath.Join(t.TempDir(), "state")
	keyarcFails(t, "init", "--state", fresh, "--token", wrong)
	if _, err := os.Stat(filepath.Join(fresh, "keyarc.yaml")); err == nil {
		t.Error("a failed init left keyarc.yaml, which a run with the corrected --token would keep")
	}
	out, _, _ := keyarcResult("init", "--state", state, "--token", wrong)
	if !strings.Contains(out, "the token stays") {
		t.Errorf("init over a state with another --token does not say it is not used:\n%s", out)
	}
}

// TestEnrollOutputUnwritable: an enroll whose --out cannot be made fails before the code is
// spent, leaving nothing behind, and the same code then enrolls into a good folder.
func TestEnrollOutputUnwritable(t *testing.T) {
	t.Parallel()
	state := devState(t)
	a := serve(t, state)
	const mailbox = "out@example.org"
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-signature"))
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	writeFile(t, blocker, []byte("not a folder"))
	args := []string{"enroll", "--state", state, "--server", a.url, "--template", "smime-signature", "--email", mailbox, "--code", code, "--out"}
	if msg := keyarcFails(t, append(args, filepath.Join(blocker, "out"))...); !strings.Contains(msg, "cannot be written") {
		t.Errorf("enroll into an unwritable --out: %s", msg)
	}
	keyarc(t, append(args, filepath.Join(dir, "good"))...)
	for _, f := range []string{"key.pem", "cert.pem", "chain.pem"} {
		if st, err := os.Stat(filepath.Join(dir, "good", f)); err != nil || st.Size() == 0 {
			t.Errorf("%s after the enrollment: %v", f, err)
		}
	}
}

// TestCLIRefusesStrayArguments: a command that takes only flags refuses an argument besides
// them (a second serial or mailbox pasted after a flag's value) with a usage error naming it,
// before it does anything, rather than acting on the flags and ignoring the rest.
func TestCLIRefusesStrayArguments(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	const stray = "stray-0123abcd"
	for _, args := range [][]string{
		{"recovery", "request", "--email", "a@example.org", stray, "--reason", "lost laptop"},
		{"recovery", "list", stray},
		{"admin", "pending", "list", stray},
		{"admin", "recovery-set", "show", stray},
		{"admin", "recovery-set", "set", stray},
		{"admin", "recovery-set", "reseal", stray},
		{"kra", "drill", stray},
		{"admin", "drill", "open", stray},
		{"admin", "drill", "list", stray},
	} {
		out, errOut, code := exitCode(t, append(args, "--state", state)...)
		if code != 2 || out != "" || !strings.Contains(errOut, stray) {
			t.Errorf("keyarc %s: exit %d, stdout %q, stderr %q; want a usage error naming %s", strings.Join(args, " "), code, out, errOut, stray)
		}
	}
}

// TestCLIBulkResultsFilesPrivate: `bulk results` writes the results and the PKCS#12 passwords
// (released once) to files only their owner can read, even over files that existed with a
// looser mode: their content must not inherit it.
func TestCLIBulkResultsFilesPrivate(t *testing.T) {
	t.Parallel()
	requireTools(t)
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	file := filepath.Join(dir, "staff.jsonl")
	writeJobFile(t, file, `{"kind":"keygen","template":"smime-encryption","key":"p256"}`, []string{`{"email":"ivy@example.org"}`})
	job := strings.TrimSpace(keyarc(t, "bulk", "submit", file, "--wait", "--state", state, "--as", "admin", "--server", a.url))
	results, passwords := filepath.Join(dir, "results.jsonl"), filepath.Join(dir, "passwords.jsonl")
	for _, p := range []string{results, passwords} {
		if err := os.WriteFile(p, []byte("an older file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keyarc(t, "bulk", "results", job, "--out", results, "--passwords", passwords, "--state", state, "--as", "admin", "--server", a.url)
	for _, p := range []string{results, passwords} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	if b, err := os.ReadFile(passwords); err != nil || !strings.Contains(string(b), `"password"`) || strings.Contains(string(b), "older") {
		t.Errorf("passwords file: %q, %v; want the passwords alone", b, err)
	}
}
