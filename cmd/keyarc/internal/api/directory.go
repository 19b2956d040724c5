package api

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/directory"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// The directory lookup: GET /api/v1/directory?email=ADDR answers the certificates a sender
// encrypts to for that mailbox: issued by this CA, not revoked, within their validity, with
// keyEncipherment or keyAgreement (signing-only certificates are left out: a signed message
// carries its own). Certificates imported from another CA are left out too (their CA
// publishes them and knows whether they are revoked).
//
//   - Accept application/json (or none, or */*): 200 with {"email", "certificates": [...]},
//     each with its PEM; an empty list when there are none (an unknown mailbox and one
//     without a certificate are answered alike).
//   - Accept application/pkix-cert: 200 with the DER of the one certificate; 404 when there
//     is none; 409 when there are several (ask for JSON to get them all: a sender should
//     encrypt to each).
//   - Another Accept: 406.
//
// Who may ask is directory.lookup (open, the default, or client-certificate); each source
// address (IPv6: its /64) may ask directory.lookups_per_minute times a minute, then 429.
const pkixCert = "application/pkix-cert"

// DirectoryAnswer is the JSON answer of a lookup.
type DirectoryAnswer struct {
	// Email is the mailbox looked up, as the appliance stores it (domain in lower case).
	Email        string                 `json:"email"`
	Certificates []DirectoryCertificate `json:"certificates"`
}

// DirectoryCertificate is one certificate of a lookup's answer.
type DirectoryCertificate struct {
	Serial    string    `json:"serial"`
	Subject   string    `json:"subject"`
	Template  string    `json:"template"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// SHA256 is the certificate's fingerprint (hex), for a person to compare.
	SHA256 string `json:"sha256"`
	PEM    string `json:"pem"`
}

// directoryRoutes adds the lookup, with its per-source limit.
func (a *Server) directoryRoutes(mux *http.ServeMux) {
	l := newLookupLimiter(a.cfg.Directory.LookupRate(), time.Minute)
	mux.HandleFunc("GET /api/v1/directory", func(w http.ResponseWriter, r *http.Request) { a.handleDirectory(w, r, l) })
}

func (a *Server) handleDirectory(w http.ResponseWriter, r *http.Request, l *lookupLimiter) {
	remote, _, _ := net.SplitHostPort(r.RemoteAddr)
	if wait := l.take(sourceKey(remote), time.Now()); wait > 0 {
		a.tooMany(w, r, wait, "too many directory lookups from this address")
		return
	}
	if a.cfg.Directory.LookupMode() == config.LookupClientCertificate {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			a.fail(w, r, fmt.Errorf("%w: directory lookups on this appliance need a client certificate it issued (directory.lookup: client-certificate)", escrow.ErrUnauthorized))
			return
		}
		if _, err := a.clientCertificate(r.Context(), r.TLS.PeerCertificates[0]); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	der, err := wantsDER(r.Header.Get("Accept"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()["email"]
	if len(q) != 1 || q[0] == "" {
		a.fail(w, r, fmt.Errorf("%w: give one mailbox: /api/v1/directory?email=ADDR", escrow.ErrInvalidRequest))
		return
	}
	mailbox, err := policy.NormalizeMailbox(q[0])
	if err != nil {
		a.fail(w, r, fmt.Errorf("%w: email: %w", escrow.ErrInvalidRequest, err))
		return
	}
	certs, err := a.lookup(r, mailbox, time.Now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Revocations take effect at once: a cache must ask again.
	w.Header().Set("Cache-Control", "no-cache")
	if !der {
		out := DirectoryAnswer{Email: mailbox, Certificates: make([]DirectoryCertificate, 0, len(certs))}
		for _, c := range certs {
			sum := sha256.Sum256(c.cert.Raw)
			out.Certificates = append(out.Certificates, DirectoryCertificate{Serial: c.row.Serial, Subject: c.cert.Subject.String(),
				Template: c.row.Template, NotBefore: c.cert.NotBefore.UTC(), NotAfter: c.cert.NotAfter.UTC(), SHA256: hex.EncodeToString(sum[:]),
				PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}))})
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	switch len(certs) {
	case 0:
		a.fail(w, r, &httpStatusError{http.StatusNotFound, "no valid encryption certificate for this mailbox"})
	case 1:
		w.Header().Set("Content-Type", pkixCert)
		w.Header().Set("Content-Disposition", `attachment; filename="`+certs[0].row.Serial+`.cer"`)
		w.Write(certs[0].cert.Raw)
	default:
		a.fail(w, r, &httpStatusError{http.StatusConflict, fmt.Sprintf("this mailbox has %d valid encryption certificates; ask with Accept: application/json for all of them (encrypt to each)", len(certs))})
	}
}

type foundCert struct {
	row  store.Certificate
	cert *x509.Certificate
}

// lookup returns the mailbox's valid encryption certificates this CA issued, oldest first.
func (a *Server) lookup(r *http.Request, mailbox string, now time.Time) ([]foundCert, error) {
	var rows []store.Certificate
	err := a.db.View(r.Context(), func(tx store.Tx) error {
		var err error
		rows, err = tx.ListCertificates(store.Filter{Email: mailbox, State: store.StateIssued})
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []foundCert
	for _, row := range rows {
		if row.Role != "" || row.KRA != "" || len(row.DER) == 0 {
			continue
		}
		c, err := x509.ParseCertificate(row.DER)
		if err != nil || now.Before(c.NotBefore) || !now.Before(c.NotAfter) || !directory.ForEncryption(c) || !directory.Issued(c, a.caCert) {
			continue
		}
		out = append(out, foundCert{row: row, cert: c})
	}
	return out, nil
}

// wantsDER reads the Accept header: true for application/pkix-cert, false for JSON (also
// when there is no header, or */*); another type only is refused with 406.
func wantsDER(accept string) (bool, error) {
	if strings.TrimSpace(accept) == "" {
		return false, nil
	}
	json := false
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || refusedQ(params["q"]) {
			continue
		}
		switch mt {
		case pkixCert:
			return true, nil
		case "application/json", "*/*", "application/*":
			json = true
		}
	}
	if json {
		return false, nil
	}
	return false, &httpStatusError{http.StatusNotAcceptable, "the directory answers application/json (all certificates) or application/pkix-cert (the one certificate)"}
}

// refusedQ reports whether a q parameter of Accept is zero ("0", "0.0", "0.000": RFC 9110
// 12.4.2), which refuses its media type.
func refusedQ(q string) bool {
	v, err := strconv.ParseFloat(q, 64)
	return err == nil && v == 0
}

// lookupLimiter counts lookups per source in fixed windows; safe for concurrent use. Past
// maxThrottleKeys sources in one window, the rest share one bucket.
type lookupLimiter struct {
	limit  int
	window time.Duration

	mu      sync.Mutex
	sources map[string]*lookupWindow
}

type lookupWindow struct {
	start time.Time
	n     int
}

func newLookupLimiter(limit int, window time.Duration) *lookupLimiter {
	return &lookupLimiter{limit: limit, window: window, sources: map[string]*lookupWindow{}}
}

// take counts one lookup of source at now and returns how long it must wait when over its
// limit, zero when it may go on.
func (l *lookupLimiter) take(source string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	w, ok := l.sources[source]
	if !ok && len(l.sources) >= maxThrottleKeys {
		for k, v := range l.sources {
			if now.Sub(v.start) >= l.window {
				delete(l.sources, k)
			}
		}
		if len(l.sources) >= maxThrottleKeys {
			source = overflowKey
			w, ok = l.sources[source]
		}
	}
	if !ok || now.Sub(w.start) >= l.window {
		w = &lookupWindow{start: now}
		l.sources[source] = w
	}
	if w.n >= l.limit {
		return w.start.Add(l.window).Sub(now)
	}
	w.n++
	return 0
}
