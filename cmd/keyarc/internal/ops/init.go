package ops

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cli"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
	"github.com/keyarc/keyarc/softhsm"
)

// Development tokens made by `keyarc init --dev`.
var (
	devApplianceToken = "keyarc"
	devKRATokens      = []string{"kra1", "kra2", "kra3"}
)

const (
	transportValidity = 825 * 24 * time.Hour
	tlsValidity       = 397 * 24 * time.Hour
)

// RunInit is `keyarc init`: the tokens' keys, the CA, the configuration (--dev: SoftHSM
// tokens, the recovery set and development credentials too).
func RunInit(args []string) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	dev := fs.Bool("dev", false, "provision SoftHSM development tokens under the state folder first")
	caKey := fs.String("ca-key", "p256", "CA key algorithm: p256, p384, rsa2048, rsa3072, rsa4096")
	tokenURI := fs.String("token", "", "PKCS#11 URI of the appliance token (without --dev)")
	externalRoot := fs.Bool("external-root", false, "write a CSR (ca.csr) for an external root instead of a self-signed CA certificate")
	caName := fs.String("ca-name", "keyarc Root CA", "common name of the CA")
	org := fs.String("org", defaultOrg, "organisation name (O) of the CA subject")
	country := fs.String("country", defaultCountry, "two-letter ISO 3166 country code (C) of the CA subject; XX when none applies")
	publicURL := fs.String("public-url", ca.DefaultPublicURL, "plain-HTTP base URL written into certificates: CRL at URL/crl/ca.crl, OCSP at URL/ocsp, CA certificate at URL/ca.crt (a public DNS name in production)")
	dnsNames := fs.String("tls-names", "localhost", "comma-separated DNS names for the appliance's TLS certificate")
	database := fs.String("database", "", "the archive: a SQLite file (default keyarc.db in the state folder) or the postgres:// URL of a PostgreSQL database shared by several nodes (unix socket, or TCP with sslmode=verify-full; no password in it)")
	dbPassword := fs.String("database-password-source", "", "where the PostgreSQL password is read: file:PATH or env:NAME")
	if err := cmdline.ParseStateOnly(fs, args, state); err != nil {
		return err
	}
	alg := hsm.Algorithm(*caKey)
	switch alg {
	case "p256", "p384", "rsa2048", "rsa3072", "rsa4096":
	default:
		return cmdline.UsageError{Msg: fmt.Sprintf("init: --ca-key %q: choose p256, p384, rsa2048, rsa3072 or rsa4096", *caKey)}
	}
	*country = strings.ToUpper(strings.TrimSpace(*country))
	if !validCountry(*country) {
		return cmdline.UsageError{Msg: fmt.Sprintf("init: --country %q: give a two-letter ISO 3166 code such as DE or US (XX when none applies)", *country)}
	}
	if strings.TrimSpace(*org) == "" || len(*org) > 64 {
		return cmdline.UsageError{Msg: "init: --org: give the organisation name of the CA, 1 to 64 characters"}
	}
	if len(splitList(*dnsNames)) == 0 {
		return cmdline.UsageError{Msg: "init: --tls-names: give at least one DNS name for the appliance's TLS certificate"}
	}
	if *dev == (*tokenURI != "") {
		return cmdline.UsageError{Msg: "init: give either --dev (SoftHSM development tokens) or --token URI (a real token)"}
	}
	dir, err := filepath.Abs(*state)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state folder: %w", err)
	}
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }

	var cfg *config.Config
	created := false
	if pemfile.Exists(filepath.Join(dir, config.Name)) {
		if cfg, err = config.Load(dir); err != nil {
			return err
		}
		say("exists   %s (kept as it is)", filepath.Join(dir, config.Name))
		if flagSet(fs, "database") && *database != cfg.Database {
			say("note     database stays %s: edit %s to change it", cfg.DatabaseName(), filepath.Join(dir, config.Name))
		}
		if flagSet(fs, "public-url") && *publicURL != string(cfg.PublicURL) {
			say("note     public_url stays %s: certificates already point there; edit %s to change it", cfg.PublicURL, filepath.Join(dir, config.Name))
		}
		if *tokenURI != "" && !sameTokenURI(*tokenURI, cfg.Token.URI) {
			say("note     the token stays %s: edit %s to change it", cfg.Token.URI, filepath.Join(dir, config.Name))
		}
		if *dev && cfg.Token.SoftHSMConf == "" {
			say("note     the token stays %s (not a development token): edit %s to change it", cfg.Token.URI, filepath.Join(dir, config.Name))
		}
		if *dev && cfg.Token.SoftHSMConf != "" {
			// A second `init --dev` still makes any development token that is missing.
			if _, _, err := provisionDev(dir, say); err != nil {
				return err
			}
		}
	} else {
		cfg = config.DefaultAt(dir)
		if *dev {
			uri, conf, err := provisionDev(dir, say)
			if err != nil {
				return err
			}
			cfg.Token.URI, cfg.Token.SoftHSMConf = uri, conf
		} else {
			cfg.Token.URI = *tokenURI
		}
		cfg.PublicURL = config.PublicURL(*publicURL)
		if *database != "" {
			cfg.Database = *database
		}
		cfg.DatabasePasswordSource = *dbPassword
		if err := cfg.Validate(); err != nil {
			return err
		}
		if err := config.Write(dir, cfg); err != nil {
			return fmt.Errorf("write configuration: %w", err)
		}
		say("created  %s", filepath.Join(dir, config.Name))
		created = true
	}
	tok, err := statedir.OpenToken(cfg, nil)
	if err != nil {
		if created {
			// Nothing else was made: a run with a corrected --token starts afresh instead
			// of keeping this configuration's token.
			os.Remove(filepath.Join(dir, config.Name))
			say("removed  %s (the token could not be opened)", filepath.Join(dir, config.Name))
		}
		return err
	}
	defer tok.Close()

	keys := []struct {
		label string
		alg   hsm.Algorithm
		usage hsm.Usage
		what  string
	}{
		{cfg.Token.CAKey, alg, hsm.UsageSign, "CA signing key"},
		{cfg.Token.TransportKey, "rsa2048", hsm.UsageDecrypt, "transport key"},
		{cfg.Token.AuditKey, "p256", hsm.UsageSign, "audit key"},
	}
	for _, k := range keys {
		_, err := tok.GenerateKey(k.label, k.alg, k.usage)
		switch {
		case errors.Is(err, hsm.ErrKeyExists):
			say("exists   %s %q in token (never overwritten)", k.what, k.label)
		case err != nil:
			return fmt.Errorf("generate %s: %w", k.what, err)
		default:
			say("created  %s %q in token (%s)", k.what, k.label, k.alg)
		}
	}
	caSigner, err := tok.Signer(cfg.Token.CAKey)
	if err != nil {
		return err
	}

	subject := pkix.Name{CommonName: *caName, Organization: []string{*org}, Country: []string{*country}}
	caPath := cfg.Path(cfg.CA.Certificate)
	if !pemfile.Exists(caPath) {
		if *externalRoot {
			csr, err := ca.CSR(caSigner, subject)
			if err != nil {
				return err
			}
			csrPath := filepath.Join(dir, "ca.csr")
			if err := pemfile.Write(csrPath, "CERTIFICATE REQUEST", csr, 0o644); err != nil {
				return err
			}
			say("created  %s: have it signed by your root, save the certificate as %s, and run init again", csrPath, caPath)
			return nil
		}
		root, err := ca.SelfSignedRoot(caSigner, subject, time.Now().Add(-time.Minute), statedir.CAValidity)
		if err != nil {
			return err
		}
		if err := pemfile.Write(caPath, "CERTIFICATE", root.Raw, 0o644); err != nil {
			return err
		}
		say("created  %s (self-signed, %s)", caPath, alg)
	} else {
		say("exists   %s", caPath)
	}
	caCert, err := pemfile.ReadCertificate(caPath)
	if err != nil {
		return err
	}
	caOpts, err := cfg.CAOptions()
	if err != nil {
		return err
	}
	issuer, err := ca.New(caSigner, caCert, caOpts...)
	if err != nil {
		return fmt.Errorf("%s: %w", caPath, err)
	}

	// The archive opens before the appliance's own certificates are issued: each is stored,
	// with its audit entry, before its file is written, so that the appliance answers for it
	// (OCSP, CRL, revocation) like for any other. If init stops in between, the file is
	// missing and the next run issues another (the first stays on record).
	db, err := statedir.OpenDatabase(cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	say("ready    %s", cfg.DatabaseName())
	svc := &escrow.Service{Store: db, Issuer: issuer}
	ctx := escrow.WithActor(context.Background(), "keyarc init")

	// The transport certificate: clients encrypt their private keys to it.
	trPath := cfg.Path(cfg.Transport.Certificate)
	if !pemfile.Exists(trPath) {
		dec, err := tok.Decrypter(cfg.Token.TransportKey)
		if err != nil {
			return err
		}
		issued, err := svc.IssueAppliance(ctx, escrow.ApplianceRequest{
			Purpose:   escrow.ApplianceTransport,
			PublicKey: dec.Public(),
			Subject:   pkix.Name{CommonName: *caName + " key transport", Organization: subject.Organization},
			KeyUsage:  x509.KeyUsageKeyEncipherment,
			Validity:  transportValidity,
		})
		if err != nil {
			return fmt.Errorf("issue transport certificate: %w", err)
		}
		if err := pemfile.Write(trPath, "CERTIFICATE", issued.Certificate.Raw, 0o644); err != nil {
			return err
		}
		say("created  %s (serial %s)", trPath, issued.Serial)
	} else {
		say("exists   %s", trPath)
	}

	if _, err := statedir.EnsureAuditCertificate(ctx, cfg, tok, svc, say); err != nil {
		return err
	}
	// The delegated OCSP responder: its key in the token and its short-lived certificate.
	if _, _, err := statedir.EnsureOCSPResponder(ctx, cfg, tok, svc, time.Now(), say); err != nil {
		return err
	}

	// The appliance's TLS key lives in a file, not in the token: the listener must keep
	// answering (with 503) while the token is unreachable.
	tlsCert, tlsKey := cfg.Path(cfg.TLS.Certificate), cfg.Path(cfg.TLS.Key)
	if !pemfile.Exists(tlsCert) || !pemfile.Exists(tlsKey) {
		serial, err := makeTLS(ctx, svc, tlsCert, tlsKey, splitList(*dnsNames))
		if err != nil {
			return err
		}
		say("created  %s, %s (serial %s)", tlsCert, tlsKey, serial)
	} else {
		say("exists   %s", tlsCert)
	}

	if err := recordAppliance(ctx, svc, say, map[escrow.AppliancePurpose]string{
		escrow.ApplianceTransport: trPath, escrow.ApplianceAudit: cfg.Path(statedir.AuditCertName),
		escrow.ApplianceOCSP: cfg.Path(statedir.OCSPCertName), escrow.ApplianceTLS: tlsCert,
	}); err != nil {
		return err
	}

	if *dev {
		templates, err := policy.Templates(cfg.Templates)
		if err != nil {
			return err
		}
		svc.Templates = templates
		if err := bootstrapDev(cfg, svc, say); err != nil {
			return err
		}
	}
	say("\nStart the appliance with: keyarc serve --state %s", dir)
	return nil
}

// provisionDev makes the SoftHSM configuration and development tokens under DIR/softhsm,
// keeping any that exist, and returns the appliance token's URI and the SoftHSM config path.
func provisionDev(dir string, say func(string, ...any)) (uri, conf string, err error) {
	in, err := softhsm.Provision(filepath.Join(dir, "softhsm"))
	if err != nil {
		return "", "", err
	}
	if err := in.UseInProcess(); err != nil {
		return "", "", err
	}
	var app *softhsm.Token
	for _, label := range append([]string{devApplianceToken}, devKRATokens...) {
		t, err := in.Token(label)
		if errors.Is(err, softhsm.ErrTokenNotFound) {
			if t, err = in.InitToken(label); err != nil {
				return "", "", err
			}
			say("created  SoftHSM token %q (PIN in %s)", label, t.PINFile)
		} else if err != nil {
			return "", "", err
		} else {
			say("exists   SoftHSM token %q", label)
		}
		if label == devApplianceToken {
			app = t
		}
	}
	return config.TokenURI(app.Label, in.Module, app.PINFile), in.ConfPath, nil
}

// makeTLS makes the appliance's TLS key (P-256, in a file) and has svc issue and record its
// certificate, then writes the key and the certificate; it returns the certificate's serial.
func makeTLS(ctx context.Context, svc *escrow.Service, certPath, keyPath string, names []string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	issued, err := svc.IssueAppliance(ctx, escrow.ApplianceRequest{
		Purpose:     escrow.ApplianceTLS,
		PublicKey:   key.Public(),
		Subject:     pkix.Name{CommonName: names[0]},
		DNSNames:    names,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		Validity:    tlsValidity,
	})
	if err != nil {
		return "", fmt.Errorf("issue TLS certificate: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	err = pemfile.Write(keyPath, "PRIVATE KEY", der, 0o600)
	clear(der)
	if err != nil {
		return "", err
	}
	return issued.Serial, pemfile.Write(certPath, "CERTIFICATE", issued.Certificate.Raw, 0o644)
}

// recordAppliance puts on record the appliance's own certificates that this CA signed before
// they were stored (a state folder made by an older keyarc), so that they too are answered by
// OCSP and checked; those stored already are left alone. A certificate another CA signed (a
// TLS certificate put in place by an operator) is not this CA's to record.
func recordAppliance(ctx context.Context, svc *escrow.Service, say func(string, ...any), files map[escrow.AppliancePurpose]string) error {
	for _, purpose := range []escrow.AppliancePurpose{escrow.ApplianceTransport, escrow.ApplianceAudit, escrow.ApplianceOCSP, escrow.ApplianceTLS} {
		path := files[purpose]
		c, err := pemfile.ReadCertificate(path)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if c.CheckSignatureFrom(svc.Issuer.Certificate()) != nil {
			continue
		}
		stored, err := svc.RecordAppliance(ctx, purpose, c)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if stored {
			say("recorded %s (serial %s, issued before the appliance's own certificates were stored)", path, store.FormatSerial(c.SerialNumber))
		}
	}
	return nil
}

// Defaults of the CA subject: lints (and people) expect an organisation and a country in a
// CA's name; XX is the code the CA/Browser Forum requirements allow when none applies.
const (
	defaultOrg     = "keyarc"
	defaultCountry = "XX"
)

func validCountry(c string) bool {
	return len(c) == 2 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' && c[1] <= 'Z'
}

// sameTokenURI tells whether two PKCS#11 URIs name the same token, however they are spelled.
func sameTokenURI(a, b string) bool {
	ua, erra := hsm.ParseURI(a)
	ub, errb := hsm.ParseURI(b)
	if erra != nil || errb != nil {
		return a == b
	}
	return ua.String() == ub.String()
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// devRoles are the operator credentials a development install gets.
var devRoles = []policy.Role{policy.RoleAdmin, policy.RoleOfficer, policy.RoleAuditor}

// bootstrapDev gives a development install what production sets up step by step: operator
// credentials, the three KRAs (keys in their own tokens, certificates issued), and a 2-of-3
// recovery set. Whatever exists is kept.
func bootstrapDev(cfg *config.Config, svc *escrow.Service, say func(string, ...any)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	creds := filepath.Join(cfg.Dir(), "credentials")
	for _, role := range devRoles {
		path := filepath.Join(creds, string(role)+".pem")
		if pemfile.Exists(path) {
			say("exists   %s", path)
			continue
		}
		if _, err := issueCredentialFiles(svc, role, string(role), "", creds); err != nil {
			return fmt.Errorf("%s credential: %w", role, err)
		}
		say("created  %s (role %s)", path, role)
	}
	in, err := softhsm.Provision(filepath.Join(cfg.Dir(), "softhsm"))
	if err != nil {
		return err
	}
	var unwrapSerials []string
	for _, name := range devKRATokens {
		unwrapPath := filepath.Join(creds, name+"-unwrap.pem")
		if pemfile.Exists(unwrapPath) {
			say("exists   %s", unwrapPath)
			c, err := pemfile.ReadCertificate(unwrapPath)
			if err != nil {
				return err
			}
			unwrapSerials = append(unwrapSerials, store.FormatSerial(c.SerialNumber))
			continue
		}
		t, err := in.Token(name)
		if err != nil {
			return err
		}
		tok, err := hsm.Open(config.TokenURI(t.Label, in.Module, t.PINFile), hsm.Options{MaxSessions: 2})
		if err != nil {
			return fmt.Errorf("KRA token %q: %w", name, err)
		}
		unwrap, auth, err := cli.KRAKeys(tok, say)
		if err != nil {
			tok.Close()
			return err
		}
		issued, err := svc.IssueKRA(ctx, name, unwrap.Public(), auth.Public())
		tok.Close()
		if err != nil {
			return fmt.Errorf("issue KRA %q: %w", name, err)
		}
		if err := cli.SaveKRACertificates(creds, name, pemfile.Encode(issued[0].Certificate), pemfile.Encode(issued[1].Certificate), say); err != nil {
			return err
		}
		unwrapSerials = append(unwrapSerials, issued[0].Serial)
	}
	if rs, err := svc.CurrentRecoverySet(ctx); err == nil {
		say("exists   recovery set epoch %d (%d of %d)", rs.Epoch, rs.Quorum, len(rs.KRAs))
		return nil
	} else if !errors.Is(err, escrow.ErrNoRecoverySet) {
		return err
	}
	rs, err := svc.SetRecoverySet(ctx, 2, unwrapSerials, "keyarc init --dev")
	if err != nil {
		return err
	}
	say("created  recovery set epoch %d: any %d of %v", rs.Epoch, rs.Quorum, rs.Names)
	return nil
}
