package tests

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/softhsm"
)

// healthShown is the health part of `keyarc admin recovery-set show --json`.
type healthShown struct {
	recoverySetShown
	Health struct {
		WindowSeconds int64 `json:"window_seconds"`
		MarginSeconds int64 `json:"margin_seconds"`
		Epochs        []struct {
			Epoch       int  `json:"epoch"`
			Quorum      int  `json:"quorum"`
			Current     bool `json:"current"`
			Records     int  `json:"records"`
			Proven      int  `json:"proven"`
			AtRisk      bool `json:"at_risk"`
			NeedsReseal bool `json:"needs_reseal"`
		} `json:"epochs"`
	} `json:"health"`
}

// drillShown is a drill as the API shows it.
type drillShown struct {
	ID        string   `json:"id"`
	Campaign  string   `json:"campaign"`
	KRA       string   `json:"kra"`
	Epochs    []uint32 `json:"epochs"`
	State     string   `json:"state"`
	ExpiresAt string   `json:"expires_at"`
	DrillKey  string   `json:"drill_key"`
	KeyHash   string   `json:"key_oaep_hash"`
	Items     []struct {
		Epoch      uint32 `json:"epoch"`
		Share      string `json:"share"`
		OAEPHash   string `json:"oaep_hash"`
		KeyID      string `json:"key_id"`
		Commitment string `json:"commitment"`
	} `json:"items"`
}

// TestDrills: the recoverability drills end to end, with the real binary, the dev KRA tokens
// and the appliance's token behind pkcs11-spy. KRAs prove their tokens with `keyarc kra
// drill`; a KRA whose token was replaced by an empty one fails with a clear message; the
// epoch holding a record falls below its quorum of proven KRAs, which the metrics show and the
// alert rule fires on; the KRAs still standing reseal the record to a new set and drill again,
// and health returns. A proof for one drill is refused for another. pkcs11-spy shows that
// during the drills the appliance decrypts with drill keys only, once per canary share proven.
func TestDrills(t *testing.T) {
	requireTools(t, "openssl", "softhsm2-util")
	spy := "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so"
	if _, err := os.Stat(spy); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-spy.so (opensc) missing")
		}
		t.Skip("pkcs11-spy.so missing")
	}
	state := devState(t)
	setTokenModule(t, state, spy)
	spyLog := filepath.Join(t.TempDir(), "spy.log")
	a := serveWith(t, state, []string{"PKCS11SPY=" + softhsmModule(), "PKCS11SPY_OUTPUT=" + spyLog}, "")
	as := func(who string, args ...string) []string {
		return append(args, "--state", state, "--server", a.url, "--as", who)
	}
	health := func() healthShown {
		t.Helper()
		var h healthShown
		if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "recovery-set", "show", "--json")...)), &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	epochOf := func(h healthShown, e int) (proven, records int, atRisk, reseal, ok bool) {
		for _, x := range h.Health.Epochs {
			if x.Epoch == e {
				return x.Proven, x.Records, x.AtRisk, x.NeedsReseal, true
			}
		}
		return 0, 0, false, false, false
	}

	// A user's key archived under the dev recovery set (epoch 1: any 2 of kra1, kra2, kra3).
	dir := t.TempDir()
	const mailbox = "nadia@example.org"
	keyarc(t, "enroll", "--state", state, "--server", a.url, "--email", mailbox,
		"--code", newCode(t, state, mailbox, "smime-encryption"), "--out", filepath.Join(dir, "nadia"))
	first := health()
	if p, r, risk, _, ok := epochOf(first, 1); !ok || p != 0 || r != 1 || !risk {
		t.Fatalf("before any drill: epoch 1 proven %d, records %d, at risk %v (listed %v)", p, r, risk, ok)
	}
	if first.Health.WindowSeconds != 90*86400 || first.Health.MarginSeconds != 30*86400 {
		t.Errorf("health window %d s and margin %d s, want the defaults of 90 and 30 days", first.Health.WindowSeconds, first.Health.MarginSeconds)
	}

	// A campaign: one drill per KRA. kra1 proves its token; the spy sees one decryption, with
	// the drill key.
	var campaign []drillShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "open", "--json")...)), &campaign); err != nil {
		t.Fatal(err)
	}
	if len(campaign) != 3 || campaign[0].Campaign == "" {
		t.Fatalf("campaign: %+v, want 3 drills under one campaign ID", campaign)
	}
	mark := spyMark(t, spyLog)
	if out := keyarc(t, as("kra1", "kra", "drill")...); !strings.Contains(out, "proven") {
		t.Fatalf("kra1's drill: %s", out)
	}
	spyDecryptsOnlyDrillKeys(t, spyLog, mark, 1)

	// The admin sees who has answered; an officer opens no drill.
	var listed []drillShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "list", "--campaign", campaign[0].Campaign, "--json")...)), &listed); err != nil {
		t.Fatal(err)
	}
	answered := map[string]string{}
	for _, d := range listed {
		answered[d.KRA] = d.State
	}
	if len(listed) != 3 || answered["kra1"] != "proven" || answered["kra2"] != "open" || answered["kra3"] != "open" {
		t.Errorf("campaign listing: %v, want kra1 proven, kra2 and kra3 open", answered)
	}
	if msg := keyarcFails(t, as("officer", "admin", "drill", "open")...); !strings.Contains(msg, "403") {
		t.Errorf("an officer opens a campaign: %s, want 403", msg)
	}

	// An appliance that passes a user record's share off as kra2's canary share (what an
	// intruder in the appliance would try, to have the KRAs decrypt real shares for it): kra2's
	// CLI decrypts it, finds that it does not match the canary's commitment, and sends nothing.
	userSerial := opensslSerial(t, dir, filepath.Join(dir, "nadia", "cert.pem"))
	addr := strings.TrimPrefix(a.url, "https://")
	spyEnv := []string{"PKCS11SPY=" + softhsmModule(), "PKCS11SPY_OUTPUT=" + spyLog}
	a.stop(t)
	restore := swapCanaryShare(t, state, "kra2", userSerial)
	a = serveWith(t, state, spyEnv, addr)
	mark = spyMark(t, spyLog)
	_, stderr, err := keyarcResult(as("kra2", "kra", "drill")...)
	if err == nil || !strings.Contains(stderr, "not the canary it committed to") || !strings.Contains(stderr, "nothing was sent back") {
		t.Fatalf("kra2's drill against a user record's share: %v\n%s", err, stderr)
	}
	spyDecryptsOnlyDrillKeys(t, spyLog, mark, 0)
	if strings.Contains(a.logs.String(), "drill proven") {
		t.Fatal("a proof was accepted after the share was swapped")
	}
	a.stop(t)
	restore()
	a = serveWith(t, state, spyEnv, addr)

	// kra3's token is replaced by an empty one: its drill fails, and says why.
	in, err := softhsm.Provision(filepath.Join(state, "softhsm"))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.DeleteToken("kra3"); err != nil {
		t.Fatal(err)
	}
	if _, err := in.InitToken("kra3"); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = keyarcResult(as("kra3", "kra", "drill")...)
	if err == nil || !strings.Contains(stderr, "drill failed") || !strings.Contains(stderr, "no KRA auth key") || !strings.Contains(stderr, "tell an admin") {
		t.Fatalf("kra3's drill with an empty token: %v\n%s", err, stderr)
	}

	// Only kra1 has proven: epoch 1 holds a record below its quorum of 2. The metrics say so
	// and the alert rule fires on what they say.
	if p, r, risk, _, _ := epochOf(health(), 1); p != 1 || r != 1 || !risk {
		t.Fatalf("after kra1 alone: epoch 1 proven %d, records %d, at risk %v", p, r, risk)
	}
	if v := metricValue(t, a, `keyarc_recovery_epoch_proven_kras{epoch="1"}`); v != 1 {
		t.Errorf("keyarc_recovery_epoch_proven_kras{epoch=\"1\"} = %v, want 1", v)
	}
	alertOnScrape(t, a, "KeyarcRecoveryEpochBelowQuorum", map[string]string{"epoch": "1"})

	// The way out: a new set of the KRAs still standing (kra1, kra2); epoch 1 needs a reseal,
	// which they approve with their tokens.
	var shown recoverySetShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "recovery-set", "show", "--json")...)), &shown); err != nil {
		t.Fatal(err)
	}
	var s1, s2 string
	for _, k := range shown.KRAs {
		switch k.Name {
		case "kra1":
			s1 = k.Serial
		case "kra2":
			s2 = k.Serial
		}
	}
	keyarc(t, as("admin", "admin", "recovery-set", "set", "--quorum", "2", "--kra", s1, "--kra", s2)...)
	if _, _, _, reseal, _ := epochOf(health(), 1); !reseal {
		t.Fatal("epoch 1, below its quorum under a newer set, does not need a reseal")
	}
	if out := keyarc(t, as("admin", "admin", "recovery-set", "show")...); !strings.Contains(out, "NEEDS RESEAL") {
		t.Errorf("recovery-set show does not say which epoch needs a reseal:\n%s", out)
	}
	id := strings.TrimSpace(keyarc(t, as("admin", "admin", "recovery-set", "reseal", "--reason", "epoch 1 lost kra3")...))
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra2", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("admin", "admin", "recovery-set", "reseal", "--complete", id)...)
	h := health()
	if _, _, _, _, ok := epochOf(h, 1); ok {
		t.Errorf("epoch 1 still listed after its record moved: %+v", h.Health)
	}
	if p, r, risk, _, _ := epochOf(h, 2); p != 0 || r != 1 || !risk {
		t.Fatalf("epoch 2 after the reseal: proven %d, records %d, at risk %v", p, r, risk)
	}

	// A new campaign; kra1 and kra2 drill (kra2 also answers its drill of the first one).
	keyarc(t, as("admin", "admin", "drill", "open")...)
	mark = spyMark(t, spyLog)
	keyarc(t, as("kra1", "kra", "drill")...)
	keyarc(t, as("kra2", "kra", "drill")...)
	spyDecryptsOnlyDrillKeys(t, spyLog, mark, 3)
	if p, r, risk, _, _ := epochOf(health(), 2); p != 2 || r != 1 || risk {
		t.Fatalf("epoch 2 after the drills: proven %d, records %d, at risk %v", p, r, risk)
	}
	alertOnScrape(t, a, "KeyarcRecoveryEpochBelowQuorum", nil)

	// A proof for one drill is refused for another (of another campaign), then accepted for
	// its own drill once.
	var c3, single []drillShown
	json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "open", "--json")...)), &c3)
	json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "open", "--kra", "kra1", "--json")...)), &single)
	var drillA string
	for _, d := range c3 {
		if d.KRA == "kra1" {
			drillA = d.ID
		}
	}
	if drillA == "" || len(single) != 1 {
		t.Fatalf("drills: campaign %+v, single %+v", c3, single)
	}
	kra := openKRA(t, state, a, "kra1")
	proof := kra.proof(t, drillA)
	if code, msg := kra.submit(t, single[0].ID, proof); code != http.StatusBadRequest {
		t.Errorf("drill %s's proof submitted to drill %s: %d %s, want 400", drillA, single[0].ID, code, msg)
	}
	if code, msg := kra.submit(t, drillA, proof); code != http.StatusOK {
		t.Fatalf("the proof for its own drill: %d %s", code, msg)
	}
	if code, msg := kra.submit(t, drillA, proof); code != http.StatusConflict {
		t.Errorf("the proof again: %d %s, want 409 (the drill is closed)", code, msg)
	}
	if strings.Contains(a.logs.String(), base64.StdEncoding.EncodeToString(proof.raw)) {
		t.Error("a re-encrypted share reached the log")
	}

	// The trail, with its canary, drill and proof entries, verifies.
	a.stop(t)
	out, errOut, err := keyarcEnv([]string{"PKCS11SPY=" + softhsmModule(), "PKCS11SPY_OUTPUT=" + filepath.Join(t.TempDir(), "spy2.log")},
		"audit", "verify", "--state", state)
	if err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("audit verify: %v\n%s\n%s", err, out, errOut)
	}
}

// swapCanaryShare puts, in the stopped appliance's archive, kra's share of the user record of
// serial in place of kra's share of the canary of epoch 1, and returns what puts the canary back.
func swapCanaryShare(t *testing.T, state, kra, serial string) (restore func()) {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(state, "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	kid := record.KeyID(readCert(t, filepath.Join(state, "credentials", kra+"-unwrap.pem")))
	var orig []byte
	err = db.Update(context.Background(), func(tx store.Tx) error {
		rec, err := tx.GetRecordBySerial(serial)
		if err != nil {
			return err
		}
		user, err := record.Parse(rec.Blob)
		if err != nil {
			return err
		}
		_, userShare, err := user.ShareFor(kid)
		if err != nil {
			return err
		}
		if orig, err = tx.GetDrillState("canary", "1"); err != nil {
			return err
		}
		var row map[string]json.RawMessage
		if err := json.Unmarshal(orig, &row); err != nil {
			return err
		}
		var blob []byte
		if err := json.Unmarshal(row["record"], &blob); err != nil {
			return err
		}
		canary, err := record.Parse(blob)
		if err != nil {
			return err
		}
		i, _, err := canary.ShareFor(kid)
		if err != nil {
			return err
		}
		canary.Shares[i].Ciphertext = userShare
		if blob, err = canary.MarshalBinary(); err != nil {
			return err
		}
		row["record"], _ = json.Marshal(blob)
		swapped, _ := json.Marshal(row)
		return tx.PutDrillState("canary", "1", swapped)
	})
	if err != nil {
		t.Fatalf("swap the canary share: %v", err)
	}
	return func() {
		t.Helper()
		db, err := sqlite.Open(filepath.Join(state, "keyarc.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(context.Background(), func(tx store.Tx) error { return tx.PutDrillState("canary", "1", orig) }); err != nil {
			t.Fatal(err)
		}
	}
}

// spyMark is how far the spy's log has come.
func spyMark(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// spyDecryptsOnlyDrillKeys reads the spy's log and checks that every C_DecryptInit from mark
// on names a private key whose label, when it was used, is a drill key's ("drill-" and the
// drill ID), and that there were want of them. A handle's label is known from the last call
// before its use that made the key (C_GenerateKeyPair) or found it (C_FindObjectsInit, then
// C_FindObjects): the token reuses the handles of destroyed keys.
func spyDecryptsOnlyDrillKeys(t *testing.T, path string, mark int64, want int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	labels := map[string]string{}
	label := func(call string) string {
		m := regexp.MustCompile(`CKA_LABEL [^\n]*\n\s*([0-9A-F ]+)\n`).FindStringSubmatch(call)
		if m == nil {
			return ""
		}
		raw, err := hex.DecodeString(strings.ReplaceAll(m[1], " ", ""))
		if err != nil {
			return ""
		}
		return string(raw)
	}
	starts := regexp.MustCompile(`\n\d+: `).FindAllStringIndex(log, -1)
	var calls []string
	var at []int
	for i, st := range starts {
		end := len(log)
		if i+1 < len(starts) {
			end = starts[i+1][0]
		}
		calls, at = append(calls, log[st[1]:end]), append(at, st[0])
	}
	// A drill key itself: a key of one request decrypts with the token object, never through
	// a session copy that could outlive its destruction.
	drillKey := regexp.MustCompile(`^drill-[0-9a-f]{16}$`)
	n := 0
	for i, c := range calls {
		switch {
		case strings.HasPrefix(c, "C_GenerateKeyPair\n"):
			if m := regexp.MustCompile(`\[out\] hPrivateKey = (\S+)`).FindStringSubmatch(c); m != nil {
				labels[m[1]] = label(c)
			}
		case strings.HasPrefix(c, "C_FindObjectsInit\n"):
			l := label(c)
			for _, next := range calls[i+1:] {
				if !strings.HasPrefix(next, "C_FindObjects\n") {
					break
				}
				for _, m := range regexp.MustCompile(`Object (\S+) matches`).FindAllStringSubmatch(next, -1) {
					labels[m[1]] = l
				}
			}
		case strings.HasPrefix(c, "C_DecryptInit\n") && int64(at[i]) >= mark:
			n++
			m := regexp.MustCompile(`\[in\] hKey = (\S+)`).FindStringSubmatch(c)
			if m == nil {
				t.Errorf("a C_DecryptInit without hKey in the spy's log:\n%s", c)
				continue
			}
			if l := labels[m[1]]; !drillKey.MatchString(l) {
				t.Errorf("during the drills the appliance decrypted with key %s labelled %q, not a drill key", m[1], l)
			}
		}
	}
	if n != want {
		t.Errorf("%d C_DecryptInit calls during the drills, want %d (one per canary share proven)", n, want)
	}
}

// alertOnScrape evaluates the alert rule with promtool against the appliance's scraped
// metrics held for two hours: it must fire with labels (or, labels nil, stay quiet).
func alertOnScrape(t *testing.T, a *appliance, alert string, labels map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI")
		}
		t.Log("promtool not installed; alert rule not evaluated")
		return
	}
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var series strings.Builder
	line := regexp.MustCompile(`^(keyarc_recovery_[a-z_]+|keyarc_kra_last_proof_timestamp_seconds)(\{[^}]*\})? (\S+)$`)
	for _, l := range strings.Split(string(body), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		lbl := strings.TrimSuffix(strings.TrimPrefix(m[2], "{"), "}")
		if lbl != "" {
			lbl = "," + lbl
		}
		fmt.Fprintf(&series, "      - series: '%s{instance=\"k1\"%s}'\n        values: '%sx120'\n", m[1], lbl, m[3])
	}
	// The rules without annotations (promtool would compare them too).
	rb, err := os.ReadFile("../cmd/keyarc/monitoring/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules map[string][]map[string]any
	if err := yaml.Unmarshal(rb, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules["groups"] {
		for _, r := range g["rules"].([]any) {
			delete(r.(map[string]any), "annotations")
		}
	}
	stripped, _ := yaml.Marshal(rules)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "alerts.yml"), stripped)
	exp := " []"
	if labels != nil {
		exp = "\n          - exp_labels: {severity: critical, instance: k1"
		for k, v := range labels {
			exp += fmt.Sprintf(", %s: %q", k, v)
		}
		exp += "}"
	}
	tests := fmt.Sprintf(`rule_files: ['alerts.yml']
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
%s    alert_rule_test:
      - eval_time: 90m
        alertname: %s
        exp_alerts:%s
`, series.String(), alert, exp)
	writeFile(t, filepath.Join(dir, "test.yml"), []byte(tests))
	cmd := exec.Command("promtool", "test", "rules", "test.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool on the scraped metrics: %v\n%s\n%s", err, out, tests)
	}
}

// testKRA is a KRA acting from this test with its dev token, as `keyarc kra drill` does, so
// that a proof can be sent where the CLI would never send it.
type testKRA struct {
	tok    *hsm.Token
	client *http.Client
	url    string
}

type testProof struct {
	body []byte
	raw  []byte // the re-encrypted share
}

func openKRA(t *testing.T, state string, a *appliance, name string) *testKRA {
	t.Helper()
	in, err := softhsm.Provision(filepath.Join(state, "softhsm"))
	if err != nil {
		t.Fatal(err)
	}
	tk, err := in.Token(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", filepath.Join(state, "softhsm", "softhsm2.conf"))
	uri := "pkcs11:token=" + url.PathEscape(tk.Label) + "?module-path=" + url.QueryEscape(softhsmModule()) +
		"&pin-source=" + url.QueryEscape("file:"+tk.PINFile)
	tok, err := hsm.Open(uri, hsm.Options{MaxSessions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	auth, err := tok.Signer("kra-auth")
	if err != nil {
		t.Fatal(err)
	}
	cert := readCert(t, filepath.Join(state, "credentials", name+"-auth.pem"))
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(state, "ca.pem")))
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: auth, Leaf: cert}}}}}
	return &testKRA{tok: tok, client: client, url: a.url}
}

// proof answers drill id as the CLI does.
func (k *testKRA) proof(t *testing.T, id string) testProof {
	t.Helper()
	resp, err := k.client.Get(k.url + "/api/v1/drills/" + id)
	if err != nil {
		t.Fatal(err)
	}
	var d drillShown
	err = json.NewDecoder(resp.Body).Decode(&d)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(d.Items) == 0 {
		t.Fatalf("GET drill %s: %d %v %+v", id, resp.StatusCode, err, d)
	}
	spki, _ := base64.StdEncoding.DecodeString(d.DrillKey)
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		t.Fatal(err)
	}
	exp, err := time.Parse(time.RFC3339Nano, d.ExpiresAt)
	if err != nil {
		t.Fatal(err)
	}
	unwrap, err := k.tok.Decrypter("kra-unwrap")
	if err != nil {
		t.Fatal(err)
	}
	var shares []escrow.ProvenShare
	type share struct {
		Epoch uint32 `json:"epoch"`
		Share string `json:"share"`
	}
	var body struct {
		Shares    []share `json:"shares"`
		Signature string  `json:"signature"`
	}
	for _, it := range d.Items {
		ct, _ := base64.StdEncoding.DecodeString(it.Share)
		kid, _ := base64.StdEncoding.DecodeString(it.KeyID)
		com, _ := base64.StdEncoding.DecodeString(it.Commitment)
		h := crypto.SHA1
		if it.OAEPHash == "SHA-256" {
			h = crypto.SHA256
		}
		pt, err := unwrap.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: h, MGFHash: h})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(escrow.CanaryCommitment(it.Epoch, kid, pt), com) {
			t.Fatal("the canary share does not match its commitment")
		}
		to := crypto.SHA1
		if d.KeyHash == "SHA-256" {
			to = crypto.SHA256
		}
		re, err := rsa.EncryptOAEP(to.New(), rand.Reader, pub.(*rsa.PublicKey), pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, escrow.ProvenShare{Epoch: it.Epoch, Share: re})
		body.Shares = append(body.Shares, share{it.Epoch, base64.StdEncoding.EncodeToString(re)})
	}
	auth, _ := k.tok.Signer("kra-auth")
	digest := escrow.DrillDigest(&escrow.Drill{ID: d.ID, Campaign: d.Campaign, KRA: d.KRA, Epochs: d.Epochs, KeySPKI: spki, ExpiresAt: exp}, shares)
	sig, err := auth.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	body.Signature = base64.StdEncoding.EncodeToString(sig)
	b, _ := json.Marshal(body)
	return testProof{body: b, raw: shares[0].Share}
}

func (k *testKRA) submit(t *testing.T, id string, p testProof) (int, string) {
	t.Helper()
	resp, err := k.client.Post(k.url+"/api/v1/drills/"+id+"/proof", "application/json", bytes.NewReader(p.body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}
