package cli

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/cms"
)

// RunEnroll is the whole client side of an enrollment: the key is made here, sent to the
// appliance only inside a CMS envelope to its transport certificate (for archiving templates),
// and written with the certificate to --out.
func RunEnroll(args []string) error {
	fs := flag.NewFlagSet("enroll", flag.ContinueOnError)
	var cf clientFlags
	cf.registerServer(fs)
	template := fs.String("template", "smime-encryption", "certificate template")
	email := fs.String("email", "", "your mailbox (required)")
	code := fs.String("code", "", "your one-time enrollment code (required; or --code-file)")
	codeFile := fs.String("code-file", "", "file holding the enrollment code")
	out := fs.String("out", "", "folder for key.pem, cert.pem and chain.pem (required)")
	keyType := fs.String("key-type", "rsa2048", "key: "+strings.Join(escrow.KeyTypes, ", "))
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *codeFile != "" {
		b, err := os.ReadFile(*codeFile)
		if err != nil {
			return err
		}
		*code = strings.TrimSpace(string(b))
	}
	if *email == "" || *code == "" || *out == "" {
		return cmdline.UsageError{Msg: "enroll: --email, --code (or --code-file) and --out are required"}
	}
	keyPath, certPath, chainPath := filepath.Join(*out, "key.pem"), filepath.Join(*out, "cert.pem"), filepath.Join(*out, "chain.pem")
	for _, p := range []string{keyPath, certPath, chainPath} {
		if pemfile.Exists(p) {
			return fmt.Errorf("%s exists; choose another --out", p)
		}
	}
	c, err := cf.dial(false)
	if err != nil {
		return err
	}
	defer c.close()

	var templates []wire.Template
	if err := c.call("GET", "/api/v1/templates", nil, &templates); err != nil {
		return err
	}
	var tmpl *wire.Template
	for i := range templates {
		if templates[i].Name == *template {
			tmpl = &templates[i]
		}
	}
	if tmpl == nil {
		return fmt.Errorf("the appliance has no template %q", *template)
	}

	key, err := newKey(*keyType)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: *email}, EmailAddresses: []string{*email},
	}, key)
	if err != nil {
		return err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	defer clear(pkcs8)
	// The output files are made before the code is spent: a --out that cannot be written
	// (read-only, full, a file in the way) must not cost the code and the certificate.
	outFiles, err := prepareFiles(*out, []outFile{{keyPath, 0o600}, {certPath, 0o644}, {chainPath, 0o644}})
	if err != nil {
		return fmt.Errorf("enroll: --out %s cannot be written: %w (the code was not used)", *out, err)
	}
	issuedOK := false
	defer func() {
		if !issuedOK {
			outFiles.remove()
		}
	}()
	req := wire.EnrollRequest{Template: *template, CSR: base64.StdEncoding.EncodeToString(csr)}
	if tmpl.Archive {
		env, err := c.sealToTransport(pkcs8)
		if err != nil {
			return err
		}
		req.EncryptedKey = base64.StdEncoding.EncodeToString(env)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequest("POST", c.base+"/api/v1/enroll", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.SetBasicAuth(*email, *code)
	var issued wire.Issued
	if err := c.do(hreq, &issued); err != nil {
		return err
	}
	// Issued: what is written stays, even when a later write fails.
	issuedOK = true
	for _, f := range []struct {
		path string
		data []byte
	}{{keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})}, {certPath, []byte(issued.Certificate)}, {chainPath, []byte(issued.Chain)}} {
		if err := outFiles.fill(f.path, f.data); err != nil {
			return fmt.Errorf("enroll: certificate %s was issued, but writing it to %s failed: %w", issued.Serial, *out, err)
		}
	}
	archived := "not archived"
	if issued.RecordID != "" {
		archived = "private key archived as record " + issued.RecordID
	}
	fmt.Fprintf(os.Stderr, "issued %s for %s until %s; %s\n", issued.Serial, *email, issued.NotAfter, archived)
	fmt.Println(certPath)
	return nil
}

// sealToTransport fetches the transport certificate, checks that the appliance's CA issued it for
// key transport, and encrypts pkcs8 to it in a CMS AuthEnvelopedData (AES-256-GCM).
func (c *client) sealToTransport(pkcs8 []byte) ([]byte, error) {
	resp, err := c.http.Get(c.base + "/api/v1/transport-certificate")
	if err != nil {
		return nil, fmt.Errorf("fetch transport certificate: %w", err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(nil, resp.Body, 64<<10)); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch transport certificate: HTTP %d", resp.StatusCode)
	}
	tr, err := pemfile.ParseCertificate(buf.String())
	if err != nil {
		return nil, err
	}
	roots := c.http.Transport.(*http.Transport).TLSClientConfig.RootCAs
	if _, err := tr.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the transport certificate does not chain to the CA: %w", err)
	}
	if tr.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return nil, fmt.Errorf("the transport certificate is not for key encipherment")
	}
	h := crypto.SHA1
	if resp.Header.Get("Keyarc-Transport-OAEP") == "sha256" {
		h = crypto.SHA256
	}
	return cms.Encrypt(pkcs8, tr, cms.AuthEnvelopedAESGCM, h)
}

func newKey(kind string) (crypto.Signer, error) {
	k, err := escrow.NewKey(kind)
	if errors.Is(err, escrow.ErrKeyType) {
		return nil, cmdline.UsageError{Msg: "--key-type: " + err.Error()}
	}
	return k, err
}
