package tests

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCluster runs three `keyarc serve` nodes on one PostgreSQL database (TCP, TLS
// verify-full, a password from a file) and one SoftHSM token behind `p11-kit server`, and
// drives them as a load balancer's clients would: enrollments on every node at once, a
// recovery that crosses the nodes, the database restarted and the token server killed under
// load, a node killed and started again, the leader killed (another node takes its lease and
// runs the singletons), a bulk job's node killed and another paused past the job's lease,
// and the audit trail of the whole cluster verified at the end. The phases share the
// cluster and run in order; each checks the database itself.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)

	t.Run("ConcurrentEnrollments", func(t *testing.T) {
		c.enrollOn(t, c.nodes, "conc", 36)
	})

	t.Run("ReadinessNamesNodeAndLeader", func(t *testing.T) {
		// Each node's /readyz names it; exactly one node holds the leader lease; none holds a
		// job's lease while no job runs.
		leaders := 0
		for i, a := range c.nodes {
			code, r := readyOf(t, a)
			if code != http.StatusOK || r.Status != "ready" || r.Node != fmt.Sprintf("node%d", i+1) {
				t.Errorf("node%d /readyz: %d %+v, want 200 ready naming node%d", i+1, code, r, i+1)
			}
			if r.JobLeases == nil || *r.JobLeases != 0 {
				t.Errorf("node%d /readyz: job_leases %v, want 0", i+1, r.JobLeases)
			}
			if r.Leader {
				leaders++
			}
		}
		if leaders != 1 {
			t.Errorf("%d nodes say they lead, want exactly 1", leaders)
		}
		// Each node reports how far the database server's clock is from its own: here, one
		// machine's clock (absent, the metric reads -1).
		for i, a := range c.nodes {
			if v := metricValue(t, a, "keyarc_clock_offset_seconds"); v == -1 || v < -1 || v > 1 {
				t.Errorf("node%d: keyarc_clock_offset_seconds %v, want present and near 0", i+1, v)
			}
		}
		// The leader renews its lease for cluster.leader_lease, not the default 15 s.
		if left := c.leaseLeft(t, "leader"); left <= 0 || left > clusterLeaderLease+time.Second {
			t.Errorf("the leader lease has %s left, want at most the configured %s", left, clusterLeaderLease)
		}
	})

	t.Run("RecoveryAcrossNodes", func(t *testing.T) {
		dir := t.TempDir()
		const mailbox = "rita@example.org"
		n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
		code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", c.state, "--email", mailbox, "--template", "smime-encryption"))
		keyarc(t, "enroll", "--state", c.state, "--server", n1.url, "--template", "smime-encryption", "--email", mailbox, "--code", code, "--out", filepath.Join(dir, "rita"))
		cert := readCert(t, filepath.Join(dir, "rita", "cert.pem"))
		serial := fmt.Sprintf("%x", cert.SerialNumber)
		on := func(a *appliance, who string, args ...string) []string {
			return append(args, "--state", c.state, "--server", a.url, "--as", who)
		}
		// Opened on node1: its recovery key is made in the shared token.
		id := strings.TrimSpace(keyarc(t, on(n1, "officer", "recovery", "request", "--serial", serial, "--reason", "laptop lost")...))
		keyarc(t, on(n2, "kra1", "recovery", "approve", id, "--yes")...)
		keyarc(t, on(n3, "kra2", "recovery", "approve", id, "--yes")...)
		if s := keyarc(t, on(n1, "officer", "recovery", "show", id)...); !strings.Contains(s, "quorum met") {
			t.Errorf("node1 does not see the quorum the other nodes' approvals met:\n%s", s)
		}
		// Fetched through node3, which opens the shares with the key node1 made.
		p12, pw := filepath.Join(dir, "rita.p12"), filepath.Join(dir, "rita.pw")
		keyarc(t, on(n3, "officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
		keyPEM := run(t, dir, "openssl", "pkcs12", "-in", p12, "-passin", "file:"+pw, "-nocerts", "-nodes")
		pubOfKey := run(t, dir, "sh", "-c", "openssl pkey -pubout <<'EOF'\n"+keyPEM+"\nEOF")
		blk, _ := pem.Decode([]byte(pubOfKey))
		if blk == nil {
			t.Fatalf("no public key from the recovered PKCS#12:\n%s", pubOfKey)
		}
		want, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(blk.Bytes, want) {
			t.Error("the key recovered through node3 is not the key of the certificate enrolled on node1")
		}
		// Consumed on one node is consumed on all.
		if _, _, err := keyarcResult(on(n2, "officer", "recovery", "fetch", id, "--out", p12+"2", "--password-file", pw+"2")...); err == nil {
			t.Error("a consumed recovery was fetched again through node2")
		}
		// Rita is told, once each, whichever node did what: the leader reads the notices from
		// the shared audit trail.
		for _, says := range [][]string{{"escrowed its private key", serial}, {"A recovery of your escrowed key was requested", id}, {"Your escrowed key was recovered", id}} {
			if got := c.mail.waitFor(t, mailbox, 1, says...); len(got) != 1 {
				t.Errorf("%s received %d mails saying %q, want one", mailbox, len(got), says)
			}
		}
		// Each node's queue is a folder of its own in the shared state folder.
		if dirs, _ := filepath.Glob(filepath.Join(c.state, "notices", "node-node*")); len(dirs) != len(c.nodes) {
			t.Errorf("queue folders %v, want one per node", dirs)
		}
	})

	t.Run("PostgresRestartedUnderLoad", func(t *testing.T) {
		mailboxes := clusterMailboxes("pgre", 45)
		res := c.enrollAll(t, mailboxes, func() {
			c.pg.halt(t)
			// Every node says it cannot serve while the database is gone.
			c.waitNotReady(t, "the database is down")
			time.Sleep(time.Second)
			c.pg.launch(t)
			// And comes back by itself.
			c.waitReady(t, 60*time.Second)
		})
		c.checkIssued(t, "pgre", res)
	})

	t.Run("TokenServerRestartedUnderLoad", func(t *testing.T) {
		mailboxes := clusterMailboxes("p11re", 45)
		res := c.enrollAll(t, mailboxes, func() {
			c.restartTokenServer(t, func() {
				c.waitNotReady(t, "the token server is gone")
				time.Sleep(time.Second)
			})
			c.waitReady(t, 60*time.Second)
		})
		c.checkIssued(t, "p11re", res)
	})

	t.Run("NodeKilled", func(t *testing.T) {
		// node2 dies as a crash would; the others serve on, and node2 starts again where it was.
		dead := c.nodes[1]
		dead.kill(t)
		c.enrollOn(t, []*appliance{c.nodes[0], c.nodes[2]}, "kill", 12)
		if t.Failed() {
			out, _ := runResult("", nil, "sh", "-c", "ps -eo pid,ppid,stat,wchan:24,args | grep -e p11-kit -e 'keyarc serve' | grep -v grep")
			t.Logf("processes of the token server and the nodes:\n%s", out)
		}
		c.nodes[1] = serveWith(c.t, c.state, nil, strings.TrimPrefix(dead.url, "https://"), "--node", "node2", "--public-addr", freePort(t))
		back := "kill-back@example.org"
		code := c.makeCodes(t, []string{back})[back]
		if got := estEnrollOnce(c.nodes[1], back, code, estCSRDER(back)); got.status != http.StatusOK {
			t.Errorf("enrollment through node2 after its restart: %d %v", got.status, got.err)
		}
	})

	t.Run("LeaderKilled", func(t *testing.T) {
		// The leader dies with -9, holding its lease: another node takes the lease once it has
		// run out (never before), promptly, and runs the singletons there; enrollments go on
		// through the survivors, and the dead node starts again as a follower.
		idx := c.leaderIndex(t)
		name := fmt.Sprintf("node%d", idx+1)
		dead := c.nodes[idx]
		dead.kill(t)
		// Read after the kill: a renewal of the dead node's may have committed just before.
		var oldToken, oldExpires int64
		var holder string
		if err := c.db.QueryRow("SELECT holder, token, expires FROM leases WHERE name = 'leader'").Scan(&holder, &oldToken, &oldExpires); err != nil {
			t.Fatal(err)
		}
		if holder != name {
			t.Fatalf("the leader lease is %s's, but %s said it led", holder, name)
		}
		crlBefore := queryInt(t, c.db, "SELECT coalesce(max(number), 0) FROM crls")
		var survivors []*appliance
		for i, a := range c.nodes {
			if i != idx {
				survivors = append(survivors, a)
			}
		}
		// The survivors try for the lease every quarter of it: one holds it at most that long
		// after it has run out (and a margin for a slow machine).
		left := time.Until(time.UnixMicro(oldExpires))
		within := max(left, 0) + clusterLeaderLease/4 + 10*time.Second
		t.Logf("killed %s, the leader; its lease has %s left", name, left.Round(time.Millisecond))
		var newHolder string
		var newToken, acquired int64
		for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
			err := c.db.QueryRow("SELECT holder, token, acquired_at FROM leases WHERE name = 'leader'").Scan(&newHolder, &newToken, &acquired)
			if err == nil && newHolder != name {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no node took the leader lease within %s of the kill (cluster.leader_lease %s): still %s's (%v)",
					within.Round(time.Millisecond), clusterLeaderLease, newHolder, err)
			}
		}
		if acquired < oldExpires {
			t.Errorf("%s took the leader lease %s before the dead leader's ran out", newHolder, time.Duration(oldExpires-acquired)*time.Microsecond)
		}
		if late := time.Duration(acquired-oldExpires) * time.Microsecond; late > clusterLeaderLease/4+2*time.Second {
			t.Errorf("%s took the leader lease %s after the dead leader's ran out, want within a renewal (%s)", newHolder, late, clusterLeaderLease/4)
		}
		if newToken <= oldToken {
			t.Errorf("the new leader's token %d does not fence the dead one's %d", newToken, oldToken)
		}
		t.Logf("%s leads now (token %d, %s after the dead lease ran out)", newHolder, newToken, time.Duration(acquired-oldExpires)*time.Microsecond)
		// The new leader says so, and it alone.
		for _, a := range survivors {
			for deadline := time.Now().Add(clusterLeaderLease / 4); ; time.Sleep(100 * time.Millisecond) {
				_, r := readyOf(t, a)
				if r.Leader == (r.Node == newHolder) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("%s /readyz says leader %v, but the lease is %s's", r.Node, r.Leader, newHolder)
					break
				}
			}
		}
		// The singletons run on the new leader: a node that starts leading publishes a CRL at
		// once (its follower's poll), though nothing was revoked; a follower publishes only
		// after its own revocations, and there are none here.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			n := queryInt(t, c.db, "SELECT coalesce(max(number), 0) FROM crls")
			if n > crlBefore {
				t.Logf("CRL %d published after the takeover (the last before it: %d)", n, crlBefore)
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("no CRL published within 30s of %s taking the lead (the newest is still %d)", newHolder, crlBefore)
				break
			}
		}
		// Enrollments go on through the survivors.
		c.enrollOn(t, survivors, "leader", 12)
		// The dead node starts again, as a follower: the lease stays where it is.
		c.nodes[idx] = serveWith(c.t, c.state, nil, strings.TrimPrefix(dead.url, "https://"), "--node", name, "--public-addr", freePort(t))
		c.waitReady(t, 60*time.Second)
		if _, r := readyOf(t, c.nodes[idx]); r.Leader {
			t.Errorf("%s, started again, says it leads while %s holds the lease", name, newHolder)
		}
		var now string
		if err := c.db.QueryRow("SELECT holder FROM leases WHERE name = 'leader'").Scan(&now); err != nil || now != newHolder {
			t.Errorf("the leader lease after %s's restart: %q %v, want %s's still", name, now, err, newHolder)
		}
	})

	t.Run("BulkJobNodeKilled", func(t *testing.T) {
		// The node running a bulk job dies with -9 mid-job: another node takes the job over
		// once its lease expires and finishes it, every item issued once.
		const total = 1500
		id, admin, holder, idx := c.jobUnderWay(t, "bulk", total)
		dead := c.nodes[idx]
		// The holder's /readyz counts the job's lease (its read of the database is at most a
		// second old).
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			_, r := readyOf(t, dead)
			if r.JobLeases != nil && *r.JobLeases == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s /readyz while it runs the job: %+v, want job_leases 1", holder, r)
				break
			}
		}
		// The job's lease lasts cluster.job_lease, not the default 20 s.
		if left := c.leaseLeft(t, "job:"+id); left <= 0 || left > clusterJobLease+time.Second {
			t.Errorf("the job's lease has %s left, want at most the configured %s", left, clusterJobLease)
		}
		t.Logf("killing %s, which holds the job", holder)
		dead.kill(t)
		other := c.nodes[(idx+1)%len(c.nodes)]
		st := c.waitJobDone(t, admin, other, id)
		if st.Done != total || st.Failed != 0 {
			t.Errorf("job after the takeover: %+v, want %d done", st, total)
		}
		c.checkJobIssuedOnce(t, "bulk", total)
		var now string
		if err := c.db.QueryRow("SELECT holder FROM leases WHERE name = $1", "job:"+id).Scan(&now); err == nil && now == holder {
			t.Errorf("the job's lease is still %s's, the dead node's", holder)
		}
		c.nodes[idx] = serveWith(c.t, c.state, nil, strings.TrimPrefix(dead.url, "https://"), "--node", holder, "--public-addr", freePort(t))
	})

	t.Run("BulkJobNodePaused", func(t *testing.T) {
		// The node running a bulk job is paused longer than the job's lease (kill -STOP): another
		// node takes the job over; when the paused node wakes (kill -CONT), its writes are fenced
		// off, and every item is still issued once.
		const total = 1500
		id, admin, holder, idx := c.jobUnderWay(t, "pause", total)
		paused := c.nodes[idx]
		paused.cmd.Process.Signal(syscall.SIGSTOP)
		woken := false
		wake := func() {
			if !woken {
				paused.cmd.Process.Signal(syscall.SIGCONT)
				woken = true
			}
		}
		defer wake()
		// Paused until another node holds the job.
		for deadline := time.Now().Add(2 * time.Minute); ; {
			var now string
			if c.db.QueryRow("SELECT holder FROM leases WHERE name = $1", "job:"+id).Scan(&now) == nil && now != holder {
				t.Logf("%s paused; %s took the job over", holder, now)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no node took the job over from the paused %s within 2 minutes", holder)
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		wake()
		other := c.nodes[(idx+1)%len(c.nodes)]
		st := c.waitJobDone(t, admin, other, id)
		if st.Done != total || st.Failed != 0 {
			t.Errorf("job after the takeover: %+v, want %d done", st, total)
		}
		c.checkJobIssuedOnce(t, "pause", total)
		// The woken node serves on.
		c.waitReady(t, 60*time.Second)
	})

	t.Run("AuditVerify", func(t *testing.T) {
		// The nodes stop first: each signs the tail of the one chain it shares with the others.
		for _, a := range c.nodes {
			a.stop(t)
		}
		out, errOut, err := keyarcResult("audit", "verify", "--state", c.state)
		if err != nil {
			t.Fatalf("audit verify over the cluster: %v\n%s\n%s", err, out, errOut)
		}
		starts := queryInt(t, c.db, "SELECT count(*) FROM audit WHERE kind = 'startup'")
		if starts < 3 {
			t.Errorf("%d start-up entries in the trail, want one per node at least", starts)
		}
		// A missing entry in the middle is seen.
		if r, err := c.db.Exec("DELETE FROM audit WHERE seq = (SELECT max(seq) / 2 FROM audit)"); err != nil {
			t.Fatal(err)
		} else if n, _ := r.RowsAffected(); n != 1 {
			t.Fatalf("deleted %d audit entries, want 1", n)
		}
		if out, errOut, err := keyarcResult("audit", "verify", "--state", c.state); err == nil {
			t.Errorf("audit verify passes with an entry deleted:\n%s\n%s", out, errOut)
		}
	})
}

// enrollOn enrolls n mailboxes of prefix through nodes alone, with no fault made: every
// enrollment must succeed, and the database must hold what the clients got.
func (c *cluster) enrollOn(t *testing.T, nodes []*appliance, prefix string, n int) {
	t.Helper()
	some := &cluster{t: c.t, state: c.state, pg: c.pg, db: c.db, nodes: nodes}
	mailboxes := clusterMailboxes(prefix, n)
	res := some.enrollAll(t, mailboxes, nil)
	for _, m := range mailboxes {
		if r := res[m]; r.status != http.StatusOK {
			t.Errorf("%s: %d %v (no fault was made on the nodes it went through: every enrollment must succeed)", m, r.status, r.err)
		}
	}
	c.checkIssued(t, prefix, res)
}

// leaderIndex is the index in c.nodes of the one node whose /readyz says it leads.
func (c *cluster) leaderIndex(t *testing.T) int {
	t.Helper()
	idx := -1
	for i, a := range c.nodes {
		if _, r := readyOf(t, a); r.Leader {
			if idx >= 0 {
				t.Fatalf("node%d and node%d both say they lead", idx+1, i+1)
			}
			idx = i
		}
	}
	if idx < 0 {
		t.Fatal("no node says it leads")
	}
	return idx
}

// jobUnderWay submits through node1 a keygen job of total mailboxes of prefix, waits until
// it is under way, and returns its ID, an admin's client, and the name and index of the node
// holding its lease.
func (c *cluster) jobUnderWay(t *testing.T, prefix string, total int) (id string, admin *http.Client, holder string, idx int) {
	t.Helper()
	lines := make([]string, total)
	for i := range lines {
		lines[i] = fmt.Sprintf(`{"email":"%s%d@example.org"}`, prefix, i+1)
	}
	file := filepath.Join(t.TempDir(), "keygen.jsonl")
	writeJobFile(t, file, `{"kind":"keygen","template":"smime-encryption","key":"p256"}`, lines)
	id = strings.TrimSpace(keyarc(t, "bulk", "submit", file, "--state", c.state, "--as", "admin", "--server", c.nodes[0].url))
	admin = adminClient(t, c.state)
	holder = c.jobHolder(t, admin, id, total)
	return id, admin, holder, c.nodeIndex(t, holder)
}

// jobHolder waits until job id is under way (100 items done) and returns the node holding
// its lease.
func (c *cluster) jobHolder(t *testing.T, admin *http.Client, id string, total int) string {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; {
		st, err := getBulkStatus(admin, c.nodes[0].url+"/api/v1/bulk/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Done+st.Failed >= total {
			t.Fatalf("the job finished before the fault (%+v): make it longer", st)
		}
		var holder string
		if st.Done >= 100 && c.db.QueryRow("SELECT holder FROM leases WHERE name = $1", "job:"+id).Scan(&holder) == nil {
			t.Logf("%s holds the job at %d/%d", holder, st.Done, total)
			return holder
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not under way: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nodeIndex is the index in c.nodes of the node named name.
func (c *cluster) nodeIndex(t *testing.T, name string) int {
	t.Helper()
	for i := range c.nodes {
		if name == fmt.Sprintf("node%d", i+1) {
			return i
		}
	}
	t.Fatalf("%q is no node of the cluster", name)
	return -1
}

// waitJobDone waits, asking node a, until job id is done.
func (c *cluster) waitJobDone(t *testing.T, admin *http.Client, a *appliance, id string) bulkStatus {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; {
		st, err := getBulkStatus(admin, a.url+"/api/v1/bulk/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == "done" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job is not done 3 minutes after the fault: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkJobIssuedOnce checks that the total mailboxes of prefix have one issued certificate each.
func (c *cluster) checkJobIssuedOnce(t *testing.T, prefix string, total int) {
	t.Helper()
	var issued, mailboxes int
	if err := c.db.QueryRow("SELECT count(*), count(DISTINCT email) FROM certificates WHERE email LIKE $1 AND state = 'issued'", prefix+"%@example.org").Scan(&issued, &mailboxes); err != nil {
		t.Fatal(err)
	}
	if issued != total || mailboxes != total {
		t.Errorf("%d certificates issued for %d mailboxes, want %d once each", issued, mailboxes, total)
	}
}

// clusterMailboxes are n mailboxes with a prefix of the phase's.
func clusterMailboxes(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d@example.org", prefix, i)
	}
	return out
}

// enrollAll enrolls every mailbox once through EST, from three clients per node at once. A
// request that gets no certificate (503, or no answer) is sent again with the same code,
// through the next node, until a certificate comes back or the code is refused as used,
// within two minutes. fault, when given, runs once a third of the mailboxes are enrolled,
// while the clients go on. It returns each mailbox's last result.
func (c *cluster) enrollAll(t *testing.T, mailboxes []string, fault func()) map[string]enrollResult {
	t.Helper()
	codes := c.makeCodes(t, mailboxes)
	work := make(chan string, len(mailboxes))
	for _, m := range mailboxes {
		work <- m
	}
	close(work)
	var mu sync.Mutex
	res := make(map[string]enrollResult, len(mailboxes))
	unavailable := 0
	done := make(chan struct{}, len(mailboxes))
	deadline := time.Now().Add(2 * time.Minute)
	var wg sync.WaitGroup
	for w := 0; w < 3*len(c.nodes); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				csr := estCSRDER(m)
				var r enrollResult
				for try := 0; ; try++ {
					r = estEnrollOnce(c.nodes[(w+try)%len(c.nodes)], m, codes[m], csr)
					if r.err == nil && r.status != http.StatusServiceUnavailable {
						break
					}
					mu.Lock()
					unavailable++
					mu.Unlock()
					if time.Now().After(deadline) {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				mu.Lock()
				res[m] = r
				mu.Unlock()
				done <- struct{}{}
			}
		}()
	}
	if fault != nil {
		for i := 0; i < len(mailboxes)/3; i++ {
			<-done
		}
		fault()
	}
	wg.Wait()
	t.Logf("%d mailboxes, %d answers 503 or none along the way", len(mailboxes), unavailable)
	if fault != nil && unavailable == 0 {
		t.Error("the fault was never felt by a client: no 503 and no lost connection")
	}
	return res
}

// checkIssued checks the database against what the clients got, for the mailboxes of prefix:
// every certificate a client received is stored, issued, once; no mailbox has two; no
// issuance is left pending; and a mailbox without a certificate ended on a refusal of its
// code (used by a request whose answer was lost), never on a server error.
func (c *cluster) checkIssued(t *testing.T, prefix string, res map[string]enrollResult) {
	t.Helper()
	rows, err := c.db.Query("SELECT email, state, der FROM certificates WHERE email LIKE $1", prefix+"-%")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type row struct {
		state string
		der   []byte
	}
	stored := map[string][]row{}
	for rows.Next() {
		var email, state string
		var der []byte
		if err := rows.Scan(&email, &state, &der); err != nil {
			t.Fatal(err)
		}
		stored[email] = append(stored[email], row{state, der})
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	ok, lost := 0, 0
	for m, r := range res {
		got := stored[m]
		switch {
		case len(got) > 1:
			t.Errorf("%s: %d certificates stored for one code: issued twice", m, len(got))
		case r.status == http.StatusOK && len(got) == 0:
			t.Errorf("%s: the client got serial %s, the database has nothing: lost", m, r.serial)
		case r.status == http.StatusOK && (got[0].state != "issued" || !bytes.Equal(got[0].der, r.der)):
			t.Errorf("%s: the client got serial %s, the database holds another certificate (state %s)", m, r.serial, got[0].state)
		case r.status == http.StatusOK:
			ok++
		case r.status == http.StatusUnauthorized || r.status == http.StatusForbidden:
			// The code was used by a request whose answer never came back.
			lost++
			if len(got) == 1 && got[0].state == "pending" {
				t.Errorf("%s: an issuance left pending", m)
			}
		default:
			t.Errorf("%s: ended on %d %v", m, r.status, r.err)
		}
	}
	if n := queryInt(t, c.db, "SELECT count(*) FROM certificates WHERE email LIKE $1 AND state = 'issued'", prefix+"-%"); n < ok || n > ok+lost {
		t.Errorf("%d certificates issued for %s, the clients hold %d (and %d answers were lost)", n, prefix, ok, lost)
	}
	t.Logf("%s: %d certificates delivered and stored once, %d codes used by a request whose answer was lost", prefix, ok, lost)
}

// readyAnswer is /readyz's JSON body.
type readyAnswer struct {
	Status    string `json:"status"`
	Reason    string `json:"reason"`
	Node      string `json:"node"`
	Leader    bool   `json:"leader"`
	JobLeases *int   `json:"job_leases"`
}

// readyOf reads a's /readyz: its status code and its body.
func readyOf(t *testing.T, a *appliance) (int, readyAnswer) {
	t.Helper()
	resp, err := a.client.Get(a.url + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	defer resp.Body.Close()
	var r readyAnswer
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("/readyz: %d, body not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, r
}

// waitNotReady waits until every node answers /readyz with 503.
func (c *cluster) waitNotReady(t *testing.T, why string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i, a := range c.nodes {
		for {
			resp, err := a.client.Get(a.url + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("node%d still ready 30s after %s (last: %v)", i+1, why, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
