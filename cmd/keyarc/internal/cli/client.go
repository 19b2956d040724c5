package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/softhsm"
)

// Labels of a KRA's keys in the KRA's own token.
const (
	kraUnwrapLabel = "kra-unwrap"
	kraAuthLabel   = "kra-auth"
)

// clientFlags are the connection options every client subcommand takes: either a development
// install (--state DIR --as IDENTITY) or explicit server, CA and credential.
type clientFlags struct {
	state    string
	as       string
	server   string
	cacert   string
	cert     string
	key      string
	tokenLbl string
	pinFile  string
	module   string
}

// register adds the connection flags of a client command that authenticates as an operator.
func (c *clientFlags) register(fs *flag.FlagSet) {
	c.registerServer(fs)
	fs.StringVar(&c.as, "as", "", "development `IDENTITY`: admin, officer, auditor, kra1, kra2 or kra3")
	fs.StringVar(&c.cert, "cert", "", "client certificate `FILE` (PEM) for mutual TLS")
	fs.StringVar(&c.key, "key", "", "client private key `FILE` (PEM PKCS#8) for mutual TLS")
}

// registerServer adds the flags that locate the appliance, for commands that connect
// anonymously.
func (c *clientFlags) registerServer(fs *flag.FlagSet) {
	fs.StringVar(&c.state, "state", "", "development install: the state folder `DIR` (finds server, CA and credentials)")
	fs.StringVar(&c.server, "server", "", "appliance `URL`, e.g. https://keyarc.example.org:8443 (default with --state: where its serve listens)")
	fs.StringVar(&c.cacert, "cacert", "", "CA certificate `FILE` (PEM) that issued the appliance's TLS certificate")
}

// registerToken adds the flags of a KRA's own token, for the commands a KRA runs.
func (c *clientFlags) registerToken(fs *flag.FlagSet) {
	fs.StringVar(&c.tokenLbl, "token-label", "", "KRA: the `LABEL` of your token")
	fs.StringVar(&c.pinFile, "pin-file", "", "KRA: `FILE` holding your token's PIN")
	fs.StringVar(&c.module, "module", "", "KRA: PKCS#11 module `PATH` (default: SoftHSM)")
}

// client is a connection to the appliance.
type client struct {
	base  string
	http  *http.Client
	token *hsm.Token // a KRA's token, when the identity lives in one
}

func (c *client) close() {
	if c.token != nil {
		c.token.Close()
	}
}

// devConfig reads a development install's configuration.
func (c *clientFlags) devConfig() (*config.Config, error) {
	if c.state == "" {
		return nil, nil
	}
	return config.Load(c.state)
}

// kraToken opens the KRA's token named by the flags (or by --state/--as).
func (c *clientFlags) kraToken() (*hsm.Token, error) {
	label, pinFile, module := c.tokenLbl, c.pinFile, c.module
	if c.state != "" && strings.HasPrefix(c.as, "kra") && label == "" {
		in, err := softhsm.Provision(filepath.Join(c.state, "softhsm"))
		if err != nil {
			return nil, err
		}
		if err := in.UseInProcess(); err != nil {
			return nil, err
		}
		t, err := in.Token(c.as)
		if err != nil {
			return nil, err
		}
		label, pinFile, module = t.Label, t.PINFile, in.Module
	}
	if label == "" || pinFile == "" {
		return nil, cmdline.UsageError{Msg: "a KRA needs --token-label and --pin-file (or --state DIR --as kraN)"}
	}
	if module == "" {
		m, err := softhsm.ModulePath()
		if err != nil {
			return nil, fmt.Errorf("--module is required: %w", err)
		}
		module = m
	}
	tok, err := hsm.Open(config.TokenURI(label, module, pinFile), hsm.Options{MaxSessions: 2})
	if err != nil {
		if errors.Is(err, hsm.ErrPINIncorrect) {
			return nil, fmt.Errorf("token %q refused the PIN in %s; nothing was tried again (a token locks after repeated failures)", label, pinFile)
		}
		return nil, err
	}
	return tok, nil
}

// dial builds the HTTPS client. withIdentity false connects anonymously (for example to submit a
// KRA enrollment before the KRA has a certificate).
func (c *clientFlags) dial(withIdentity bool) (*client, error) {
	cfg, err := c.devConfig()
	if err != nil {
		return nil, err
	}
	server, cacert, certFile, keyFile := c.server, c.cacert, c.cert, c.key
	if cfg != nil {
		if server == "" {
			// A running serve records where it listens; the configuration's listen is the
			// fallback for an appliance started by other means.
			rec, err := config.ReadServeRecord(cfg.Dir())
			switch {
			case err == nil:
				server = rec.URL
			case errors.Is(err, os.ErrNotExist):
				server = "https://" + config.DialAddr(cfg.Listen)
			default:
				return nil, err
			}
		}
		if cacert == "" {
			cacert = cfg.Path(cfg.CA.Certificate)
		}
		if withIdentity && c.as != "" && !strings.HasPrefix(c.as, "kra") && certFile == "" {
			certFile = filepath.Join(cfg.Dir(), "credentials", c.as+".pem")
			keyFile = filepath.Join(cfg.Dir(), "credentials", c.as+"-key.pem")
		}
	}
	if server == "" || cacert == "" {
		return nil, cmdline.UsageError{Msg: "give --server URL and --cacert FILE, or --state DIR of a development install"}
	}
	if err := checkServer(server); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	caCerts, err := pemfile.ReadCertificates(cacert)
	if err != nil {
		return nil, err
	}
	for _, ca := range caCerts {
		pool.AddCert(ca)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	cl := &client{base: strings.TrimRight(server, "/")}
	if withIdentity {
		isKRA := c.tokenLbl != "" || strings.HasPrefix(c.as, "kra")
		switch {
		case isKRA:
			tok, err := c.kraToken()
			if err != nil {
				return nil, err
			}
			cl.token = tok
			signer, err := tok.Signer(kraAuthLabel)
			if err != nil {
				cl.close()
				return nil, fmt.Errorf("KRA auth key: %w", err)
			}
			authCert := certFile
			if authCert == "" && cfg != nil {
				authCert = filepath.Join(cfg.Dir(), "credentials", c.as+"-auth.pem")
			}
			if authCert == "" {
				cl.close()
				return nil, cmdline.UsageError{Msg: "a KRA needs --cert (its auth certificate)"}
			}
			cert, err := pemfile.ReadCertificate(authCert)
			if err != nil {
				cl.close()
				return nil, err
			}
			tlsCfg.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: signer, Leaf: cert}}
		case certFile != "":
			if c.as != "" && c.cert == "" && !pemfile.Exists(certFile) {
				return nil, cmdline.UsageError{Msg: fmt.Sprintf("--as %s: there is no operator %q in %s (no %s); issue one with keyarc admin credential issue, or name admin, officer or auditor",
					c.as, c.as, filepath.Dir(certFile), filepath.Base(certFile))}
			}
			cert, err := pemfile.ReadCertificate(certFile)
			if err != nil {
				return nil, err
			}
			key, err := pemfile.ReadPrivateKey(keyFile)
			if err != nil {
				return nil, err
			}
			tlsCfg.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}
		}
	}
	cl.http = &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	return cl, nil
}

// checkServer refuses a --server that is not an https:// URL of a host: the CLI sends
// credentials, enrollment codes and keys, never over plain HTTP.
func checkServer(server string) error {
	u, err := url.Parse(server)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return cmdline.UsageError{Msg: fmt.Sprintf("--server %q is not a URL: give https://HOST:PORT", server)}
	}
	if u.Scheme != "https" {
		return cmdline.UsageError{Msg: fmt.Sprintf("--server %q: the appliance is reached over HTTPS only (enrollment codes, credentials and keys never travel in clear): give https://%s", server, u.Host)}
	}
	return nil
}

// HTTPClient is an HTTPS client of the appliance at server (or, when server is empty, where
// the development install in the state folder serves) that presents the state's development
// credential of the operator as ("admin", "officer", "auditor"). Its errors are those of
// reading the configuration and the credential files.
func HTTPClient(state, as, server string) (*http.Client, error) {
	cf := clientFlags{state: state, as: as, server: server}
	c, err := cf.dial(true)
	if err != nil {
		return nil, err
	}
	return c.http, nil
}

// apiError is a refusal from the appliance.
type apiError struct {
	status int
	msg    string
	// existing are the revocations a 409 of POST /api/v1/revocations carries.
	existing []wire.Revocation
}

func (e *apiError) Error() string {
	return fmt.Sprintf("appliance refused (HTTP %d): %s", e.status, e.msg)
}

// call sends a JSON request and decodes the JSON answer into out (when not nil).
func (c *client) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.do(req, out)
}

func (c *client) do(req *http.Request, out any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("connect to the appliance at %s (is keyarc serve running?): %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e wire.AlreadyRevoked
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &apiError{status: resp.StatusCode, msg: e.Error, existing: e.Existing}
		}
		return &apiError{status: resp.StatusCode, msg: strings.TrimSpace(string(b))}
	}
	if out == nil {
		return nil
	}
	if p, ok := out.(*[]byte); ok {
		*p = b
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the appliance's answer to %s %s is not what this client reads: %w", req.Method, req.URL.Path, wire.DecodeError(err))
	}
	return nil
}

// printJSON writes v as indented JSON on standard output.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
