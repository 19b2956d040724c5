package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
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
	db, err := store.Open(cfg.Path(cfg.Database))
	if err != nil {
		return nil, nil, nil, err
	}
	return &escrow.Service{Store: db, Templates: templates}, cfg, func() { db.Close() }, nil
}

func runCodeCreate(args []string) error {
	fs := flag.NewFlagSet("admin enroll-code create", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	email := fs.String("email", "", "mailbox the code enrolls (required)")
	template := fs.String("template", "smime-encryption", "certificate template")
	ttl := fs.Duration("ttl", 0, "validity of the code (default: the configuration's enrollment.code_ttl)")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("admin enroll-code create", pos, 0, "no arguments"); err != nil {
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
	if err != nil {
		return err
	}
	// The code alone goes to standard output, so scripts can capture it.
	fmt.Fprintf(os.Stderr, "enrollment code for %s, template %s, single use, expires %s:\n",
		code.Email, code.Template, code.ExpiresAt.Format(time.RFC3339))
	fmt.Println(code.Secret)
	return nil
}

// runCredentialIssue issues an operator credential locally: the key is made here and written with
// the certificate to --out (mode 0600).
func runCredentialIssue(args []string) error {
	fs := flag.NewFlagSet("admin credential issue", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	role := fs.String("role", "", "admin, officer or auditor (required)")
	name := fs.String("name", "", "the operator's name (required)")
	out := fs.String("out", "", "folder for NAME.pem and NAME-key.pem (required)")
	email := fs.String("email", "", "the operator's own mailbox (keeps an officer from recovering their own keys)")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("admin credential issue", pos, 0, "no arguments"); err != nil {
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

func runPendingList(args []string) error {
	fs := flag.NewFlagSet("admin pending list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	all := fs.Bool("all", false, "include decided requests")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	path := "/api/v1/pending"
	if *all {
		path += "?state=all"
	}
	var list []wire.Pending
	if err := c.call("GET", path, nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(list)
	}
	if len(list) == 0 {
		fmt.Println("no pending requests")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTEMPLATE\tNAME\tSTATE\tCREATED\tKEY FINGERPRINTS (SHA-256)")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Template, p.Name, p.State, p.CreatedAt, strings.Join(p.Fingerprints, " "))
	}
	return tw.Flush()
}

func runPendingDecide(verb string, args []string) error {
	fs := flag.NewFlagSet("admin pending "+verb, flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("admin pending "+verb, pos, 1, "the request ID"); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	if verb == "deny" {
		if err := c.call("POST", "/api/v1/pending/"+pos[0]+"/deny", nil, nil); err != nil {
			return err
		}
		fmt.Printf("request %s denied\n", pos[0])
		return nil
	}
	var issued []wire.Issued
	if err := c.call("POST", "/api/v1/pending/"+pos[0]+"/issue", nil, &issued); err != nil {
		return err
	}
	for _, is := range issued {
		cert, err := pemfile.ParseCertificate(is.Certificate)
		if err != nil {
			return err
		}
		fmt.Printf("issued %s  %s  until %s\n", is.Serial, cert.Subject.CommonName, is.NotAfter)
	}
	return nil
}

func runRecoverySetShow(args []string) error {
	fs := flag.NewFlagSet("admin recovery-set show", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var rs wire.RecoverySet
	if err := c.call("GET", "/api/v1/recovery-set", nil, &rs); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(rs)
	}
	printRecoverySet(rs)
	return nil
}

func printRecoverySet(rs wire.RecoverySet) {
	fmt.Printf("epoch %d: any %d of %d KRAs\n", rs.Epoch, rs.Quorum, len(rs.KRAs))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KRA\tSERIAL\tEXPIRES")
	for _, k := range rs.KRAs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, k.Serial, k.NotAfter)
	}
	tw.Flush()
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

func runRecoverySetSet(args []string) error {
	fs := flag.NewFlagSet("admin recovery-set set", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	quorum := fs.Int("quorum", 0, "how many KRAs must approve a recovery (required)")
	var kras stringList
	fs.Var(&kras, "kra", "serial of a KRA unwrap certificate (repeat, or comma-separate)")
	if _, err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	if *quorum == 0 || len(kras) == 0 {
		return cmdline.UsageError{Msg: "admin recovery-set set: --quorum M and at least one --kra SERIAL are required"}
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var rs wire.RecoverySet
	if err := c.call("POST", "/api/v1/recovery-set", map[string]any{"quorum": *quorum, "kras": kras}, &rs); err != nil {
		return err
	}
	printRecoverySet(rs)
	return nil
}

// localIssuer opens the appliance token for a local command that signs (bootstrap only).
func localIssuer(cfg *config.Config) (*ca.Issuer, func(), error) {
	tok, err := openToken(cfg, nil)
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
	issuer, err := ca.New(signer, caCert)
	if err != nil {
		tok.Close()
		return nil, nil, err
	}
	return issuer, func() { tok.Close() }, nil
}

func runReseal(args []string) error {
	fs := flag.NewFlagSet("admin recovery-set reseal", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	reason := fs.String("reason", "", "why (recorded)")
	complete := fs.String("complete", "", "reseal the records of this approved request")
	if _, err := cmdline.ParseFlags(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	if *complete != "" {
		var out struct {
			Resealed int `json:"resealed"`
		}
		if err := c.call("POST", "/api/v1/reseals/"+*complete+"/complete", nil, &out); err != nil {
			return err
		}
		fmt.Printf("%d record(s) resealed to the current recovery set\n", out.Resealed)
		return nil
	}
	var rec wire.Recovery
	if err := c.call("POST", "/api/v1/reseals", map[string]string{"reason": *reason}, &rec); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "reseal %s opened for %d record(s); the KRAs of their recovery sets approve it with `keyarc recovery approve %s`\n", rec.ID, len(rec.Items), rec.ID)
	fmt.Println(rec.ID)
	return nil
}
