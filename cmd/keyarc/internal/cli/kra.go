package cli

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/hsm"
)

// KRAKeys makes (or finds) a KRA's unwrap and auth keys in its token and checks that the unwrap
// key decrypts with OAEP in the token. Existing keys are used, never replaced.
func KRAKeys(tok *hsm.Token, say func(string, ...any)) (unwrap crypto.Decrypter, auth crypto.Signer, err error) {
	for _, k := range []struct {
		label string
		alg   hsm.Algorithm
		usage hsm.Usage
		what  string
	}{
		{kraUnwrapLabel, "rsa2048", hsm.UsageDecrypt, "unwrap key (decrypt only)"},
		{kraAuthLabel, "p256", hsm.UsageSign, "auth key (sign only)"},
	} {
		_, err := tok.GenerateKey(k.label, k.alg, k.usage)
		switch {
		case errors.Is(err, hsm.ErrKeyExists):
			say("exists   %s %q in token %q", k.what, k.label, tok.Label())
		case err != nil:
			return nil, nil, fmt.Errorf("generate %s: %w", k.what, err)
		default:
			say("created  %s %q in token %q", k.what, k.label, tok.Label())
		}
	}
	if unwrap, err = tok.Decrypter(kraUnwrapLabel); err != nil {
		return nil, nil, err
	}
	if auth, err = tok.Signer(kraAuthLabel); err != nil {
		return nil, nil, err
	}
	// Prove the unwrap key opens what the appliance will seal to it.
	pub, ok := unwrap.Public().(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("unwrap key %q is not RSA", kraUnwrapLabel)
	}
	probe := make([]byte, 32)
	rand.Read(probe)
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, probe, nil)
	if err != nil {
		return nil, nil, err
	}
	pt, err := unwrap.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA1})
	if err != nil || !bytes.Equal(pt, probe) {
		return nil, nil, fmt.Errorf("unwrap key %q does not decrypt RSA-OAEP in the token: %v", kraUnwrapLabel, err)
	}
	return unwrap, auth, nil
}

// kraEnrollment builds the enrollment request for the KRA name from its keys.
func kraEnrollment(name string, unwrap crypto.Decrypter, auth crypto.Signer) (*wire.KRAEnrollRequest, error) {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "KRA " + name}}, auth)
	if err != nil {
		return nil, fmt.Errorf("auth certificate request: %w", err)
	}
	digest, err := escrow.KRABinding(name, unwrap.Public())
	if err != nil {
		return nil, err
	}
	proof, err := auth.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign the enrollment with the auth key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(unwrap.Public())
	if err != nil {
		return nil, err
	}
	return &wire.KRAEnrollRequest{
		Name: name, UnwrapKey: base64.StdEncoding.EncodeToString(spki),
		AuthCSR: base64.StdEncoding.EncodeToString(csr), Proof: base64.StdEncoding.EncodeToString(proof),
	}, nil
}

// RunKRAEnroll is `keyarc kra enroll`: it makes the KRA's keys in its own token and submits
// them for an admin's approval.
func RunKRAEnroll(args []string) error {
	fs := flag.NewFlagSet("kra enroll", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	cf.registerToken(fs)
	name := fs.String("name", "", "the KRA's name (default: the token label)")
	wait := fs.Duration("wait", 0, "wait this long for an admin's decision, then save the certificates")
	out := fs.String("out", "", "folder for NAME-unwrap.pem and NAME-auth.pem (with --wait or --request)")
	request := fs.String("request", "", "collect the certificates of this earlier request (its ID) instead of submitting a new one")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	tok, err := cf.kraToken()
	if err != nil {
		return err
	}
	defer tok.Close()
	if *name == "" {
		*name = tok.Label()
	}
	say := func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
	var p wire.Pending
	var c *client
	if *request != "" {
		// Collect an earlier submission: no new keys, no new request.
		if c, err = cf.dial(false); err != nil {
			return err
		}
		defer c.close()
		p.ID = *request
	} else {
		unwrap, auth, err := KRAKeys(tok, say)
		if err != nil {
			return err
		}
		req, err := kraEnrollment(*name, unwrap, auth)
		if err != nil {
			return err
		}
		if c, err = cf.dial(false); err != nil {
			return err
		}
		defer c.close()
		if err := c.call("POST", "/api/v1/kra/enroll", req, &p); err != nil {
			return err
		}
		say("submitted KRA %q as pending request %s; read these fingerprints to the admin who issues it:", *name, p.ID)
		say("  unwrap key SHA-256 %s", escrow.PublicKeyFingerprint(unwrap.Public()))
		say("  auth key   SHA-256 %s", escrow.PublicKeyFingerprint(auth.Public()))
		fmt.Println(p.ID)
		if *wait == 0 {
			say("once an admin has issued it, collect the certificates with: keyarc kra enroll --request %s --out DIR (and the same token flags)", p.ID)
			return nil
		}
	}
	dir := *out
	if dir == "" && cf.state != "" {
		dir = filepath.Join(cf.state, "credentials")
	}
	if dir == "" {
		return cmdline.UsageError{Msg: "kra enroll: --out DIR is needed to save the certificates (with --wait or --request)"}
	}
	deadline := time.Now().Add(*wait)
	if *wait > 0 {
		say("waiting up to %s for an admin to decide: the admin compares the key fingerprints with you, then runs", *wait)
		say("  keyarc admin pending issue %s", p.ID)
		say("(or `keyarc admin pending deny %s`); the certificates are then saved to %s", p.ID, dir)
	}
	for {
		var st wire.KRAEnrollStatus
		if err := c.call("GET", "/api/v1/kra/enroll/"+p.ID, nil, &st); err != nil {
			return err
		}
		switch st.State {
		case "issued":
			return SaveKRACertificates(dir, *name, st.Unwrap, st.Auth, say)
		case "denied":
			return fmt.Errorf("the admin denied request %s", p.ID)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("no decision yet on request %s; once an admin has issued it, collect the certificates with `keyarc kra enroll --request %s --out DIR`", p.ID, p.ID)
		}
		time.Sleep(2 * time.Second)
	}
}

// SaveKRACertificates writes a KRA's unwrap and auth certificates (PEM) to dir, as
// NAME-unwrap.pem and NAME-auth.pem.
func SaveKRACertificates(dir, name, unwrapPEM, authPEM string, say func(string, ...any)) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct{ suffix, pem string }{{"-unwrap.pem", unwrapPEM}, {"-auth.pem", authPEM}} {
		cert, err := pemfile.ParseCertificate(f.pem)
		if err != nil {
			return err
		}
		path := filepath.Join(dir, name+f.suffix)
		if err := pemfile.Write(path, "CERTIFICATE", cert.Raw, 0o644); err != nil {
			return err
		}
		say("saved    %s", path)
	}
	return nil
}
