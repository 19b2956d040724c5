package api

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDrillAlerts: promtool's rule tests show the drill alerts firing on the series the
// appliance exports: an old epoch holding records with fewer proven KRAs than its quorum,
// and a KRA whose last proof is older than the drill window; and quiet on a healthy set or
// an epoch without records.
func TestDrillAlerts(t *testing.T) {
	abs := alertRulesForTests(t)
	tests := `rule_files: ['` + abs + `']
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'keyarc_recovery_epoch_proven_kras{instance="k1",epoch="1"}'
        values: '1x90'
      - series: 'keyarc_recovery_epoch_quorum{instance="k1",epoch="1"}'
        values: '2x90'
      - series: 'keyarc_recovery_epoch_records{instance="k1",epoch="1"}'
        values: '5x90'
      - series: 'keyarc_recovery_epoch_proven_kras{instance="k1",epoch="2"}'
        values: '0x90'
      - series: 'keyarc_recovery_epoch_quorum{instance="k1",epoch="2"}'
        values: '2x90'
      - series: 'keyarc_recovery_epoch_records{instance="k1",epoch="2"}'
        values: '0x90'
      - series: 'keyarc_recovery_epoch_proven_kras{instance="k1",epoch="3"}'
        values: '2x90'
      - series: 'keyarc_recovery_epoch_quorum{instance="k1",epoch="3"}'
        values: '2x90'
      - series: 'keyarc_recovery_epoch_records{instance="k1",epoch="3"}'
        values: '7x90'
    alert_rule_test:
      - eval_time: 30m
        alertname: KeyarcRecoveryEpochBelowQuorum
        exp_alerts: []
      - eval_time: 61m
        alertname: KeyarcRecoveryEpochBelowQuorum
        exp_alerts:
          - exp_labels: {severity: critical, instance: k1, epoch: "1"}
  - interval: 1m
    input_series:
      # The window is 1000 s; alice proved at 0 s (stale after 1000 s), bob keeps proving.
      - series: 'keyarc_recovery_drill_window_seconds{instance="k1"}'
        values: '1000x120'
      - series: 'keyarc_kra_last_proof_timestamp_seconds{instance="k1",kra="alice"}'
        values: '0x120'
      - series: 'keyarc_kra_last_proof_timestamp_seconds{instance="k1",kra="bob"}'
        values: '0+60x120'
    alert_rule_test:
      - eval_time: 70m
        alertname: KeyarcKRAUnproven
        exp_alerts: []
      - eval_time: 80m
        alertname: KeyarcKRAUnproven
        exp_alerts:
          - exp_labels: {severity: warning, instance: k1, kra: alice}
`
	file := filepath.Join(t.TempDir(), "alerts_test.yml")
	if err := os.WriteFile(file, []byte(tests), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "test", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
