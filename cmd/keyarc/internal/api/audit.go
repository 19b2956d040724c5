package api

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/statedir"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// applianceAudit is the running appliance's side of the audit trail.
type applianceAudit struct {
	cp   *audit.Checkpointer
	pub  crypto.PublicKey
	stop context.CancelFunc
	done chan struct{}
	once sync.Once
}

// openAudit starts the audit trail of a running appliance: the checkpointer with the token's
// audit key, and a start-up entry (with a config-changed entry first when the configuration
// differs from the last start's).
func (a *Server) openAudit(issuer *ca.Issuer, reg prometheus.Registerer) error {
	if err := a.cfg.Audit.Validate(); err != nil {
		return err
	}
	// A missing audit.pem is issued by the Service, so it is on record like any other.
	signer, err := statedir.EnsureAuditCertificate(escrow.WithActor(context.Background(), "system"), a.cfg, a.tok, a.svc, nil)
	if err != nil {
		return err
	}
	cp := &audit.Checkpointer{DB: a.db, Signer: signer, HeadPath: a.cfg.Path(statedir.AuditHeadName), Every: a.cfg.Audit.CheckpointEvery, Logger: a.log,
		Leads:   a.svc.Leads, // with several nodes, the leader makes the periodic checkpoints
		Witness: a.svc.Trail} // no checkpoint over a trail that lost this process's entries
	obs := &auditMetrics{cp: cp,
		entries: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyarc_audit_entries_total", Help: "Audit entries appended (an entry of an operation rolled back afterwards included)."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyarc_audit_failures_total",
			Help: "Audit entries that could not be written, each of which refused its operation, and the finding that the trail lost entries this appliance had written (counted once; appends are refused from then on)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{obs.entries, obs.failures} {
			if err := reg.Register(c); err != nil {
				return fmt.Errorf("audit metrics: %w", err)
			}
		}
	}
	a.svc.Audit = obs

	digest := "none"
	if b, err := os.ReadFile(filepath.Join(a.cfg.Dir(), config.Name)); err == nil {
		sum := sha256.Sum256(b)
		digest = hex.EncodeToString(sum[:])
	}
	ctx := escrow.WithActor(context.Background(), "system")
	var prev string
	err = a.db.View(ctx, func(tx store.Tx) error {
		e, err := tx.LastAuditOfKind(string(audit.KindStartup))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var d audit.Details
		if json.Unmarshal([]byte(e.Details), &d) == nil {
			prev = d.Config
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit trail: %w", err)
	}
	if prev != "" && prev != digest {
		if err := a.svc.RecordEvent(ctx, audit.KindConfigChanged, config.Name, audit.Details{Config: digest, PrevConfig: prev}); err != nil {
			return fmt.Errorf("audit trail: %w", err)
		}
	}
	if err := a.svc.RecordEvent(ctx, audit.KindStartup, "keyarc", audit.Details{Version: a.version, Config: digest, Token: a.tok.Label()}); err != nil {
		return fmt.Errorf("audit trail: %w", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	a.audit = &applianceAudit{cp: cp, pub: signer.Public(), stop: stop, done: make(chan struct{})}
	go func() {
		defer close(a.audit.done)
		if w := cp.Witness; w != nil {
			// A lost tail is counted once, with the refused writes (KeyarcAuditFailures).
			go func() {
				select {
				case <-w.Lost():
					obs.failures.Inc()
				case <-runCtx.Done():
				}
			}()
		}
		cp.Run(runCtx)
	}()
	return nil
}

// CheckTrailHead verifies the trail against its head file before anything writes to the
// database or is served: serve calls it right after opening the database, before the OCSP
// responder or the audit certificate may be issued (each an audit entry). A database behind
// the head (rolled back, cut short, or another history), a head file that is not the audit
// key's, or a missing head file while the database holds signed checkpoints refuses the
// start: a rollback must be recorded (`keyarc restore --force`) before the appliance serves
// again. Other problems of the chain (a changed or deleted entry) are reported loudly but do
// not stop the appliance: the evidence is kept as it is for the auditor, and the new entries
// chain onto it.
func CheckTrailHead(cfg *config.Config, db store.Store, pub crypto.PublicKey, log *slog.Logger) error {
	headPath := cfg.Path(statedir.AuditHeadName)
	way := fmt.Sprintf("If the database was restored from a backup on purpose, record the restore in the audit trail "+
		"(it names the entries left out and signs a new head): keyarc restore --state %s --from BACKUP --force, or "+
		"--from %s to record the database now in place. Otherwise put back the database (or the head file) that belongs with the other",
		cfg.Dir(), cfg.Path(cfg.Database))
	return checkTrailHead(headPath, db, pub, log, way, headWait)
}

// headWait bounds how long a start waits for the head file of the database's first signed
// checkpoint (checkTrailHead).
const headWait = 3 * time.Second

// checkTrailHead is CheckTrailHead on the head file headPath; way says what to do about a
// refusal. Nodes sharing one state folder share its head file, and a node writes the head
// file just after its checkpoint commits: another node starting in between reads no head file
// and then a database with a signed checkpoint. That one state, and only it, is read again
// for up to wait: the head file that then appears is checked like any other, and a head file
// still missing refuses the start as before. (The head is read before the database, so a
// head newer than the database read is not a race this can meet.)
func checkTrailHead(headPath string, db store.Store, pub crypto.PublicKey, log *slog.Logger, way string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		missing, err := checkTrailHeadOnce(headPath, db, pub, log, way)
		if !missing || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkTrailHeadOnce reads the head file and then checks the database against it. missing
// reports the refusal for a head file missing beside signed checkpoints.
func checkTrailHeadOnce(headPath string, db store.Store, pub crypto.PublicKey, log *slog.Logger, way string) (missing bool, err error) {
	head, err := audit.ReadHead(headPath)
	switch {
	case errors.Is(err, audit.ErrNoHead):
		head = nil
	case err != nil:
		return false, fmt.Errorf("AUDIT TRAIL DOES NOT VERIFY: %w; the database is not served. %s", err, way)
	}
	if head != nil {
		if err := audit.CheckCheckpoint(head.Checkpoint(), pub); err != nil {
			return false, fmt.Errorf("AUDIT TRAIL DOES NOT VERIFY: the head file %s is not signed by the audit key: %w; the database is not served. %s", headPath, err, way)
		}
	}
	rep, err := audit.Verify(context.Background(), db, pub, head)
	var p *audit.Problem
	switch {
	case errors.As(err, &p) && (errors.Is(p, audit.ErrTruncated) || errors.Is(p, audit.ErrCheckpointMismatch)):
		return false, fmt.Errorf("AUDIT TRAIL DOES NOT VERIFY against its head file %s: %w; the database is not served: it is older than the audit trail, or another one. %s", headPath, err, way)
	case p != nil:
		log.Error("AUDIT TRAIL DOES NOT VERIFY; run `keyarc audit verify`", "err", err)
	case err != nil:
		return false, fmt.Errorf("audit trail: %w", err)
	case head == nil && rep.Checkpoints > 0:
		return true, fmt.Errorf("AUDIT TRAIL CANNOT BE VERIFIED: the head file %s is missing although the database holds %d signed checkpoints (up to entry %d), so a rollback of the database would go unseen; the database is not served. Put the head file back from its copy, or: %s",
			headPath, rep.Checkpoints, rep.Signed, way)
	}
	return false, nil
}

// auditMetrics passes appended entries to the checkpointer and counts entries and failures.
type auditMetrics struct {
	cp                *audit.Checkpointer
	entries, failures prometheus.Counter
}

func (m *auditMetrics) Appended(seq int64) {
	m.entries.Inc()
	m.cp.Appended(seq)
}

func (m *auditMetrics) Failed(audit.Kind) { m.failures.Inc() }

// closeAudit stops the periodic checkpoints and signs the tail: the shutdown checkpoint.
func (a *Server) closeAudit() {
	if a.audit == nil {
		return
	}
	a.audit.once.Do(func() {
		a.audit.stop()
		<-a.audit.done
		// The signature is a call into the token, which cannot be taken back once made: a
		// token that stopped answering would hold the shutdown for as long as it is stuck. The
		// wait is bounded by the token's call limit; the tail is signed at the next start.
		limit := a.cfg.Token.CallTimeout.Duration + 2*time.Second
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			if cp, err := a.audit.cp.Checkpoint(ctx); err != nil {
				a.log.Error("audit checkpoint at shutdown", "err", err)
			} else if cp != nil {
				a.log.Info("audit trail signed at shutdown", "seq", cp.Seq)
			}
		}()
		select {
		case <-done:
		case <-ctx.Done():
			a.log.Error("audit checkpoint at shutdown: the token did not answer in time; the trail's tail is signed at the next start", "limit", limit)
		}
	})
}

// notAMailbox stands for a Basic user name that is not a mailbox in the audit trail and the
// login counts.
const notAMailbox = "(not a mailbox)"

// claimedMailbox returns the user name of HTTP Basic when it is a mailbox, else notAMailbox: a
// client that swapped the fields sent the enrollment code there, and it must not be recorded.
func claimedMailbox(user string) string {
	if policy.ValidateMailbox(user) != nil {
		return notAMailbox
	}
	return user
}

// auditHTTP names the caller for the audit entries of each request (escrow.WithActor) and
// records failed logins: a request that presented a credential (HTTP Basic or a client
// certificate) and was answered 401 (credential or enrollment code refused) or 403 (role or
// template refused). Failed logins are throttled and their audit entries bounded (see
// loginThrottle for the rules: a source over its limit waits unless it authenticates with a
// valid client certificate; a mailbox over its limit still gets its valid code checked, only
// its failed attempts are answered 429); a request without any credential is a challenge,
// not a failed login.
func (a *Server) auditHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		remote, _, _ := net.SplitHostPort(r.RemoteAddr)
		actor, serial, subject := "remote:"+remote, "", ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			c := r.TLS.PeerCertificates[0]
			serial = store.FormatSerial(c.SerialNumber)
			actor, subject = "tls:"+serial, c.Subject.CommonName
		}
		user, _, basic := r.BasicAuth()
		user = claimedMailbox(user)
		source, mailbox := sourceKey(remote), ""
		if basic {
			mailbox = strings.ToLower(user)
		}
		if basic || serial != "" {
			if wait := a.logins.limited(source, ""); wait > 0 && !a.certAuthenticates(r, basic) {
				a.logins.wait(source, mailbox) // counts the throttled request for the summary
				a.throttled(w, r, wait)
				return
			}
		}
		note := &loginNote{}
		r = r.WithContext(context.WithValue(escrow.WithActor(r.Context(), actor), loginNoteKey{}, note))
		sw := &loginWriter{ResponseWriter: w, code: http.StatusOK}
		if basic {
			sw.mailboxWait = func() time.Duration {
				if note.skip {
					return 0
				}
				return a.logins.mailboxLimited(mailbox)
			}
			sw.answer = func(w http.ResponseWriter, wait time.Duration) { a.throttled(w, r, wait) }
		}
		next.ServeHTTP(sw, r)
		if sw.code != http.StatusUnauthorized && sw.code != http.StatusForbidden || note.skip || !basic && serial == "" {
			return
		}
		if !a.logins.failed(source, mailbox) {
			return // counted for the source's summary entry
		}
		reason := "credential refused"
		switch {
		case sw.code == http.StatusForbidden:
			reason = "not allowed for this credential (its role or template)"
		case serial == "":
			reason = "enrollment code or authentication missing or refused"
		}
		if sw.throttled {
			reason += "; answered 429, the mailbox is over its failed-login limit"
		}
		if basic && subject == "" {
			subject = audit.Clip(user) // the claimed mailbox; never the code
		}
		err := a.svc.RecordEvent(r.Context(), audit.KindLoginFailed, subject, audit.Details{
			Route: r.Pattern, Status: sw.code, Remote: remote, Serial: serial, Reason: reason})
		if err != nil {
			a.log.Error("audit entry not written", "kind", audit.KindLoginFailed, "err", err)
		}
	})
}

// certAuthenticates reports whether r authenticates with a valid client certificate: issued by
// this CA (TLS verified the chain), known to the store, issued, unexpired. With HTTP Basic as
// well, an end-entity certificate gives way to the code (see authenticate): only an operator
// or KRA certificate counts then. It reads the store, so it is asked only of a source that
// is over its limit.
func (a *Server) certAuthenticates(r *http.Request, basic bool) bool {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	c, err := a.clientCertificate(r.Context(), r.TLS.PeerCertificates[0])
	if err != nil {
		return false
	}
	return !basic || c.Role != ""
}

// auditRoutes adds the auditor's API.
func (a *Server) auditRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/audit", a.handleAudit)
}

// handleAudit serves GET /api/v1/audit?from=SEQ&limit=N (auditor role): the entries, and the
// verification of the whole trail against the audit key and the head file.
func (a *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	if _, err := a.caller(r, policy.ActAudit, policy.Resource{Kind: "audit trail"}); err != nil {
		a.fail(w, r, err)
		return
	}
	from, limit := int64(1), 100
	q := r.URL.Query()
	if err := onlyParams(q, "from", "limit"); err != nil {
		a.fail(w, r, err)
		return
	}
	if s := q.Get("from"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 1 {
			a.fail(w, r, fmt.Errorf("%w: from must be an entry number, 1 or more", escrow.ErrInvalidRequest))
			return
		}
		from = v
	}
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 1000 {
			a.fail(w, r, fmt.Errorf("%w: limit must be between 1 and 1000", escrow.ErrInvalidRequest))
			return
		}
		limit = v
	}
	if a.audit == nil {
		a.fail(w, r, errors.New("audit trail not started"))
		return
	}
	var entries []store.AuditEntry
	err := a.db.View(r.Context(), func(tx store.Tx) error {
		var err error
		entries, err = tx.ListAudit(from, limit)
		return err
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := struct {
		Verification wire.AuditVerification `json:"verification"`
		Entries      []wire.AuditEntry      `json:"entries"`
	}{Entries: make([]wire.AuditEntry, 0, len(entries))}
	for _, e := range entries {
		d := json.RawMessage(e.Details)
		if !json.Valid(d) {
			d, _ = json.Marshal(e.Details)
		}
		out.Entries = append(out.Entries, wire.AuditEntry{Seq: e.Seq, At: e.At.Format(time.RFC3339Nano), Kind: e.Kind, Actor: e.Actor,
			Subject: e.Subject, Details: d, Prev: hex.EncodeToString(e.Prev), Hash: hex.EncodeToString(e.Hash)})
	}
	out.Verification, err = a.verifyAudit(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// onlyParams refuses a query that holds a parameter other than allowed, or one of them twice:
// a parameter the call does not read would otherwise be ignored in silence. The refusal wraps
// escrow.ErrInvalidRequest and names the parameter.
func onlyParams(q url.Values, allowed ...string) error {
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("%w: unknown query parameter %q; this call takes %s", escrow.ErrInvalidRequest, clip(k, 64), strings.Join(allowed, " and "))
		}
		if len(q[k]) > 1 {
			return fmt.Errorf("%w: query parameter %s given more than once", escrow.ErrInvalidRequest, k)
		}
	}
	return nil
}

func (a *Server) verifyAudit(ctx context.Context) (wire.AuditVerification, error) {
	id, _ := audit.KeyID(a.audit.pub)
	v := wire.AuditVerification{KeyID: hex.EncodeToString(id)}
	head, err := audit.ReadHead(a.audit.cp.HeadPath)
	if err != nil && !errors.Is(err, audit.ErrNoHead) {
		v.Problem = err.Error()
		return v, nil
	}
	rep, err := audit.Verify(ctx, a.db, a.audit.pub, head)
	v.Report = rep
	if err == nil && a.audit.cp.Witness != nil {
		// What this process wrote and the database no longer holds: seen at once, before the
		// head file records it.
		err = a.audit.cp.Witness.Check(ctx, a.db)
	}
	var p *audit.Problem
	switch {
	case errors.As(err, &p):
		v.Problem, v.Seq = p.Error(), p.Seq
	case err != nil:
		return v, err
	default:
		v.OK = true
	}
	return v, nil
}
