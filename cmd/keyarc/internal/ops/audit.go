package ops

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow/audit"
)

const auditUsage = `audit subcommands:
  verify --state DIR [--key FILE] [--json]   verify the hash chain, the signed checkpoints and the head file`

// RunAudit is `keyarc audit verify`: the hash chain, the signed checkpoints and the head file.
func RunAudit(args []string) error {
	if len(args) < 1 || args[0] != "verify" {
		return cmdline.UsageError{Msg: auditUsage}
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	keyFile := fs.String("key", "", "the audit certificate or public key (PEM) to trust (default: DIR/audit.pem, checked against the CA certificate)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := cmdline.ParseStateOnly(fs, args[1:], state); err != nil {
		return err
	}
	cfg, err := config.Load(*state)
	if err != nil {
		return err
	}
	pub, err := auditPublicKey(cfg, *keyFile)
	if err != nil {
		return err
	}
	if !statedir.DatabaseExists(cfg) {
		return fmt.Errorf("audit verify: no database at %s", cfg.DatabaseName())
	}
	db, err := statedir.OpenDatabase(cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	headPath := cfg.Path(statedir.AuditHeadName)
	head, err := audit.ReadHead(headPath)
	if errors.Is(err, audit.ErrNoHead) {
		head = nil
	} else if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rep, verr := audit.Verify(ctx, db, pub, head)
	var p *audit.Problem
	if verr != nil && !errors.As(verr, &p) {
		return verr
	}
	crep, err := statedir.ConsistencyCheck(ctx, db, cfg)
	if err != nil {
		return err
	}
	if verr == nil && head == nil && rep.Checkpoints > 0 {
		verr = fmt.Errorf("%w: %s is missing although the database holds %d signed checkpoints: restore it from its copy, or the trail's tail cannot be checked",
			audit.ErrNoHead, headPath, rep.Checkpoints)
	}
	id, _ := audit.KeyID(pub)
	if *asJSON {
		out := wire.AuditVerification{OK: verr == nil && crep.Err() == nil, Report: rep, KeyID: hex.EncodeToString(id)}
		if verr != nil {
			out.Problem = verr.Error()
		} else if err := crep.Err(); err != nil {
			out.Problem = err.Error()
		}
		if p != nil {
			out.Seq = p.Seq
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	} else {
		fmt.Printf("audit key   %x\n", id)
		fmt.Printf("entries     %d (last %d)\n", rep.Entries, rep.Last)
		fmt.Printf("checkpoints %d, signed up to entry %d", rep.Checkpoints, rep.Signed)
		if !rep.SignedAt.IsZero() {
			fmt.Printf(" at %s", rep.SignedAt.Format(time.RFC3339))
		}
		fmt.Println()
		if head != nil {
			fmt.Printf("head file   entry %d\n", head.Seq)
		} else {
			fmt.Printf("head file   none (%s)\n", headPath)
		}
		printRestores(rep.Restores)
		printCheck(crep)
	}
	if verr != nil {
		return fmt.Errorf("AUDIT TRAIL DOES NOT VERIFY: %w", verr)
	}
	if crep != nil {
		if err := crep.Err(); err != nil {
			return fmt.Errorf("the trail verifies, but ARCHIVE FAILS ITS CONSISTENCY CHECK: %w", err)
		}
	}
	if !*asJSON {
		fmt.Println("OK: the trail is intact and its checkpoints are signed by the audit key; every stored certificate matches the CA, its audited issuance and its escrow record")
	}
	return nil
}

// printRestores shows the restores the trail records, and the gap each one left.
func printRestores(gaps []audit.RestoreGap) {
	for _, g := range gaps {
		fmt.Printf("restore     entry %d at %s by %s: database restored from %s (its trail ended at entry %d)",
			g.Seq, g.At.Format(time.RFC3339), g.Actor, g.Backup, g.RestoredSeq)
		if from, to, ok := g.Lost(); ok {
			fmt.Printf("; entries %d to %d of the previous trail are not in this database", from, to)
			if g.HeadVerified {
				fmt.Print(" (the head file of the time, signed by the audit key, proves they existed)")
			}
		}
		if g.HeadMissing {
			fmt.Print("; the head file was missing, so how far the previous trail went is not known")
		}
		if g.ReplacedKeptAs != "" {
			fmt.Printf("; the replaced database is kept as %s", g.ReplacedKeptAs)
		}
		fmt.Println()
	}
}

// auditPublicKey returns the key checkpoints must be signed with: from --key (a certificate or
// a public key the auditor holds), or DIR/audit.pem, which must be issued by the CA of ca.pem.
func auditPublicKey(cfg *config.Config, keyFile string) (crypto.PublicKey, error) {
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, err
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: no PEM block in it", keyFile)
		}
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", keyFile, err)
			}
			return c.PublicKey, nil
		case "PUBLIC KEY":
			return x509.ParsePKIXPublicKey(blk.Bytes)
		}
		return nil, fmt.Errorf("%s: a CERTIFICATE or PUBLIC KEY PEM block is needed, not %s", keyFile, blk.Type)
	}
	path := cfg.Path(statedir.AuditCertName)
	c, err := pemfile.ReadCertificate(path)
	if err != nil {
		return nil, fmt.Errorf("audit certificate (made by `keyarc init` or the first `keyarc serve`; or give --key FILE): %w", err)
	}
	caCert, err := pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	// Checkpoints signed while the certificate was valid stay verifiable after it expires.
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: c.NotBefore.Add(time.Minute), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s is not issued by the CA of %s: %w", path, cfg.Path(cfg.CA.Certificate), err)
	}
	return c.PublicKey, nil
}
