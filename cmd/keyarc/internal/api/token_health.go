package api

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/keyarc/keyarc/hsm"
)

// Causes of an appliance token that is not ready: the values of the cause label of
// keyarc_token_fault and of the log field cause.
const (
	tokenUnreachable = "unreachable"
	tokenPINRefused  = "pin_refused"
	tokenKeyMismatch = "key_mismatch"
	// tokenFailing: the token answers, but fails the operations asked of it (hsm.ErrTokenFault).
	tokenFailing = "failing"
)

var tokenCauses = []string{tokenUnreachable, tokenPINRefused, tokenKeyMismatch, tokenFailing}

// tokenCause classifies a token error into a cause and the message a client or an operator
// reads in a 503 and on /readyz. The details (the key's label, the pin-source) go to the log.
func tokenCause(err error) (cause, msg string) {
	switch {
	case errors.Is(err, hsm.ErrPINIncorrect):
		return tokenPINRefused, "the appliance token refused the PIN; an operator must put the right PIN in the pin-source (or fix the token and send SIGHUP); retry later"
	case errors.Is(err, hsm.ErrKeyChanged):
		return tokenKeyMismatch, "the appliance token holds other keys than the appliance's certificates; an operator must restore the right token; retry later"
	case errors.Is(err, hsm.ErrTokenFault) && !errors.Is(err, hsm.ErrTokenGone):
		return tokenFailing, "the appliance token answers but fails the operations asked of it (see the appliance log); retry later"
	}
	return tokenUnreachable, "the appliance token is unreachable; retry later"
}

// tokenHealth remembers the last cause logged, so that each change is logged once.
type tokenHealth struct {
	mu    sync.Mutex
	cause string // "" while ready
}

// tokenStatus pings the token (which reconnects it when it is due), sets readiness and the
// metrics, and logs each change of cause once. It returns nil when the token is ready.
func (a *Server) tokenStatus() error {
	err := a.tok.Ping()
	cause := ""
	if err != nil {
		cause, _ = tokenCause(err)
	}
	a.ready.Store(err == nil)
	if a.metrics != nil {
		if err == nil {
			a.metrics.ready.Set(1)
		} else {
			a.metrics.ready.Set(0)
		}
		for _, c := range tokenCauses {
			v := 0.0
			if c == cause {
				v = 1
			}
			a.metrics.tokenFault.WithLabelValues(c).Set(v)
		}
	}
	a.tokHealth.mu.Lock()
	was := a.tokHealth.cause
	a.tokHealth.cause = cause
	a.tokHealth.mu.Unlock()
	switch {
	case cause == was:
	case cause == "":
		a.log.Info("token answers again", "was", was)
	default:
		_, msg := tokenCause(err)
		a.log.Error("appliance token not ready: "+msg, "cause", cause, "err", err)
	}
	return err
}

// retryOnHUP makes SIGHUP try the token's PIN once more (one login) and check the token at
// once: for an operator who fixed the token rather than the PIN file.
func (a *Server) retryOnHUP(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			a.log.Info("SIGHUP: trying the appliance token again")
			a.tok.RetryLogin()
			a.tokenStatus()
		}
	}
}

// expectTokenKeys pins the keys checked at start-up to the public keys of their certificates
// (the audit key to the key found), so that after every reconnection the token is checked
// again and a token holding other keys under the same labels is not used.
func (a *Server) expectTokenKeys(keys map[string]crypto.PublicKey) error {
	for label, pub := range keys {
		if err := a.tok.Expect(label, pub); err != nil {
			return fmt.Errorf("token key %q: %w", label, err)
		}
	}
	return nil
}
