package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
)

// lockName is the lock `keyarc serve` holds on its state folder.
const lockName = "keyarc.lock"

// lockState takes the state folder's lock without waiting; the lock lasts as long as the
// returned file is open (the kernel drops it if the process dies).
func lockState(cfg *Config) (*os.File, error) {
	f, err := os.OpenFile(cfg.path(lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("the state folder %s is in use by a running keyarc serve; stop it first", cfg.dir)
	}
	return f, nil
}

// runBackup takes a consistent online copy of the database. It holds sealed records and
// certificates, never a key in clear; the keys live in the tokens, which are backed up with the
// token vendor's tools.
func runBackup(args []string) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	out := fs.String("out", "", "file to write the copy to (required; not overwritten)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("backup", pos, 0, "no arguments"); err != nil {
		return err
	}
	if *state == "" || *out == "" {
		return usageError{"backup: --state DIR and --out FILE are required"}
	}
	cfg, err := loadConfig(*state)
	if err != nil {
		return err
	}
	db, err := store.Open(cfg.path(cfg.Database))
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := db.Backup(ctx, *out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "database copied; back up the tokens too (they hold the keys) and keep %s with the copy\n", cfg.path(auditHeadName))
	fmt.Println(*out)
	return nil
}

// runRestore puts a backup in place of the database. The appliance must be stopped. A backup
// older than the audit trail's last signed checkpoint is refused unless --force: restoring it
// would silently drop audited history.
func runRestore(args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	from := fs.String("from", "", "backup file made by keyarc backup (required)")
	force := fs.Bool("force", false, "restore even a backup older than the audit trail's last checkpoint")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("restore", pos, 0, "no arguments"); err != nil {
		return err
	}
	if *state == "" || *from == "" {
		return usageError{"restore: --state DIR and --from FILE are required"}
	}
	cfg, err := loadConfig(*state)
	if err != nil {
		return err
	}
	lock, err := lockState(cfg)
	if err != nil {
		return err
	}
	defer lock.Close()

	// Work on a copy: opening a database may migrate it, and the backup stays as it was.
	dbPath := cfg.path(cfg.Database)
	tmp := dbPath + ".restoring"
	os.Remove(tmp)
	if err := copyFile(*from, tmp); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	db, err := store.Open(tmp)
	if err != nil {
		return fmt.Errorf("restore: %s is not a keyarc database: %w", *from, err)
	}
	err = db.Check(ctx)
	if err == nil {
		headPath := cfg.path(auditHeadName)
		head, herr := audit.ReadHead(headPath)
		switch {
		case errors.Is(herr, audit.ErrNoHead):
		case herr != nil:
			err = herr
		default:
			if rerr := audit.Reaches(ctx, db, head); rerr != nil {
				if !*force {
					err = fmt.Errorf("restore refused: %w (the backup is older than the audit trail's last signed checkpoint; --force restores it anyway and keeps the old head file as evidence)", rerr)
				} else {
					kept := headPath + ".before-restore-" + time.Now().UTC().Format("20060102T150405Z")
					if err = os.Rename(headPath, kept); err == nil {
						fmt.Fprintf(os.Stderr, "forced: the audit head file is kept as %s\n", kept)
					}
				}
			}
		}
	}
	db.Close()
	if err != nil {
		return err
	}
	if fileExists(dbPath) {
		kept := dbPath + ".before-restore-" + time.Now().UTC().Format("20060102T150405Z")
		if err := os.Rename(dbPath, kept); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "the previous database is kept as %s\n", kept)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		os.Remove(dbPath + suffix)
		os.Remove(tmp + suffix)
	}
	if err := os.Rename(tmp, dbPath); err != nil {
		return err
	}
	ok = true
	fmt.Println(dbPath)
	return nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
