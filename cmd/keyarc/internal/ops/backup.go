package ops

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// backupHeadSuffix names the copy of the audit head file written beside a backup.
const backupHeadSuffix = ".audit-head.json"

// RunBackup takes a consistent online copy of the database, with a copy of the audit trail's
// head file beside it (FILE.audit-head.json). It holds sealed records and certificates, never a
// key in clear; the keys live in the tokens, which are backed up with the token vendor's tools.
//
// The head file is read before the copy is taken, so the copy always reaches it: with it, the
// copy can be verified on its own (`keyarc audit verify` on a state folder holding both).
// `keyarc restore` compares a backup with the state folder's own head file, not with this copy:
// the state's head records how far the trail went since, and a restore behind it is recorded.
func RunBackup(args []string) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	out := fs.String("out", "", "file to write the copy to (required; not overwritten); the audit head is copied to FILE"+backupHeadSuffix)
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *state == "" || *out == "" {
		return cmdline.UsageError{Msg: "backup: --state DIR and --out FILE are required"}
	}
	cfg, err := config.Load(*state)
	if err != nil {
		return err
	}
	if cfg.IsPostgres() {
		return errPostgresBackup("backup")
	}
	headOut := *out + backupHeadSuffix
	if pemfile.Exists(headOut) {
		return fmt.Errorf("backup: %s exists; not overwritten", headOut)
	}
	// Opening a missing file would make an empty database, and back that up.
	if !statedir.DatabaseExists(cfg) {
		return fmt.Errorf("backup: no database at %s; nothing was copied", cfg.DatabaseName())
	}
	head, err := audit.ReadHead(cfg.Path(statedir.AuditHeadName))
	if err != nil && !errors.Is(err, audit.ErrNoHead) {
		return fmt.Errorf("backup: %w", err)
	}
	db, err := sqlite.Open(cfg.Path(cfg.Database))
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := interruptible(30 * time.Minute)
	defer cancel()
	if err := db.Backup(ctx, *out); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("backup: %s; no copy was written to %s", interruption(ctx), *out)
		}
		return err
	}
	if head != nil {
		if err := audit.WriteHead(headOut, head); err != nil {
			os.Remove(*out) // a copy without its head file is not left as if it were complete
			return fmt.Errorf("backup: copy of the audit head: %w; no copy was written to %s", err, *out)
		}
		fmt.Fprintf(os.Stderr, "database copied, and the audit head (entry %d) to %s; back up the tokens too (they hold the keys)\n", head.Seq, headOut)
	} else {
		fmt.Fprintf(os.Stderr, "database copied (there is no audit head file yet); back up the tokens too (they hold the keys)\n")
	}
	fmt.Println(*out)
	return nil
}

// RunRestore puts a backup in place of the database. The appliance must be stopped.
//
// Every restore is an audited act: an entry appended to the restored database names the backup,
// the restored trail's last entry, how far the replaced trail had gone (the state's head file
// and the replaced database), and the OS user; then a checkpoint is signed with the audit key
// and the head file continues from there, so `keyarc audit verify` passes and shows the gap.
//
// A backup behind the audit trail's head (or any backup while the head file is missing and the
// database holds signed checkpoints) is refused unless --force: restoring it drops audited
// history. --from may name the database itself, to record a rollback already made by copying a
// file in place.
func RunRestore(args []string) error {
	// Ctrl-C or SIGTERM stops the restore at its next step, which undoes what it wrote; the
	// renames that put the files in place are never cut in the middle.
	ctx, cancel := interruptible(30 * time.Minute)
	defer cancel()
	err := restore(ctx, args)
	if err != nil && ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return fmt.Errorf("restore: %s; nothing was changed", interruption(ctx))
	}
	return err
}

// interruption says why ctx ended.
func interruption(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "it took too long and was stopped"
	}
	return "interrupted"
}

func restore(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	from := fs.String("from", "", "backup file made by keyarc backup, or the state's database itself to record a rollback made in place (required)")
	force := fs.Bool("force", false, "restore even a backup older than the audit trail's head, and record what it drops")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *state == "" || *from == "" {
		return cmdline.UsageError{Msg: "restore: --state DIR and --from FILE are required"}
	}
	cfg, err := config.Load(*state)
	if err != nil {
		return err
	}
	if cfg.IsPostgres() {
		return errPostgresBackup("restore")
	}
	lock, err := statedir.Lock(cfg)
	if err != nil {
		return err
	}
	defer lock.Close()
	if !pemfile.Exists(*from) {
		return fmt.Errorf("restore: %s does not exist", *from)
	}
	dbPath := cfg.Path(cfg.Database)
	inPlace := sameFile(*from, dbPath)
	stamp := time.Now().UTC().Format("20060102T150405Z")

	// The audit key signs the restore's checkpoint: open it first, before anything changes.
	tok, err := statedir.OpenToken(cfg, nil)
	if err != nil {
		return fmt.Errorf("restore: the audit key signs the restore entry: %w", err)
	}
	defer tok.Close()
	signer, err := tok.Signer(cfg.Token.AuditKey)
	if err != nil {
		return fmt.Errorf("restore: audit key %q: %w", cfg.Token.AuditKey, err)
	}
	pub, err := auditPublicKey(cfg, "")
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if !statedir.PublicKeysEqual(pub, signer.Public()) {
		return fmt.Errorf("restore: audit key %q in the token is not the key of %s", cfg.Token.AuditKey, cfg.Path(statedir.AuditCertName))
	}

	headPath := cfg.Path(statedir.AuditHeadName)
	head, herr := audit.ReadHead(headPath)
	switch {
	case errors.Is(herr, audit.ErrNoHead):
		head = nil
	case herr == nil && audit.CheckCheckpoint(head.Checkpoint(), pub) != nil:
		herr = fmt.Errorf("%w: the head file %s is not signed by the audit key", audit.ErrBadSignature, headPath)
		fallthrough
	case herr != nil:
		if !*force {
			return fmt.Errorf("restore refused: %w (--force restores anyway, keeps the head file aside and records it)", herr)
		}
		head = nil
	}
	r := &audit.Restore{Backup: *from, HeadMissing: head == nil, Head: head}
	if head != nil {
		r.TrailSeq = head.Seq
	}
	// How far the replaced database had gone: a backup newer than the head file may still
	// drop entries made after the last checkpoint.
	var replaced *store.AuditEntry
	// What the replaced database published (revocations, CRL numbers) stays published.
	var pub0 *published
	if !inPlace && pemfile.Exists(dbPath) {
		caCert, err := pemfile.ReadCertificate(cfg.Path(cfg.CA.Certificate))
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if rep, err := readReplaced(ctx, dbPath, caCert); err == nil {
			replaced, pub0 = rep.last, &rep.published
			r.ReplacedSeq = rep.last.Seq
			r.TrailSeq = max(r.TrailSeq, rep.last.Seq)
		} else {
			fmt.Fprintf(os.Stderr, "the database in place cannot be read (%v): how far its trail went is not known, and its revocations and CRL number are not carried over\n", err)
		}
	}

	// Work on a copy: opening a database may migrate it, and the backup stays as it was.
	// Everything is written to the copy and to a new head file beside the old one; only
	// renames follow, so a fault (a full disk) leaves the state folder as it was.
	work := dbPath + ".restoring"
	headWork := headPath + ".restoring"
	leftovers := []string{headWork}
	if inPlace {
		work = dbPath
	} else {
		leftovers = append(leftovers, work, work+"-wal", work+"-shm")
	}
	clean := func() {
		for _, p := range leftovers {
			os.Remove(p)
		}
	}
	clean()
	ok := false
	defer func() {
		if !ok {
			clean()
		}
	}()
	if !inPlace {
		sum, err := copyFileSum(ctx, *from, work)
		if err != nil {
			return fmt.Errorf("restore: copy %s into the state folder: %w; nothing was changed", *from, err)
		}
		r.BackupSHA256 = sum
		if err := sameOwner(work, ownerRef(dbPath, cfg.Dir())); err != nil {
			return fmt.Errorf("restore: %w; nothing was changed", err)
		}
	}
	db, err := sqlite.Open(work)
	if errors.Is(err, store.ErrUnavailable) {
		return fmt.Errorf("restore: the state folder's storage failed while opening the copy: %w; nothing was changed", err)
	}
	if errors.Is(err, store.ErrSchema) {
		return fmt.Errorf("restore refused: %s is a database of another keyarc version: %w; restore it with the keyarc that made it; nothing was changed", *from, err)
	}
	if err != nil {
		return fmt.Errorf("restore: %s is not a keyarc database: %w; nothing was changed", *from, err)
	}
	defer func() { db.Close() }()
	if err := db.Check(ctx); err != nil {
		return err
	}
	var checkpoints int
	if err := db.View(ctx, func(tx store.Tx) error {
		if e, err := tx.LastAudit(); err == nil {
			r.RestoredSeq = e.Seq
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		cps, err := tx.Checkpoints(1, 1)
		checkpoints = len(cps)
		return err
	}); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	// Only this appliance's archive is restored, as it was written: a file that holds no
	// trail (an empty or foreign SQLite file), a trail that does not verify against this
	// audit key, or certificates this CA did not issue are refused, even with --force.
	if r.RestoredSeq == 0 {
		return fmt.Errorf("restore refused: %s holds no audit trail, so it is not a keyarc database (every one holds the entries of its init); nothing was changed", *from)
	}
	if _, verr := audit.Verify(ctx, db, pub, nil); verr != nil {
		var p *audit.Problem
		if !errors.As(verr, &p) {
			return fmt.Errorf("restore: %w", verr)
		}
		return fmt.Errorf("restore refused: the audit trail of %s does not verify against this appliance's audit key (%s): %w; it is another appliance's database, or it was changed; nothing was changed", *from, cfg.Path(statedir.AuditCertName), verr)
	}
	crep, err := statedir.ConsistencyCheck(ctx, db, cfg)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if len(crep.Problems) > 0 {
		return fmt.Errorf("restore refused: %d of the %d certificates in %s fail the consistency check against this appliance's CA and audit trail, the first: %w; it is another appliance's database, or it was changed; nothing was changed",
			len(crep.Problems), crep.Certificates, *from, &crep.Problems[0])
	}
	switch {
	case head != nil:
		if rerr := audit.Reaches(ctx, db, head); rerr != nil {
			if !*force {
				return fmt.Errorf("restore refused: %w (the backup is older than the audit trail's last signed checkpoint; --force restores it anyway, keeps the old head file as evidence and records the restore in the trail)", rerr)
			}
			r.Forced = true
		}
	case checkpoints > 0:
		if !*force {
			return fmt.Errorf("restore refused: the head file %s is missing, so nothing shows how far the audit trail had gone; --force restores anyway and records the restore, with the head missing, in the trail", headPath)
		}
		r.Forced = true
	}
	// The database in place may have gone further than the head file (no checkpoint yet, or
	// never served): the backup must hold its last entry, or the restore drops history.
	if replaced != nil && !r.Forced {
		if rerr := holds(ctx, db, replaced); rerr != nil {
			if !*force {
				return fmt.Errorf("restore refused: %w (--force restores it anyway, keeps the replaced database as evidence and records the restore in the trail)", rerr)
			}
			r.Forced = true
		}
	}
	if inPlace {
		r.TrailSeq = max(r.TrailSeq, r.RestoredSeq)
	}

	if err := ctx.Err(); err != nil {
		return err
	}
	// Record the restore and sign it in the copy, the new head file beside the old one.
	keptDB := ""
	if !inPlace && pemfile.Exists(dbPath) {
		keptDB = dbPath + ".before-restore-" + stamp
		r.ReplacedKeptAs = keptDB
	}
	err = db.Update(ctx, func(tx store.Tx) error {
		_, err := audit.Append(tx, time.Now(), audit.KindRestore, osActor(), filepath.Base(*from), audit.Details{Restore: r})
		return err
	})
	if err != nil {
		return fmt.Errorf("restore: record the restore in the audit trail: %w; nothing was changed", err)
	}
	var carried *carriedOver
	if pub0 != nil {
		if carried, err = keepPublished(ctx, db, pub0, osActor(), time.Now()); err != nil {
			return fmt.Errorf("restore: carry the replaced database's revocations and CRL number over: %w; nothing was changed", err)
		}
	}
	cp := &audit.Checkpointer{DB: db, Signer: signer, HeadPath: headWork}
	c, err := cp.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("restore: sign the audit trail after the restore: %w; nothing was changed", err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := sameOwner(headWork, ownerRef(headPath, cfg.Dir())); err != nil {
		return fmt.Errorf("restore: %w; nothing was changed", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// Put the database and the head file in place, the replaced ones kept as evidence.
	if keptDB != "" {
		if err := os.Rename(dbPath, keptDB); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		for _, suffix := range []string{"-wal", "-shm"} {
			if pemfile.Exists(dbPath + suffix) {
				os.Rename(dbPath+suffix, keptDB+suffix)
			}
		}
		fmt.Fprintf(os.Stderr, "the previous database is kept as %s\n", keptDB)
	}
	if !inPlace {
		if err := os.Rename(work, dbPath); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	ok = true
	if pemfile.Exists(headPath) {
		kept := headPath + ".before-restore-" + stamp
		if err := os.Rename(headPath, kept); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		fmt.Fprintf(os.Stderr, "the audit head file is kept as %s\n", kept)
	}
	if err := os.Rename(headWork, headPath); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(os.Stderr, "restore recorded in the audit trail as entry %d, signed; the head file continues from it\n", c.Seq)
	if from, to, lost := r.Lost(); lost {
		fmt.Fprintf(os.Stderr, "entries %d to %d of the previous trail are not in the restored database\n", from, to)
	}
	if carried != nil {
		if n := carried.revoked + carried.keyCompromise; n > 0 {
			fmt.Fprintf(os.Stderr, "%d revocations of the previous database were not in the backup and are kept (a revocation is final)\n", n)
		}
		if carried.crl > 0 {
			fmt.Fprintf(os.Stderr, "the previous database's CRL %d is kept: the next CRL is numbered above it\n", carried.crl)
		}
		if len(carried.missing) > 0 {
			fmt.Fprintf(os.Stderr, "WARNING: %d certificates revoked in the previous database are not issued in the backup (issued after it), so their revocations are not carried over: %s; they are in %s\n",
				len(carried.missing), strings.Join(carried.missing[:min(len(carried.missing), 10)], ", "), r.ReplacedKeptAs)
		}
	}
	fmt.Println(dbPath)
	return nil
}

// osActor names the operating-system user who runs a local command, for the audit trail.
// errPostgresBackup refuses backup and restore of a PostgreSQL archive: they copy a SQLite
// file, and a PostgreSQL database is backed up and restored with the server's own tools.
func errPostgresBackup(cmd string) error {
	return fmt.Errorf("%s: the database is PostgreSQL; keyarc %s copies a SQLite file: back it up and restore it with the server's tools (pg_dump and pg_restore, or its base backups)", cmd, cmd)
}

func osActor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if s := os.Getenv("SUDO_USER"); s != "" && s != name {
		name = s + " (sudo as " + name + ")"
	}
	return "os:" + name
}

// sameFile tells whether two paths name the same file.
func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// holds tells whether db holds the replaced database's last entry, with the same hash.
func holds(ctx context.Context, db store.Store, last *store.AuditEntry) error {
	if last.Seq == 0 {
		return nil
	}
	return db.View(ctx, func(tx store.Tx) error {
		e, err := tx.GetAudit(last.Seq)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("the backup's audit trail ends before entry %d, which the database in place holds: restoring it drops audited history", last.Seq)
		}
		if err != nil {
			return err
		}
		if !bytes.Equal(e.Hash, last.Hash) {
			return fmt.Errorf("entry %d of the backup is not the one of the database in place: the two have another history", last.Seq)
		}
		return nil
	})
}

// ownerRef is the file whose owner a restored file takes: the one it replaces, else the
// state folder.
func ownerRef(replaced, dir string) string {
	if pemfile.Exists(replaced) {
		return replaced
	}
	return dir
}

// sameOwner gives path the owner and group of ref: a restore run as root (sudo) must leave
// files that the appliance's own user can open.
func sameOwner(path, ref string) error {
	rs, err := os.Stat(ref)
	if err != nil {
		return err
	}
	ps, err := os.Stat(path)
	if err != nil {
		return err
	}
	want, ok1 := rs.Sys().(*syscall.Stat_t)
	got, ok2 := ps.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 || (want.Uid == got.Uid && want.Gid == got.Gid) {
		return nil
	}
	if err := os.Chown(path, int(want.Uid), int(want.Gid)); err != nil {
		return fmt.Errorf("%s cannot be given the owner of %s (uid %d, gid %d), so the appliance could not open it: %w; run the restore as that user or as root", path, ref, want.Uid, want.Gid, err)
	}
	return nil
}

// interruptible is a context that ends after d, or at Ctrl-C or SIGTERM: a local command
// that writes files then stops at its next step and removes what it wrote, instead of
// dying with a partial file in place.
func interruptible(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	return ctx, func() { stop(); cancel() }
}

// ctxReader stops a copy once its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// copyFileSum copies a file (the copy must not exist) and returns the SHA-256 (hex) of what it
// copied.
func copyFileSum(ctx context.Context, from, to string) (string, error) {
	in, err := os.Open(from)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), ctxReader{ctx, in})
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(to) // no partial copy is left behind
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
