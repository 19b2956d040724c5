package escrow

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ServerKeygen generates the key pair inside the appliance (EST serverkeygen, RFC 7030 4.4),
// archives the private key and issues the certificate. The CSR proves the enrollee's request and
// names the key type wanted: its own public key is not certified. The returned PKCS#8 is the
// caller's to deliver and clear.
//
// # Errors
//
// Those of [Service.EnrollArchived] but the envelope's; [ErrInvalidRequest] for a template
// without server_keygen or a key type it cannot make. A failure to encode the new key has no
// sentinel (the appliance's fault).
func (s *Service) ServerKeygen(ctx context.Context, who Enrollee, req EnrollRequest) (*Issued, []byte, error) {
	ctx = WithActor(ctx, "enrollee:"+who.Mailbox)
	t, err := s.checkRequest(who, req)
	if err != nil {
		return nil, nil, s.refuse(ctx, who, req.Template, err)
	}
	if !t.ServerKeygen || !t.Archive {
		return nil, nil, fmt.Errorf("%w: template %q does not allow server-side key generation", ErrInvalidRequest, t.Name)
	}
	key, err := generateLike(req.CSR.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	issued, err := s.archiveAndIssue(ctx, who, t, key.Public(), pkcs8)
	if err != nil {
		clear(pkcs8)
		return nil, nil, err
	}
	return issued, pkcs8, nil
}

// serverKeygenRSABits are the RSA sizes the appliance generates. A larger key costs seconds
// to minutes of CPU (16384 bits: minutes), longer than a client waits for its answer.
var serverKeygenRSABits = []int{2048, 3072, 4096}

// generateLike makes a fresh key of the same type and size as pub.
func generateLike(pub crypto.PublicKey) (crypto.Signer, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); !slices.Contains(serverKeygenRSABits, bits) {
			return nil, fmt.Errorf("%w: server key generation makes RSA keys of 2048, 3072 or 4096 bits, and the request's key has %d: send a request with a key of one of these sizes, or make the key yourself (simpleenroll)",
				ErrInvalidRequest, bits)
		}
		return rsa.GenerateKey(rand.Reader, k.N.BitLen())
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return ecdsa.GenerateKey(k.Curve, rand.Reader)
		}
	}
	return nil, fmt.Errorf("%w: cannot generate a key like %T", ErrInvalidRequest, pub)
}

// KeyTypes are the key types NewKey makes.
var KeyTypes = []string{"rsa2048", "rsa3072", "rsa4096", "p256", "p384"}

// ErrKeyType: NewKey does not know the key type.
var ErrKeyType = errors.New("escrow: unknown key type")

// NewKey generates a key of a type named as in KeyTypes, from crypto/rand.
//
// # Errors
//
// [ErrKeyType] for an unknown type; otherwise only crypto/rand's failure.
func NewKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "rsa2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "rsa4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	case "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return nil, fmt.Errorf("%w %q: choose %s", ErrKeyType, kind, strings.Join(KeyTypes, ", "))
}
