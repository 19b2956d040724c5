package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMetrics scrapes the metrics listener after an enrollment and a recovery request: the
// series an operator alerts on are there, promtool finds nothing to lint, and no label holds a
// mailbox or a serial.
func TestMetrics(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	a := serve(t, state)
	dir := t.TempDir()
	enrollUser(t, a, "mona@example.org", filepath.Join(dir, "mona"))
	serial := certSerial(t, dir, filepath.Join(dir, "mona", "cert.pem"))
	keyarc(t, "recovery", "request", "--serial", serial, "--reason", "metrics", "--state", state, "--server", a.url, "--as", "officer")
	keyarcFails(t, "recovery", "request", "--serial", serial, "--reason", "metrics", "--state", state, "--server", a.url, "--as", "auditor")

	body := run(t, dir, "curl", "-sS", "--fail", a.metrics+"/metrics")
	for _, want := range []string{
		`keyarc_enrollments_total{archived="true",template="smime-encryption"} 1`,
		`keyarc_recoveries_total{event="requested",reason=""} 1`,
		`keyarc_pending_recoveries 1`,
		`keyarc_pending_requests 0`,
		`keyarc_kra_certificate_remaining_seconds{position="3"}`,
		`keyarc_kra_certificate_min_remaining_seconds`,
		`keyarc_ca_certificate_remaining_seconds`,
		`keyarc_hsm_operations_total{op="sign",result="ok"}`,
		`keyarc_hsm_operation_duration_seconds_bucket{op="sign"`,
		`keyarc_hsm_sessions_in_use 0`,
		`keyarc_hsm_sessions_waiting 0`,
		`keyarc_token_ready 1`,
		`keyarc_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, "mona@example.org") || strings.Contains(body, serial) {
		t.Error("a mailbox or a serial appears in the metrics")
	}
	for _, m := range regexp.MustCompile(`\{[^}]*\}`).FindAllString(body, -1) {
		if strings.Contains(m, "@") {
			t.Errorf("a label looks like an address: %s", m)
		}
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI (make test installs it)")
		}
		t.Log("promtool not installed; lint skipped")
		return
	}
	var keyarcOnly []string
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, "keyarc_") {
			keyarcOnly = append(keyarcOnly, line)
		}
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(strings.Join(keyarcOnly, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
