package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/api"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow/notice"
)

// openNotices wires subscriber notices (S/MIME BR §4.12.1) into the parts of the appliance:
// with a notices section, it opens the queue folder, registers the notice metrics, sets
// p.Service.Notify and NotifyBatch to queue notices (a bulk job's committed batch as one file),
// starts the sender, and makes p.Stop stop it first. Without one, nothing is queued and the log
// says once that subscribers are not told by mail. Call it after p.Service is built and before
// api.New.
func openNotices(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer, p *api.Parts) error {
	nc := cfg.Notices
	if nc == nil {
		log.Warn("subscriber notices are off (no notices section in the configuration): subscribers are not told by mail that their key is escrowed, nor of its recoveries")
		// Notices queued while they were configured stay in their folder (never made here).
		dir := cfg.Path(config.DefaultNoticeQueue)
		if _, err := os.Stat(dir); err != nil {
			return nil
		}
		if q, err := notice.OpenQueue(dir); err == nil {
			if n := q.Len(); n > 0 {
				log.Warn("subscriber notices wait in the queue folder and will not be sent until notices are configured", "queued", n, "folder", q.Dir())
			}
		}
		return nil
	}
	sender := &notice.SMTP{Addr: nc.SMTP, StartTLS: nc.StartTLSMode() == config.StartTLSRequired, Username: nc.Username}
	if nc.CAFile != "" {
		pem, err := os.ReadFile(cfg.Path(nc.CAFile))
		if err != nil {
			return fmt.Errorf("notices.ca_file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("notices.ca_file: %s holds no PEM certificate", cfg.Path(nc.CAFile))
		}
		sender.TLSConfig = &tls.Config{RootCAs: roots}
	}
	if nc.PasswordFile != "" {
		pw, err := readSecretFile(cfg.Path(nc.PasswordFile))
		if err != nil {
			return fmt.Errorf("notices.password_file: %w", err)
		}
		sender.Password = pw
	}
	q, err := notice.OpenQueue(cfg.Path(nc.QueueDir()))
	if err != nil {
		return err
	}
	n := &notice.Notifier{Queue: q, Sender: sender, From: nc.From, CAName: p.CACert.Subject.CommonName,
		Logger: log.With("component", "notices"), MaxBackoff: nc.RetryMax.Duration}
	if err := n.Register(reg); err != nil {
		return fmt.Errorf("register notice metrics: %w", err)
	}
	p.Service.Notify, p.Service.NotifyBatch, p.Service.NotifyFlush = n.Notify, n.NotifyBatch, n.Flush
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	// The sender stops before what p.Stop stopped so far (the OCSP pre-signer) and before the
	// store and token close; a notice it was sending stays queued and goes at the next start.
	prev := p.Stop
	p.Stop = func() {
		cancel()
		<-done
		if prev != nil {
			prev()
		}
	}
	log.Info("subscriber notices by mail", "relay", nc.SMTP, "starttls", nc.StartTLSMode(), "from", nc.From, "queue", q.Dir(), "queued", q.Len())
	return nil
}

// readSecretFile reads a password file: refused when others can read it, its trailing line
// break removed.
func readSecretFile(path string) (notice.Password, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
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
