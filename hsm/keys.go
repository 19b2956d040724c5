package hsm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// Algorithm names a key type and size.
type Algorithm string

// Supported algorithms.
const (
	P256    Algorithm = "p256"
	P384    Algorithm = "p384"
	RSA2048 Algorithm = "rsa2048"
	RSA3072 Algorithm = "rsa3072"
	RSA4096 Algorithm = "rsa4096"
)

// Usage is the one purpose a generated key may serve.
type Usage int

// Key usages. A key has exactly one.
const (
	// UsageSign: CKA_SIGN only (no decrypt, unwrap, sign-recover or derive).
	UsageSign Usage = iota + 1
	// UsageDecrypt: CKA_DECRYPT only (no sign, unwrap, sign-recover or derive). RSA only.
	UsageDecrypt
)

// String returns "sign" or "decrypt".
func (u Usage) String() string {
	switch u {
	case UsageSign:
		return "sign"
	case UsageDecrypt:
		return "decrypt"
	}
	return fmt.Sprintf("Usage(%d)", int(u))
}

// maxLabel bounds key labels; PKCS#11 does not, but a label is also a log field.
const maxLabel = 128

// GenerateKey generates a key pair for one usage inside the token and returns its
// public key. The private key is a token object that is private, sensitive, never
// extractable, with CKA_SIGN or CKA_DECRYPT (not both) and CKA_UNWRAP, CKA_SIGN_RECOVER
// and CKA_DERIVE false; the public key allows only the matching CKA_VERIFY or
// CKA_ENCRYPT. Both halves get label and the same random 16-byte CKA_ID.
//
// # Errors
//
// [ErrKeyExists] when any object on the token already has label (keys are never
// overwritten; the check and the creation are atomic within this process, not across
// processes), [ErrMechanism] for an unknown algorithm or an EC decrypt key,
// [ErrPoolExhausted], [ErrTokenGone] ([ErrTokenHung] when the generation was still inside
// the module after [Options.KeyGenTimeout]), [ErrClosed].
func (t *Token) GenerateKey(label string, alg Algorithm, usage Usage) (crypto.PublicKey, error) {
	if label == "" || len(label) > maxLabel {
		return nil, fmt.Errorf("hsm: generate: key label must be 1 to %d bytes", maxLabel)
	}
	var curve elliptic.Curve
	bits := 0
	switch alg {
	case P256:
		curve = elliptic.P256()
	case P384:
		curve = elliptic.P384()
	case RSA2048:
		bits = 2048
	case RSA3072:
		bits = 3072
	case RSA4096:
		bits = 4096
	default:
		return nil, fmt.Errorf("hsm: generate %q: %w: algorithm %q", label, ErrMechanism, alg)
	}
	if usage != UsageSign && usage != UsageDecrypt {
		return nil, fmt.Errorf("hsm: generate %q: unknown usage %v", label, usage)
	}
	if usage == UsageDecrypt && curve != nil {
		return nil, fmt.Errorf("hsm: generate %q: %w: decrypt keys must be RSA", label, ErrMechanism)
	}
	if err := t.lockGen(); err != nil {
		return nil, fmt.Errorf("hsm: generate %s %s key %q: %w", alg, usage, label, err)
	}
	defer t.unlockGen()

	var pub crypto.PublicKey
	err := t.do("generate", func(c *conn) error {
		all, _, err := c.raw.countByLabel(label)
		if err != nil {
			return err
		}
		if all > 0 {
			return ErrKeyExists
		}
		pubAttrs, privAttrs, err := keyAttributes(label, usage, true)
		if err != nil {
			return err
		}
		var k crypto11.Signer
		if curve != nil {
			k, err = c.c11.GenerateECDSAKeyPairWithAttributes(pubAttrs, privAttrs, curve)
		} else {
			k, err = c.c11.GenerateRSAKeyPairWithAttributes(pubAttrs, privAttrs, bits)
		}
		if err != nil {
			return err
		}
		pub = k.Public()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: generate %s %s key %q: %w", alg, usage, label, err)
	}
	t.log.Info("hsm: key generated", "label", label, "algorithm", string(alg), "usage", usage.String())
	return pub, nil
}

// keyAttributes returns the explicit public and private templates for a key pair.
// Nothing is left to crypto11's or the token's defaults (crypto11 sets CKA_DECRYPT on
// every RSA key, SoftHSM sets CKA_UNWRAP).
func keyAttributes(label string, usage Usage, token bool) (pub, priv crypto11.AttributeSet, err error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, nil, err
	}
	if pub, err = crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label)); err != nil {
		return nil, nil, err
	}
	if priv, err = crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label)); err != nil {
		return nil, nil, err
	}
	sign, decrypt := usage == UsageSign, usage == UsageDecrypt
	set := func(a crypto11.AttributeSet, pairs ...any) {
		for i := 0; i < len(pairs) && err == nil; i += 2 {
			err = a.Set(pairs[i].(crypto11.AttributeType), pairs[i+1])
		}
	}
	set(priv,
		crypto11.CkaToken, token,
		crypto11.CkaPrivate, true,
		crypto11.CkaSensitive, true,
		crypto11.CkaExtractable, false,
		crypto11.CkaSign, sign,
		crypto11.CkaSignRecover, false,
		crypto11.CkaDecrypt, decrypt,
		crypto11.CkaUnwrap, false,
		crypto11.CkaDerive, false,
	)
	set(pub,
		crypto11.CkaToken, token,
		crypto11.CkaPrivate, false,
		crypto11.CkaVerify, sign,
		crypto11.CkaVerifyRecover, false,
		crypto11.CkaEncrypt, decrypt,
		crypto11.CkaWrap, false,
		crypto11.CkaDerive, false,
	)
	return pub, priv, err
}

// findPair returns the one key pair with label whose private half allows the
// attribute usage (CKA_SIGN or CKA_DECRYPT), and the connection it was found on.
func (t *Token) findPair(label string, usage crypto11.AttributeType) (crypto11.Signer, uint64, error) {
	var key crypto11.Signer
	var gen uint64
	err := t.do("find", func(c *conn) error {
		var err error
		key, err = findPairOn(c, label, usage)
		gen = c.gen
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("hsm: find key %q: %w", label, err)
	}
	return key, gen, nil
}

// findPairOn is findPair for a caller that already runs inside t.do, on c.
func findPairOn(c *conn, label string, usage crypto11.AttributeType) (crypto11.Signer, error) {
	if label == "" {
		return nil, fmt.Errorf("empty key label: %w", ErrKeyNotFound)
	}
	pairs, err := c.c11.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, err
	}
	switch len(pairs) {
	case 0:
		return nil, ErrKeyNotFound
	case 1:
	default:
		return nil, fmt.Errorf("%w: %d key pairs", ErrKeyAmbiguous, len(pairs))
	}
	// FindKeyPairs skips private keys without a public half; count them too.
	if _, private, err := c.raw.countByLabel(label); err != nil {
		return nil, err
	} else if private > 1 {
		return nil, fmt.Errorf("%w: %d private keys", ErrKeyAmbiguous, private)
	}
	a, err := c.c11.GetAttribute(pairs[0], usage)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(a.Value, []byte{1}) {
		return nil, ErrKeyUsage
	}
	return pairs[0], nil
}

// handle is a key found by label, found again after the token reconnects (its crypto11
// objects belong to the old connection). The public key is kept so that Public answers
// while the token is away, and a key found again must have it.
//
// A handle uses a session copy of the private key on each connection (see sessionKey), made
// on its first use there, unless session is false.
type handle struct {
	t     *Token
	label string
	usage crypto11.AttributeType
	pub   crypto.PublicKey
	// session: sign with a session copy of the key when the token allows one.
	session bool

	mu  sync.Mutex
	gen uint64
	key crypto11.Signer
	// ready: key is what operations on connection gen use (the session copy, if any, is
	// made).
	ready bool
}

// newHandle makes the handle of key, found on the connection numbered gen.
func newHandle(t *Token, label string, usage crypto11.AttributeType, key crypto11.Signer, gen uint64) *handle {
	return &handle{t: t, label: label, usage: usage, pub: key.Public(), gen: gen, key: key, session: true}
}

// current returns the key for connection c. It runs inside t.do.
func (h *handle) current(c *conn) (crypto11.Signer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen == c.gen && h.ready {
		return h.key, nil
	}
	k := h.key
	if h.gen != c.gen {
		var err error
		if k, err = findPairOn(c, h.label, h.usage); err != nil {
			return nil, err
		}
		if eq, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(h.pub) {
			return nil, &faultError{cause: ErrKeyChanged, msg: fmt.Sprintf("hsm: after reconnecting, label %q names another key than the one first found", h.label)}
		}
	}
	if h.session {
		var err error
		if k, err = c.sessionKey(h.label, h.usage, k, h.t.log); err != nil {
			return nil, err
		}
	}
	h.key, h.gen, h.ready = k, c.gen, true
	return k, nil
}

// destroyed tells a key destroyed while h still held it from a token that lost its objects.
// The module answers an invalid key or object handle to both. When the token still answers
// and holds no private key labelled h.label, the key was destroyed (by another request on
// this node, or by another node sharing the token): that is [ErrKeyNotFound] for this key
// alone, and the handle finds it again (or not) on its next use. Anything else, err stands,
// and an invalid handle means the token lost its objects ([ErrTokenGone]: reconnect). It
// runs inside t.do, on c.
func (h *handle) destroyed(c *conn, err error) error {
	if !errors.Is(err, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)) && !errors.Is(err, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
		return err
	}
	if _, private, ferr := c.raw.countByLabel(h.label); ferr != nil || private != 0 {
		return err
	}
	h.mu.Lock()
	if h.gen == c.gen {
		h.gen, h.ready = 0, false // connections are numbered from 1
	}
	h.mu.Unlock()
	return fmt.Errorf("%w: destroyed since it was found", ErrKeyNotFound)
}

// Signer returns the key pair labelled label as a crypto.Signer. The private key must
// allow CKA_SIGN.
//
// # Errors
//
// [ErrKeyNotFound], [ErrKeyAmbiguous] (two private keys share the label),
// [ErrKeyUsage], [ErrPoolExhausted], [ErrTokenGone], [ErrClosed].
func (t *Token) Signer(label string) (crypto.Signer, error) {
	k, gen, err := t.findPair(label, crypto11.CkaSign)
	if err != nil {
		return nil, err
	}
	return &signer{handle: newHandle(t, label, crypto11.CkaSign, k, gen)}, nil
}

// Decrypter returns the RSA key pair labelled label as a crypto.Decrypter whose
// Decrypt accepts only *rsa.OAEPOptions. The private key must allow CKA_DECRYPT.
//
// # Errors
//
// As [Token.Signer]; [ErrKeyUsage] also for a key that is not RSA.
func (t *Token) Decrypter(label string) (crypto.Decrypter, error) {
	k, gen, err := t.findPair(label, crypto11.CkaDecrypt)
	if err != nil {
		return nil, err
	}
	_, ok := k.(crypto11.SignerDecrypter)
	if _, isRSA := k.Public().(*rsa.PublicKey); !ok || !isRSA {
		return nil, fmt.Errorf("hsm: find key %q: %w: not an RSA key", label, ErrKeyUsage)
	}
	return &decrypter{handle: newHandle(t, label, crypto11.CkaDecrypt, k, gen)}, nil
}

// KeyLabels returns the labels, sorted and each once, of the token's private keys (token
// objects, not session copies) that begin with prefix.
//
// # Errors
//
// [ErrPoolExhausted], [ErrTokenGone], [ErrClosed].
func (t *Token) KeyLabels(prefix string) ([]string, error) {
	var labels []string
	err := t.do("find", func(c *conn) error {
		var err error
		labels, err = c.raw.privateKeyLabels(prefix)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: list keys: %w", err)
	}
	return labels, nil
}

// TransientDecrypter is [Token.Decrypter] for a key that lives for one request (a recovery
// or drill key): it decrypts with the token object itself, never a session copy, so that once
// the key is destroyed, by this node or by another sharing the token, nothing decrypts with
// it anywhere. Such a key decrypts a few shares; the copy would save little.
//
// # Errors
//
// As [Token.Decrypter].
func (t *Token) TransientDecrypter(label string) (crypto.Decrypter, error) {
	d, err := t.Decrypter(label)
	if err != nil {
		return nil, err
	}
	d.(*decrypter).session = false
	return d, nil
}

// signer is a token key as a crypto.Signer that counts, times and classifies.
type signer struct{ *handle }

var _ crypto.Signer = (*signer)(nil)

// Public returns the public half.
func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest in the token. rand is ignored (the token has its own). For RSA,
// opts may be *rsa.PSSOptions: PSSSaltLengthAuto is turned into PSSSaltLengthEqualsHash,
// which crypto11 requires. digest must have the length of opts.HashFunc().
func (s *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		return nil, fmt.Errorf("hsm: sign with %q: nil SignerOpts", s.label)
	}
	if h := opts.HashFunc(); h != 0 && (!h.Available() || len(digest) != h.Size()) {
		return nil, fmt.Errorf("hsm: sign with %q: digest is %d bytes, not a %v digest", s.label, len(digest), h)
	}
	if pss, ok := opts.(*rsa.PSSOptions); ok && pss.SaltLength == rsa.PSSSaltLengthAuto {
		c := *pss
		c.SaltLength = rsa.PSSSaltLengthEqualsHash
		opts = &c
	}
	if _, ok := s.pub.(*ecdsa.PublicKey); ok {
		if _, pss := opts.(*rsa.PSSOptions); pss {
			return nil, fmt.Errorf("hsm: sign with %q: %w: PSS options for an ECDSA key", s.label, ErrMechanism)
		}
	}
	var sig []byte
	err := s.t.do("sign", func(c *conn) error {
		k, err := s.current(c)
		if err != nil {
			return err
		}
		sig, err = k.Sign(nil, digest, opts)
		return s.destroyed(c, err)
	})
	if err != nil {
		what := opName("sign", s.label)
		s.t.failed(what, err, func() error { return s.probe(opts) })
		return nil, fmt.Errorf("hsm: %s: %w", what, err)
	}
	s.t.succeeded("sign", s.label)
	return sig, nil
}

// decrypter is a token RSA key as a crypto.Decrypter limited to RSA-OAEP.
type decrypter struct{ *handle }

var _ crypto.Decrypter = (*decrypter)(nil)

// Public returns the public half (*rsa.PublicKey).
func (d *decrypter) Public() crypto.PublicKey { return d.pub }

// Decrypt decrypts an RSA-OAEP ciphertext in the token. opts must be *rsa.OAEPOptions:
// nil or *rsa.PKCS1v15DecryptOptions would mean PKCS#1 v1.5 and are refused with
// [ErrMechanism]. MGFHash, which crypto11 ignores, must be zero or equal Hash. rand is
// ignored. A ciphertext the token cannot decrypt gives [ErrDecrypt].
func (d *decrypter) Decrypt(_ io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	o, ok := opts.(*rsa.OAEPOptions)
	if !ok || o == nil {
		return nil, fmt.Errorf("hsm: decrypt with %q: %w: options must be *rsa.OAEPOptions (PKCS#1 v1.5 is refused)", d.label, ErrMechanism)
	}
	if o.MGFHash != 0 && o.MGFHash != o.Hash {
		return nil, fmt.Errorf("hsm: decrypt with %q: %w: MGF1 hash must equal the OAEP hash", d.label, ErrMechanism)
	}
	pt, err := d.decrypt(ciphertext, &rsa.OAEPOptions{Hash: o.Hash, Label: o.Label})
	var rv pkcs11.Error
	if errors.Is(err, ErrDecrypt) && errors.As(err, &rv) && rv == pkcs11.CKR_GENERAL_ERROR {
		// SoftHSM reports a ciphertext that does not decode this way, and a failing token
		// reports itself the same way: a probe tells them apart.
		err = generalVerdict(rv, func() error { return d.probe(o.Hash) })
	}
	if err != nil {
		what := opName("decrypt", d.label)
		d.t.failed(what, err, func() error { return d.probe(o.Hash) })
		return nil, fmt.Errorf("hsm: %s: %w", what, err)
	}
	d.t.succeeded("decrypt", d.label)
	return pt, nil
}

// decrypt runs one RSA-OAEP decryption in the token. A CKR_GENERAL_ERROR is returned as
// [ErrDecrypt] (see [generalVerdict]).
func (d *decrypter) decrypt(ciphertext []byte, opts *rsa.OAEPOptions) ([]byte, error) {
	var pt []byte
	err := d.t.do("decrypt", func(c *conn) error {
		k, err := d.current(c)
		if err != nil {
			return err
		}
		pt, err = k.(crypto11.SignerDecrypter).Decrypt(nil, ciphertext, opts)
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)) {
			err = fmt.Errorf("%w: %w", ErrDecrypt, err)
		}
		return d.destroyed(c, err)
	})
	return pt, err
}

// probe decrypts in the token a random secret encrypted here to the key's public half with
// RSA-OAEP and hash (no label), and checks the result: nil when the key decrypts what is
// encrypted to it.
func (d *decrypter) probe(hash crypto.Hash) error {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	ct, err := rsa.EncryptOAEP(hash.New(), rand.Reader, d.pub.(*rsa.PublicKey), secret, nil)
	if err != nil {
		return err
	}
	pt, err := d.decrypt(ct, &rsa.OAEPOptions{Hash: hash})
	if err != nil {
		return err
	}
	if !bytes.Equal(pt, secret) {
		return errors.New("the decrypted probe differs from what was encrypted")
	}
	return nil
}

// generalVerdict decides what a CKR_GENERAL_ERROR (rv) answered to a decryption means.
// SoftHSM answers it to a ciphertext that does not decode (a wrong key, corrupt data, an OAEP
// label it cannot do): the ciphertext's fault, [ErrDecrypt]. Any token may answer it when it
// fails. probe decrypts, with the same key, a probe encrypted to it: when that works, the
// ciphertext was at fault; when it fails too, the token is ([ErrTokenFault], with the probe's
// [ErrTokenGone], [ErrPoolExhausted] or [ErrClosed] when it has one), never the ciphertext.
func generalVerdict(rv pkcs11.Error, probe func() error) error {
	perr := probe()
	if perr == nil {
		return fmt.Errorf("%w: %w", ErrDecrypt, rv)
	}
	for _, s := range []error{ErrTokenGone, ErrPoolExhausted, ErrClosed} {
		if errors.Is(perr, s) {
			return fmt.Errorf("%w: %w (and the key does not decrypt a probe either: %w)", ErrTokenFault, rv, perr)
		}
	}
	// Not %w: the probe's own CKR_GENERAL_ERROR reads as ErrDecrypt, which this is not.
	return fmt.Errorf("%w: %w (and the key does not decrypt a probe either: %v)", ErrTokenFault, rv, perr)
}

// SelfTest checks the mechanisms keyarc needs, with no lasting trace on the token: it
// generates an RSA-2048 decrypt-only session key pair (CKA_TOKEN false), encrypts a
// random secret to it in Go with RSA-OAEP SHA-256 and then SHA-1, decrypts in the token,
// and destroys the pair. It reports the best hash that round-trips (SoftHSM 2.6: SHA-1).
//
// # Errors
//
// [ErrMechanism] when neither hash round-trips; [ErrPoolExhausted], [ErrTokenGone],
// [ErrClosed].
func (t *Token) SelfTest() (Mechanisms, error) {
	label := "keyarc-selftest-" + randomHex(8)
	pubAttrs, privAttrs, err := keyAttributes(label, UsageDecrypt, false)
	if err != nil {
		return Mechanisms{}, fmt.Errorf("hsm: self-test: %w", err)
	}
	var key crypto11.SignerDecrypter
	var gen uint64
	err = t.do("generate", func(c *conn) error {
		var err error
		key, err = c.c11.GenerateRSAKeyPairWithAttributes(pubAttrs, privAttrs, 2048)
		gen = c.gen
		return err
	})
	if err != nil {
		return Mechanisms{}, fmt.Errorf("hsm: self-test: generate session key: %w", err)
	}
	defer func() {
		// Session objects also vanish when their session closes; delete them now anyway.
		if err := t.do("generate", func(*conn) error { return key.Delete() }); err != nil {
			t.log.Warn("hsm: self-test: delete session key", "err", err)
		}
	}()
	d := &decrypter{handle: newHandle(t, label, crypto11.CkaDecrypt, key, gen)}
	d.session = false // a session key already
	pub := key.Public().(*rsa.PublicKey)
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return Mechanisms{}, fmt.Errorf("hsm: self-test: %w", err)
	}
	var errs []error
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA1} {
		ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, secret, nil)
		if err != nil {
			return Mechanisms{}, fmt.Errorf("hsm: self-test: %w", err)
		}
		pt, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: h})
		if err == nil && bytes.Equal(pt, secret) {
			t.log.Info("hsm: self-test passed", "oaep_hash", h.String())
			return Mechanisms{OAEPHash: h}, nil
		}
		if err == nil {
			err = errors.New("plaintext differs")
		}
		if errors.Is(err, ErrTokenGone) || errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrClosed) {
			return Mechanisms{}, fmt.Errorf("hsm: self-test: %w", err)
		}
		errs = append(errs, fmt.Errorf("OAEP %v: %w", h, err))
	}
	return Mechanisms{}, fmt.Errorf("hsm: self-test: %w: no RSA-OAEP hash round-trips: %w", ErrMechanism, errors.Join(errs...))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// DestroyKey deletes the key pair labelled label from the token (both halves). It is for
// short-lived keys such as a recovery request's; a missing key gives [ErrKeyNotFound].
func (t *Token) DestroyKey(label string) error {
	if label == "" {
		return fmt.Errorf("hsm: destroy: empty key label: %w", ErrKeyNotFound)
	}
	err := t.do("destroy", func(c *conn) error {
		pairs, err := c.c11.FindKeyPairs(nil, []byte(label))
		if err != nil {
			return err
		}
		if len(pairs) == 0 {
			return ErrKeyNotFound
		}
		for _, p := range pairs {
			if err := p.Delete(); err != nil {
				return err
			}
		}
		// No session copy outlives its key.
		c.destroyCopiesOf(label)
		return nil
	})
	if err != nil {
		return fmt.Errorf("hsm: destroy key %q: %w", label, err)
	}
	t.log.Info("hsm: key destroyed", "label", label)
	return nil
}
