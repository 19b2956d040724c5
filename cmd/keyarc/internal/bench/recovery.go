package bench

import (
	"bytes"
	"crypto"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// recoverySample is one recovery's measured span, from the start of the m-th approval to the
// PKCS#12 in hand: its two steps' wall time, the server's CPU time over each, and each client
// child's own CPU time.
type recoverySample struct {
	approve, fetch             time.Duration // wall time of each child, start to exit
	serverApprove, serverFetch time.Duration // the `keyarc serve` child's CPU over each
	clientApprove, clientFetch time.Duration // the CLI child's own CPU (user + system)
}

func (s recoverySample) total() time.Duration       { return s.approve + s.fetch }
func (s recoverySample) serverTotal() time.Duration { return s.serverApprove + s.serverFetch }

// spread returns the median, the smallest and the largest of f over ss (zeros when ss is
// empty).
func spread(ss []recoverySample, f func(recoverySample) time.Duration) (med, lo, hi time.Duration) {
	if len(ss) == 0 {
		return 0, 0, 0
	}
	v := make([]time.Duration, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	return v[len(v)/2], v[0], v[len(v)-1]
}

// errWrongKey: a recovered PKCS#12 opens, but does not hold the key that was archived.
var errWrongKey = errors.New("bench: the recovered PKCS#12 does not hold the archived key and its certificate")

// checkPFX checks that pfx opens with password and holds key with certificate cert: a
// recovery that delivered anything else is a failure, never a measurement.
//
// # Errors
//
// go-pkcs12's when the file does not open with the password; [errWrongKey].
func checkPFX(pfx []byte, password string, key crypto.Signer, cert *x509.Certificate) error {
	got, leaf, _, err := pkcs12.DecodeChain(pfx, password)
	if err != nil {
		return fmt.Errorf("bench: the recovered PKCS#12 does not open with its password: %w", err)
	}
	k, ok := got.(interface{ Equal(crypto.PrivateKey) bool })
	if !ok || !k.Equal(key) || !leaf.Equal(cert) {
		return errWrongKey
	}
	return nil
}

// recoveryRound measures the latency of a recovery as its users run it (README, "Losing a key
// and getting it back"): a `keyarc serve` child on a throw-away development state, a key
// archived by `keyarc enroll` (RSA-2048, the CLI's default), and for each of n recoveries the
// real CLI as child processes: the officer's `recovery request`, the first m-1 KRAs'
// `recovery approve`, then, measured, the m-th KRA's `recovery approve` (the unwrap of its
// share in its own token is part of it) and the officer's `recovery fetch`, from the start of
// the one to the exit of the other, the PKCS#12 and its password written. The server's CPU time
// (utime+stime in /proc/PID/stat) is read before, between and after the two; each child's own
// CPU time from its rusage. Each PKCS#12 must open with its password and hold the archived key
// and its certificate, or the round fails. The PKCS#12 build alone (the PBKDF2 iterations of
// [escrow.PFXIterations]) is measured in this process on the same key, for comparison.
func (b *bench) recoveryRound(n int) error {
	fmt.Printf("== recovery latency, out of process: the CLI's `keyarc recovery approve` and `fetch` (child processes) against a `keyarc serve` child ==\n")
	state, err := b.initState("state-recovery", "p256")
	if err != nil {
		return err
	}
	caCert, err := b.env.CACert(state)
	if err != nil {
		return err
	}
	addr := freeAddr()
	base := "https://" + addr
	srv := exec.Command(b.self, "serve", "--state", state, "--addr", addr, "--metrics-addr", freeAddr(), "--public-addr", freeAddr())
	var logs syncBuffer
	srv.Stderr = &logs
	if err := srv.Start(); err != nil {
		return err
	}
	defer stopChild(srv)
	if err := waitReady(base, caCert); err != nil {
		return fmt.Errorf("%w\n%s", err, lastLines(logs.String(), 20))
	}
	pid := srv.Process.Pid

	// cli runs one client command as its users do, against the serve child; it returns the
	// command's standard output and its own CPU time.
	cli := func(args ...string) ([]byte, time.Duration, error) {
		cmd := exec.Command(b.self, append(args, "--state", state, "--server", base)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, 0, fmt.Errorf("keyarc %s: %w: %s", strings.Join(args[:2], " "), err, strings.TrimSpace(stderr.String()))
		}
		return out, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
	}

	// The archived key: a one-time code (local on the state, as an admin makes it), then
	// `keyarc enroll`, which makes the key, archives it and writes it with the certificate.
	const mailbox = "recovery-bench@example.org"
	out, err := exec.Command(b.self, "admin", "enroll-code", "create", "--state", state, "--email", mailbox,
		"--template", policy.TemplateSMIMEEncryption).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("keyarc admin enroll-code create: %w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return fmt.Errorf("keyarc admin enroll-code create: %w", err)
	}
	work := filepath.Join(b.dir, "recovery")
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	codeFile := filepath.Join(work, "code")
	if err := os.WriteFile(codeFile, out, 0o600); err != nil {
		return err
	}
	enrolled := filepath.Join(work, "enrolled")
	if _, _, err := cli("enroll", "--template", policy.TemplateSMIMEEncryption, "--email", mailbox, "--code-file", codeFile, "--out", enrolled); err != nil {
		return err
	}
	key, err := pemfile.ReadPrivateKey(filepath.Join(enrolled, "key.pem"))
	if err != nil {
		return err
	}
	cert, err := pemfile.ReadCertificate(filepath.Join(enrolled, "cert.pem"))
	if err != nil {
		return err
	}
	serial := store.FormatSerial(cert.SerialNumber)
	kras, err := filepath.Glob(filepath.Join(state, "credentials", "kra*-auth.pem"))
	if err != nil || len(kras) == 0 {
		return fmt.Errorf("bench: no KRA credentials in %s", filepath.Join(state, "credentials"))
	}
	for i, k := range kras {
		kras[i] = strings.TrimSuffix(filepath.Base(k), "-auth.pem")
	}

	var samples []recoverySample
	need := 0
	for i := range n {
		out, _, err := cli("recovery", "request", "--as", "officer", "--serial", serial, "--reason", "keyarc bench: recovery latency", "--keep")
		if err != nil {
			return err
		}
		id := strings.TrimSpace(string(out))
		if out, _, err = cli("recovery", "show", id, "--as", "officer", "--json"); err != nil {
			return err
		}
		var rec wire.Recovery
		if err := json.Unmarshal(out, &rec); err != nil {
			return fmt.Errorf("keyarc recovery show --json: %w", err)
		}
		need = rec.Need
		if need < 1 || need > len(kras) {
			return fmt.Errorf("bench: recovery %s needs %d approvals; the state has %d KRAs", id, need, len(kras))
		}
		// The first m-1 approvals, not measured; which KRA comes last turns with each recovery.
		for j := range need - 1 {
			if _, _, err := cli("recovery", "approve", id, "--as", kras[(i+j)%len(kras)], "--yes"); err != nil {
				return err
			}
		}
		dir := filepath.Join(work, fmt.Sprintf("fetch%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		p12, pw := filepath.Join(dir, "key.p12"), filepath.Join(dir, "key.pw")
		var s recoverySample
		cpu0, err := procCPU(pid)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if _, s.clientApprove, err = cli("recovery", "approve", id, "--as", kras[(i+need-1)%len(kras)], "--yes"); err != nil {
			return err
		}
		t1 := time.Now()
		cpu1, err := procCPU(pid)
		if err != nil {
			return err
		}
		if _, s.clientFetch, err = cli("recovery", "fetch", id, "--as", "officer", "--out", p12, "--password-file", pw); err != nil {
			return err
		}
		t2 := time.Now()
		cpu2, err := procCPU(pid)
		if err != nil {
			return err
		}
		s.approve, s.fetch = t1.Sub(t0), t2.Sub(t1)
		s.serverApprove, s.serverFetch = cpu1-cpu0, cpu2-cpu1
		pfx, err := os.ReadFile(p12)
		if err != nil {
			return err
		}
		password, err := os.ReadFile(pw)
		if err != nil {
			return err
		}
		err = checkPFX(pfx, strings.TrimSpace(string(password)), key, cert)
		clear(password)
		if err != nil {
			return fmt.Errorf("recovery %s: %w", id, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		samples = append(samples, s)
	}
	stopChild(srv)

	build, err := pfxBuildCPU(key, cert, caCert, 3)
	if err != nil {
		return err
	}
	kdf, err := pbkdf2CPU(3)
	if err != nil {
		return err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	rng := func(f func(recoverySample) time.Duration) (float64, string) {
		med, lo, hi := spread(samples, f)
		return ms(med), fmt.Sprintf("range %.0f–%.0f ms", ms(lo), ms(hi))
	}
	fmt.Printf("  an archived %s key (keyarc enroll); quorum m = %d of %d KRAs; %d recoveries, each: request, m-1 approvals,\n",
		keyKind(key.Public()), need, len(kras), n)
	fmt.Println("  then measured: the m-th KRA's `recovery approve` (its share unwrapped in its token) and the officer's `recovery fetch`")
	v, note := rng(recoverySample.total)
	row(fmt.Sprintf("m-th approval to the PKCS#12 in hand (median of %d)", n), v, "ms", note)
	v, note = rng(func(s recoverySample) time.Duration { return s.approve })
	row("  the m-th approval (CLI child)", v, "ms", note)
	v, note = rng(func(s recoverySample) time.Duration { return s.fetch })
	row("  the fetch (CLI child; PKCS#12 and password written)", v, "ms", note)
	v, note = rng(recoverySample.serverTotal)
	row("server CPU over the span (keyarc serve, utime+stime)", v, "ms", note+" (/proc counts 10 ms ticks)")
	v, note = rng(func(s recoverySample) time.Duration { return s.serverApprove })
	row("  of it, in the m-th approval", v, "ms", note)
	v, note = rng(func(s recoverySample) time.Duration { return s.serverFetch })
	row("  of it, in the fetch", v, "ms", note+" (shares opened in the token, record, PKCS#12)")
	v, note = rng(func(s recoverySample) time.Duration { return s.clientApprove })
	row("client CPU: the approve child (token, TLS, unwrap, sign)", v, "ms", note)
	v, note = rng(func(s recoverySample) time.Duration { return s.clientFetch })
	row("client CPU: the fetch child", v, "ms", note)
	srvFetch, _, _ := spread(samples, func(s recoverySample) time.Duration { return s.serverFetch })
	share := ""
	if srvFetch > 0 {
		share = fmt.Sprintf("; %.0f%% of the server's CPU in the fetch", 100*float64(build)/float64(srvFetch))
	}
	row(fmt.Sprintf("PKCS#12 build alone (PBKDF2-SHA-256 × %d), CPU", escrow.PFXIterations), ms(build), "ms",
		"median of 3 in this process, same key"+share)
	row("  of it, one PBKDF2-HMAC-SHA-256 derivation, CPU", ms(kdf), "ms",
		"the file derives 3 keys at that count: key bag, certificate bag (PBKDF2), MAC (PKCS#12 KDF)")
	fmt.Println()
	return nil
}

// pfxBuildCPU returns the median CPU time of runs builds of the PKCS#12 a recovery delivers
// (go-pkcs12 Modern2023 with [escrow.PFXIterations]) of key and cert, measured in this process
// (nothing else runs in it meanwhile).
func pfxBuildCPU(key crypto.Signer, cert, caCert *x509.Certificate, runs int) (time.Duration, error) {
	enc := pkcs12.Modern2023.WithIterations(escrow.PFXIterations)
	pw := rand.Text()
	ds := make([]time.Duration, runs)
	for i := range ds {
		c0 := selfCPU()
		if _, err := enc.Encode(key, cert, []*x509.Certificate{caCert}, pw); err != nil {
			return 0, fmt.Errorf("bench: build a PKCS#12: %w", err)
		}
		ds[i] = selfCPU() - c0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], nil
}

// pbkdf2CPU returns the median CPU time of runs PBKDF2-HMAC-SHA-256 derivations of a 32-byte
// key with [escrow.PFXIterations], one of those a recovered PKCS#12 makes.
func pbkdf2CPU(runs int) (time.Duration, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	pw := rand.Text()
	ds := make([]time.Duration, runs)
	for i := range ds {
		c0 := selfCPU()
		if _, err := pbkdf2.Key(sha256.New, pw, salt, escrow.PFXIterations, 32); err != nil {
			return 0, fmt.Errorf("bench: PBKDF2: %w", err)
		}
		ds[i] = selfCPU() - c0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], nil
}
