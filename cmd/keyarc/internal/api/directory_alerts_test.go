package api

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDirectoryAlerts: promtool's rule tests show the directory alerts firing on the series the
// publisher exports, and quiet while it publishes.
func TestDirectoryAlerts(t *testing.T) {
	abs := alertRulesForTests(t)
	const tests = `
  # A backlog with no success since the start: the alert fires once it has lasted.
  - interval: 1m
    input_series:
      - series: 'keyarc_directory_backlog{instance="k1"}'
        values: '5x60'
      - series: 'keyarc_directory_last_success_timestamp_seconds{instance="k1"}'
        values: '0x60'
    alert_rule_test:
      - eval_time: 10m
        alertname: KeyarcDirectoryBacklog
        exp_alerts: []
      - eval_time: 40m
        alertname: KeyarcDirectoryBacklog
        exp_alerts:
          - exp_labels: {severity: warning, instance: k1}
  # A backlog being worked off (a bulk job publishing at its pace): successes follow the clock.
  - interval: 1m
    input_series:
      - series: 'keyarc_directory_backlog{instance="k1"}'
        values: '5000-50x60'
      - series: 'keyarc_directory_last_success_timestamp_seconds{instance="k1"}'
        values: '0+60x60'
    alert_rule_test:
      - eval_time: 40m
        alertname: KeyarcDirectoryBacklog
        exp_alerts: []
  # A mailbox without an entry.
  - interval: 1m
    input_series:
      - series: 'keyarc_directory_published_total{instance="k1",op="publish",outcome="no_entry"}'
        values: '0x4 1x20'
      - series: 'keyarc_directory_published_total{instance="k1",op="publish",outcome="ok"}'
        values: '0+10x24'
    alert_rule_test:
      - eval_time: 3m
        alertname: KeyarcDirectorySkipped
        exp_alerts: []
      - eval_time: 10m
        alertname: KeyarcDirectorySkipped
        exp_alerts:
          - exp_labels: {severity: warning, instance: k1, op: publish, outcome: no_entry}
`
	file := filepath.Join(t.TempDir(), "alerts_test.yml")
	if err := os.WriteFile(file, []byte("rule_files: ['"+abs+"']\nevaluation_interval: 1m\ntests:\n"+tests), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "test", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
