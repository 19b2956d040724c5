package tests

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// readyWithin is how soon after the database answers again an appliance must be ready: its
// readiness reads the database once a second, and a fault it saw is held a few seconds at
// most. It was about 40 s after a PostgreSQL restart.
const readyWithin = 15 * time.Second

var downFor = 5 * time.Second

// TestReadyAfterPostgresRestart: an appliance on PostgreSQL is not ready while the server is
// down, and ready again within readyWithin of the server taking connections again, by itself.
func TestReadyAfterPostgresRestart(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	pg := startPG(t)
	state := filepath.Join(t.TempDir(), "state")
	pwFile := filepath.Join(t.TempDir(), "database.password")
	writeFile(t, pwFile, []byte(pg.password+"\n"))
	keyarc(t, "init", "--dev", "--state", state, "--database", pg.url(), "--database-password-source", "file:"+pwFile)
	a := serve(t, state)
	for round := 1; round <= 2; round++ {
		pg.halt(t)
		deadline := time.Now().Add(30 * time.Second)
		for getStatus(t, a, "/readyz") != http.StatusServiceUnavailable {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: still ready 30 s after the database went down", round)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// Down long enough for every background task of the appliance to have failed.
		time.Sleep(downFor)
		pg.launch(t)
		back := time.Now()
		for getStatus(t, a, "/readyz") != http.StatusOK {
			if time.Since(back) > readyWithin {
				t.Fatalf("round %d: not ready %s after the database came back\n%s", round, readyWithin, a.logs.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("round %d: ready %s after the database came back", round, time.Since(back).Round(100*time.Millisecond))
	}
}
