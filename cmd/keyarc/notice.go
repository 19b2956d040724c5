package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/api"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/notice"
	"github.com/keyarc/keyarc/escrow/notice/feed"
)

// openNotices wires subscriber notices (S/MIME BR §4.12.1) into the parts of the appliance.
// The notices are read from the audit trail by a feed (escrow/notice/feed) on the node that
// leads (leader; nil: this node alone). With a notices section, it opens the queue folder,
// registers the notice metrics, starts the feed and the sender (and, in a cluster, the adopter
// of the folders of nodes that are not running), and makes p.Stop stop them
// first. Without one, the feed only moves its cursor along, so that turning notices on later
// does not mail the past, and the log says once that subscribers are not told by mail. Call it
// after p.Service is built and before api.New: the feed's cursor is placed before the appliance
// takes requests.
func openNotices(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer, p *api.Parts, leader *escrow.Leader) error {
	nc := cfg.Notices
	f := &feed.Feed{Store: p.DB, Logger: log.With("component", "notices")}
	if leader != nil {
		f.Leads = leader.Leads
	}
	var n *notice.Notifier
	if nc == nil {
		log.Warn("subscriber notices are off (no notices section in the configuration): subscribers are not told by mail that their key is escrowed, nor of its recoveries")
		// Notices queued while they were configured stay in their folder (never made here).
		dir := cfg.Path(config.DefaultNoticeQueue)
		if _, err := os.Stat(dir); err == nil {
			if q, err := notice.OpenQueue(dir); err == nil {
				if n := q.Len(); n > 0 {
					log.Warn("subscriber notices wait in the queue folder and will not be sent until notices are configured", "queued", n, "folder", q.Dir())
				}
			}
		}
	} else {
		var err error
		if n, err = newNotifier(cfg, log, p, leader != nil); err != nil {
			return err
		}
		if err := n.Register(reg); err != nil {
			return fmt.Errorf("register notice metrics: %w", err)
		}
		if err := f.Register(reg); err != nil {
			return fmt.Errorf("register notice metrics: %w", err)
		}
		f.Notifier = n
		p.Service.NotifyFlush = f.Flush
	}
	if err := f.Start(context.Background()); err != nil {
		// Run places it once the store answers; nothing can commit meanwhile.
		log.Warn("subscriber notices: cannot read the audit trail yet; trying again", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.Run(ctx) })
	if n != nil {
		wg.Go(func() { n.Run(ctx) })
		if leader != nil {
			a := &notice.Adopter{Notifier: n, Dir: cfg.Path(nc.QueueDir()), Prefix: nodeQueuePrefix}
			wg.Go(func() { a.Run(ctx) })
		}
		log.Info("subscriber notices by mail", "relay", nc.SMTP, "starttls", nc.StartTLSMode(), "from", nc.From, "queue", n.Queue.Dir(), "queued", n.Queue.Len())
	}
	// The feed and the sender stop before what p.Stop stopped so far (the OCSP pre-signer) and
	// before the store and token close; a notice being sent stays queued and goes at the next
	// start, and entries the feed had not queued are read again.
	prev := p.Stop
	p.Stop = func() {
		cancel()
		wg.Wait()
		if n == nil && (f.Leads == nil || f.Leads()) {
			// Off: the cursor moves along once a minute; once more at the stop, so that
			// turning notices on at the next start does not mail the last minute's.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := f.Step(ctx); err != nil {
				log.Warn("subscriber notices are off: cannot move their cursor at the stop; the last minute's may be mailed if notices are turned on", "err", err)
			}
			cancel()
		}
		if prev != nil {
			prev()
		}
	}
	return nil
}

// newNotifier makes the mail sender of the notices section: its SMTP relay, the relay's CA and
// password, and the queue folder (one that cannot be opened is logged, not an error: see
// [notice.NewQueue]). A node of several (cluster) has a queue folder of its own
// inside it, named after the node: nodes may share a state folder (make cluster does), and a
// queue has one sender.
func newNotifier(cfg *config.Config, log *slog.Logger, p *api.Parts, cluster bool) (*notice.Notifier, error) {
	nc := cfg.Notices
	sender := &notice.SMTP{Addr: nc.SMTP, StartTLS: nc.StartTLSMode() == config.StartTLSRequired, Username: nc.Username}
	if nc.CAFile != "" {
		pem, err := os.ReadFile(cfg.Path(nc.CAFile))
		if err != nil {
			return nil, fmt.Errorf("notices.ca_file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("notices.ca_file: %s holds no PEM certificate", cfg.Path(nc.CAFile))
		}
		sender.TLSConfig = &tls.Config{RootCAs: roots}
	}
	if nc.PasswordFile != "" {
		pw, err := readSecretFile(cfg.Path(nc.PasswordFile))
		if err != nil {
			return nil, fmt.Errorf("notices.password_file: %w", err)
		}
		sender.Password = pw
	}
	dir := cfg.Path(nc.QueueDir())
	if cluster {
		dir = filepath.Join(dir, nodeQueue(cfg.Node))
	}
	q, err := notice.OpenQueue(dir)
	if err != nil {
		// Not a reason to stop issuing: the notices wait in the audit trail, and the feed and
		// the sender retry, making the folder once it can be made.
		log.Error("subscriber notices: cannot open the queue folder; enrollments go on, their notices wait in the audit trail until it can be written", "folder", dir, "err", err)
		q = notice.NewQueue(dir)
	}
	return &notice.Notifier{Queue: q, Sender: sender, From: nc.From, CAName: p.CACert.Subject.CommonName,
		Logger: log.With("component", "notices"), MaxBackoff: nc.RetryMax.Duration}, nil
}

// nodeQueuePrefix starts the name of each node's queue folder ([nodeQueue]).
//
// Every node of a cluster, not the leader alone, looks for the folders of nodes that are not
// running ([notice.Adopter]): the folder's lock, not leadership, says who may send it, so
// several nodes looking is safe; and the notices of a dead leader go as soon as any node
// looks, without waiting for a new leader, nor starting and stopping a scanner at each change
// of leadership. A node that cannot see the others' folders (a state folder of its own) finds
// none.
const nodeQueuePrefix = "node-"

// nodeQueue names the queue folder of node: "node-" and its name, escaped as a path segment
// (a node name is any printable ASCII, "/" and ".." included).
func nodeQueue(node string) string { return nodeQueuePrefix + url.PathEscape(node) }

// readSecretFile reads a password file: refused when any user can read it, as every secret
// file is ([pemfile.CheckSecret]), its trailing line break removed.
func readSecretFile(path string) (notice.Password, error) {
	if err := pemfile.CheckSecret(path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return notice.Password(b), nil
}
