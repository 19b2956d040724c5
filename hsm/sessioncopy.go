package hsm

import (
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// # Session copies of keys
//
// A key found by label (a signing key, or a token object decryption key such as the transport
// key) is used through a session copy of its private half when the token allows it: C_CopyObject with CKA_TOKEN false and a label of its own, made on the connection's raw
// session. Every C_SignInit on a token object makes SoftHSM look the object up in its token
// store (the object file is checked for changes) and open its key material; a session object
// lives in memory. With a P-256 CA key in SoftHSM 2.6 that took a signature from about 126
// to about 80 µs.
//
// The copy keeps every attribute of the token key but CKA_TOKEN and CKA_LABEL: it stays
// private, sensitive, never extractable, of its one usage, and is checked to be so before use. Its
// label (the key's label, "#session-" and random hex) never names the token key, so label
// lookups ([Token.Signer], [Token.Expect], the reconnection checks) never see it. A copy
// belongs to one connection: it is destroyed when that connection closes (and a session
// object dies with its session anyway) and when [Token.DestroyKey] destroys its key, and a
// reconnection makes a new one on first use. Keys that are session objects already are not
// copied.
//
// When the token refuses the copy (CKA_COPYABLE false, C_CopyObject not supported, an
// attribute it will not change) or the copy is not visible to the signing sessions (a
// module that gives each PKCS#11 context its own application, such as p11-kit's client),
// the token object signs, as before, and one line is logged for that key and connection.
// sessionCopies switches the copies off (tests and benchmarks compare both ways).
var sessionCopies = true

// copyLabelInfix separates a key's label from the random suffix of its session copy.
const copyLabelInfix = "#session-"

// sessionKey returns a crypto11 key for a session copy of the token key k labelled label,
// whose private half allows usage (CKA_SIGN or CKA_DECRYPT), found on c, or k itself when the
// token refuses the copy or k is a session object. It runs inside t.do, on c. An error is
// returned only when the token failed (gone, hung): a refusal is not an error.
func (c *conn) sessionKey(label string, usage crypto11.AttributeType, k crypto11.Signer, log *slog.Logger) (crypto11.Signer, error) {
	if !sessionCopies {
		return k, nil
	}
	copyLabel := label + copyLabelInfix + randomHex(8)
	obj, err := c.raw.copyPrivateKey(label, copyLabel, usage)
	if errors.Is(err, errNotTokenObject) {
		return k, nil
	}
	if err != nil {
		if errors.Is(classify(err), ErrTokenGone) {
			return nil, err
		}
		log.Warn("hsm: the token refused a session copy of the key; using the token object", "key", label, "err", err)
		return k, nil
	}
	c.copiesMu.Lock()
	c.copies = append(c.copies, sessionCopy{label: label, obj: obj})
	c.copiesMu.Unlock()
	s, err := findCopy(c, copyLabel, k.Public())
	if err != nil {
		c.destroyCopy(obj)
		if errors.Is(classify(err), ErrTokenGone) {
			return nil, err
		}
		log.Warn("hsm: a session copy of the key cannot be used; using the token object", "key", label, "err", err)
		return k, nil
	}
	log.Debug("hsm: using a session copy of the key", "key", label)
	return s, nil
}

// sessionCopy is a session copy of the private key labelled label.
type sessionCopy struct {
	label string
	obj   pkcs11.ObjectHandle
}

// errNotTokenObject: the key is a session object already; it is not copied.
var errNotTokenObject = errors.New("the key is not a token object")

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
	c.copies = slices.DeleteFunc(c.copies, func(x sessionCopy) bool { return x.obj == obj })
	c.copiesMu.Unlock()
	_ = c.raw.destroyObject(obj)
}

// destroyCopiesOf destroys the session copies of the key labelled label made on c.
func (c *conn) destroyCopiesOf(label string) {
	c.copiesMu.Lock()
	var objs []pkcs11.ObjectHandle
	c.copies = slices.DeleteFunc(c.copies, func(x sessionCopy) bool {
		if x.label == label {
			objs = append(objs, x.obj)
			return true
		}
		return false
	})
	c.copiesMu.Unlock()
	for _, o := range objs {
		_ = c.raw.destroyObject(o)
	}
}

// destroyCopies destroys every session copy made on c. It runs when c closes, after its last
// call has returned; closing the raw session would destroy them too.
func (c *conn) destroyCopies() {
	c.copiesMu.Lock()
	cs := c.copies
	c.copies = nil
	c.copiesMu.Unlock()
	for _, x := range cs {
		_ = c.raw.destroyObject(x.obj)
	}
}

// copyPrivateKey copies the one private key labelled label, a token object, into a session
// object labelled copyLabel, checks that the copy is a private, sensitive, never extractable
// session object whose one usage (CKA_SIGN or CKA_DECRYPT) is usage, and returns its handle. A
// copy that fails the check is destroyed. A key that is a session object already gives
// errNotTokenObject.
func (r *rawSession) copyPrivateKey(label, copyLabel string, usage crypto11.AttributeType) (pkcs11.ObjectHandle, error) {
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
	tok, err := r.ctx.GetAttributeValue(r.session, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil)})
	if err != nil {
		return 0, err
	}
	if len(tok[0].Value) != 1 || tok[0].Value[0] == 0 {
		return 0, errNotTokenObject
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
		sign := usage == crypto11.CkaSign
		want := []bool{false, true, true, false, sign, !sign}
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
