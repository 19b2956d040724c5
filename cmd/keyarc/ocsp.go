package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/api"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ocsp"
	"github.com/keyarc/keyarc/escrow/ocsp/presign"
	"github.com/keyarc/keyarc/hsm"
)

// ocspService is the OCSP part of the appliance: the handler the public listener mounts at
// /ocsp, the pre-signer running in the background, and the hook a revocation calls.
type ocspService struct {
	// Handler serves /ocsp and /ocsp/ from the store (api.Parts.OCSP).
	Handler http.Handler
	// Issued has the first responses of certificates just issued signed when issuance
	// pauses (presign.Signer.Issued), many to a pass; it never blocks (chain it into
	// escrow.Service.Certified).
	Issued func(serials []string)
	// Revoked has the responses of serials signed again at once; it never blocks (chain it
	// into escrow.Service.Revoked).
	Revoked func(serials []string)
	signer  *presign.Signer
	cancel  context.CancelFunc
	done    chan struct{}
	once    sync.Once
	wait    time.Duration // longest wait for the pre-signer at Close
	log     *slog.Logger
}

// Close stops the pre-signer and waits for it, for at most the token's call limit and a
// little: a signature inside a token that stopped answering cannot be taken back, and must
// not hold the shutdown. Safe to call twice.
func (o *ocspService) Close() error {
	o.once.Do(func() {
		o.cancel()
		select {
		case <-o.done:
		case <-time.After(o.wait):
			o.log.Error("shutdown goes on without the OCSP pre-signer: it is inside a call into the token that has not returned", "limit", o.wait)
		}
	})
	return nil
}

// openOCSP makes the responder key in the token if it is missing (a state folder made before
// OCSP existed), issues DIR/ocsp.pem if it is missing or within 8 days of expiry, pins the
// key, registers the OCSP metrics, and starts the pre-signer, which renews the responder
// certificate as it runs. svc issues (and stores) the responder certificates; its CA and store
// are the responder's. Called by openAppliance after the token, the issuer and the store
// are open; Close the result before the store and the token.
func openOCSP(cfg *config.Config, tok *hsm.Token, svc *escrow.Service, log *slog.Logger, reg prometheus.Registerer) (*ocspService, error) {
	issuer, db := svc.Issuer, svc.Store
	ctx := escrow.WithActor(context.Background(), "system")
	signer, cert, err := statedir.EnsureOCSPResponder(ctx, cfg, tok, svc, time.Now(), nil)
	if err != nil {
		return nil, err
	}
	if err := tok.Expect(statedir.OCSPKeyLabel, signer.Public()); err != nil {
		return nil, fmt.Errorf("token key %q: %w", statedir.OCSPKeyLabel, err)
	}
	m, err := api.NewOCSPMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register OCSP metrics: %w", err)
	}
	caCert := issuer.Certificate()
	resp, err := ocsp.NewResponder(caCert, cert, signer, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Path(statedir.OCSPCertName), err)
	}
	m.ResponderCertExpiry(cert.NotAfter)
	// A certificate issued a moment ago, whose first response waits for the pre-signer's
	// next pass, is signed when asked for.
	var ps *presign.Signer
	signMissing := func(ctx context.Context, serials []string) (int, error) { return ps.SignSerials(ctx, serials) }
	h, err := api.NewOCSPHandler(api.OCSPHandlerConfig{Store: db, CA: caCert, Metrics: m, Log: log, SignMissing: signMissing})
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	current := resp
	responder := func(now time.Time) (*ocsp.Responder, error) {
		mu.Lock()
		defer mu.Unlock()
		c, err := statedir.RenewOCSPCert(ctx, cfg, signer, svc, current.Certificate(), now, nil)
		if err != nil {
			// The old certificate still signs until it is too close to expiry (presign
			// refuses below 8 hours); the next pass tries again.
			log.Warn("ocsp: responder certificate renewal postponed", "err", err)
			return current, nil
		}
		if c != current.Certificate() {
			r, err := ocsp.NewResponder(caCert, c, signer, nil)
			if err != nil {
				return nil, err
			}
			log.Info("ocsp: responder certificate renewed", "not_after", c.NotAfter.UTC().Format(time.RFC3339))
			current = r
			m.ResponderCertExpiry(c.NotAfter)
		}
		return current, nil
	}
	// With several nodes, only the leader runs the passes over everything due (svc.Leads).
	ps = &presign.Signer{Store: db, Responder: responder, Logger: log, Metrics: m, Leads: svc.Leads}
	ctx, cancel := context.WithCancel(context.Background())
	// The handler reads the serials again until their re-signed responses are stored.
	revoked := func(serials []string) { h.Invalidate(serials); ps.Revoked(serials) }
	o := &ocspService{Handler: h, Revoked: revoked, Issued: ps.Issued, signer: ps, cancel: cancel, done: make(chan struct{}),
		wait: cfg.Token.CallTimeout.Duration + 2*time.Second, log: log}
	go func() {
		defer close(o.done)
		ps.Run(ctx)
	}()
	return o, nil
}
