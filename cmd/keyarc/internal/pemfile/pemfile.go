// Package pemfile reads and writes the PEM files of a state folder and of the client side:
// certificates, PKCS#8 keys (credentials of development operators) and certificate bundles.
//
// It imports the standard library only. Its functions hold no state and are safe for
// concurrent use. Errors name the file; they never include key material.
package pemfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// Exists reports whether a file exists at p.
func Exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Write writes one PEM block of type typ to a new file at path with mode mode; it never
// overwrites an existing file.
func Write(path, typ string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadCertificate returns the first certificate of the PEM file at path.
func ReadCertificate(path string) (*x509.Certificate, error) {
	certs, err := ReadCertificates(path)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ReadCertificates returns every certificate of the PEM file at path (other blocks are
// skipped); a file without one is an error.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return out, nil
}

// CheckSecret refuses a file of secrets (a private key, a password) that any local user can
// read or change, as ssh refuses such a key; its owner's group may read it (a service group),
// as for the token's PIN file. A file that cannot be examined is left to the read that follows.
func CheckSecret(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o007 != 0 {
		return fmt.Errorf("%s can be read or changed by any user (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	return nil
}

// ReadPrivateKey reads a PEM PKCS#8 private key that can sign, refused if any user can read
// or change its file ([CheckSecret]). The decoded key bytes are cleared after parsing (best
// effort: the parsed key stays in memory).
func ReadPrivateKey(path string) (crypto.Signer, error) {
	if err := CheckSecret(path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block in it", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	clear(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not a PKCS#8 private key", path)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: unsupported key type", path)
	}
	return s, nil
}

// Encode returns c as a PEM CERTIFICATE block.
func Encode(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// ParseCertificate parses the first PEM block of s, which must be a certificate (as the
// appliance sends them in its JSON bodies).
func ParseCertificate(s string) (*x509.Certificate, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("the appliance sent no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}
