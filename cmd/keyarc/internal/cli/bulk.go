package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/cmdline"
	"github.com/keyarc/keyarc/escrow/bulk"
)

// bulkClient parses the flags of `keyarc bulk NAME`, checks that the command line holds nargs
// positional arguments (what names them), and only then connects: a missing FILE or JOB is
// reported before a missing --server or --state.
func bulkClient(name string, args []string, nargs int, what string, extra func(*flag.FlagSet)) (*client, []string, error) {
	fs := flag.NewFlagSet("bulk "+name, flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if extra != nil {
		extra(fs)
	}
	pos, err := cmdline.ParseFlags(fs, args)
	if err != nil {
		return nil, nil, err
	}
	if err := cmdline.WantArgs("bulk "+name, pos, nargs, what); err != nil {
		return nil, nil, err
	}
	if cf.as == "" && cf.cert == "" {
		cf.as = "admin"
	}
	c, err := cf.dial(true)
	if err != nil {
		return nil, nil, err
	}
	// Job files and results can be large: no overall timeout, the transport's own limits apply.
	c.http.Timeout = 0
	return c, pos, nil
}

// RunBulkSubmit is `keyarc bulk submit FILE` (admin); with --wait, a job with failed items
// ends in a cmdline.ExitError with status 3.
func RunBulkSubmit(args []string) error {
	var wait bool
	c, pos, err := bulkClient("submit", args, 1, "FILE", func(fs *flag.FlagSet) {
		fs.BoolVar(&wait, "wait", false, "wait for the job to finish, showing its progress")
	})
	if err != nil {
		return err
	}
	defer c.close()
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, c.base+"/api/v1/bulk", f)
	if err != nil {
		return err
	}
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/jsonl")
	var st bulk.Status
	if err := c.do(req, &st); err != nil {
		return err
	}
	fmt.Println(st.ID)
	if !wait {
		return nil
	}
	return waitBulk(c, st.ID)
}

// waitBulk polls a job until it ends: a progress bar on a terminal, plain lines otherwise
// (on standard error, so that standard output stays the job ID).
func waitBulk(c *client, id string) error {
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	last := time.Time{}
	for {
		var st bulk.Status
		if err := c.call(http.MethodGet, "/api/v1/bulk/"+url.PathEscape(id), nil, &st); err != nil {
			return err
		}
		finished := st.State == "done" || st.State == "cancelled"
		switch {
		case tty:
			width := 40
			if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w > 100 {
				width = w - 60
			}
			fmt.Fprintf(os.Stderr, "\r%s %s", progressBar(st, width), progressText(st))
			if finished {
				fmt.Fprintln(os.Stderr)
			}
		case finished || time.Since(last) >= 5*time.Second:
			fmt.Fprintf(os.Stderr, "job %s %s: %s\n", st.ID, st.State, progressText(st))
			last = time.Now()
		}
		if finished {
			if st.State == "cancelled" {
				return fmt.Errorf("job %s was cancelled (see the appliance log)", id)
			}
			if st.Failed > 0 {
				return cmdline.ExitError{Code: 3, Msg: fmt.Sprintf("job %s: %d of %d items failed; `keyarc bulk results %s --out FILE` gives each one's reason", id, st.Failed, st.Total, id)}
			}
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func progressBar(st bulk.Status, width int) string {
	n := st.Done + st.Failed
	fill := 0
	if st.Total > 0 {
		fill = n * width / st.Total
	}
	return "[" + strings.Repeat("=", fill) + strings.Repeat(" ", width-fill) + "]"
}

func progressText(st bulk.Status) string {
	s := fmt.Sprintf("%d/%d done, %d failed", st.Done, st.Total, st.Failed)
	if st.Rate > 0 {
		s += fmt.Sprintf(", %.0f/s", st.Rate)
	}
	if st.ETASeconds > 0 {
		s += ", ETA " + (time.Duration(st.ETASeconds) * time.Second).String()
	}
	return s
}

// RunBulkStatus is `keyarc bulk status JOB` (admin).
func RunBulkStatus(args []string) error {
	c, pos, err := bulkClient("status", args, 1, "JOB", nil)
	if err != nil {
		return err
	}
	defer c.close()
	var st bulk.Status
	if err := c.call(http.MethodGet, "/api/v1/bulk/"+url.PathEscape(pos[0]), nil, &st); err != nil {
		return err
	}
	return printJSON(st)
}

// RunBulkList is `keyarc bulk list` (admin).
func RunBulkList(args []string) error {
	c, _, err := bulkClient("list", args, 0, "no arguments", nil)
	if err != nil {
		return err
	}
	defer c.close()
	var list []bulk.Status
	if err := c.call(http.MethodGet, "/api/v1/bulk", nil, &list); err != nil {
		return err
	}
	return printJSON(list)
}

// RunBulkResults is `keyarc bulk results JOB --out FILE` (admin).
func RunBulkResults(args []string) error {
	var out, passwords string
	c, pos, err := bulkClient("results", args, 1, "JOB", func(fs *flag.FlagSet) {
		fs.StringVar(&out, "out", "", "write the per-item results (JSON Lines) to this file (required)")
		fs.StringVar(&passwords, "passwords", "", "keygen: also fetch, once, the PKCS#12 passwords into this separate file")
	})
	if err != nil {
		return err
	}
	defer c.close()
	if out == "" {
		return cmdline.UsageError{Msg: "bulk results: --out FILE is required"}
	}
	if passwords != "" && filepath.Clean(passwords) == filepath.Clean(out) {
		return cmdline.UsageError{Msg: "bulk results: the passwords go to a file of their own, not --out"}
	}
	id := url.PathEscape(pos[0])
	if err := c.download(http.MethodGet, "/api/v1/bulk/"+id+"/results", out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "results written to %s\n", out)
	if passwords != "" {
		if err := c.download(http.MethodPost, "/api/v1/bulk/"+id+"/passwords", passwords); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "passwords written to %s (released once: keep this file safe, apart from the PKCS#12s)\n", passwords)
	}
	return nil
}

// download streams a response body into file, mode 0600. The body goes to a new file beside
// it, made before the request (so that a folder it cannot write to fails before the appliance
// releases anything, such as the passwords, which it gives once), then renamed over file: an
// existing file of that name is replaced, never written into, so its mode, owner or links
// never apply to what is written, and a failed download leaves no partial file.
func (c *client) download(method, path, file string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.part")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("connect to the appliance: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &apiError{status: resp.StatusCode, msg: e.Error}
		}
		return &apiError{status: resp.StatusCode, msg: strings.TrimSpace(string(b))}
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return os.Rename(f.Name(), file)
}
