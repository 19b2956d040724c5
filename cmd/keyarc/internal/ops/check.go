package ops

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/escrow/check"
)

// RunCheck is `keyarc check`: the consistency check of every stored certificate, on the
// appliance's database (it may be serving: the check only reads).
func RunCheck(args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	state := fs.String("state", "", "state folder (required)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := cmdline.ParseStateOnly(fs, args, state); err != nil {
		return err
	}
	cfg, err := config.Load(*state)
	if err != nil {
		return err
	}
	if !statedir.DatabaseExists(cfg) {
		return fmt.Errorf("check: no database at %s", cfg.DatabaseName())
	}
	db, err := statedir.OpenDatabase(cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	rep, err := statedir.ConsistencyCheck(ctx, db, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		type problem struct {
			Serial  string `json:"serial"`
			Problem string `json:"problem"`
		}
		out := struct {
			OK bool `json:"ok"`
			*check.Report
			Problems []problem `json:"problems"`
		}{OK: rep.Err() == nil, Report: rep, Problems: []problem{}}
		for _, p := range rep.Problems {
			out.Problems = append(out.Problems, problem{p.Serial, p.Detail})
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	} else {
		printCheck(rep)
	}
	if err := rep.Err(); err != nil {
		return fmt.Errorf("ARCHIVE FAILS ITS CONSISTENCY CHECK (the recovery of these certificates is refused): %w", err)
	}
	if !*asJSON {
		fmt.Println("OK: every stored certificate verifies against the CA, matches its audited issuance and its escrow record")
	}
	return nil
}

func printCheck(rep *check.Report) {
	fmt.Printf("certificates %d checked", rep.Certificates)
	if rep.Unhashed > 0 {
		fmt.Printf(" (%d issued before the trail recorded certificate hashes: signature and links checked)", rep.Unhashed)
	}
	fmt.Println()
	for _, p := range rep.Problems {
		fmt.Printf("FAILED       %s\n", p.Error())
	}
}
