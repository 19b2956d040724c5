package cli

import (
	"bufio"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
)

// RunRecoveryRequest is `keyarc recovery request` (officer).
func RunRecoveryRequest(args []string) error {
	fs := flag.NewFlagSet("recovery request", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	serial := fs.String("serial", "", "serial (hex) of the certificate whose key to recover")
	email := fs.String("email", "", "recover every archived key of this mailbox")
	reason := fs.String("reason", "", "why (required; recorded)")
	revoke := fs.String("revoke", "", "when the key is fetched, revoke the certificate(s) as `REASON`: keyCompromise (a lost or stolen device: every certificate of the key) or superseded")
	keep := fs.Bool("keep", false, "when the key is fetched, leave the certificate(s) valid")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if (*serial == "") == (*email == "") || *reason == "" {
		return cmdline.UsageError{Msg: "recovery request: give --serial HEX or --email ADDR, and --reason TEXT"}
	}
	choice, err := recoveryRevokeChoice(*revoke, *keep)
	if err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var rec wire.Recovery
	if err := c.call("POST", "/api/v1/recoveries", wire.RecoveryRequest{Serial: *serial, Email: *email, Reason: *reason, Revoke: choice}, &rec); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "recovery %s opened for %d key(s); %s before %s\n", rec.ID, len(rec.Items), needText(rec), shownTime(rec.ExpiresAt))
	for _, it := range rec.Items {
		if it.Revoke != "" && it.Revoke != policy.RecoveryKeep {
			fmt.Fprintf(os.Stderr, "  certificate %s will be revoked (%s) when the key is fetched\n", it.Serial, it.Revoke)
		} else if it.Revoke == policy.RecoveryKeep {
			fmt.Fprintf(os.Stderr, "  certificate %s stays valid (keep)\n", it.Serial)
		}
	}
	fmt.Println(rec.ID)
	return nil
}

// recoveryRevokeChoice reads --revoke and --keep: at most one; neither leaves the choice to
// the certificates' templates (recovery_revoke; keep unless a template says otherwise).
func recoveryRevokeChoice(revoke string, keep bool) (string, error) {
	switch {
	case revoke != "" && keep:
		return "", cmdline.UsageError{Msg: "recovery request: give --revoke REASON or --keep, not both"}
	case keep:
		return policy.RecoveryKeep, nil
	case revoke == "":
		return "", nil
	}
	name, _, keepIt, err := policy.ParseRecoveryRevocation(revoke)
	if err != nil || keepIt {
		return "", cmdline.UsageError{Msg: "recovery request: --revoke takes keyCompromise (the key is in other hands) or superseded; --keep leaves the certificate valid"}
	}
	return name, nil
}

// RunRecoveryList is `keyarc recovery list`.
func RunRecoveryList(args []string) error {
	fs := flag.NewFlagSet("recovery list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	status := fs.String("status", "", "only requests in this state: open, consumed, cancelled or expired")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var list []wire.Recovery
	if err := c.call("GET", "/api/v1/recoveries?state="+*status, nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(list)
	}
	// The list carries no approval counts: ask for those of the open requests, so that one
	// whose quorum is met reads "approved", as in recovery show.
	for i, r := range list {
		if effectiveState(r, time.Now()) == "open" {
			var full wire.Recovery
			if err := c.call("GET", "/api/v1/recoveries/"+r.ID, nil, &full); err == nil {
				list[i].Have, list[i].Need = full.Have, full.Need
			}
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tREQUESTER\tCREATED\tEXPIRES\tREASON")
	for _, r := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, effectiveState(r, time.Now()), r.Requester, r.CreatedAt, shownTime(r.ExpiresAt), shownReason(r.Reason))
	}
	return tw.Flush()
}

// effectiveState is what a request's stored state means now: an open request whose quorum is
// met is "approved" (ready to fetch), one past its expiry is "expired" (the appliance refuses it
// from then on, whether or not a sweep has marked it yet).
func effectiveState(r wire.Recovery, now time.Time) string {
	if r.State != "open" {
		return r.State
	}
	if exp, err := time.Parse(time.RFC3339Nano, r.ExpiresAt); err == nil && !now.Before(exp) {
		return "expired"
	}
	if r.Need > 0 && r.Have >= r.Need {
		return "approved"
	}
	return r.State
}

// shownTime is a time of the API to the second: expiries come to the nanosecond, as the KRAs
// sign them, which no reader needs.
func shownTime(s string) string {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.UTC().Format(time.RFC3339)
}

// stateNote explains an effective state in recovery show.
func stateNote(state string) string {
	switch state {
	case "approved":
		return " (quorum met; the requesting officer can fetch it)"
	case "expired":
		return " (past its expiry; open a new request)"
	}
	return ""
}

func printRecovery(r wire.Recovery) {
	st := effectiveState(r, time.Now())
	fmt.Printf("recovery %s: %s%s\n", r.ID, st, stateNote(st))
	fmt.Printf("  requested by %s (credential %s) at %s, expires %s\n", r.Requester, r.RequesterSerial, r.CreatedAt, shownTime(r.ExpiresAt))
	fmt.Printf("  reason: %s\n", shownReason(r.Reason))
	fmt.Printf("  approvals: %d of %d needed", r.Have, r.Need)
	if len(r.Approvals) > 0 {
		fmt.Printf(" (%s)", strings.Join(r.Approvals, ", "))
	}
	fmt.Println(quorumNote(r))
	for _, it := range r.Items {
		fmt.Printf("  key of certificate %s, owner %s, sealed under recovery set epoch %d", it.Serial, it.Owner, it.Epoch)
		switch it.Revoke {
		case "":
		case policy.RecoveryKeep:
			fmt.Print("; the certificate stays valid")
		default:
			fmt.Printf("; the certificate is revoked (%s) when the key is fetched", it.Revoke)
		}
		fmt.Println()
	}
}

// shownReason is a request's reason as the terminal shows it. The appliance accepts only
// printable reasons, but a request stored before it checked reseal reasons may hold line
// breaks or terminal escapes: such a reason is shown quoted, its control characters escaped,
// so that it cannot pass for other lines of the request or move the cursor.
func shownReason(reason string) string {
	if !utf8.ValidString(reason) || strings.ContainsFunc(reason, func(r rune) bool { return r != '\t' && unicode.IsControl(r) }) {
		return strconv.QuoteToGraphic(reason)
	}
	return reason
}

// RunRecoveryShow is `keyarc recovery show ID`.
func RunRecoveryShow(args []string) error {
	fs := flag.NewFlagSet("recovery show", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("recovery show", pos, 1, "the request ID"); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var rec wire.Recovery
	if err := c.call("GET", "/api/v1/recoveries/"+pos[0], nil, &rec); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(rec)
	}
	printRecovery(rec)
	return nil
}

// RunRecoveryApprove is a KRA's approval: the share is decrypted in the KRA's own token and
// re-encrypted to the request's recovery key; the approval is signed with the KRA's auth key.
func RunRecoveryApprove(args []string) error {
	fs := flag.NewFlagSet("recovery approve", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	cf.registerToken(fs)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("recovery approve", pos, 1, "the request ID"); err != nil {
		return err
	}
	if cf.tokenLbl == "" && !strings.HasPrefix(cf.as, "kra") {
		return cmdline.UsageError{Msg: "recovery approve: a KRA approves with its token: --token-label L --pin-file F (or --state DIR --as kraN)"}
	}
	interactive := term.IsTerminal(int(os.Stdin.Fd()))
	if !*yes && !interactive {
		return cmdline.UsageError{Msg: "recovery approve: no terminal to confirm on; add --yes to approve without asking"}
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	id := pos[0]
	var rec wire.Recovery
	if err := c.call("GET", "/api/v1/recoveries/"+id, nil, &rec); err != nil {
		return err
	}
	printRecovery(rec)
	if !*yes {
		fmt.Printf("Approve recovery %s with token %q? Type yes: ", id, c.token.Label())
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		if strings.TrimSpace(line) != "yes" {
			return errors.New("not approved")
		}
	}
	shares, err := reencryptShares(c.token, rec)
	if err != nil {
		return err
	}
	digest, err := approvalDigest(rec, shares)
	if err != nil {
		return err
	}
	sig, err := signAsKRA(c.token, digest, "approval")
	if err != nil {
		return err
	}
	var body wire.Approval
	for _, sh := range shares {
		body.Shares = append(body.Shares, struct {
			RecordID string `json:"record_id"`
			Share    string `json:"share"`
		}{sh.RecordID, base64.StdEncoding.EncodeToString(sh.Share)})
	}
	body.Signature = base64.StdEncoding.EncodeToString(sig)
	var after wire.Recovery
	if err := c.call("POST", "/api/v1/recoveries/"+id+"/approvals", body, &after); err != nil {
		return err
	}
	fmt.Printf("approved: %d of %d approvals%s\n", after.Have, after.Need, quorumNote(after))
	return nil
}

// epochsOf lists the recovery-set epochs the request's keys were sealed under, in order.
func epochsOf(r wire.Recovery) []uint32 {
	var epochs []uint32
	for _, it := range r.Items {
		if !slices.Contains(epochs, it.Epoch) {
			epochs = append(epochs, it.Epoch)
		}
	}
	slices.Sort(epochs)
	return epochs
}

// quorumNote follows a request's approvals against its quorum (Have of Need): keys sealed under
// several epochs each need their own epoch's quorum, and Have and Need are then the
// least-approved key's only.
func quorumNote(r wire.Recovery) string {
	if epochs := epochsOf(r); len(epochs) > 1 {
		return fmt.Sprintf(" for the least-approved key; each key needs the quorum of its own recovery set (epochs %s)", epochList(epochs))
	}
	return ""
}

// needText says what a new request needs.
func needText(r wire.Recovery) string {
	if epochs := epochsOf(r); len(epochs) > 1 {
		return fmt.Sprintf("needs, for each key, the quorum of its own recovery set (epochs %s)", epochList(epochs))
	}
	return fmt.Sprintf("needs %d KRA approvals", r.Need)
}

// reencryptShares decrypts the KRA's share of each record in its token and encrypts it to the
// request's recovery key. Plain shares exist only in memory, briefly, and are cleared.
func reencryptShares(tok *hsm.Token, rec wire.Recovery) ([]escrow.ApprovedShare, error) {
	_, recKey, err := rsaKeyFromSPKI(rec.RecoveryKey, "recovery key")
	if err != nil {
		return nil, err
	}
	toHash, err := hashNamed(rec.KeyOAEPHash)
	if err != nil {
		return nil, err
	}
	unwrap, err := tok.Decrypter(kraUnwrapLabel)
	if err != nil {
		return nil, fmt.Errorf("KRA unwrap key: %w", err)
	}
	var out []escrow.ApprovedShare
	for _, it := range rec.Items {
		if it.Share == "" {
			continue
		}
		pt, err := decryptShare(unwrap, it.Share, it.OAEPHash)
		if err != nil {
			return nil, fmt.Errorf("decrypt your share of record %s in the token: %w", it.RecordID, err)
		}
		re, err := rsa.EncryptOAEP(toHash.New(), rand.Reader, recKey, pt, nil)
		clear(pt)
		if err != nil {
			return nil, err
		}
		out = append(out, escrow.ApprovedShare{RecordID: it.RecordID, Share: re})
	}
	if len(out) == 0 {
		return nil, errors.New("your token holds no share of any record in this request (your KRA is not in their recovery sets)")
	}
	return out, nil
}

func hashNamed(name string) (crypto.Hash, error) {
	switch name {
	case "SHA-1":
		return crypto.SHA1, nil
	case "SHA-256":
		return crypto.SHA256, nil
	}
	return 0, fmt.Errorf("unknown OAEP hash %q", name)
}

// approvalDigest recomputes, from what the appliance showed, what the KRA signs.
func approvalDigest(rec wire.Recovery, shares []escrow.ApprovedShare) ([]byte, error) {
	spki, err := base64.StdEncoding.DecodeString(rec.RecoveryKey)
	if err != nil {
		return nil, err
	}
	exp, err := time.Parse(time.RFC3339Nano, rec.ExpiresAt)
	if err != nil {
		return nil, fmt.Errorf("expiry %q: %w", rec.ExpiresAt, err)
	}
	r := &store.Recovery{ID: rec.ID, Requester: rec.Requester, RequesterSerial: rec.RequesterSerial, KeySPKI: spki, ExpiresAt: exp}
	for _, it := range rec.Items {
		r.Records = append(r.Records, it.RecordID)
	}
	return escrow.ApprovalDigest(r, shares), nil
}

// RunRecoveryFetch is `keyarc recovery fetch ID` (the requesting officer).
func RunRecoveryFetch(args []string) error {
	fs := flag.NewFlagSet("recovery fetch", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	out := fs.String("out", "", "PKCS#12 file to write (required); several keys get FILE-SERIAL.p12")
	pwFile := fs.String("password-file", "", "file to write the PKCS#12 password to, mode 0600 (required)")
	legacy := fs.Bool("legacy", false, "3DES/SHA-1 PKCS#12 for old clients (weaker; only when needed)")
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("recovery fetch", pos, 1, "the request ID"); err != nil {
		return err
	}
	if *out == "" || *pwFile == "" {
		return cmdline.UsageError{Msg: "recovery fetch: --out FILE.p12 and --password-file FILE are required"}
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	// Fetching consumes the request (and revokes its certificates if it says so): every file
	// the fetch writes is made first, empty, so that nothing is left to fail but the writes.
	// The request's records give the names, as the fetch names its files.
	var rec wire.Recovery
	if err := c.call("GET", "/api/v1/recoveries/"+pos[0], nil, &rec); err != nil {
		return err
	}
	serials := make([]string, 0, len(rec.Items))
	for _, it := range rec.Items {
		serials = append(serials, it.Serial)
	}
	outs := fetchPaths(*out, serials)
	files, err := createFetchFiles(append([]string{*pwFile}, outs...))
	if err != nil {
		return err
	}
	consumed := false
	defer func() {
		if !consumed {
			files.remove()
		}
	}()
	guard := guardFetch(files)
	defer guard.stop()
	var got wire.Fetched
	guard.sending()
	if err := c.call("POST", "/api/v1/recoveries/"+pos[0]+"/fetch", map[string]bool{"legacy": *legacy}, &got); err != nil {
		return err
	}
	// From here the request is consumed: every file is kept, and a write that fails does not
	// stop the others.
	consumed = true
	var failed error
	if err := files.fill(*pwFile, []byte(got.Password+"\n")); err != nil {
		failed = fmt.Errorf("the recovery is consumed but the password could not be written to %s: %w", *pwFile, err)
	}
	fetched := make([]string, 0, len(got.Files))
	for _, f := range got.Files {
		fetched = append(fetched, f.Serial)
	}
	names := fetchPaths(*out, fetched)
	for i, f := range got.Files {
		pfx, err := base64.StdEncoding.DecodeString(f.PFX)
		if err == nil {
			err = files.fill(names[i], pfx)
		}
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("the recovery is consumed but the PKCS#12 of certificate %s could not be written to %s: %w", f.Serial, names[i], err))
			continue
		}
		fmt.Println(names[i])
	}
	// A file made for a record the fetch did not return (the records the request listed
	// were not those it delivered) is left empty: it goes.
	files.removeUnfilled()
	if got.Revocations != nil {
		printRevocations(os.Stderr, "revoked as the request said", got.Revocations.Revoked)
		printRevocations(os.Stderr, "moved to keyCompromise", got.Revocations.KeyCompromise)
		printRevocations(os.Stderr, "already revoked, unchanged", got.Revocations.Unchanged)
	}
	if failed != nil {
		return failed
	}
	fmt.Fprintf(os.Stderr, "password written to %s; deliver the PKCS#12 and its password by different channels\n", *pwFile)
	return nil
}

// fetchGuard handles Ctrl-C (and SIGTERM) during a fetch. Before the fetch is sent, it removes
// the files made for it and ends the command: nothing was fetched. Once it is sent, the request
// may already be consumed by it, and its answer is the only copy of the keys and their
// password: the signal is refused with a message, and the command goes on to write the files.
type fetchGuard struct {
	mu    sync.Mutex
	sent  bool
	sig   chan os.Signal
	done  chan struct{}
	files *preparedFiles
}

func guardFetch(files *preparedFiles) *fetchGuard {
	g := &fetchGuard{sig: make(chan os.Signal, 1), done: make(chan struct{}), files: files}
	signal.Notify(g.sig, os.Interrupt, syscall.SIGTERM)
	go g.watch()
	return g
}

func (g *fetchGuard) watch() {
	for {
		select {
		case <-g.done:
			return
		case <-g.sig:
		}
		g.mu.Lock()
		if !g.sent {
			g.files.remove()
			fmt.Fprintln(os.Stderr, "keyarc: interrupted before the fetch; nothing was fetched and the request is unchanged")
			os.Exit(130)
		}
		g.mu.Unlock()
		fmt.Fprintln(os.Stderr, "keyarc: the fetch is under way and may already have consumed the request; waiting for its answer to write the files (kill -9 would lose them)")
	}
}

// sending marks the fetch as sent: from now on a signal no longer stops the command.
func (g *fetchGuard) sending() {
	g.mu.Lock()
	g.sent = true
	g.mu.Unlock()
}

func (g *fetchGuard) stop() {
	signal.Stop(g.sig)
	close(g.done)
}

// fetchPaths names the PKCS#12 files of a fetch of the records of serials: out for one, else
// out with "-SERIAL" before its extension for each.
func fetchPaths(out string, serials []string) []string {
	if len(serials) <= 1 {
		return []string{out}
	}
	ext := filepath.Ext(out)
	paths := make([]string, 0, len(serials))
	for _, s := range serials {
		paths = append(paths, strings.TrimSuffix(out, ext)+"-"+s+ext)
	}
	return paths
}

// createFetchFiles makes each of paths, empty and mode 0600, refusing one that exists; if one
// cannot be made, those already made are removed and the error says which file and why.
func createFetchFiles(paths []string) (*preparedFiles, error) {
	files := make([]outFile, 0, len(paths))
	for _, p := range paths {
		files = append(files, outFile{p, 0o600})
	}
	pf, err := prepareFiles("", files)
	var pe *os.PathError
	switch {
	case errors.Is(err, errNamedTwice):
		return nil, fmt.Errorf("%w; give --out and --password-file different names (nothing was fetched)", err)
	case errors.Is(err, os.ErrExist) && errors.As(err, &pe):
		return nil, fmt.Errorf("%s exists; not overwritten (a recovery can be fetched only once; nothing was fetched)", pe.Path)
	case errors.As(err, &pe):
		return nil, fmt.Errorf("cannot write %s, so nothing was fetched: %w", pe.Path, pe.Err)
	}
	return pf, err
}

// RunRecoveryCancel is `keyarc recovery cancel ID`: the officer who requested a recovery, or
// the admin who requested a reseal.
func RunRecoveryCancel(args []string) error {
	fs := flag.NewFlagSet("recovery cancel", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("recovery cancel", pos, 1, "the request ID"); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.call("POST", "/api/v1/recoveries/"+pos[0]+"/cancel", nil, nil); err != nil {
		return err
	}
	fmt.Printf("recovery %s cancelled\n", pos[0])
	return nil
}
