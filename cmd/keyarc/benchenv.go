package main

import (
	"crypto/x509"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/api"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/bench"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/cli"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
)

// runBench is `keyarc bench`, wired to this binary's appliance.
func runBench(args []string) error {
	return bench.Run(args, bench.Env{
		Open: func(state, listen, metricsListen string, log *slog.Logger, reg *prometheus.Registry) (bench.Appliance, error) {
			cfg, err := config.Load(state)
			if err != nil {
				return nil, err
			}
			cfg.Listen, cfg.MetricsListen = listen, metricsListen
			a, err := openAppliance(cfg, log, reg)
			if err != nil {
				return nil, err
			}
			return a, nil
		},
		CACert: func(state string) (*x509.Certificate, error) {
			cfg, err := config.Load(state)
			if err != nil {
				return nil, err
			}
			return pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
		},
		AdminClient: func(state, server string) (*http.Client, error) {
			return cli.HTTPClient(state, "admin", server)
		},
		TuneGC: tuneGC,
	})
}

var _ bench.Appliance = (*api.Server)(nil)
