//go:build linux

package main

import (
	"fmt"
	"syscall"
)

// noCoreDumps keeps the process's memory out of core files. Every keyarc command holds
// secrets in memory: the token PIN and, through the in-process PKCS#11 module (SoftHSM), the
// token's keys; the SMTP, LDAP and database passwords; users' private keys and PKCS#12
// passwords while they are handled; a KRA's PIN and share. A crash with core files allowed
// (`ulimit -c unlimited`, a systemd LimitCORE, GOTRACEBACK=crash) would write them all to disk.
//
// It sets the soft RLIMIT_CORE to 0, which programs started from here inherit, and marks the
// process not dumpable (PR_SET_DUMPABLE 0): the kernel then writes no core file whatever the
// limit or core_pattern (a pipe to systemd-coredump ignores the limit), and other processes of
// the same user cannot attach to it or read its memory (root, with CAP_SYS_PTRACE, still can).
// Both are reset by execve, so the tools keyarc runs are unaffected.
func noCoreDumps() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_CORE, &lim); err != nil {
		return fmt.Errorf("read the core file size limit: %w", err)
	}
	lim.Cur = 0
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &lim); err != nil {
		return fmt.Errorf("set the core file size limit to 0: %w", err)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0); e != 0 {
		return fmt.Errorf("mark the process not dumpable: %w", e)
	}
	return nil
}
