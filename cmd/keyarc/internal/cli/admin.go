package cli

import (
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
)

// RunPendingList is `keyarc admin pending list` (admin).
func RunPendingList(args []string) error {
	fs := flag.NewFlagSet("admin pending list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	all := fs.Bool("all", false, "include decided requests")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	path := "/api/v1/pending"
	if *all {
		path += "?state=all"
	}
	var list []wire.Pending
	if err := c.call("GET", path, nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(list)
	}
	if len(list) == 0 {
		fmt.Println("no pending requests")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTEMPLATE\tNAME\tSTATE\tCREATED\tKEY FINGERPRINTS (SHA-256)")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Template, p.Name, p.State, p.CreatedAt, strings.Join(p.Fingerprints, " "))
	}
	return tw.Flush()
}

// RunPendingDecide is `keyarc admin pending issue|deny ID` (admin); verb is "issue" or "deny".
func RunPendingDecide(verb string, args []string) error {
	fs := flag.NewFlagSet("admin pending "+verb, flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := cmdline.WantArgs("admin pending "+verb, pos, 1, "the request ID"); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	if verb == "deny" {
		if err := c.call("POST", "/api/v1/pending/"+pos[0]+"/deny", nil, nil); err != nil {
			return err
		}
		fmt.Printf("request %s denied\n", pos[0])
		return nil
	}
	var issued []wire.Issued
	if err := c.call("POST", "/api/v1/pending/"+pos[0]+"/issue", nil, &issued); err != nil {
		return err
	}
	for _, is := range issued {
		cert, err := pemfile.ParseCertificate(is.Certificate)
		if err != nil {
			return err
		}
		fmt.Printf("issued %s  %s  until %s\n", is.Serial, cert.Subject.CommonName, is.NotAfter)
	}
	return nil
}

// RunRecoverySetShow is `keyarc admin recovery-set show`.
func RunRecoverySetShow(args []string) error {
	fs := flag.NewFlagSet("admin recovery-set show", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var rs wire.RecoverySet
	if err := c.call("GET", "/api/v1/recovery-set", nil, &rs); err != nil {
		return err
	}
	// The set is shown even when its health cannot be read (an appliance of an older
	// version, a storage fault): the refusal is said on stderr.
	var health *wire.RecoveryHealth
	if err := c.call("GET", "/api/v1/recovery-set/health", nil, &health); err != nil {
		fmt.Fprintf(os.Stderr, "quorum health not available: %v\n", err)
		health = nil
	}
	if *asJSON {
		return printJSON(struct {
			wire.RecoverySet
			Health *wire.RecoveryHealth `json:"health,omitempty"`
		}{rs, health})
	}
	printRecoverySet(rs)
	if health != nil {
		printHealth(*health)
	}
	return nil
}

func printRecoverySet(rs wire.RecoverySet) {
	fmt.Printf("epoch %d: any %d of %d KRAs\n", rs.Epoch, rs.Quorum, len(rs.KRAs))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KRA\tSERIAL\tEXPIRES")
	for _, k := range rs.KRAs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, k.Serial, k.NotAfter)
	}
	tw.Flush()
}

// stringList is a repeatable flag.
type stringList []string

// String joins the values with commas.
func (s *stringList) String() string { return strings.Join(*s, ",") }

// Set adds one value (flag.Value).
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// RunRecoverySetSet is `keyarc admin recovery-set set` (admin): a new epoch.
func RunRecoverySetSet(args []string) error {
	fs := flag.NewFlagSet("admin recovery-set set", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	quorum := fs.Int("quorum", 0, "how many KRAs must approve a recovery (required)")
	var kras stringList
	fs.Var(&kras, "kra", "serial of a KRA unwrap certificate (repeat, or comma-separate)")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *quorum == 0 || len(kras) == 0 {
		return cmdline.UsageError{Msg: "admin recovery-set set: --quorum M and at least one --kra SERIAL are required"}
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	var rs wire.RecoverySet
	if err := c.call("POST", "/api/v1/recovery-set", map[string]any{"quorum": *quorum, "kras": kras}, &rs); err != nil {
		return err
	}
	printRecoverySet(rs)
	return nil
}

// resealLeft is a record a completed reseal left where it was (its epoch's quorum did not
// approve).
type resealLeft struct {
	Epoch uint32 `json:"epoch"`
	Have  int    `json:"have"`
	Need  int    `json:"need"`
}

// printResealLeft says, epoch by epoch, how many records a reseal left where they were and
// why.
func printResealLeft(left []resealLeft) {
	type tally struct{ records, have, need int }
	by := map[uint32]*tally{}
	var epochs []uint32
	for _, l := range left {
		t, ok := by[l.Epoch]
		if !ok {
			t = &tally{have: l.Have, need: l.Need}
			by[l.Epoch] = t
			epochs = append(epochs, l.Epoch)
		}
		t.records++
	}
	slices.Sort(epochs)
	for _, e := range epochs {
		t := by[e]
		fmt.Printf("%d record(s) of epoch %d left where they were: %d of the %d approvals its quorum needs; "+
			"they stay recoverable by that epoch's KRAs (`--epoch %d` reseals them alone)\n", t.records, e, t.have, t.need, e)
	}
}

// RunReseal is `keyarc admin recovery-set reseal` (admin).
func RunReseal(args []string) error {
	fs := flag.NewFlagSet("admin recovery-set reseal", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	reason := fs.String("reason", "", "why (recorded)")
	epoch := fs.Uint("epoch", 0, "take the records of this older epoch alone (default: every older epoch, oldest records first)")
	complete := fs.String("complete", "", "reseal the records of this approved request")
	if err := cmdline.ParseNoArgs(fs, args); err != nil {
		return err
	}
	if *epoch > math.MaxUint32 {
		return fmt.Errorf("--epoch %d: not an epoch", *epoch)
	}
	if *complete != "" && (*epoch != 0 || *reason != "") {
		return fmt.Errorf("--complete finishes a request: --epoch and --reason belong to the request it finishes")
	}
	c, err := cf.dial(true)
	if err != nil {
		return err
	}
	defer c.close()
	if *complete != "" {
		var out struct {
			Resealed int          `json:"resealed"`
			Epoch    uint32       `json:"epoch"`
			Left     []resealLeft `json:"left"`
		}
		if err := c.call("POST", "/api/v1/reseals/"+*complete+"/complete", nil, &out); err != nil {
			return err
		}
		fmt.Printf("%d record(s) resealed to the current recovery set (epoch %d)\n", out.Resealed, out.Epoch)
		printResealLeft(out.Left)
		return nil
	}
	var rec wire.Recovery
	if err := c.call("POST", "/api/v1/reseals", map[string]any{"reason": *reason, "epoch": *epoch}, &rec); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "reseal %s opened for %d record(s); the KRAs of their recovery sets approve it with `keyarc recovery approve %s`\n", rec.ID, len(rec.Items), rec.ID)
	fmt.Println(rec.ID)
	return nil
}
