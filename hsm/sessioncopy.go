package hsm

import (
	"crypto"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// # Session copies of signing keys
//
// A signing key is used through a session copy of its private half when the token allows
// it: C_CopyObject with CKA_TOKEN false and a label of its own, made on the connection's raw
// session. Every C_SignInit on a token object makes SoftHSM look the object up in its token
// store (the object file is checked for changes) and open its key material; a session object
// lives in memory. With a P-256 CA key in SoftHSM 2.6 that took a signature from about 126
// to about 80 µs.
//
// The copy keeps every attribute of the token key but CKA_TOKEN and CKA_LABEL: it stays
// private, sensitive, never extractable, sign only, and is checked to be so before use. Its
// label (the key's label, "#session-" and random hex) never names the token key, so label
// lookups ([Token.Signer], [Token.Expect], the reconnection checks) never see it. A copy
// belongs to one connection: it is destroyed when that connection closes (and a session
// object dies with its session anyway), and a reconnection makes a new one on first use.
//
// When the token refuses the copy (CKA_COPYABLE false, C_CopyObject not supported, an
// attribute it will not change) or the copy is not visible to the signing sessions (a
// module that gives each PKCS#11 context its own application, such as p11-kit's client),
// the token object signs, as before, and one line is logged for that key and connection.
// sessionCopies switches the copies off (tests and benchmarks compare both ways).
var sessionCopies = true

// copyLabelInfix separates a key's label from the random suffix of its session copy.
const copyLabelInfix = "#session-"

// sessionSigner returns a crypto11 signer for a session copy of the token key k labelled
// label, found on c, or k itself when the token refuses the copy. It runs inside t.do, on c.
// An error is returned only when the token failed (gone, hung): a refusal is not an error.
func (c *conn) sessionSigner(label string, k crypto11.Signer, log *slog.Logger) (crypto11.Signer, error) {
	if !sessionCopies {
		return k, nil
	}
	copyLabel := label + copyLabelInfix + randomHex(8)
	obj, err := c.raw.copyPrivateKey(label, copyLabel)
	if err != nil {
		if errors.Is(classify(err), ErrTokenGone) {
			return nil, err
		}
		log.Warn("hsm: the token refused a session copy of the key; signing with the token object", "key", label, "err", err)
		return k, nil
	}
	c.copiesMu.Lock()
	c.copies = append(c.copies, obj)
	c.copiesMu.Unlock()
	s, err := findCopy(c, copyLabel, k.Public())
	if err != nil {
		c.destroyCopy(obj)
		if errors.Is(classify(err), ErrTokenGone) {
			return nil, err
		}
		log.Warn("hsm: a session copy of the key cannot be used; signing with the token object", "key", label, "err", err)
		return k, nil
	}
	log.Debug("hsm: signing with a session copy of the key", "key", label)
	return s, nil
}

// errCopyNotVisible: the signing sessions do not see the session copy made on the raw
// session (another PKCS#11 application, as with p11-kit's client).
var errCopyNotVisible = errors.New("the signing sessions do not see the session copy")

// findCopy finds the session copy labelled copyLabel through crypto11 (paired with the token
// key's public half by CKA_ID) and checks that its public key is pub.
func findCopy(c *conn, copyLabel string, pub crypto.PublicKey) (crypto11.Signer, error) {
	pairs, err := c.c11.FindKeyPairs(nil, []byte(copyLabel))
	if err != nil {
		return nil, err
	}
	if len(pairs) != 1 {
		return nil, fmt.Errorf("%w (%d found)", errCopyNotVisible, len(pairs))
	}
	if eq, ok := pairs[0].Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub) {
		return nil, errors.New("the session copy pairs with another public key")
	}
	return pairs[0], nil
}

// destroyCopy destroys the session copy obj now and forgets it.
func (c *conn) destroyCopy(obj pkcs11.ObjectHandle) {
	c.copiesMu.Lock()
	for i, o := range c.copies {
		if o == obj {
			c.copies = append(c.copies[:i], c.copies[i+1:]...)
			break
		}
	}
	c.copiesMu.Unlock()
	_ = c.raw.destroyObject(obj)
}

// destroyCopies destroys every session copy made on c. It runs when c closes, after its last
// call has returned; closing the raw session would destroy them too.
func (c *conn) destroyCopies() {
	c.copiesMu.Lock()
	objs := c.copies
	c.copies = nil
	c.copiesMu.Unlock()
	for _, o := range objs {
		_ = c.raw.destroyObject(o)
	}
}

// copyPrivateKey copies the one private key labelled label into a session object labelled
// copyLabel, checks that the copy is a private, sensitive, never extractable, sign-only
// session object, and returns its handle. A copy that fails the check is destroyed.
func (r *rawSession) copyPrivateKey(label, copyLabel string) (pkcs11.ObjectHandle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return 0, ErrClosed
	}
	objs, err := r.findLocked([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	})
	if err != nil {
		return 0, err
	}
	if len(objs) != 1 {
		return 0, fmt.Errorf("%w: %d private keys labelled %q", ErrKeyAmbiguous, len(objs), label)
	}
	obj, err := r.ctx.CopyObject(r.session, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, copyLabel),
	})
	if err != nil {
		return 0, err
	}
	attrs, err := r.ctx.GetAttributeValue(r.session, obj, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, nil),
	})
	if err == nil {
		want := []bool{false, true, true, false, true, false}
		for i, a := range attrs {
			if got := len(a.Value) == 1 && a.Value[0] != 0; got != want[i] {
				err = fmt.Errorf("the session copy has attribute 0x%x = %v", a.Type, got)
				break
			}
		}
	}
	if err != nil {
		_ = r.ctx.DestroyObject(r.session, obj)
		return 0, err
	}
	return obj, nil
}

// destroyObject destroys obj (a session copy).
func (r *rawSession) destroyObject(obj pkcs11.ObjectHandle) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return ErrClosed
	}
	return r.ctx.DestroyObject(r.session, obj)
}
