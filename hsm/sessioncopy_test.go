package hsm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sessionKeys returns the labels of the private keys on the token that are session objects,
// read through c's raw session (the same PKCS#11 application as the signing sessions).
func sessionKeys(t *testing.T, c *conn) []string {
	t.Helper()
	r := c.raw
	r.mu.Lock()
	defer r.mu.Unlock()
	objs, err := r.findLocked([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, o := range objs {
		a, err := r.ctx.GetAttributeValue(r.session, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err != nil {
			t.Fatal(err)
		}
		labels = append(labels, string(a[0].Value))
	}
	return labels
}

func signAndVerify(t *testing.T, s crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("keyarc session copy"))
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature does not verify")
	}
}

func copyLogs(logs *syncBuffer) int {
	return strings.Count(logs.String(), "session copy of the key")
}

// A signing key signs through a session copy: private, sensitive, never extractable, under a
// label of its own that label lookups never see; destroying the copy makes the signer fail,
// which proves the signatures came from it.
func TestSessionCopyUsed(t *testing.T) {
	logs := &syncBuffer{}
	_, _, tok := newToken(t, Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if _, err := tok.GenerateKey("ca", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("ca")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		signAndVerify(t, s)
	}
	c := tok.cur
	labels := sessionKeys(t, c)
	if len(labels) != 1 || !strings.HasPrefix(labels[0], "ca"+copyLabelInfix) {
		t.Fatalf("session private keys = %q, want one copy of ca", labels)
	}
	if len(c.copies) != 1 {
		t.Fatalf("connection records %d copies, want 1", len(c.copies))
	}
	k := s.(*signer).key
	a, err := c.c11.GetAttribute(k, crypto11.CkaLabel)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Value) != labels[0] {
		t.Errorf("the signer uses the key labelled %q, not the session copy %q", a.Value, labels[0])
	}
	for _, at := range []struct {
		typ  crypto11.AttributeType
		want bool
	}{{crypto11.CkaToken, false}, {crypto11.CkaPrivate, true}, {crypto11.CkaSensitive, true},
		{crypto11.CkaExtractable, false}, {crypto11.CkaSign, true}, {crypto11.CkaDecrypt, false}} {
		a, err := c.c11.GetAttribute(k, at.typ)
		if err != nil {
			t.Fatal(err)
		}
		if got := bytes.Equal(a.Value, []byte{1}); got != at.want {
			t.Errorf("copy attribute %v = %v, want %v", at.typ, got, at.want)
		}
	}
	// The copy is invisible to lookups by the key's label: no ambiguity, no changed key.
	if _, err := tok.Signer("ca"); err != nil {
		t.Errorf("Signer again: %v", err)
	}
	if err := tok.Expect("ca", s.Public()); err != nil {
		t.Errorf("Expect: %v", err)
	}
	if n := copyLogs(logs); n != 0 {
		t.Errorf("logged %d warnings about copies, want none:\n%s", n, logs)
	}
	// Without the copy, this signer cannot sign: it signed with the copy.
	c.destroyCopy(c.copies[0].obj)
	if _, err := s.Sign(nil, make([]byte, 32), crypto.SHA256); !errors.Is(err, ErrTokenGone) {
		t.Errorf("Sign after the copy was destroyed = %v, want ErrTokenGone", err)
	}
}

// A key the token refuses to copy (CKA_COPYABLE false) signs as the token object, with one
// log line, and leaves no session object behind.
func TestSessionCopyRefused(t *testing.T) {
	logs := &syncBuffer{}
	_, _, tok := newToken(t, Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	pubAttrs, privAttrs, err := keyAttributes("nocopy", UsageSign, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := privAttrs.Set(crypto11.CkaCopyable, false); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.cur.c11.GenerateECDSAKeyPairWithAttributes(pubAttrs, privAttrs, elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("nocopy")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		signAndVerify(t, s)
	}
	if n := copyLogs(logs); n != 1 || !strings.Contains(logs.String(), "refused") {
		t.Errorf("logged %d lines about the copy, want one refusal:\n%s", n, logs)
	}
	if labels := sessionKeys(t, tok.cur); len(labels) != 0 {
		t.Errorf("session private keys left = %q, want none", labels)
	}
	if n := len(tok.cur.copies); n != 0 {
		t.Errorf("connection records %d copies, want 0", n)
	}
	k := s.(*signer).key
	a, err := tok.cur.c11.GetAttribute(k, crypto11.CkaToken)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Value, []byte{1}) {
		t.Error("the signer does not use the token object")
	}
}

// A reconnection destroys the old connection's copies and the next signature makes a new
// copy on the new connection.
func TestSessionCopyReconnect(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	if _, err := tok.GenerateKey("ca", P256, UsageSign); err != nil {
		t.Fatal(err)
	}
	s, err := tok.Signer("ca")
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, s)
	old := tok.cur
	if len(old.copies) != 1 {
		t.Fatalf("%d copies before the reconnection, want 1", len(old.copies))
	}
	tok.broken.Store(true) // as after a lost token: the next Ping reconnects
	if err := tok.Ping(); err != nil {
		t.Fatalf("Ping (reconnect): %v", err)
	}
	if tok.cur == old {
		t.Fatal("no reconnection")
	}
	if n := len(old.copies); n != 0 {
		t.Errorf("the old connection still records %d copies", n)
	}
	signAndVerify(t, s)
	labels := sessionKeys(t, tok.cur)
	if len(labels) != 1 || len(tok.cur.copies) != 1 {
		t.Fatalf("after the reconnection: session keys %q, %d recorded copies; want one", labels, len(tok.cur.copies))
	}
	a, err := tok.cur.c11.GetAttribute(s.(*signer).key, crypto11.CkaLabel)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Value) != labels[0] {
		t.Errorf("the signer uses %q, not the new copy %q", a.Value, labels[0])
	}
}

// A token decryption key decrypts through a session copy, decrypt only; DestroyKey destroys
// the copy with the key, so that nothing decrypts with a destroyed key.
func TestSessionCopyDecrypterAndDestroy(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	if _, err := tok.GenerateKey("transport", RSA2048, UsageDecrypt); err != nil {
		t.Fatal(err)
	}
	d, err := tok.Decrypter("transport")
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("a content-encryption key")
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, d.Public().(*rsa.PublicKey), secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1})
	if err != nil || !bytes.Equal(pt, secret) {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	c := tok.cur
	labels := sessionKeys(t, c)
	if len(labels) != 1 || !strings.HasPrefix(labels[0], "transport"+copyLabelInfix) {
		t.Fatalf("session private keys = %q, want one copy of transport", labels)
	}
	k := d.(*decrypter).key
	for _, at := range []struct {
		typ  crypto11.AttributeType
		want bool
	}{{crypto11.CkaToken, false}, {crypto11.CkaDecrypt, true}, {crypto11.CkaSign, false}, {crypto11.CkaExtractable, false}} {
		a, err := c.c11.GetAttribute(k, at.typ)
		if err != nil {
			t.Fatal(err)
		}
		if got := bytes.Equal(a.Value, []byte{1}); got != at.want {
			t.Errorf("copy attribute %v = %v, want %v", at.typ, got, at.want)
		}
	}
	if err := tok.DestroyKey("transport"); err != nil {
		t.Fatal(err)
	}
	if labels := sessionKeys(t, c); len(labels) != 0 {
		t.Fatalf("session private keys after DestroyKey = %q, want none", labels)
	}
	if pt, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); err == nil {
		t.Fatalf("a destroyed key still decrypts: %q", pt)
	}
}

// A key destroyed while another holder of it still uses it (a recovery or drill key destroyed
// by another request, or by another node sharing the token) is that key's ErrKeyNotFound, not
// a token gone: the token stays in service for every other key, and no reconnection starts.
func TestDestroyedKeyIsNotTokenGone(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	for _, label := range []string{"per-request", "ca"} {
		alg, usage := RSA2048, UsageDecrypt
		if label == "ca" {
			alg, usage = P256, UsageSign
		}
		if _, err := tok.GenerateKey(label, alg, usage); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := tok.Signer("ca")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("keyarc"))
	for _, copies := range []bool{true, false} {
		t.Run(map[bool]string{true: "session-copy", false: "token-object"}[copies], func(t *testing.T) {
			sessionCopies = copies
			t.Cleanup(func() { sessionCopies = true })
			if _, err := tok.GenerateKey("per-request", RSA2048, UsageDecrypt); err != nil && !errors.Is(err, ErrKeyExists) {
				t.Fatal(err)
			}
			d, err := tok.Decrypter("per-request")
			if err != nil {
				t.Fatal(err)
			}
			ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, d.Public().(*rsa.PublicKey), []byte("share"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); err != nil {
				t.Fatal(err)
			}
			// Another request destroys the key while d still holds its handle.
			if err := tok.DestroyKey("per-request"); err != nil {
				t.Fatal(err)
			}
			_, err = d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1})
			if !errors.Is(err, ErrKeyNotFound) || errors.Is(err, ErrTokenGone) {
				t.Fatalf("Decrypt with a destroyed key = %v, want ErrKeyNotFound and not ErrTokenGone", err)
			}
			if tok.broken.Load() {
				t.Fatal("a destroyed key marked the whole token as gone")
			}
			if _, err := ca.Sign(nil, digest[:], crypto.SHA256); err != nil {
				t.Fatalf("another key after one was destroyed: %v", err)
			}
			// Asked again, the answer stays the same.
			if _, err = d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("Decrypt again = %v, want ErrKeyNotFound", err)
			}
		})
	}
}

// A transient key (a recovery or drill key) decrypts with the token object and no session
// copy: destroyed behind its holder's back, as another node sharing the token would, it
// decrypts nothing more here either.
func TestTransientDecrypterNoCopy(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	if _, err := tok.GenerateKey("recovery-1", RSA2048, UsageDecrypt); err != nil {
		t.Fatal(err)
	}
	d, err := tok.TransientDecrypter("recovery-1")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, d.Public().(*rsa.PublicKey), []byte("share"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); err != nil || string(pt) != "share" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	if labels := sessionKeys(t, tok.cur); len(labels) != 0 {
		t.Fatalf("session private keys = %q, want none", labels)
	}
	// Destroyed through crypto11 directly: no handle of d is told.
	pairs, err := tok.cur.c11.FindKeyPairs(nil, []byte("recovery-1"))
	if err != nil || len(pairs) != 1 {
		t.Fatalf("find the key: %d, %v", len(pairs), err)
	}
	if err := pairs[0].Delete(); err != nil {
		t.Fatal(err)
	}
	if pt, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Decrypt with a key destroyed elsewhere = %q, %v; want ErrKeyNotFound", pt, err)
	}
	if tok.broken.Load() {
		t.Fatal("a key destroyed elsewhere marked the token as gone")
	}
}

// KeyLabels lists the token's private keys by label prefix, without their session copies or
// public halves, each once.
func TestKeyLabels(t *testing.T) {
	_, _, tok := newToken(t, Options{})
	for _, label := range []string{"recovery-b", "recovery-a", "drill-1", "ca"} {
		alg, usage := RSA2048, UsageDecrypt
		if label == "ca" {
			alg, usage = P256, UsageSign
		}
		if _, err := tok.GenerateKey(label, alg, usage); err != nil {
			t.Fatal(err)
		}
	}
	d, err := tok.Decrypter("recovery-a") // makes a session copy on first use
	if err != nil {
		t.Fatal(err)
	}
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, d.Public().(*rsa.PublicKey), []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: crypto.SHA1}); err != nil {
		t.Fatal(err)
	}
	for prefix, want := range map[string]string{"recovery-": "recovery-a recovery-b", "drill-": "drill-1", "": "ca drill-1 recovery-a recovery-b", "x": ""} {
		got, err := tok.KeyLabels(prefix)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, " ") != want {
			t.Errorf("KeyLabels(%q) = %q, want %q", prefix, got, want)
		}
	}
}
