// Package cmdline holds what every keyarc subcommand shares to read its command line: flag
// parsing that accepts flags anywhere among the positional arguments, the argument count check,
// and the two errors that choose an exit status other than 1 ([UsageError]: 2, [ExitError]: its
// own).
//
// It imports the standard library only and no other keyarc package, so that the command
// packages (cli, bench, ops) and package main can all use it.
//
// # Concurrency
//
// [Help] is set once by package main before any command runs; after that everything here is
// safe for concurrent use.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrHelp reports that help was requested and printed: exit status 0.
var ErrHelp = errors.New("keyarc: help requested")

// Help prints the help of the leaf command whose flag set is fs (the flag set's name is the
// command's path, e.g. "admin pending issue"). Package main sets it to the help of its command
// table; until then [ParseFlags] prints the flags alone.
var Help = func(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: keyarc %s [flags]\n", fs.Name())
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// ExitError is an outcome that has its own exit status, such as a bulk job that finished with
// failed items (3).
type ExitError struct {
	Code int
	Msg  string
}

func (e ExitError) Error() string { return e.Msg }

// UsageError is a mistake in the command line (exit status 2).
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// ParseFlags parses flags that may stand before, between or after positional arguments, and
// returns the positional ones. `-h` or `--help` prints the command's help on standard output
// and returns [ErrHelp]; a bad flag returns a [UsageError].
func ParseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				Help(os.Stdout, fs)
				return nil, ErrHelp
			}
			return nil, UsageError{fmt.Sprintf("%s: %v (run `keyarc help %s`)", fs.Name(), err, fs.Name())}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// WantArgs checks the number of positional arguments; the [UsageError] names what was
// expected.
func WantArgs(name string, pos []string, n int, what string) error {
	if len(pos) != n {
		return UsageError{fmt.Sprintf("%s: expected %s, got %q (run `keyarc help %s`)", name, what, strings.Join(pos, " "), name)}
	}
	return nil
}

// ParseNoArgs parses the flags of a command that takes no positional argument: one given (a
// second value pasted after a flag's, say) is a [UsageError] that names it, rather than
// ignored while the command acts on the rest.
func ParseNoArgs(fs *flag.FlagSet, args []string) error {
	pos, err := ParseFlags(fs, args)
	if err != nil {
		return err
	}
	return WantArgs(fs.Name(), pos, 0, "no arguments (flags only)")
}

// ParseStateOnly parses the flags of a command that takes no positional argument and needs
// --state (whose value state points to): a usage error names the command and what is wrong.
func ParseStateOnly(fs *flag.FlagSet, args []string, state *string) error {
	if err := ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *state == "" {
		return UsageError{Msg: fs.Name() + ": --state DIR is required"}
	}
	return nil
}
