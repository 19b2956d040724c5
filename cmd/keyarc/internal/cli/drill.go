package cli

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/hsm"
)

// ErrDrillFailed: the KRA's token could not prove its canary shares.
var ErrDrillFailed = errors.New("drill failed")

// RunKRADrill is `keyarc kra drill [--drill ID]`: the KRA proves, with its own token, that it
// can still decrypt its shares. Without --drill it answers each of its open drills (a
// campaign's), or opens one for itself when none is open.
func RunKRADrill(args []string) error {
	fs := flag.NewFlagSet("kra drill", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	cf.registerToken(fs)
	only := fs.String("drill", "", "answer this drill `ID` only")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if cf.tokenLbl == "" && !strings.HasPrefix(cf.as, "kra") {
		return cmdline.UsageError{Msg: "kra drill: a KRA drills with its token: --token-label L --pin-file F --cert AUTH.pem (or --state DIR --as kraN)"}
	}
	if *only != "" && !isDrillID(*only) {
		return cmdline.UsageError{Msg: "kra drill: --drill takes a drill ID: 16 lower-case hex digits, as `keyarc admin drill list` shows them"}
	}
	c, err := cf.dial(true)
	if err != nil {
		if errors.Is(err, hsm.ErrKeyNotFound) {
			return fmt.Errorf("%w: your token holds no KRA auth key (label %s): it is not the token you enrolled with, or it was emptied; "+
				"tell an admin at once: the records sealed to you now depend on the other KRAs (`keyarc admin recovery-set show`): %w",
				ErrDrillFailed, kraAuthLabel, err)
		}
		return err
	}
	defer c.close()
	var ids []string
	if *only != "" {
		ids = []string{*only}
	} else {
		var open []wire.Drill
		if err := c.call("GET", "/api/v1/drills?open=1", nil, &open); err != nil {
			return err
		}
		for _, d := range open {
			ids = append(ids, d.ID)
		}
		if len(ids) == 0 {
			var made []wire.Drill
			if err := c.call("POST", "/api/v1/drills", wire.DrillRequest{}, &made); err != nil {
				return err
			}
			for _, d := range made {
				ids = append(ids, d.ID)
			}
		}
	}
	for _, id := range ids {
		if err := answerDrill(c, id); err != nil {
			return err
		}
	}
	return nil
}

// answerDrill answers one drill: each canary share is decrypted in the token and checked
// against the appliance's commitment before anything is sent, so that the token never
// decrypts for the appliance a share whose plaintext the appliance did not already know
// (a user record's share passed off as a canary's is refused here).
func answerDrill(c *client, id string) error {
	var d wire.Drill
	if err := c.call("GET", "/api/v1/drills/"+url.PathEscape(id), nil, &d); err != nil {
		return err
	}
	spki, drillKey, err := rsaKeyFromSPKI(d.DrillKey, "drill key")
	if err != nil {
		return err
	}
	toHash, err := hashNamed(d.KeyHash)
	if err != nil {
		return err
	}
	exp, err := time.Parse(time.RFC3339Nano, d.ExpiresAt)
	if err != nil {
		return fmt.Errorf("drill expiry %q: %w", d.ExpiresAt, err)
	}
	unwrap, err := c.token.Decrypter(kraUnwrapLabel)
	if err != nil {
		return fmt.Errorf("%w: your token holds no KRA unwrap key (label %s): the records sealed to you cannot use your share; "+
			"tell an admin at once (`keyarc admin recovery-set show` says which epochs need a reseal): %w", ErrDrillFailed, kraUnwrapLabel, err)
	}
	var shares []escrow.ProvenShare
	var failed []string
	for _, it := range d.Items {
		keyID, err := base64.StdEncoding.DecodeString(it.KeyID)
		if err != nil {
			return err
		}
		commitment, err := base64.StdEncoding.DecodeString(it.Commitment)
		if err != nil {
			return err
		}
		pt, err := decryptShare(unwrap, it.Share, it.OAEPHash)
		if err != nil {
			// The other epochs are still proven; this one is reported at the end.
			failed = append(failed, fmt.Sprintf("epoch %d (%v)", it.Epoch, err))
			continue
		}
		match := bytes.Equal(escrow.CanaryCommitment(it.Epoch, keyID, pt), commitment)
		if !match {
			clear(pt)
			return fmt.Errorf("%w: the share of epoch %d that the appliance sent is not the canary it committed to; nothing was "+
				"sent back. Report this to your security officer", ErrDrillFailed, it.Epoch)
		}
		re, err := rsa.EncryptOAEP(toHash.New(), rand.Reader, drillKey, pt, nil)
		clear(pt)
		if err != nil {
			return err
		}
		shares = append(shares, escrow.ProvenShare{Epoch: it.Epoch, Share: re})
	}
	cannot := func() error {
		return fmt.Errorf("%w: your token could not decrypt your share of %s: its unwrap key is not the one your KRA "+
			"certificate of that epoch names (a replaced or re-initialised token?); tell an admin at once "+
			"(`keyarc admin recovery-set show` says which epochs need a reseal)", ErrDrillFailed, strings.Join(failed, ", "))
	}
	if len(shares) == 0 {
		if len(failed) > 0 {
			return cannot()
		}
		return fmt.Errorf("drill %s asks for no share of yours", id)
	}
	digest := escrow.DrillDigest(&escrow.Drill{ID: d.ID, Campaign: d.Campaign, KRA: d.KRA, Epochs: d.Epochs, KeySPKI: spki, ExpiresAt: exp}, shares)
	sig, err := signAsKRA(c.token, digest, "drill proof")
	if err != nil {
		return err
	}
	var body wire.DrillProof
	for _, sh := range shares {
		body.Shares = append(body.Shares, struct {
			Epoch uint32 `json:"epoch"`
			Share string `json:"share"`
		}{sh.Epoch, base64.StdEncoding.EncodeToString(sh.Share)})
	}
	body.Signature = base64.StdEncoding.EncodeToString(sig)
	var after wire.Drill
	if err := c.call("POST", "/api/v1/drills/"+url.PathEscape(id)+"/proof", body, &after); err != nil {
		return err
	}
	fmt.Printf("drill %s: %s, epochs %s\n", after.ID, after.State, epochList(after.Proven))
	if len(failed) > 0 {
		return cannot()
	}
	return nil
}

// isDrillID reports whether id has the form of a drill ID (16 lower-case hex digits).
func isDrillID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for i := range len(id) {
		if !('0' <= id[i] && id[i] <= '9' || 'a' <= id[i] && id[i] <= 'f') {
			return false
		}
	}
	return true
}

func epochList(es []uint32) string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = fmt.Sprint(e)
	}
	return strings.Join(parts, ", ")
}

// RunDrillOpen is `keyarc admin drill open [--kra NAME]`: a campaign (one drill per KRA of
// every live epoch), or one KRA's drill.
func RunDrillOpen(args []string) error {
	fs := flag.NewFlagSet("admin drill open", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	kra := fs.String("kra", "", "drill this KRA `NAME` only (default: a campaign of every KRA)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var out []wire.Drill
	if err := c.call("POST", "/api/v1/drills", wire.DrillRequest{KRA: *kra}, &out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(out)
	}
	printDrills(out)
	return nil
}

// RunDrillList is `keyarc admin drill list [--campaign ID] [--open]`: who has answered.
func RunDrillList(args []string) error {
	fs := flag.NewFlagSet("admin drill list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	campaign := fs.String("campaign", "", "the drills of this campaign `ID`")
	open := fs.Bool("open", false, "open drills only")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	q := url.Values{}
	if *campaign != "" {
		q.Set("campaign", *campaign)
	}
	if *open {
		q.Set("open", "1")
	}
	var out []wire.Drill
	if err := c.call("GET", "/api/v1/drills?"+q.Encode(), nil, &out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(out)
	}
	printDrills(out)
	return nil
}

func printDrills(ds []wire.Drill) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DRILL\tCAMPAIGN\tKRA\tEPOCHS\tSTATE\tEXPIRES")
	for _, d := range ds {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, orDash(d.Campaign), d.KRA, epochList(d.Epochs), d.State, shownTime(d.ExpiresAt))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// healthHeader is the line above the health of the epochs: the window and the margin as
// configured (an appliance that sends only whole days: in days).
func healthHeader(h wire.RecoveryHealth) string {
	window, margin := time.Duration(h.WindowSeconds)*time.Second, time.Duration(h.MarginSeconds)*time.Second
	if h.WindowSeconds == 0 {
		window, margin = time.Duration(h.WindowDays)*24*time.Hour, time.Duration(h.MarginDays)*24*time.Hour
	}
	valid := "certificates valid beyond " + escrow.SpanText(margin)
	if margin == 0 {
		valid = "certificates not expired"
	}
	return fmt.Sprintf("\nquorum health (a KRA counts when proven by a drill within %s; %s):\n", escrow.SpanText(window), valid)
}

// printHealth prints the quorum health of each live epoch, and what to do.
func printHealth(h wire.RecoveryHealth) {
	fmt.Print(healthHeader(h))
	for _, e := range h.Epochs {
		state := "ok"
		switch {
		case e.NeedsReseal:
			state = "NEEDS RESEAL"
		case e.AtRisk:
			state = "AT RISK"
		case e.Records == 0 && e.Proven < e.Quorum:
			state = "unproven"
		}
		cur := ""
		if e.Current {
			cur = " (current)"
		}
		fmt.Printf("epoch %d%s: %d records, %d of %d KRAs proven, quorum %d, %d valid: %s\n", e.Epoch, cur, e.Records, e.Proven, len(e.KRAs), e.Quorum, e.Valid, state)
		// Rows begin with the epoch, not the KRA's name: scripts that pick a KRA's serial from
		// the set's table by its first column still find one row.
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  EPOCH\tKRA\tSERIAL\tLAST PROOF\tEXPIRES")
		for _, k := range e.KRAs {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", e.Epoch, k.Name, k.Serial, orDash(k.LastProof), k.NotAfter)
		}
		tw.Flush()
		if e.Advice != "" {
			fmt.Printf("  -> %s\n", e.Advice)
		}
	}
}
