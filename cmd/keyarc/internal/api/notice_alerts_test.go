package api

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestNoticeFeedAlert: promtool's rule tests show KeyarcNoticeFeedStuck firing when the notice
// feed has a backlog and has queued nothing for 15 minutes, and quiet while it keeps up or
// works a backlog off.
func TestNoticeFeedAlert(t *testing.T) {
	abs := alertRulesForTests(t)
	const tests = `
  # A backlog with no success since the start (the queue folder cannot be written).
  - interval: 1m
    input_series:
      - series: 'keyarc_notice_feed_backlog{instance="k1"}'
        values: '3x60'
      - series: 'keyarc_notice_feed_last_success_timestamp_seconds{instance="k1"}'
        values: '0x60'
    alert_rule_test:
      - eval_time: 10m
        alertname: KeyarcNoticeFeedStuck
        exp_alerts: []
      - eval_time: 30m
        alertname: KeyarcNoticeFeedStuck
        exp_alerts:
          - exp_labels: {severity: warning, instance: k1}
  # A backlog being worked off (a bulk job's entries): successes follow the clock.
  - interval: 1m
    input_series:
      - series: 'keyarc_notice_feed_backlog{instance="k1"}'
        values: '5000-80x60'
      - series: 'keyarc_notice_feed_last_success_timestamp_seconds{instance="k1"}'
        values: '0+60x60'
    alert_rule_test:
      - eval_time: 30m
        alertname: KeyarcNoticeFeedStuck
        exp_alerts: []
  # A node that does not lead: no backlog, a success long ago.
  - interval: 1m
    input_series:
      - series: 'keyarc_notice_feed_backlog{instance="k1"}'
        values: '0x60'
      - series: 'keyarc_notice_feed_last_success_timestamp_seconds{instance="k1"}'
        values: '0x60'
    alert_rule_test:
      - eval_time: 30m
        alertname: KeyarcNoticeFeedStuck
        exp_alerts: []
`
	file := filepath.Join(t.TempDir(), "alerts_test.yml")
	if err := os.WriteFile(file, []byte("rule_files: ['"+abs+"']\nevaluation_interval: 1m\ntests:\n"+tests), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "test", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
