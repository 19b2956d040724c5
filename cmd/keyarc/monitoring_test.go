package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMonitoringFiles: every keyarc metric the shipped alerts and dashboard use is one the code
// defines, and promtool accepts the rules when it is installed.
func TestMonitoringFiles(t *testing.T) {
	var src strings.Builder
	for _, dir := range []string{".", "../../hsm", "../../escrow", "../../escrow/bulk", "../../escrow/audit"} {
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
	for _, f := range []string{"monitoring/alerts.yml", "monitoring/grafana-dashboard.json"} {
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
		t.Log("promtool not installed; rules not checked")
		return
	}
	if out, err := exec.Command("promtool", "check", "rules", "monitoring/alerts.yml").CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}
