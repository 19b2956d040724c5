// Command keyarc is the keyarc appliance and its command-line clients: an HSM-backed
// certificate authority that escrows the private key of every encryption certificate for an
// m-of-n quorum of Key Recovery Agents.
//
// This package is wiring only: configuration, subcommands, the HTTP server, metrics, and the one
// function that maps errors to HTTP statuses. The logic lives in escrow, policy and hsm.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string) error
}

func commands() []command {
	return []command{
		{"init", "create the tokens' keys, the CA, the configuration (--dev: SoftHSM tokens too)", runInit},
		{"serve", "run the appliance (HTTPS enrollment, EST, metrics)", runServe},
		{"admin", "administration: enrollment codes, credentials, pending requests, recovery set", runAdmin},
		{"kra", "Key Recovery Agent: enroll with your own token", runKRA},
		{"recovery", "key recovery: request (officer), approve (KRA), fetch the PKCS#12", runRecovery},
		{"enroll", "enroll for a certificate (the key is made here, archived if the template says so)", runEnroll},
		{"bulk", "bulk jobs: submit a job file, follow it, fetch its results", runBulk},
		{"bench", "measure the raw crypto limits and the bulk pipeline's rates", runBench},
		{"backup", "take a consistent online copy of the database", runBackup},
		{"restore", "put a backup in place (refuses one older than the audit trail)", runRestore},
		{"audit", "verify the audit trail: hash chain, signed checkpoints, head file", runAudit},
		{"version", "print the version", runVersion},
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintln(os.Stderr, "keyarc:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "keyarc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:])
		}
	}
	usage(os.Stderr)
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: keyarc <command> [flags]\n\ncommands:")
	cs := commands()
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `keyarc <command> -h` for a command's flags.")
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parseFlags parses flags that may stand before, between or after positional arguments, and
// returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stdout)
				fs.PrintDefaults()
				os.Exit(0)
			}
			return nil, usageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// wantArgs checks the number of positional arguments.
func wantArgs(name string, pos []string, n int, what string) error {
	if len(pos) != n {
		return usageError{fmt.Sprintf("%s: expected %s, got %q", name, what, strings.Join(pos, " "))}
	}
	return nil
}

func runVersion(args []string) error {
	fmt.Println("keyarc", version)
	return nil
}
