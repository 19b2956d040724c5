// Package statedir holds what the server and the local operations share about a state folder:
// its lock, the appliance token it names, the audit trail's files (certificate and head) and
// the consistency check of its archive.
//
// It must not import the HTTP server, the client commands or the local operations; they
// import it. Its functions keep no state of their own and are safe for concurrent use; the
// lock is a kernel lock on a file, held as long as the returned file is open.
package statedir

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"os"
	"syscall"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
)

// Files of the audit trail in the state folder. The head file lives outside the database on
// purpose: a database restored from an older backup, or cut short, no longer reaches it. Keep a
// copy of it (and of audit.pem) somewhere the database's backups do not go.
const (
	AuditCertName = "audit.pem"       // the audit key's certificate, issued by the CA
	AuditHeadName = "audit-head.json" // the latest signed checkpoint
)

// CAValidity is the validity of the CA certificate `keyarc init` makes, and the longest the
// audit certificate may have.
const CAValidity = 10 * 365 * 24 * time.Hour

// LockName is the lock `keyarc serve` holds on its state folder.
const LockName = "keyarc.lock"

// LockFile is the lock file `keyarc serve` takes in the state folder of cfg: [LockName] on a
// SQLite archive (one process per file), keyarc-NODE.lock on PostgreSQL, where several nodes
// may share one state folder on one machine (`make cluster`) but a node name serves once.
func LockFile(cfg *config.Config) string {
	if cfg.IsPostgres() && cfg.Node != "" {
		return "keyarc-" + url.PathEscape(cfg.Node) + ".lock"
	}
	return LockName
}

// Lock takes the state folder's lock ([LockFile]) without waiting; the lock lasts as long
// as the returned file is open (the kernel drops it if the process dies).
func Lock(cfg *config.Config) (*os.File, error) {
	f, err := os.OpenFile(cfg.Path(LockFile(cfg)), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if LockFile(cfg) != LockName {
			return nil, fmt.Errorf("node %q already serves from the state folder %s; stop it first, or give this one another --node", cfg.Node, cfg.Dir())
		}
		return nil, fmt.Errorf("the state folder %s is in use by a running keyarc serve; stop it first", cfg.Dir())
	}
	return f, nil
}

// OpenToken opens the appliance token of cfg (exporting SOFTHSM2_CONF first on a
// development install, and P11_KIT_SERVER_ADDRESS for a token behind `p11-kit server`); opts, when given, replaces the configuration's pool settings.
func OpenToken(cfg *config.Config, opts *hsm.Options) (*hsm.Token, error) {
	if cfg.Token.SoftHSMConf != "" {
		if err := os.Setenv("SOFTHSM2_CONF", cfg.Path(cfg.Token.SoftHSMConf)); err != nil {
			return nil, err
		}
	}
	if cfg.Token.P11KitServer != "" {
		if err := os.Setenv("P11_KIT_SERVER_ADDRESS", "unix:path="+cfg.Path(cfg.Token.P11KitServer)); err != nil {
			return nil, err
		}
	}
	o := hsm.Options{MaxSessions: cfg.Token.MaxSessions, PoolWaitTimeout: cfg.Token.PoolWaitTimeout.Duration,
		CallTimeout: cfg.Token.CallTimeout.Duration}
	if opts != nil {
		o = *opts
	}
	tok, err := hsm.Open(cfg.Token.URI, o)
	if err != nil {
		return nil, fmt.Errorf("open appliance token: %w", err)
	}
	return tok, nil
}

// PublicKeysEqual reports whether a and b are the same public key.
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// EnsureAuditCertificate issues DIR/audit.pem for the audit key if it is missing, and checks
// that an existing one is the token key's. `keyarc audit verify` reads it, so the trail can be
// verified without the token (and offline, on a copy). A new certificate is issued by svc
// ([escrow.Service.IssueAppliance]), so it is on record, answered by OCSP and revocable, before
// the file is written; an init that stops in between issues another one when run again.
func EnsureAuditCertificate(ctx context.Context, cfg *config.Config, tok *hsm.Token, svc *escrow.Service, say func(string, ...any)) (crypto.Signer, error) {
	signer, err := tok.Signer(cfg.Token.AuditKey)
	if err != nil {
		return nil, fmt.Errorf("audit key %q: %w", cfg.Token.AuditKey, err)
	}
	path := cfg.Path(AuditCertName)
	if pemfile.Exists(path) {
		c, err := pemfile.ReadCertificate(path)
		if err != nil {
			return nil, fmt.Errorf("audit certificate: %w", err)
		}
		if !PublicKeysEqual(c.PublicKey, signer.Public()) {
			return nil, fmt.Errorf("audit key %q in the token is not the key of %s", cfg.Token.AuditKey, path)
		}
		return signer, nil
	}
	// As long as the CA: the certificate anchors checkpoints for the CA's whole life.
	caCert, now := svc.Issuer.Certificate(), time.Now()
	issued, err := svc.IssueAppliance(ctx, escrow.ApplianceRequest{
		Purpose:   escrow.ApplianceAudit,
		PublicKey: signer.Public(),
		Subject:   pkix.Name{CommonName: caCert.Subject.CommonName + " audit", Organization: caCert.Subject.Organization},
		KeyUsage:  x509.KeyUsageDigitalSignature,
		NotBefore: now.Add(-time.Minute),
		Validity:  min(CAValidity, caCert.NotAfter.Sub(now)-time.Minute),
	})
	if err != nil {
		return nil, fmt.Errorf("issue audit certificate: %w", err)
	}
	if err := pemfile.Write(path, "CERTIFICATE", issued.Certificate.Raw, 0o644); err != nil {
		return nil, fmt.Errorf("write audit certificate: %w", err)
	}
	if say != nil {
		say("created  %s (serial %s)", path, issued.Serial)
	}
	return signer, nil
}

// AuditPINFailure records a PIN the token refused at start-up, when the database is there to
// take it. The PIN and the token's message are never recorded.
func AuditPINFailure(cfg *config.Config, err error) {
	if !errors.Is(err, hsm.ErrPINIncorrect) || !DatabaseExists(cfg) {
		return
	}
	db, oerr := OpenDatabase(cfg)
	if oerr != nil {
		return
	}
	defer db.Close()
	db.Update(context.Background(), func(tx store.Tx) error {
		_, err := audit.Append(tx, time.Now(), audit.KindPINFailed, "system", "appliance token", audit.Details{Reason: "the token refused the PIN; the appliance did not start and did not retry"})
		return err
	})
}

// NewChecker is the consistency checker of db against the CA certificate of cfg.
func NewChecker(db store.Store, cfg *config.Config) (*check.Checker, error) {
	caCert, err := pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	return &check.Checker{DB: db, CA: caCert, Foreign: []string{escrow.TemplateImport}}, nil
}

// ConsistencyCheck checks every certificate of db against the CA of cfg.
func ConsistencyCheck(ctx context.Context, db store.Store, cfg *config.Config) (*check.Report, error) {
	c, err := NewChecker(db, cfg)
	if err != nil {
		return nil, err
	}
	rep, err := c.All(ctx)
	if err != nil && !errors.Is(err, check.ErrInconsistent) {
		return nil, err
	}
	return rep, nil
}
