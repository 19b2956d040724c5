package cli

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/policy"
)

// RunRevoke is `keyarc revoke --serial S | --email M | --key-of S --reason R`: an admin or
// officer revokes any certificate; a subscriber, presenting their own certificate as --cert and
// --key, the certificates of their mailbox. It prints what changed; a revocation refused
// because everything named was revoked already prints the existing revocations and fails.
func RunRevoke(args []string) error {
	fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	serial := fs.String("serial", "", "revoke the certificate of this serial (hex)")
	email := fs.String("email", "", "revoke every unexpired certificate of this mailbox")
	keyOf := fs.String("key-of", "", "revoke every unexpired certificate of the public key of this serial, in any mailbox (BR 6.1.2: a compromised key)")
	reason := fs.String("reason", "", "revocation `REASON`: "+strings.Join(policy.RevocationReasons(), ", "))
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	// One flag names the certificates: a second serial pasted after the first would
	// otherwise be ignored while the first is revoked.
	if err := cmdline.WantArgs("revoke", pos, 0, "no arguments (one --serial, --email or --key-of per command)"); err != nil {
		return err
	}
	n := 0
	for _, v := range []string{*serial, *email, *keyOf} {
		if v != "" {
			n++
		}
	}
	if n != 1 || *reason == "" {
		return cmdline.UsageError{Msg: "revoke: give one of --serial HEX, --email ADDR or --key-of HEX, and --reason (" + strings.Join(policy.RevocationReasons(), ", ") + ")"}
	}
	// The reason is checked here too, so that a typo costs no round trip; the appliance decides.
	if _, err := policy.ParseRevocationReason(*reason); err != nil {
		return cmdline.UsageError{Msg: "revoke: --reason " + strings.TrimPrefix(err.Error(), policy.ErrBadRevocationReason.Error()+": ")}
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var out wire.Revoked
	err = c.call("POST", "/api/v1/revocations", wire.RevokeRequest{Serial: *serial, Email: *email, KeyOf: *keyOf, Reason: *reason}, &out)
	var ae *apiError
	if errors.As(err, &ae) && ae.status == http.StatusConflict && len(ae.existing) > 0 {
		printRevocations(os.Stderr, "already revoked", ae.existing)
		return err
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(out)
	}
	printRevocations(os.Stdout, "revoked", out.Revoked)
	printRevocations(os.Stdout, "moved to keyCompromise (first revocation date kept)", out.KeyCompromise)
	printRevocations(os.Stdout, "already revoked, unchanged", out.Unchanged)
	return nil
}

// printRevocations prints a titled table of revocations, nothing when there are none.
func printRevocations(f *os.File, title string, rs []wire.Revocation) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(f, "%s:\n", title)
	tw := tabwriter.NewWriter(f, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SERIAL\tMAILBOX\tREASON\tREVOKED AT")
	for _, r := range rs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", r.Serial, r.Mailbox, r.Reason, r.RevokedAt)
	}
	tw.Flush()
}
