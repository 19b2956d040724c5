package ops

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/policy"
)

// localService opens the state folder's database for the local bootstrap commands (the
// appliance may be running: the store takes turns with it).
func localService(state string) (*escrow.Service, *config.Config, func(), error) {
	cfg, err := config.Load(state)
	if err != nil {
		return nil, nil, nil, err
	}
	templates, err := policy.Templates(cfg.Templates)
	if err != nil {
		return nil, nil, nil, err
	}
	// Opening a missing SQLite file would make an empty archive beside the configuration.
	if !statedir.DatabaseExists(cfg) {
		return nil, nil, nil, fmt.Errorf("no database at %s (run keyarc init, or restore a backup with keyarc restore)", cfg.DatabaseName())
	}
	db, err := statedir.OpenDatabase(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	return &escrow.Service{Store: db, Templates: templates}, cfg, func() { db.Close() }, nil
}

// RunCodeCreate is `keyarc admin enroll-code create` (local on the state folder).
func RunCodeCreate(args []string) error {
	fs := flag.NewFlagSet("admin enroll-code create", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	email := fs.String("email", "", "mailbox the code enrolls (required)")
	template := fs.String("template", "smime-encryption", "certificate template")
	ttl := fs.Duration("ttl", 0, "validity of the code (default: the configuration's enrollment.code_ttl)")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *state == "" || *email == "" {
		return cmdline.UsageError{Msg: "admin enroll-code create: --state DIR and --email ADDRESS are required"}
	}
	ttlSet := false
	fs.Visit(func(f *flag.Flag) { ttlSet = ttlSet || f.Name == "ttl" })
	if ttlSet && *ttl <= 0 {
		return cmdline.UsageError{Msg: fmt.Sprintf("admin enroll-code create: --ttl must be positive, such as 24h (got %s)", *ttl)}
	}
	svc, cfg, done, err := localService(*state)
	if err != nil {
		return err
	}
	defer done()
	if !ttlSet {
		*ttl = cfg.Enrollment.CodeTTL.Duration
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := svc.CreateCode(ctx, *email, *template, *ttl)
	switch {
	// The errors do not repeat what was refused (it goes to logs elsewhere); the operator's
	// own terminal may.
	case errors.Is(err, policy.ErrUnknownTemplate):
		return fmt.Errorf("--template %q: %w", *template, err)
	case errors.Is(err, policy.ErrInvalidMailbox):
		return fmt.Errorf("--email %q: %w", *email, err)
	case err != nil:
		return err
	}
	// The code alone goes to standard output, so scripts can capture it.
	fmt.Fprintf(os.Stderr, "enrollment code for %s, template %s, single use, expires %s:\n",
		code.Email, code.Template, code.ExpiresAt.Format(time.RFC3339))
	fmt.Println(code.Secret)
	return nil
}

// RunCredentialIssue issues an operator credential locally: the key is made here and written with
// the certificate to --out (mode 0600).
func RunCredentialIssue(args []string) error {
	fs := flag.NewFlagSet("admin credential issue", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	role := fs.String("role", "", "admin, officer or auditor (required)")
	name := fs.String("name", "", "the operator's name (required)")
	out := fs.String("out", "", "folder for NAME.pem and NAME-key.pem (required)")
	email := fs.String("email", "", "the operator's own mailbox (keeps an officer from recovering their own keys)")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *state == "" || *role == "" || *name == "" || *out == "" {
		return cmdline.UsageError{Msg: "admin credential issue: --state, --role, --name and --out are required"}
	}
	svc, cfg, done, err := localService(*state)
	if err != nil {
		return err
	}
	defer done()
	issuer, closeToken, err := localIssuer(cfg)
	if err != nil {
		return err
	}
	defer closeToken()
	svc.Issuer = issuer
	certPath, err := issueCredentialFiles(svc, policy.Role(*role), *name, *email, *out)
	if err != nil {
		return err
	}
	fmt.Println(certPath)
	return nil
}

// issueCredentialFiles issues a credential and writes DIR/NAME.pem and DIR/NAME-key.pem.
func issueCredentialFiles(svc *escrow.Service, role policy.Role, name, mailbox, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if pemfile.Exists(certPath) || pemfile.Exists(keyPath) {
		return "", fmt.Errorf("%s or %s exists; not overwritten", certPath, keyPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	issued, err := svc.IssueCredential(ctx, role, name, mailbox, key.Public())
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	defer clear(der)
	if err := pemfile.Write(keyPath, "PRIVATE KEY", der, 0o600); err != nil {
		return "", err
	}
	return certPath, pemfile.Write(certPath, "CERTIFICATE", issued.Certificate.Raw, 0o644)
}

// localIssuer opens the appliance token for a local command that signs (bootstrap only).
func localIssuer(cfg *config.Config) (*ca.Issuer, func(), error) {
	tok, err := statedir.OpenToken(cfg, nil)
	if err != nil {
		return nil, nil, err
	}
	signer, err := tok.Signer(cfg.Token.CAKey)
	if err != nil {
		tok.Close()
		return nil, nil, err
	}
	caCert, err := pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
	if err != nil {
		tok.Close()
		return nil, nil, err
	}
	// The same profile as serve's: the configured public URLs and policy OID.
	opts, err := cfg.CAOptions()
	if err != nil {
		tok.Close()
		return nil, nil, err
	}
	issuer, err := ca.New(signer, caCert, opts...)
	if err != nil {
		tok.Close()
		return nil, nil, err
	}
	return issuer, func() { tok.Close() }, nil
}
