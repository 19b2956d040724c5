package tests

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/keyarc/keyarc/escrow/cms"
)

// mailSink is a real SMTP server (github.com/emersion/go-smtp) on loopback, run by the test:
// the relay the appliance's notices go to.
type mailSink struct {
	srv  *smtp.Server
	mail chan sunkMail
}

type sunkMail struct {
	from string
	to   []string
	data string
}

type sinkSession struct {
	sink *mailSink
	cur  sunkMail
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error { s.cur.from = from; return nil }
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.to = append(s.cur.to, to)
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.data = string(b)
	s.sink.mail <- s.cur
	s.cur = sunkMail{}
	return nil
}
func (s *sinkSession) Reset()        { s.cur = sunkMail{} }
func (s *sinkSession) Logout() error { return nil }

// startMailSink listens on addr (loopback) and serves SMTP until the test ends.
func startMailSink(t *testing.T, addr string) *mailSink {
	t.Helper()
	sink := &mailSink{mail: make(chan sunkMail, 16)}
	sink.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: sink}, nil }))
	sink.srv.Domain = "localhost"
	sink.srv.ReadTimeout, sink.srv.WriteTimeout = 30*time.Second, 30*time.Second
	var l net.Listener
	var err error
	// The port was free a moment ago (freePort); another test may have taken it since.
	for range 50 {
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("SMTP sink: %v", err)
	}
	go sink.srv.Serve(l)
	t.Cleanup(func() { sink.srv.Close() })
	return sink
}

// noticesConfig is the notices section of a configuration that mails through the test's relay
// at relay (host:port), in plain SMTP, retrying every 2 s at the most.
func noticesConfig(relay string) string {
	return "notices:\n  smtp: " + relay + "\n  from: pki@example.org\n  starttls: \"off\"\n  retry_max: 2s\n"
}

// mailLog keeps every mail a sink accepts, by recipient, from the moment it is made: for tests
// that count many mails. The sink's mail channel is its alone then.
type mailLog struct {
	mu   sync.Mutex
	byTo map[string][]string // each mail's text, in the order it came
}

func (s *mailSink) log() *mailLog {
	l := &mailLog{byTo: map[string][]string{}}
	go func() {
		for m := range s.mail {
			l.mu.Lock()
			for _, to := range m.to {
				l.byTo[to] = append(l.byTo[to], m.data)
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// to returns the mails mailbox received so far.
func (l *mailLog) to(mailbox string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.byTo[mailbox])
}

// waitFor waits until mailbox received n mails whose text holds each of wants, and returns
// them (more than n if more came).
func (l *mailLog) waitFor(t *testing.T, mailbox string, n int, wants ...string) []string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var got []string
		for _, m := range l.to(mailbox) {
			if containsAll(m, wants) {
				got = append(got, m)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s received %d mails saying %q, want %d", mailbox, len(got), wants, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containsAll(s string, subs []string) bool {
	for _, w := range subs {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// next waits for the next mail the sink accepted.
func (s *mailSink) next(t *testing.T, what string) sunkMail {
	t.Helper()
	select {
	case m := <-s.mail:
		return m
	case <-time.After(90 * time.Second):
		t.Fatalf("no mail %s reached the SMTP server", what)
		return sunkMail{}
	}
}

// TestNoticeMail runs the appliance with a notices section pointing at an SMTP relay that is
// down at first: an archival enrollment answers at once with its escrow notice and queues the
// mail; the sender retries, the appliance restarts with the notice still queued, and once the
// relay (a go-smtp server in this process) is up the mail tells the subscriber the key is
// escrowed. A recovery request and its completion each
// reach the owner's mailbox too, with the request ID and the officer, and no secret.
func TestNoticeMail(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl")
	state := devState(t)
	// Without a notices section nothing is queued, and the log says so once.
	off := serve(t, state)
	off.stop(t)
	if n := strings.Count(off.logs.String(), "subscriber notices are off"); n != 1 {
		t.Errorf("the log says %d times that notices are off, want once:\n%s", n, off.logs.String())
	}
	if _, err := os.Stat(filepath.Join(state, "notices")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a queue folder exists without a notices section: %v", err)
	}

	relay := freePort(t)
	appendFile(t, filepath.Join(state, "keyarc.yaml"), noticesConfig(relay))
	a := serve(t, state)
	if !strings.Contains(a.logs.String(), "subscriber notices by mail") {
		t.Errorf("the start-up log does not say notices go by mail:\n%s", a.logs.String())
	}

	// Enrollment with the relay down: answered, with the notice, and nothing sent yet.
	dir := t.TempDir()
	const mailbox = "alice@example.org"
	tr := filepath.Join(dir, "transport.pem")
	run(t, dir, "curl", "-sS", "--fail", "--cacert", filepath.Join(state, "ca.pem"), "-o", tr, a.url+"/api/v1/transport-certificate")
	_, csr, env := opensslArchivalInput(t, dir, "alice", mailbox, tr)
	code := strings.TrimSpace(keyarc(t, "admin", "enroll-code", "create", "--state", state, "--email", mailbox, "--template", "smime-encryption"))
	start := time.Now()
	status, body := postEnroll(t, a, dir, mailbox+":"+code, apiEnrollJSON{Template: "smime-encryption",
		CSR: base64.StdEncoding.EncodeToString(csr), EncryptedKey: base64.StdEncoding.EncodeToString(env)})
	t.Logf("archival enrollment with the relay down answered in %s", time.Since(start))
	if status != 200 {
		t.Fatalf("enrollment with the relay down: %d %s", status, body)
	}
	var issued struct {
		Serial string `json:"serial"`
		Notice string `json:"notice"`
	}
	if err := json.Unmarshal(body, &issued); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"escrowed", "quorum of key recovery agents"} {
		if !strings.Contains(issued.Notice, w) {
			t.Errorf("the enrollment's notice lacks %q: %q", w, issued.Notice)
		}
	}
	// The notice, read from the audit trail within about a second, waits in the queue folder
	// while the sender retries.
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(t, a, "keyarc_notice_queue") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("keyarc_notice_queue = %v with the relay down, want 1", metricValue(t, a, "keyarc_notice_queue"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(60 * time.Second)
	for metricValue(t, a, "keyarc_notice_failures_total") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the sender did not retry: keyarc_notice_failures_total = %v", metricValue(t, a, "keyarc_notice_failures_total"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s := metricValue(t, a, "keyarc_notices_sent_total"); s != 0 {
		t.Errorf("keyarc_notices_sent_total = %v before the relay is up", s)
	}

	// A restart with the relay still down loses nothing: the notice is a file in the queue
	// folder, and the restarted appliance sends it.
	a.stop(t)
	if ents, _ := filepath.Glob(filepath.Join(state, "notices", "*.json")); len(ents) != 1 {
		t.Fatalf("queue folder holds %v after a stop, want the one notice", ents)
	}
	a = serve(t, state)
	if !strings.Contains(a.logs.String(), "subscriber notices waiting from before the start") {
		t.Errorf("the restarted appliance does not report the queued notice:\n%s", a.logs.String())
	}

	// The relay comes up: the queued notice arrives.
	sink := startMailSink(t, relay)
	m := sink.next(t, "for the escrowed key")
	checkMail(t, m, mailbox, "escrowed", issued.Serial, "quorum of the organisation's key recovery")
	if strings.Contains(m.data, code) {
		t.Errorf("the mail holds the enrollment code:\n%s", m.data)
	}

	// A recovery request, then its completion, each reach the owner.
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	id := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", issued.Serial, "--reason", "laptop stolen")...))
	m = sink.next(t, "for the recovery request")
	checkMail(t, m, mailbox, "recovery of your escrowed key was requested", issued.Serial, id, "officer")
	if strings.Contains(m.data, "laptop stolen") {
		t.Errorf("the mail repeats the officer's reason (it may say more than the subscriber should read):\n%s", m.data)
	}
	keyarc(t, as("kra1", "recovery", "approve", id, "--yes")...)
	keyarc(t, as("kra3", "recovery", "approve", id, "--yes")...)
	p12, pw := filepath.Join(dir, "alice.p12"), filepath.Join(dir, "alice.pw")
	keyarc(t, as("officer", "recovery", "fetch", id, "--out", p12, "--password-file", pw)...)
	m = sink.next(t, "for the completed recovery")
	checkMail(t, m, mailbox, "Your escrowed key was recovered", issued.Serial, id, "officer")
	password, _ := os.ReadFile(pw)
	if p := strings.TrimSpace(string(password)); p == "" || strings.Contains(m.data, p) {
		t.Errorf("the completion mail holds the PKCS#12 password:\n%s", m.data)
	}

	deadline = time.Now().Add(30 * time.Second)
	for metricValue(t, a, "keyarc_notice_queue") != 0 || metricValue(t, a, "keyarc_notices_sent_total") != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("after three notices: keyarc_notice_queue = %v, keyarc_notices_sent_total = %v",
				metricValue(t, a, "keyarc_notice_queue"), metricValue(t, a, "keyarc_notices_sent_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case extra := <-sink.mail:
		t.Errorf("an unexpected fourth mail:\n%s", extra.data)
	default:
	}
}

// checkMail checks a notice: to the owner alone, from the configured sender, saying each of
// wants, with no key and no enrollment code in it.
func checkMail(t *testing.T, m sunkMail, mailbox string, wants ...string) {
	t.Helper()
	if m.from != "pki@example.org" || len(m.to) != 1 || m.to[0] != mailbox {
		t.Errorf("mail from %q to %v, want from pki@example.org to %s", m.from, m.to, mailbox)
	}
	if !strings.Contains(m.data, "To: "+mailbox+"\r\n") {
		t.Errorf("mail header lacks To: %s:\n%s", mailbox, m.data)
	}
	for _, w := range wants {
		if !strings.Contains(m.data, w) {
			t.Errorf("mail lacks %q:\n%s", w, m.data)
		}
	}
	if strings.Contains(m.data, "-----BEGIN") {
		t.Errorf("mail holds PEM data:\n%s", m.data)
	}
}

// TestNoticeBulkAndRecoveryEnds runs a bulk enroll job of 24 items for 8 mailboxes (3 keys each)
// while the relay is down: the job ends done, its notices wait in the queue; when the relay
// comes up each mailbox gets exactly one escrow notice naming its 3 serials. Then a recovery of
// one key is requested and cancelled, another requested and left to expire (request_ttl 1m, the
// appliance's expiry sweep): the owner is told each request and how it ended.
func TestNoticeBulkAndRecoveryEnds(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl")
	if testing.Short() {
		t.Skip("waits for a recovery request to expire (over a minute)")
	}
	state := devState(t)
	cfgPath := filepath.Join(state, "keyarc.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "request_ttl: 24h0m0s") {
		t.Fatalf("the development configuration has no request_ttl of 24h to shorten:\n%s", cfg)
	}
	// The relay is down: its port answers nothing and closes at once (held, so that no other
	// test's relay takes it meanwhile).
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := down.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	relay := down.Addr().String()
	cfg = []byte(strings.Replace(string(cfg), "request_ttl: 24h0m0s", "request_ttl: 1m0s", 1) +
		noticesConfig(relay))
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	a := serve(t, state)

	tr := readCert(t, filepath.Join(state, "transport.pem"))
	var lines, mailboxes []string
	for i := range 24 {
		mailbox := fmt.Sprintf("bulk%d@example.org", i%8)
		k := p256Key(t)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: mailbox}, EmailAddresses: []string{mailbox}}, k)
		if err != nil {
			t.Fatal(err)
		}
		env, err := cms.Encrypt(pkcs8DER(t, k), tr, cms.EnvelopedAESCBC, crypto.SHA1)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, mustJSON(t, map[string]string{"email": mailbox, "csr": base64.StdEncoding.EncodeToString(csr),
			"encrypted_key": base64.StdEncoding.EncodeToString(env)}))
		mailboxes = append(mailboxes, mailbox)
	}
	file := filepath.Join(t.TempDir(), "enroll.jsonl")
	writeJobFile(t, file, `{"kind":"enroll","template":"smime-encryption"}`, lines)
	id := submitBulk(t, a, file)
	st, res := readResults(t, a, id)
	if st.State != "done" || st.Done != 24 {
		t.Fatalf("bulk job with the relay down: %+v", st)
	}
	want := map[string][]string{}
	for seq, r := range res {
		want[mailboxes[seq-1]] = append(want[mailboxes[seq-1]], r.Serial)
	}
	// The notices wait, one file per committed batch (a notice per mailbox of the batch), while
	// the relay is down: 8 to 24 of them, as the batches fell.
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(t, a, "keyarc_notice_failures_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the sender did not try the relay that is down")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if q := metricValue(t, a, "keyarc_notice_queue"); q < 8 || q > 24 {
		t.Errorf("with the relay down: keyarc_notice_queue = %v, want a notice per mailbox and committed batch (8 to 24)", q)
	}
	if files, _ := filepath.Glob(filepath.Join(state, "notices", "*.json")); len(files) != 0 {
		t.Errorf("the bulk job queued %d files of one notice each, want batch files", len(files))
	}

	down.Close()
	sink := startMailSink(t, relay)
	got := map[string]sunkMail{}
	for range 8 {
		m := sink.next(t, "for a bulk job's mailbox")
		if len(m.to) != 1 {
			t.Fatalf("a mail to %v", m.to)
		}
		if _, dup := got[m.to[0]]; dup {
			t.Fatalf("two mails to %s", m.to[0])
		}
		got[m.to[0]] = m
	}
	for mailbox, serials := range want {
		m, ok := got[mailbox]
		if !ok {
			t.Errorf("no mail to %s", mailbox)
			continue
		}
		checkMail(t, m, mailbox, append([]string{"Your encryption key has been escrowed", "certificates (serials "}, serials...)...)
	}

	// Recoveries that end without a key.
	S := []string{"--state", state, "--server", a.url}
	as := func(who string, args ...string) []string { return append(append(args, S...), "--as", who) }
	owner, serial := mailboxes[0], want[mailboxes[0]][0]
	cancelled := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "mistaken")...))
	checkMail(t, sink.next(t, "for the recovery request"), owner, "recovery of your escrowed key was requested", cancelled)
	keyarc(t, as("officer", "recovery", "cancel", cancelled)...)
	checkMail(t, sink.next(t, "for the cancelled recovery"), owner, "The recovery of your escrowed key was cancelled",
		cancelled, serial, "officer", "not recovered")

	expiring := strings.TrimSpace(keyarc(t, as("officer", "recovery", "request", "--serial", serial, "--reason", "left to expire")...))
	checkMail(t, sink.next(t, "for the second recovery request"), owner, "recovery of your escrowed key was requested", expiring)
	keyarc(t, as("kra1", "recovery", "approve", expiring, "--yes")...)
	// The request expires after a minute; the appliance's sweep closes it within the next.
	select {
	case m := <-sink.mail:
		checkMail(t, m, owner, "The recovery of your escrowed key expired", expiring, serial, "officer", "not recovered")
	case <-time.After(3 * time.Minute):
		t.Fatal("no mail for the expired recovery reached the SMTP server")
	}

	select {
	case extra := <-sink.mail:
		t.Errorf("an unexpected mail:\n%s", extra.data)
	case <-time.After(time.Second):
	}
	if s := metricValue(t, a, "keyarc_notices_sent_total"); s != 8+4 {
		t.Errorf("keyarc_notices_sent_total = %v, want 12", s)
	}
}
