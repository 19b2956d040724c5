package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// failure is the last key operation the token failed although it answers ([ErrTokenFault]:
// CKR_FUNCTION_FAILED, CKR_DEVICE_MEMORY...), with a probe that repeats that operation on
// the same key on an input of its own. [Token.Ping] runs the probe and fails while it fails:
// a token that answers its liveness calls but fails every signature is not ready. Unlike
// [ErrTokenGone], operations are not refused meanwhile.
type failure struct {
	what  string // op and key label, e.g. `sign with "ca-key"`
	err   error
	probe func() error
}

// failed records that the operation what failed with err, when the token answered it with
// an error that is no verdict on the request ([answeredFault]), and logs it when the token was
// not known to fail until now. Other errors are ignored.
func (t *Token) failed(what string, err error, probe func() error) {
	if !answeredFault(err) {
		return
	}
	if t.failing.Swap(&failure{what: what, err: err, probe: probe}) == nil {
		t.log.Error("hsm: the token answers but fails operations; it is not ready until the operation succeeds again",
			"op", what, "err", err)
	}
}

// answeredFault reports whether err is the token's answer to an operation that it failed:
// [ErrTokenFault], or a PKCS#11 code that reads as [ErrTokenGone] (CKR_DEVICE_ERROR...). A
// token that answers CKR_DEVICE_ERROR to every decryption reconnects at the next Ping
// without trouble, and would read as ready again while the decryptions still fail; held as
// a failure, it stays not ready until its probe decrypts. Not [ErrTokenHung] (the token did
// not answer: Ping sees that itself), nor an operation refused before it reached the token.
func answeredFault(err error) bool {
	if errors.Is(err, ErrTokenFault) {
		return true
	}
	var rv pkcs11.Error
	return errors.Is(err, ErrTokenGone) && !errors.Is(err, ErrTokenHung) && errors.As(err, &rv)
}

// opName names operation op with the key labelled label, as a failure records it.
func opName(op, label string) string { return fmt.Sprintf("%s with %q", op, label) }

// succeeded clears the failure of operation op with the key labelled label, once it succeeded
// again. It costs one atomic load while nothing fails: it is on every signature's path.
func (t *Token) succeeded(op, label string) {
	if f := t.failing.Load(); f != nil && f.what == opName(op, label) {
		t.clearFailure(f)
	}
}

// clearFailure forgets failure f, if it is still the token's.
func (t *Token) clearFailure(f *failure) {
	if t.failing.CompareAndSwap(f, nil) {
		t.log.Info("hsm: the token completes operations again", "op", f.what)
	}
}

// probeFailing runs the probe of the failed operation, if any: nil when there is none or
// it succeeds now, else an error wrapping [ErrTokenFault] (or [ErrTokenGone],
// [ErrPoolExhausted], [ErrClosed] when the probe met one of those).
func (t *Token) probeFailing() error {
	f := t.failing.Load()
	if f == nil {
		return nil
	}
	err := f.probe()
	if err == nil {
		t.clearFailure(f)
		return nil
	}
	if errors.Is(err, ErrKeyNotFound) {
		// The key is gone (a recovery key destroyed, a session key lost at a reconnection):
		// there is nothing left to probe, and its failure is no longer the token's state.
		t.failing.CompareAndSwap(f, nil)
		return nil
	}
	for _, s := range []error{ErrTokenFault, ErrTokenGone, ErrPoolExhausted, ErrClosed} {
		if errors.Is(err, s) {
			return fmt.Errorf("the token fails operations (%s): %w", f.what, err)
		}
	}
	return fmt.Errorf("%w: the token fails operations (%s): %w", ErrTokenFault, f.what, err)
}

// probe signs a random digest with the key as opts asks, and verifies the signature.
func (s *signer) probe(opts crypto.SignerOpts) error {
	n := sha256.Size
	if h := opts.HashFunc(); h != 0 {
		n = h.Size()
	}
	digest := make([]byte, n)
	if _, err := rand.Read(digest); err != nil {
		return err
	}
	sig, err := s.Sign(nil, digest, opts)
	if err != nil {
		return err
	}
	ok := false
	switch pub := s.pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(pub, digest, sig)
	case *rsa.PublicKey:
		if pss, isPSS := opts.(*rsa.PSSOptions); isPSS {
			ok = rsa.VerifyPSS(pub, opts.HashFunc(), digest, sig, pss) == nil
		} else {
			ok = rsa.VerifyPKCS1v15(pub, opts.HashFunc(), digest, sig) == nil
		}
	default:
		return nil // a key type this package does not verify: the token signed
	}
	if !ok {
		return fmt.Errorf("hsm: sign with %q: %w: the probe's signature does not verify", s.label, ErrTokenFault)
	}
	return nil
}
