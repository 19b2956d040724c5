package api

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestMonitoringFiles: every keyarc metric the shipped alerts and dashboard use is one the code
// defines, and promtool accepts the rules when it is installed.
func TestMonitoringFiles(t *testing.T) {
	var src strings.Builder
	for _, dir := range []string{".", "../..", "../../../../hsm", "../../../../escrow", "../../../../escrow/bulk", "../../../../escrow/audit", "../../../../escrow/notice", "../../../../escrow/notice/feed", "../../../../escrow/ocsp/presign", "../../../../escrow/directory"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			src.Write(b)
		}
	}
	defined := src.String()
	name := regexp.MustCompile(`keyarc_[a-z_]+`)
	for _, f := range []string{monitoringDir + "/alerts.yml", monitoringDir + "/grafana-dashboard.json"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllString(string(b), -1) {
			base := strings.TrimSuffix(m, "_bucket")
			if !strings.Contains(defined, `"`+base+`"`) {
				t.Errorf("%s uses %s, which no keyarc code defines", f, m)
			}
		}
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI (make test installs it)")
		}
		t.Log("promtool not installed; rules not checked")
		return
	}
	if out, err := exec.Command("promtool", "check", "rules", monitoringDir+"/alerts.yml").CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestTokenFaultAlerts: each cause that keeps the token from being ready has its own alert,
// and promtool's rule tests show that alert firing on the series the appliance exports.
func TestTokenFaultAlerts(t *testing.T) {
	b, err := os.ReadFile(monitoringDir + "/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		tokenUnreachable: "KeyarcTokenUnreachable",
		tokenPINRefused:  "KeyarcTokenPINRefused",
		tokenKeyMismatch: "KeyarcTokenKeyMismatch",
		tokenFailing:     "KeyarcTokenFailing",
	}
	for _, cause := range tokenCauses {
		expr := `keyarc_token_fault{cause="` + cause + `"} == 1`
		if !strings.Contains(string(b), expr) {
			t.Errorf("no alert rule has expr %s", expr)
		}
		if want[cause] == "" {
			t.Errorf("cause %q has no alert named in this test", cause)
		}
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI")
		}
		t.Skip("promtool not installed")
	}
	abs, err := filepath.Abs(monitoringDir + "/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	summary := map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			summary[r.Alert] = strings.ReplaceAll(r.Annotations["summary"], "{{ $labels.instance }}", "k1")
		}
	}
	var cases strings.Builder
	for _, cause := range tokenCauses {
		quoted, _ := json.Marshal(summary[want[cause]])
		fmt.Fprintf(&cases, `  - interval: 1m
    input_series:
      - series: 'keyarc_token_ready{instance="k1"}'
        values: '0x5'
`)
		for _, c := range tokenCauses {
			v := "0x5"
			if c == cause {
				v = "1x5"
			}
			fmt.Fprintf(&cases, "      - series: 'keyarc_token_fault{instance=\"k1\",cause=\"%s\"}'\n        values: '%s'\n", c, v)
		}
		fmt.Fprintf(&cases, `    alert_rule_test:
      - eval_time: 3m
        alertname: %s
        exp_alerts:
          - exp_labels: {severity: critical, instance: k1, cause: %s}
            exp_annotations: {summary: %s}
      - eval_time: 3m
        alertname: KeyarcTokenNotReady
        exp_alerts: []
`, want[cause], cause, quoted)
	}
	tests := filepath.Join(t.TempDir(), "alerts_test.yml")
	if err := os.WriteFile(tests, []byte("rule_files: ['"+abs+"']\nevaluation_interval: 1m\ntests:\n"+cases.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "test", "rules", tests).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestOperationalAlerts: promtool's rule tests show each alert on the appliance's own faults
// firing on the series the appliance exports, and staying quiet while they are healthy.
func TestOperationalAlerts(t *testing.T) {
	abs := alertRulesForTests(t)
	cases := []struct {
		alert   string
		series  string // input series, promtool's notation
		firing  string // eval time at which the alert fires
		quiet   string // eval time at which it does not
		labels  string // the firing alert's labels
		healthy string // series values of a healthy appliance
		bad     string // series values of the fault
	}{
		{"KeyarcBulkJobPaused", `keyarc_bulk_job_paused{instance="k1",cause="storage"}`, "15m", "5m",
			`{severity: warning, instance: k1, cause: storage}`, "0x20", "0x4 1x20"},
		{"KeyarcConsistencyFailures", `keyarc_consistency_failures{instance="k1"}`, "3m", "1m",
			`{severity: critical, instance: k1}`, "0x5", "0 0 1x5"},
		{"KeyarcLoginFailureStorm", `keyarc_login_failures_total{instance="k1",outcome="throttled"}`, "15m", "3m",
			`{severity: warning, instance: k1}`, "0x20", "0+300x20"},
		// A pass a minute (the timestamp follows the clock), against none since the start:
		// a day later, and 10 minutes, the alert fires.
		{"KeyarcOCSPPresignStale", `keyarc_ocsp_presign_last_success_timestamp_seconds{instance="k1"}`, "1455m", "1445m",
			`{severity: warning, instance: k1}`, "0+60x1500", "0x1500"},
		// 14 days left against 5.8.
		{"KeyarcOCSPResponderCertExpiring", `keyarc_ocsp_responder_cert_expiry_timestamp_seconds{instance="k1"}`, "15m", "5m",
			`{severity: warning, instance: k1}`, "1209600x20", "500000x20"},
		// Notices waiting while none is sent, against a relay taking them as they come.
		{"KeyarcNoticeQueueBackingUp", `keyarc_notice_queue{instance="k1"}`, "20m", "10m",
			`{severity: warning, instance: k1}`, "0x30", "3x30"},
		{"KeyarcNoticeDropped", `keyarc_notices_dropped_total{instance="k1"}`, "15m", "3m",
			`{severity: warning, instance: k1}`, "0x20", "0x4 1x20"},
		{"KeyarcOCSPStaleResponses", `keyarc_ocsp_stale_responses_total{instance="k1"}`, "15m", "3m",
			`{severity: critical, instance: k1}`, "0x20", "0x4 1x20"},
		// A node 5 minutes behind the database server, against one within NTP's reach.
		{"KeyarcClockOffset", `keyarc_clock_offset_seconds{instance="k1"}`, "15m", "3m",
			`{severity: warning, instance: k1}`, "0.02x20", "0x4 300x20"},
		{"KeyarcClockOffset", `keyarc_clock_offset_seconds{instance="k1"}`, "15m", "3m",
			`{severity: warning, instance: k1}`, "-0.3x20", "0x4 -300x20"},
	}
	var tests strings.Builder
	for _, c := range cases {
		for _, v := range []struct{ values, at, exp string }{
			{c.bad, c.firing, "\n          - exp_labels: " + c.labels},
			{c.bad, c.quiet, " []"},
			{c.healthy, c.firing, " []"},
		} {
			fmt.Fprintf(&tests, `  - interval: 1m
    input_series:
      - series: '%s'
        values: '%s'
    alert_rule_test:
      - eval_time: %s
        alertname: %s
        exp_alerts:%s
`, c.series, v.values, v.at, c.alert, v.exp)
		}
	}
	file := filepath.Join(t.TempDir(), "alerts_test.yml")
	if err := os.WriteFile(file, []byte("rule_files: ['"+abs+"']\nevaluation_interval: 1m\ntests:\n"+tests.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "test", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// monitoringDir holds the shipped alerts and dashboard (cmd/keyarc/monitoring).
const monitoringDir = "../../monitoring"

// alertRulesForTests writes the shipped alert rules without their annotations (promtool's rule
// tests would compare those too) and returns the file, for promtool test rules. It skips the
// test when promtool is missing, except in CI.
func alertRulesForTests(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI")
		}
		t.Skip("promtool not installed")
	}
	// The expressions under test, without the annotations (promtool would compare those too).
	b, err := os.ReadFile(monitoringDir + "/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules map[string][]map[string]any
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules["groups"] {
		for _, r := range g["rules"].([]any) {
			delete(r.(map[string]any), "annotations")
		}
	}
	stripped, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	abs := filepath.Join(t.TempDir(), "alerts.yml")
	if err := os.WriteFile(abs, stripped, 0o600); err != nil {
		t.Fatal(err)
	}
	return abs
}
