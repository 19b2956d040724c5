package tests

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterSendsDeadNodeNotices: the leader of a cluster on one state folder queues the
// escrow notices of two enrollments while the relay is down, and is killed (-9) with them in
// its queue folder. Once the relay is up, another node sends them, each once, logging whose
// they are: a node started then does at its start, and a node that was running may, at its
// next look; the folder's lock lets one of them send it.
func TestClusterSendsDeadNodeNotices(t *testing.T) {
	t.Parallel()
	relay := freePort(t) // down until the leader is dead
	c := provisionCluster(t, relay)
	for i := range 2 {
		c.nodes = append(c.nodes, serveWith(t, c.state, nil, "", "--node", fmt.Sprintf("node%d", i+1), "--public-addr", freePort(t)))
	}
	lead := c.leaderIndex(t)
	dead, other := c.nodes[lead], c.nodes[1-lead]
	deadName := fmt.Sprintf("node%d", lead+1)

	mailboxes := []string{"orphan-1@example.org", "orphan-2@example.org"}
	serials := map[string]string{}
	dir := t.TempDir()
	for _, m := range mailboxes {
		code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", c.state, "--email", m, "--template", "smime-encryption"))
		out := filepath.Join(dir, m)
		keyarc(t, "enroll", "--state", c.state, "--server", other.url, "--template", "smime-encryption", "--email", m, "--code", code, "--out", out)
		serials[m] = fmt.Sprintf("%x", readCert(t, filepath.Join(out, "cert.pem")).SerialNumber)
	}
	// Both notices are in the leader's folder, and its feed has moved past them: what follows
	// mails them once, not the at-least-once of a feed killed between the two.
	queue := filepath.Join(c.state, "notices", "node-"+deadName)
	deadline := time.Now().Add(30 * time.Second)
	for {
		queued, backlog := metricValue(t, dead, "keyarc_notice_queue"), metricValue(t, dead, "keyarc_notice_feed_backlog")
		if queued == float64(len(mailboxes)) && backlog == 0 && len(queuedFiles(queue)) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader's queue holds %v notices (backlog %v, files %v), want %d", queued, backlog, queuedFiles(queue), len(mailboxes))
		}
		time.Sleep(100 * time.Millisecond)
	}
	dead.kill(t)

	mail := startMailSink(t, relay).log()
	// A node started now looks at the others' folders at its start.
	c.nodes = append(c.nodes, serveWith(t, c.state, nil, "", "--node", "node3", "--public-addr", freePort(t)))
	for _, m := range mailboxes {
		mail.waitFor(t, m, 1, "escrowed its private key", serials[m])
	}
	time.Sleep(3 * time.Second) // a second sender would have sent them again by now
	for _, m := range mailboxes {
		if got := mail.to(m); len(got) != 1 {
			t.Errorf("%s received %d mails, want 1", m, len(got))
		}
	}
	if files := queuedFiles(queue); len(files) != 0 {
		t.Errorf("the dead node's folder still holds %v", files)
	}
	says := fmt.Sprintf("sending the queued notices of node %s, which is not running", deadName)
	if logs := other.logs.String() + c.nodes[2].logs.String(); !strings.Contains(logs, says) {
		t.Errorf("no live node's log says %q:\n%s", says, logs)
	}
}

// queuedFiles are the notice and batch files of the queue folder dir.
func queuedFiles(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	batches, _ := filepath.Glob(filepath.Join(dir, "*.batch"))
	return append(files, batches...)
}
