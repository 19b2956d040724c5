package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// keyarcEnv runs the binary with extra environment (for example SOFTHSM2_CONF for a KRA's own
// token) and returns stdout, stderr and the error.
func keyarcEnv(env []string, args ...string) (string, string, error) {
	cmd := exec.Command(keyarcBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// pendingEntry is one row of `keyarc admin pending list --json`.
type pendingEntry struct {
	ID           string   `json:"id"`
	Template     string   `json:"template"`
	Name         string   `json:"name"`
	State        string   `json:"state"`
	Serial       string   `json:"serial"`
	Fingerprints []string `json:"fingerprints"`
}

// recoverySetShown is `keyarc admin recovery-set show --json`.
type recoverySetShown struct {
	Epoch  int `json:"epoch"`
	Quorum int `json:"quorum"`
	KRAs   []struct {
		Name   string `json:"name"`
		Serial string `json:"serial"`
	} `json:"kras"`
}

// spkiFingerprint is the SHA-256 of a PEM certificate's SubjectPublicKeyInfo, in hex, as the
// appliance shows key fingerprints.
func spkiFingerprint(t *testing.T, certPEM string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.pem")
	writeFile(t, path, []byte(certPEM))
	sum := sha256.Sum256(readCert(t, path).RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// keyObjectCheck checks pkcs11-tool's paragraph of a private key: sensitive, never extractable,
// with the wanted usages and none of the forbidden ones.
func keyObjectCheck(t *testing.T, listing, label string, must, mustNot []string) {
	t.Helper()
	obj := privateKeyObject(t, listing, label)
	usage := regexp.MustCompile(`Usage:\s*([^\n]*)`).FindStringSubmatch(obj)
	access := regexp.MustCompile(`Access:\s*([^\n]*)`).FindStringSubmatch(obj)
	if usage == nil || access == nil {
		t.Fatalf("%s: no Usage/Access lines:\n%s", label, obj)
	}
	if !strings.Contains(access[1], "sensitive") || !strings.Contains(access[1], "never extractable") {
		t.Errorf("%s: access %q, want sensitive and never extractable", label, access[1])
	}
	var fields []string
	for _, f := range strings.Split(usage[1], ",") {
		fields = append(fields, strings.TrimSpace(f))
	}
	for _, u := range must {
		if !slices.Contains(fields, u) {
			t.Errorf("%s: usage %q lacks %s", label, usage[1], u)
		}
	}
	for _, u := range mustNot {
		if slices.Contains(fields, u) {
			t.Errorf("%s: usage %q includes %s", label, usage[1], u)
		}
	}
}

// TestKRAEnrollment: a new Key Recovery Agent makes its keys in its own token with `keyarc kra
// enroll`; an admin sees the pending request with its key fingerprints and issues it; the KRA
// joins a new recovery set (epoch 2) and new escrow records are sealed under that epoch while
// old ones keep theirs. Denied requests cannot be issued.
func TestKRAEnrollment(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl", "pkcs11-tool", "softhsm2-util")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	ca := filepath.Join(state, "ca.pem")
	env := []string{"SOFTHSM2_CONF=" + filepath.Join(state, "softhsm", "softhsm2.conf")}
	admin := []string{"--state", state, "--server", a.url, "--as", "admin"}
	officer := []string{"--state", state, "--server", a.url, "--as", "officer"}

	// An archival enrollment under the dev recovery set (epoch 1), before anything changes.
	const mailbox = "ivan@example.org"
	keyarc(t, "enroll", "--state", state, "--server", a.url, "--email", mailbox,
		"--code", newCode(t, state, mailbox, "smime-encryption"), "--out", filepath.Join(dir, "before"))
	beforeSerial := opensslSerial(t, dir, filepath.Join(dir, "before", "cert.pem"))
	if r := requireActiveRecord(t, state, beforeSerial); r.epoch != 1 {
		t.Fatalf("record before the change sealed under epoch %d, want 1", r.epoch)
	}

	// The KRA's own token, in the dev SoftHSM.
	const pin = "4711471147114711"
	run2(t, env, "softhsm2-util", "--init-token", "--free", "--label", "kra4", "--so-pin", "0815081508150815", "--pin", pin)
	pinFile := filepath.Join(dir, "kra4.pin")
	writeFile(t, pinFile, []byte(pin+"\n"))
	kraFlags := []string{"--server", a.url, "--cacert", ca, "--token-label", "kra4", "--pin-file", pinFile, "--module", softhsmModule()}

	stdout, stderr, err := keyarcEnv(env, append([]string{"kra", "enroll"}, kraFlags...)...)
	if err != nil {
		t.Fatalf("keyarc kra enroll: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	id := strings.TrimSpace(stdout)
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("kra enroll printed %q on stdout, want the pending request ID alone", stdout)
	}
	printed := regexp.MustCompile(`SHA-256 ([0-9a-f]{64})`).FindAllStringSubmatch(stderr, -1)
	if len(printed) != 2 {
		t.Fatalf("kra enroll did not print two key fingerprints for the KRA to read out:\n%s", stderr)
	}

	// The keys in the KRA's token, from outside: single purpose, sensitive, never extractable.
	listing := run2(t, env, "pkcs11-tool", "--module", softhsmModule(), "--token-label", "kra4", "--login", "--pin", pin, "--list-objects")
	keyObjectCheck(t, listing, "kra-unwrap", []string{"decrypt"}, []string{"sign", "unwrap", "derive"})
	keyObjectCheck(t, listing, "kra-auth", []string{"sign"}, []string{"decrypt", "unwrap", "derive"})

	// The admin sees it with the fingerprints the KRA printed; an officer may not look.
	var list []pendingEntry
	if err := json.Unmarshal([]byte(keyarc(t, append([]string{"admin", "pending", "list", "--json"}, admin...)...)), &list); err != nil {
		t.Fatal(err)
	}
	var p *pendingEntry
	for i := range list {
		if list[i].ID == id {
			p = &list[i]
		}
	}
	if p == nil {
		t.Fatalf("pending list does not show request %s: %+v", id, list)
	}
	if p.Template != "kra" || p.Name != "kra4" || p.State != "pending" {
		t.Errorf("pending request %+v, want template kra, name kra4, state pending", *p)
	}
	if len(p.Fingerprints) != 2 || p.Fingerprints[0] != printed[0][1] || p.Fingerprints[1] != printed[1][1] {
		t.Errorf("pending list fingerprints %q, the KRA printed %s and %s", p.Fingerprints, printed[0][1], printed[1][1])
	}
	for _, verb := range [][]string{{"list"}, {"issue", id}} {
		_, stderr, err := keyarcResult(append(append([]string{"admin", "pending"}, verb...), officer...)...)
		if err == nil || !strings.Contains(stderr, "403") || !strings.Contains(stderr, "admin") {
			t.Errorf("pending %s as officer: err %v, stderr %q; want a 403 naming the admin role", verb[0], err, stderr)
		}
	}

	// Issued by the admin; the KRA collects its certificates.
	out := keyarc(t, append([]string{"admin", "pending", "issue", id}, admin...)...)
	if !strings.Contains(out, "KRA kra4") {
		t.Errorf("pending issue printed %q", out)
	}
	status, body := curlStatus(t, dir, "--cacert", ca, a.url+"/api/v1/kra/enroll/"+id)
	if status != 200 {
		t.Fatalf("GET /api/v1/kra/enroll/%s: HTTP %d: %s", id, status, body)
	}
	var st struct {
		State  string `json:"state"`
		Serial string `json:"serial"`
		Unwrap string `json:"unwrap_certificate"`
		Auth   string `json:"auth_certificate"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	if st.State != "issued" || st.Unwrap == "" || st.Auth == "" {
		t.Fatalf("KRA enrollment status: %s", body)
	}
	unwrap, auth := filepath.Join(dir, "kra4-unwrap.pem"), filepath.Join(dir, "kra4-auth.pem")
	writeFile(t, unwrap, []byte(st.Unwrap))
	writeFile(t, auth, []byte(st.Auth))
	for _, c := range []string{unwrap, auth} {
		if got := run(t, dir, "openssl", "verify", "-CAfile", ca, c); !strings.Contains(got, ": OK") {
			t.Errorf("openssl verify %s: %s", filepath.Base(c), got)
		}
	}
	text := run(t, dir, "openssl", "x509", "-in", unwrap, "-noout", "-text")
	if !strings.Contains(text, "Key Encipherment") || !(strings.Contains(text, "1.3.6.1.4.1.311.21.6") || strings.Contains(text, "Key Recovery")) {
		t.Errorf("unwrap certificate lacks keyEncipherment or the key-recovery EKU:\n%s", text)
	}
	if strings.Contains(text, "Digital Signature") {
		t.Errorf("unwrap certificate allows signatures:\n%s", text)
	}
	if fp := spkiFingerprint(t, st.Unwrap); fp != printed[0][1] {
		t.Errorf("unwrap certificate key %s, the KRA's unwrap key is %s", fp, printed[0][1])
	}
	if fp := spkiFingerprint(t, st.Auth); fp != printed[1][1] {
		t.Errorf("auth certificate key %s, the KRA's auth key is %s", fp, printed[1][1])
	}
	unwrapSerial := opensslSerial(t, dir, unwrap)
	if st.Serial != unwrapSerial {
		t.Errorf("the request records serial %s, the unwrap certificate has %s", st.Serial, unwrapSerial)
	}
	if _, stderr, err := keyarcResult(append([]string{"admin", "pending", "issue", id}, admin...)...); err == nil || !strings.Contains(stderr, "already issued") {
		t.Errorf("issuing %s twice: err %v, stderr %q; want a refusal saying it is already issued", id, err, stderr)
	}

	// The recovery set: the dev KRAs plus kra4, any 3 of 4.
	var rs recoverySetShown
	if err := json.Unmarshal([]byte(keyarc(t, append([]string{"admin", "recovery-set", "show", "--json"}, admin...)...)), &rs); err != nil {
		t.Fatal(err)
	}
	if rs.Epoch != 1 || rs.Quorum != 2 || len(rs.KRAs) != 3 {
		t.Fatalf("dev recovery set is epoch %d, %d of %d; want epoch 1, 2 of 3", rs.Epoch, rs.Quorum, len(rs.KRAs))
	}
	set := append([]string{"admin", "recovery-set", "set"}, admin...)
	for _, k := range rs.KRAs {
		set = append(set, "--kra", k.Serial)
	}
	set = append(set, "--kra", unwrapSerial)
	if _, stderr, err := keyarcResult(append(set, "--quorum", "5")...); err == nil || !strings.Contains(stderr, "quorum 5") || !strings.Contains(stderr, "(4)") {
		t.Errorf("quorum 5 of 4: err %v, stderr %q; want a refusal naming the quorum and the 4 KRAs", err, stderr)
	}
	keyarc(t, append(set, "--quorum", "3")...)
	if err := json.Unmarshal([]byte(keyarc(t, append([]string{"admin", "recovery-set", "show", "--json"}, admin...)...)), &rs); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range rs.KRAs {
		names = append(names, k.Name)
	}
	if rs.Epoch != 2 || rs.Quorum != 3 || len(rs.KRAs) != 4 || !slices.Contains(names, "kra4") {
		t.Fatalf("after the change the recovery set is epoch %d, %d of %v; want epoch 2, 3 of 4 with kra4", rs.Epoch, rs.Quorum, names)
	}

	// New records are sealed under epoch 2; the old one keeps epoch 1.
	keyarc(t, "enroll", "--state", state, "--server", a.url, "--email", mailbox,
		"--code", newCode(t, state, mailbox, "smime-encryption"), "--out", filepath.Join(dir, "after"))
	if r := requireActiveRecord(t, state, opensslSerial(t, dir, filepath.Join(dir, "after", "cert.pem"))); r.epoch != 2 {
		t.Errorf("record after the change sealed under epoch %d, want 2", r.epoch)
	}
	if r := requireActiveRecord(t, state, beforeSerial); r.epoch != 1 {
		t.Errorf("the earlier record moved to epoch %d; it must keep epoch 1", r.epoch)
	}

	// A second request, denied, cannot then be issued. It comes from a token of its own: kra4's
	// keys belong to kra4 (TestKRAKeysBelongToOneKRA).
	run2(t, env, "softhsm2-util", "--init-token", "--free", "--label", "kra5", "--so-pin", "0815081508150815", "--pin", pin)
	kra5Flags := []string{"--server", a.url, "--cacert", ca, "--token-label", "kra5", "--pin-file", pinFile, "--module", softhsmModule()}
	stdout, stderr, err = keyarcEnv(env, append([]string{"kra", "enroll"}, kra5Flags...)...)
	if err != nil {
		t.Fatalf("second keyarc kra enroll: %v\n%s", err, stderr)
	}
	id2 := strings.TrimSpace(stdout)
	if out := keyarc(t, append([]string{"admin", "pending", "deny", id2}, admin...)...); !strings.Contains(out, "denied") {
		t.Errorf("pending deny printed %q", out)
	}
	if _, stderr, err := keyarcResult(append([]string{"admin", "pending", "issue", id2}, admin...)...); err == nil || !strings.Contains(stderr, "denied") {
		t.Errorf("issuing the denied request: err %v, stderr %q; want a refusal saying it was denied", err, stderr)
	}
	if status, body := curlStatus(t, dir, "--cacert", ca, a.url+"/api/v1/kra/enroll/"+id2); status != 200 || !strings.Contains(string(body), `"denied"`) || strings.Contains(string(body), "BEGIN CERTIFICATE") {
		t.Errorf("status of the denied request: HTTP %d %s", status, body)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE kra = 'kra5'"); n != 0 {
		t.Errorf("the denied KRA has %d certificates", n)
	}
	if err := json.Unmarshal([]byte(keyarc(t, append([]string{"admin", "pending", "list", "--json"}, admin...)...)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("pending list still shows decided requests: %+v", list)
	}
}

// TestKRAKeysBelongToOneKRA: one token is one KRA. A KRA's token enrolling again under
// another name (to hold two shares of a recovery set alone), and a new token enrolling under
// the name of a KRA with valid certificates (to be handed that KRA's shares and take its
// approval), are both refused with 409 when submitted, and nothing waits for an admin.
func TestKRAKeysBelongToOneKRA(t *testing.T) {
	t.Parallel()
	requireTools(t, "softhsm2-util")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	ca := filepath.Join(state, "ca.pem")
	env := []string{"SOFTHSM2_CONF=" + filepath.Join(state, "softhsm", "softhsm2.conf")}
	admin := []string{"--state", state, "--server", a.url, "--as", "admin"}
	const pin = "4711471147114711"
	pinFile := filepath.Join(dir, "kra.pin")
	writeFile(t, pinFile, []byte(pin+"\n"))
	flags := func(label string) []string {
		return []string{"--server", a.url, "--cacert", ca, "--token-label", label, "--pin-file", pinFile, "--module", softhsmModule()}
	}
	for _, label := range []string{"kra4", "evil"} {
		run2(t, env, "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "0815081508150815", "--pin", pin)
	}

	// kra4 enrolls and is issued.
	stdout, stderr, err := keyarcEnv(env, append([]string{"kra", "enroll"}, flags("kra4")...)...)
	if err != nil {
		t.Fatalf("keyarc kra enroll: %v\n%s", err, stderr)
	}
	keyarc(t, append([]string{"admin", "pending", "issue", strings.TrimSpace(stdout)}, admin...)...)

	for _, tc := range []struct {
		what, label, name, says string
	}{
		{"kra4's token under the name kra9", "kra4", "kra9", "already certified"},
		{"a new token under the name of dev KRA kra1", "evil", "kra1", "already has valid certificates"},
		{"a new token under the name kra4", "evil", "kra4", "already has valid certificates"},
	} {
		stdout, stderr, err := keyarcEnv(env, append([]string{"kra", "enroll", "--name", tc.name}, flags(tc.label)...)...)
		if err == nil || !strings.Contains(stderr, "409") || !strings.Contains(stderr, tc.says) {
			t.Errorf("kra enroll with %s: err %v, stdout %q, stderr %q; want a 409 saying %q", tc.what, err, stdout, stderr, tc.says)
		}
	}
	var list []pendingEntry
	if err := json.Unmarshal([]byte(keyarc(t, append([]string{"admin", "pending", "list", "--json"}, admin...)...)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("refused enrollments wait for an admin: %+v", list)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE kra = 'kra9'"); n != 0 {
		t.Errorf("kra9 has %d certificates", n)
	}
	if n := countRows(t, state, "SELECT count(*) FROM certificates WHERE kra = 'kra1'"); n != 2 {
		t.Errorf("kra1 has %d certificates, want its own two", n)
	}
}
