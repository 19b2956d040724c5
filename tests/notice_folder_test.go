package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNoticeQueueFolderBlocked starts the appliance with a file in the place of its notice
// queue folder: it starts all the same and enrolls, the log says the folder cannot be opened,
// keyarc_notice_feed_backlog and keyarc_notice_failures_total show the notices waiting; once
// the file is removed, the subscriber's mail goes, and nothing was lost.
func TestNoticeQueueFolderBlocked(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	relay := freePort(t)
	sink := startMailSink(t, relay)
	appendFile(t, filepath.Join(state, "keyarc.yaml"), noticesConfig(relay))
	queue := filepath.Join(state, "notices")
	if err := os.WriteFile(queue, []byte("not a folder"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := serve(t, state)
	if !strings.Contains(a.logs.String(), "cannot open the queue folder") {
		t.Errorf("the start-up log does not say the queue folder cannot be opened:\n%s", a.logs.String())
	}

	// The enrollment is answered although its notice cannot be queued.
	const mailbox = "alice@example.org"
	serial := enrollArchival(t, a, state, mailbox)
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(t, a, "keyarc_notice_feed_backlog") < 1 || metricValue(t, a, "keyarc_notice_failures_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("keyarc_notice_feed_backlog = %v, keyarc_notice_failures_total = %v with the queue folder blocked",
				metricValue(t, a, "keyarc_notice_feed_backlog"), metricValue(t, a, "keyarc_notice_failures_total"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case m := <-sink.mail:
		t.Fatalf("a mail went with the queue folder blocked:\n%s", m.data)
	default:
	}

	if err := os.Remove(queue); err != nil {
		t.Fatal(err)
	}
	m := sink.next(t, "once the queue folder can be written")
	checkMail(t, m, mailbox, "escrowed", serial)
	deadline = time.Now().Add(30 * time.Second)
	for metricValue(t, a, "keyarc_notice_feed_backlog") != 0 || metricValue(t, a, "keyarc_notice_queue") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the fix: keyarc_notice_feed_backlog = %v, keyarc_notice_queue = %v",
				metricValue(t, a, "keyarc_notice_feed_backlog"), metricValue(t, a, "keyarc_notice_queue"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st, err := os.Stat(queue); err != nil || !st.IsDir() {
		t.Errorf("the queue folder was not made: %v", err)
	}
}
