//go:build js && wasm

// Command wasm is the cryptography of the enrollment page, compiled to WebAssembly
// (GOOS=js GOARCH=wasm) and run in a Web Worker (static/worker.js). It makes the key pair and
// its PKCS#10 request, seals the PKCS#8 key to the appliance's transport certificate with
// keyarc's own escrow/cms (the envelope the appliance opens, proven against
// `openssl cms -encrypt`), and builds the PKCS#12 file in the shape of go-pkcs12's Modern2023
// profile, the encoder the recovery path uses, with the friendly name go-pkcs12 does not write
// (package pfx); the worker derives its PBKDF2 keys with WebCrypto.
//
// The private key never reaches JavaScript: the worker holds it under a numeric handle, hands
// out only the CSR, the envelope and the finished PKCS#12, and clears it on forget (best
// effort: the garbage collector may have copied it). Randomness is crypto/rand, which on
// js/wasm is the browser's crypto.getRandomValues.
//
// Functions are set on globalThis.keyarcWasm; each returns an object with either the result
// fields or "error", a message fit to show the user. The worker calls them one at a time.
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"syscall/js"
	"unicode/utf8"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/web/pfx"
	"github.com/keyarc/keyarc/escrow/cms"
)

// pfxIterations is the PBKDF2 iteration count of the PKCS#12 file, as for recovered files
// (escrow.PFXIterations).
const pfxIterations = 600_000

// minPasswordLen is the shortest PKCS#12 password accepted; the page states the same rule.
const minPasswordLen = 12

// held is a key the worker keeps for the page.
type held struct {
	key   crypto.Signer
	pkcs8 []byte
}

var (
	keys = map[int]*held{}
	next = 1
)

func main() {
	api := map[string]any{
		"generate": js.FuncOf(wrap(generate)),
		"seal":     js.FuncOf(wrap(seal)),
		"pkcs12":   js.FuncOf(wrap(buildPKCS12)),
		"forget":   js.FuncOf(wrap(forget)),
	}
	js.Global().Set("keyarcWasm", js.ValueOf(api))
	js.Global().Call("keyarcWasmReady")
	select {}
}

// wrap turns a function returning a result or an error into a JS function returning
// {…result} or {error: message}. A panic becomes an error too, so the page never hangs.
func wrap(f func(args []js.Value) (map[string]any, error)) func(js.Value, []js.Value) any {
	return func(_ js.Value, args []js.Value) (out any) {
		defer func() {
			if r := recover(); r != nil {
				out = js.ValueOf(map[string]any{"error": fmt.Sprint("internal error in the page: ", r)})
			}
		}()
		res, err := f(args)
		if err != nil {
			return js.ValueOf(map[string]any{"error": err.Error()})
		}
		return js.ValueOf(res)
	}
}

func arg(args []js.Value, i int) js.Value {
	if i < len(args) {
		return args[i]
	}
	return js.Undefined()
}

func str(args []js.Value, i int) string {
	if v := arg(args, i); v.Type() == js.TypeString {
		return v.String()
	}
	return ""
}

// generate(kind, mailbox) makes a key pair of kind (rsa2048, rsa3072, p256) and a PKCS#10
// request for mailbox, as `keyarc enroll` does. Result: {handle, csr (base64 DER)}.
func generate(args []js.Value) (map[string]any, error) {
	kind, mailbox := str(args, 0), str(args, 1)
	if mailbox == "" {
		return nil, errors.New("enter your mailbox")
	}
	var key crypto.Signer
	var err error
	switch kind {
	case "rsa2048":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa3072":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case "p256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, fmt.Errorf("unknown key type %q (rsa2048, rsa3072 or p256)", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("generate the key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: mailbox}, EmailAddresses: []string{mailbox},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("build the certificate request: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode the key: %w", err)
	}
	h := next
	next++
	keys[h] = &held{key: key, pkcs8: pkcs8}
	return map[string]any{"handle": h, "csr": base64.StdEncoding.EncodeToString(csr)}, nil
}

func lookup(args []js.Value) (int, *held, error) {
	v := arg(args, 0)
	if v.Type() != js.TypeNumber {
		return 0, nil, errors.New("no key handle")
	}
	h := v.Int()
	k, ok := keys[h]
	if !ok {
		return h, nil, errors.New("the key is no longer held: start again")
	}
	return h, k, nil
}

// seal(handle, transportPEM, oaep) envelopes the PKCS#8 key to the transport certificate in a
// CMS AuthEnvelopedData (AES-256-GCM), RSA-OAEP with SHA-256 when oaep is "sha256" (the
// appliance's Keyarc-Transport-OAEP header), else SHA-1. Result: {envelope (base64 DER)}.
func seal(args []js.Value) (map[string]any, error) {
	_, k, err := lookup(args)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode([]byte(str(args, 1)))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("the appliance's transport certificate is not a PEM certificate")
	}
	tr, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("the appliance's transport certificate does not parse: %w", err)
	}
	if tr.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return nil, errors.New("the appliance's transport certificate is not for key encipherment")
	}
	h := crypto.SHA1
	if str(args, 2) == "sha256" {
		h = crypto.SHA256
	}
	env, err := cms.Encrypt(k.pkcs8, tr, cms.AuthEnvelopedAESGCM, h)
	if err != nil {
		return nil, fmt.Errorf("encrypt the key to the transport certificate: %w", err)
	}
	return map[string]any{"envelope": base64.StdEncoding.EncodeToString(env)}, nil
}

func parseCerts(s string) []*x509.Certificate {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// buildPKCS12(handle, certPEM, chainPEM, password, friendlyName, keys) checks that the
// certificate certifies the held key and builds the PKCS#12: AES-256-CBC and PBKDF2-SHA-256 with
// 600,000 iterations, MAC HMAC-SHA-256 (go-pkcs12's Modern2023 shape), the chain included, the
// friendly name on the key and the certificate (package pfx). keys holds the two PBKDF2 keys
// the worker derived from the password with WebCrypto ({iterations, certSalt, certKey,
// keySalt, keyKey}, Uint8Arrays); the MAC key is derived here. Result: {pfx (Uint8Array)}.
func buildPKCS12(args []js.Value) (map[string]any, error) {
	_, k, err := lookup(args)
	if err != nil {
		return nil, err
	}
	certs := parseCerts(str(args, 1))
	if len(certs) != 1 {
		return nil, errors.New("the appliance's answer holds no certificate")
	}
	cert := certs[0]
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := k.key.Public().(equaler); !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("the issued certificate is not for the key made here")
	}
	chain := parseCerts(str(args, 2))
	password, name := str(args, 3), str(args, 4)
	if utf8.RuneCountInString(password) < minPasswordLen {
		return nil, fmt.Errorf("the password must be at least %d characters long", minPasswordLen)
	}
	for _, r := range password {
		if r > 0xFFFF {
			return nil, errors.New("the password cannot contain emoji or other characters beyond the Basic Multilingual Plane")
		}
	}
	// The friendly name is a BMPString: characters beyond it become U+FFFD.
	name = strings.Map(func(r rune) rune {
		if r > 0xFFFF {
			return '\uFFFD'
		}
		return r
	}, name)
	derived, err := derivedKeys(arg(args, 5))
	if err != nil {
		return nil, err
	}
	defer derived.Wipe()
	der, err := pfx.Build(k.key, cert, chain, password, name, derived)
	if err != nil {
		return nil, fmt.Errorf("build the PKCS#12 file: %w", err)
	}
	u := js.Global().Get("Uint8Array").New(len(der))
	js.CopyBytesToJS(u, der)
	return map[string]any{"pfx": u}, nil
}

// forget(handle) clears and drops a held key.
func forget(args []js.Value) (map[string]any, error) {
	h, k, err := lookup(args)
	if err == nil {
		clear(k.pkcs8)
		delete(keys, h)
	}
	return map[string]any{}, nil
}

// derivedKeys reads the worker's PBKDF2 keys (see buildPKCS12), refusing any iteration count
// but pfxIterations.
func derivedKeys(v js.Value) (*pfx.Keys, error) {
	if v.Type() != js.TypeObject || v.Get("iterations").Type() != js.TypeNumber || v.Get("iterations").Int() != pfxIterations {
		return nil, fmt.Errorf("internal error in the page: no PBKDF2 keys of %d iterations for the PKCS#12 file", pfxIterations)
	}
	bytesOf := func(name string) []byte {
		u := v.Get(name)
		if u.Type() != js.TypeObject || !u.InstanceOf(js.Global().Get("Uint8Array")) {
			return nil
		}
		b := make([]byte, u.Length())
		js.CopyBytesToGo(b, u)
		return b
	}
	return &pfx.Keys{Iterations: pfxIterations, CertSalt: bytesOf("certSalt"), CertKey: bytesOf("certKey"),
		KeySalt: bytesOf("keySalt"), KeyKey: bytesOf("keyKey")}, nil
}
