// Command keyarc is the keyarc appliance and its command-line clients: an HSM-backed
// certificate authority that escrows the private key of every encryption certificate for an
// m-of-n quorum of Key Recovery Agents.
//
// This package is wiring only: the command table, and openAppliance, which joins the token
// (hsm), the store and the engine (escrow) and hands them to the HTTP server. The rest lives in
// internal packages: api (the HTTP server), cli (the client commands), ops (local operations on
// a state folder: init, backup, restore, check, audit verify), bench, and their shared config,
// wire (JSON bodies), statedir, pemfile and cmdline. The logic lives in escrow, policy and hsm.
//
// # Command line
//
// The command line is the standard library's flag package under a small command tree
// ([commands]): each leaf command parses its own flag set with cmdline.ParseFlags, so flags may stand
// before, between or after positional arguments, and each lists only the flags it takes.
// Requested help (`keyarc help CMD [SUB]`, `-h`, `--help`) goes to standard output with exit
// status 0; a mistake in the command line goes to standard error with exit status 2.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cli"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/loadgen"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/ops"
)

// command is a node of the command tree: a leaf runs, a group dispatches to its subcommands.
type command struct {
	name string
	// args is the usage after the command's name, e.g. "ID [flags]".
	args    string
	summary string
	// long, when set, is printed after the summary in the command's help.
	long string
	run  func(args []string) error
	subs []command
}

// Connection help shared by the client commands.
const (
	clientLong = `Connect with --state DIR --as IDENTITY on a development install (the address of a running
"keyarc serve --state DIR" is read from DIR/serve.json), or with --server URL --cacert FILE
--cert FILE --key FILE.`
	kraLong = `A KRA authenticates with its own token: --token-label L --pin-file F [--module PATH]
--cert AUTH.pem, or --state DIR --as kraN on a development install.`
)

func commands() []command {
	return []command{
		{name: "init", args: "--state DIR [--dev] [flags]", summary: "create the tokens' keys, the CA, the configuration (--dev: SoftHSM tokens too)", run: ops.RunInit},
		{name: "serve", args: "--state DIR [--addr HOST:PORT] [--metrics-addr HOST:PORT]", summary: "run the appliance (HTTPS enrollment, EST, metrics)", run: runServe,
			long: `While it runs, serve records its HTTPS address in DIR/serve.json (removed at an orderly stop),
so that client commands given --state DIR reach it wherever it listens.`},
		{name: "admin", summary: "administration: enrollment codes, credentials, pending requests, recovery set", subs: []command{
			{name: "enroll-code", summary: "one-time enrollment codes", subs: []command{
				{name: "create", args: "--state DIR --email ADDR [--template T] [--ttl D]", summary: "make a one-time enrollment code (local); prints the code alone", run: ops.RunCodeCreate},
			}},
			{name: "credential", summary: "operator credentials", subs: []command{
				{name: "issue", args: "--state DIR --role R --name N --out DIR [--email ADDR]", summary: "issue an operator credential (local)", run: ops.RunCredentialIssue},
			}},
			{name: "pending", summary: "requests waiting for an admin's decision (KRA enrollments)", subs: []command{
				{name: "list", args: "[--all] [--json]", summary: "requests waiting for a decision", long: clientLong, run: cli.RunPendingList},
				{name: "issue", args: "ID", summary: "issue a pending request's certificates", long: clientLong, run: func(a []string) error { return cli.RunPendingDecide("issue", a) }},
				{name: "deny", args: "ID", summary: "deny a pending request", long: clientLong, run: func(a []string) error { return cli.RunPendingDecide("deny", a) }},
			}},
			{name: "recovery-set", summary: "the KRAs and quorum that seal new records", subs: []command{
				{name: "show", args: "[--json]", summary: "the current recovery set, and each live epoch's quorum health: KRAs proven by drills, records, which epochs need a reseal", long: clientLong, run: cli.RunRecoverySetShow},
				{name: "set", args: "--quorum M --kra SERIAL [--kra SERIAL ...]", summary: "define a new recovery set (new epoch); serials from `recovery-set show` or `pending issue`", long: clientLong, run: cli.RunRecoverySetSet},
				{name: "reseal", args: "[--reason TEXT] | --complete ID", summary: "ask the old sets' KRAs to move old records to the current set; --complete once they approved", long: clientLong, run: cli.RunReseal},
			}},
			{name: "drill", summary: "recoverability drills: each KRA proves its token still opens its shares", subs: []command{
				{name: "open", args: "[--kra NAME] [--json]", summary: "open a campaign (one drill per KRA of every live epoch), or one KRA's drill", long: clientLong, run: cli.RunDrillOpen},
				{name: "list", args: "[--campaign ID] [--open] [--json]", summary: "drills and who has answered", long: clientLong, run: cli.RunDrillList},
			}},
		}},
		{name: "kra", summary: "Key Recovery Agent: enroll with your own token, prove it in drills", subs: []command{
			{name: "drill", args: "[--drill ID]", summary: "prove with your KRA token that it still decrypts your shares (answers your open drills, or opens one)", long: kraLong, run: cli.RunKRADrill},
			{name: "enroll", args: "--token-label L --pin-file F [--wait D --out DIR | --request ID --out DIR] [flags]", summary: "make the KRA's keys in its own token and submit them for an admin's approval", run: cli.RunKRAEnroll,
				long: `Prints the pending request's ID; an admin issues it with "keyarc admin pending issue ID" after
comparing the key fingerprints with the KRA in person. With --wait, waits for that decision and
saves the certificates to --out; --request ID collects them later instead of submitting again.`},
		}},
		{name: "recovery", summary: "key recovery: request (officer), approve (KRA), fetch the PKCS#12", subs: []command{
			{name: "request", args: "--serial HEX | --email ADDR --reason TEXT [--revoke keyCompromise|superseded | --keep]", summary: "open a request (officer); prints its ID", long: clientLong, run: cli.RunRecoveryRequest},
			{name: "list", args: "[--status open|consumed|cancelled|expired] [--json]", summary: "recovery requests and their state", long: clientLong, run: cli.RunRecoveryList},
			{name: "show", args: "ID [--json]", summary: "a request's state (open, approved, expired, ...), approvals so far, what is recovered", long: clientLong, run: cli.RunRecoveryShow},
			{name: "approve", args: "ID [--yes]", summary: "approve with your KRA token (KRA)", long: kraLong, run: cli.RunRecoveryApprove},
			{name: "fetch", args: "ID --out FILE.p12 --password-file FILE [--legacy]", summary: "collect the PKCS#12 once (the requesting officer)", long: clientLong, run: cli.RunRecoveryFetch},
			{name: "cancel", args: "ID", summary: "close a request without recovering (the requesting officer)", long: clientLong, run: cli.RunRecoveryCancel},
		}},
		{name: "revoke", args: "--serial HEX | --email ADDR | --key-of HEX --reason REASON [--json]", summary: "revoke certificates (admin, officer; a subscriber: their own mailbox's with --cert/--key)", long: clientLong, run: cli.RunRevoke},
		{name: "enroll", args: "--email ADDR --code CODE --out DIR [--template T] [flags]", summary: "enroll for a certificate (the key is made here, archived if the template says so)", run: cli.RunEnroll,
			long: `Connects anonymously: --state DIR (development) or --server URL --cacert FILE.`},
		{name: "bulk", summary: "bulk jobs: submit a job file, follow it, fetch its results", subs: []command{
			{name: "submit", args: "FILE [--wait]", summary: "submit a job file (admin); prints the job ID; with --wait, exit status 3 if any item failed", long: clientLong, run: cli.RunBulkSubmit},
			{name: "status", args: "JOB", summary: "a job's progress: done/failed/total, rate, ETA (JSON)", long: clientLong, run: cli.RunBulkStatus},
			{name: "list", summary: "every job (JSON)", long: clientLong, run: cli.RunBulkList},
			{name: "results", args: "JOB --out FILE [--passwords FILE]", summary: "write a job's per-item results (and, once, a keygen job's passwords)", long: clientLong, run: cli.RunBulkResults},
		}},
		{name: "bench", args: "[flags]", summary: "measure the raw crypto limits and the bulk pipeline's rates", run: runBench},
		{name: "backup", args: "--state DIR --out FILE", summary: "take a consistent online copy of the database", run: ops.RunBackup},
		{name: "restore", args: "--state DIR --from FILE [--force]", summary: "put a backup in place (refuses one older than the audit trail)", run: ops.RunRestore},
		{name: "audit", summary: "the audit trail", subs: []command{
			{name: "verify", args: "--state DIR [--key FILE] [--json]", summary: "verify the audit trail: hash chain, signed checkpoints, head file", run: runAuditVerify},
		}},
		{name: "check", args: "--state DIR [--json]", summary: "check every stored certificate against the CA, its audited issuance and its escrow record", run: ops.RunCheck},
		{name: "version", summary: "print the version", run: runVersion},
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Before anything reads a PIN, a password or a key.
	if err := noCoreDumps(); err != nil {
		fmt.Fprintln(os.Stderr, "keyarc: warning: core files are not disabled:", err)
	}
	err := run(os.Args[1:])
	var u cmdline.UsageError
	var x cmdline.ExitError
	switch {
	case err == nil, errors.Is(err, cmdline.ErrHelp):
		return
	case errors.As(err, &u):
		fmt.Fprintln(os.Stderr, "keyarc:", err)
		os.Exit(2)
	case errors.As(err, &x):
		fmt.Fprintln(os.Stderr, "keyarc:", err)
		os.Exit(x.Code)
	default:
		fmt.Fprintln(os.Stderr, "keyarc:", err)
		os.Exit(1)
	}
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

func run(args []string) error {
	cmdline.Help = leafUsage
	root := command{name: "", summary: "an HSM-backed CA that escrows encryption keys for a quorum of KRAs", subs: commands()}
	if len(args) > 0 && args[0] == "help" {
		return runHelp(root, args[1:])
	}
	// The load generator that `keyarc bench` runs as a child process: not in the help.
	if len(args) > 0 && args[0] == "loadgen" {
		return loadgen.Main(args[1:])
	}
	return dispatch(root, nil, args)
}

// dispatch runs the command at path, descending through groups.
func dispatch(c command, path []string, args []string) error {
	if c.subs == nil {
		return c.run(args)
	}
	if len(args) == 0 {
		if len(path) == 0 {
			groupUsage(os.Stdout, c, path)
			return nil
		}
		groupUsage(os.Stderr, c, path)
		return cmdline.UsageError{Msg: fmt.Sprintf("%s: expected a subcommand", strings.Join(path, " "))}
	}
	if isHelp(args[0]) {
		if args[0] == "help" && len(path) > 0 {
			return runHelp(c, args[1:], path...)
		}
		groupUsage(os.Stdout, c, path)
		return nil
	}
	for _, s := range c.subs {
		if s.name == args[0] {
			return dispatch(s, append(path, s.name), args[1:])
		}
	}
	groupUsage(os.Stderr, c, path)
	if len(path) == 0 {
		return cmdline.UsageError{Msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	return cmdline.UsageError{Msg: fmt.Sprintf("%s: unknown subcommand %q", strings.Join(path, " "), args[0])}
}

// runHelp is `keyarc help [CMD [SUB ...]]`: the help of the named command, on standard output.
func runHelp(c command, args []string, path ...string) error {
	for _, a := range args {
		found := false
		for _, s := range c.subs {
			if s.name == a {
				c, found = s, true
				path = append(path, s.name)
				break
			}
		}
		if !found {
			// Point at the help of the deepest command found, which lists what it has.
			return cmdline.UsageError{Msg: fmt.Sprintf("help: no command %q; run `%s`", strings.Join(append(path, a), " "),
				strings.Join(append([]string{"keyarc", "help"}, path...), " "))}
		}
	}
	if c.subs != nil {
		groupUsage(os.Stdout, c, path)
		return nil
	}
	// A leaf's flags are defined where it parses them: ask it for its help.
	return c.run([]string{"-h"})
}

// groupUsage lists a group's subcommands.
func groupUsage(w io.Writer, c command, path []string) {
	name := strings.Join(append([]string{"keyarc"}, path...), " ")
	fmt.Fprintf(w, "usage: %s <command> [arguments] [flags]\n\n", name)
	if c.summary != "" {
		fmt.Fprintf(w, "%s%s.\n\n", strings.ToUpper(c.summary[:1]), c.summary[1:])
	}
	fmt.Fprintln(w, "commands:")
	var list func(prefix string, subs []command)
	list = func(prefix string, subs []command) {
		for _, s := range subs {
			line := prefix + s.name
			switch {
			case s.subs != nil && len(path) > 0:
				list(line+" ", s.subs)
				continue
			case s.subs != nil:
				line += " <command>"
			case s.args != "":
				line += " " + s.args
			}
			fmt.Fprintf(w, "  %s\n      %s\n", line, s.summary)
		}
	}
	list("", c.subs)
	help := strings.Join(append([]string{"keyarc", "help"}, path...), " ")
	fmt.Fprintf(w, "\nRun `%s <command>` for a command's usage and flags.\n", help)
}

// findCommand returns the command at path (space-separated names).
func findCommand(path string) (command, bool) {
	c := command{subs: commands()}
	for _, name := range strings.Fields(path) {
		found := false
		for _, s := range c.subs {
			if s.name == name {
				c, found = s, true
				break
			}
		}
		if !found {
			return command{}, false
		}
	}
	return c, true
}

// leafUsage prints a leaf command's help: the usage line, its description and its flags.
func leafUsage(w io.Writer, fs *flag.FlagSet) {
	c, _ := findCommand(fs.Name())
	args := c.args
	if args == "" {
		args = "[flags]"
	}
	fmt.Fprintf(w, "usage: keyarc %s %s\n", fs.Name(), args)
	if c.summary != "" {
		fmt.Fprintf(w, "\n%s%s.\n", strings.ToUpper(c.summary[:1]), c.summary[1:])
	}
	if c.long != "" {
		fmt.Fprintf(w, "\n%s\n", c.long)
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(w, "\nflags:")
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintln(w, line)
		if def := f.DefValue; def != "" && def != "false" && def != "0" && def != "0s" && def != "[]" {
			usage += fmt.Sprintf(" (default %s)", def)
		}
		fmt.Fprintf(w, "      %s\n", usage)
	})
}

func runVersion(args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	fmt.Println("keyarc", version)
	return nil
}

// runAuditVerify is `keyarc audit verify`.
func runAuditVerify(args []string) error { return ops.RunAudit(append([]string{"verify"}, args...)) }
