package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/api"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/directory"
	"github.com/keyarc/keyarc/escrow/directory/ldapdir"
)

// openDirectory wires the LDAP publisher (escrow/directory) into the parts of the appliance:
// with a directory.ldap section, it reads the bind password from its source, registers the
// directory metrics, and starts the publisher, which follows the audit trail from its cursor in
// the store on the node that leads (leader; nil: this node alone), and makes p.Stop stop it
// first. The LDAP server is not contacted here: one that is down must not stop the appliance;
// the publisher logs it, counts it, and catches up when the server is back. Without the
// section, nothing is published. Call it after p.DB and p.CACert are set and before api.New.
func openDirectory(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer, p *api.Parts, leader *escrow.Leader) error {
	if cfg.Directory == nil || cfg.Directory.LDAP == nil {
		log.Info("directory: no LDAP server configured (directory.ldap): certificates are not published; GET /api/v1/directory answers lookups", "lookup", cfg.Directory.LookupMode())
		return nil
	}
	l := cfg.Directory.LDAP
	// Read once now, so that a missing source stops the start with a clear message; then
	// again at each connection, so that a password changed at its source is used at the
	// next retry, without a restart.
	if _, err := cfg.DirectoryBindPassword(); err != nil {
		return err
	}
	var roots *x509.CertPool
	if l.CAFile != "" {
		pem, err := os.ReadFile(cfg.Path(l.CAFile))
		if err != nil {
			return fmt.Errorf("directory.ldap.ca_file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("directory.ldap.ca_file: %s holds no PEM certificate", cfg.Path(l.CAFile))
		}
	}
	dir, err := ldapdir.New(ldapdir.Config{URL: l.URL, BindDN: l.BindDN, PasswordFunc: cfg.DirectoryBindPassword, Base: l.Base, RootCAs: roots,
		InsecurePlaintext: l.InsecurePlaintext, CA: p.CACert})
	if err != nil {
		return err
	}
	pub := &directory.Publisher{Store: p.DB, Dir: dir, Cursor: directory.StoreCursor{Store: p.DB, Name: directory.CursorName},
		CA: p.CACert, Logger: log.With("component", "directory")}
	if leader != nil {
		pub.Leads = leader.Leads
	}
	if err := pub.Register(reg); err != nil {
		return fmt.Errorf("register directory metrics: %w", err)
	}
	log.Info("directory: publishing encryption certificates to LDAP", "ldap", l)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); pub.Run(ctx) }()
	// The publisher stops before the store and the token close; a batch it was applying is
	// applied again at the next start (idempotently): its cursor had not moved.
	prev := p.Stop
	p.Stop = func() {
		cancel()
		<-done
		dir.Close()
		if prev != nil {
			prev()
		}
	}
	return nil
}
