//go:build !linux

package main

// noCoreDumps does nothing outside Linux; see the Linux version.
func noCoreDumps() error { return nil }
