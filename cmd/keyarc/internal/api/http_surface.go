package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"

	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// Media types of request bodies. RFC 7030 3.2.4 and 4.2.1: EST takes application/pkcs10; the
// API takes JSON, and bulk job files as JSON Lines.
var (
	estTypes  = []string{"application/pkcs10"}
	jsonTypes = []string{"application/json"}
	bulkTypes = []string{"application/jsonl", "application/x-ndjson"}
)

// bodyTypes returns the media types a route (a ServeMux pattern) accepts, or nil for a route
// that takes no body.
func bodyTypes(pattern string) []string {
	switch {
	case pattern == "POST /api/v1/bulk":
		return bulkTypes
	case strings.HasPrefix(pattern, "POST /.well-known/est/"):
		return estTypes
	case strings.HasPrefix(pattern, "POST /api/"):
		return jsonTypes
	}
	return nil
}

// requireContentType refuses, with 415 and before the body is read, a request whose
// Content-Type is not one its route takes (parameters such as charset are allowed). A POST to
// the API with no body and no Content-Type passes: the route reads nothing. Browsers can send
// text/plain, application/x-www-form-urlencoded and multipart/form-data across sites without
// asking; none of them is accepted anywhere.
func (a *Server) requireContentType(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		types := bodyTypes(pattern)
		if types == nil {
			mux.ServeHTTP(w, r)
			return
		}
		ct := r.Header.Get("Content-Type")
		noBody := r.ContentLength == 0 && len(r.TransferEncoding) == 0
		if ct == "" && noBody && strings.HasPrefix(pattern, "POST /api/") {
			mux.ServeHTTP(w, r)
			return
		}
		mt, _, err := mime.ParseMediaType(ct)
		for _, t := range types {
			if err == nil && mt == t {
				mux.ServeHTTP(w, r)
				return
			}
		}
		r.Pattern = pattern // for the request counter and the log, as the mux would set it
		got := "none"
		if ct != "" {
			got = fmt.Sprintf("%q", clip(ct, 80))
		}
		a.fail(w, r, &httpStatusError{http.StatusUnsupportedMediaType,
			fmt.Sprintf("this route takes a body of Content-Type %s (got %s)", strings.Join(types, " or "), got)})
	})
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// crossOrigin refuses state-changing requests a browser sends from another site (by their
// Sec-Fetch-Site or Origin header), whatever their content type: a browser holding an
// operator's certificate must not be steered into acting for another page. Tools (curl, the
// keyarc CLI) send neither header and pass.
func (a *Server) crossOrigin(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		notLogin(r.Context())
		a.fail(w, r, &httpStatusError{http.StatusForbidden, "cross-origin request refused: a page of another site may not send this request"})
	}))
	return cop.Handler(next)
}

// Refusal classes: the reason label of keyarc_enrollment_refusals_total, as the README lists
// them.
const (
	refusalPolicy       = "policy"       // the request breaks the template (CSR checks, lint)
	refusalInvalid      = "invalid"      // malformed, oversized, slow or mistyped request
	refusalUnauthorized = "unauthorized" // no credential, or a wrong, used or expired code
	refusalForbidden    = "forbidden"    // a credential not allowed this template
	refusalNotFound     = "not-found"    // an unknown template
	refusalConflict     = "conflict"     // e.g. a key already archived
	refusalRateLimited  = "rate-limited" // too many failures
	refusalUnavailable  = "unavailable"  // a fault of the appliance (token, storage)
	refusalError        = "error"        // anything else (an internal error)
)

// refusalClass returns the refusal class of an enrollment error.
func refusalClass(err error) string {
	var rej *policy.RejectError
	if errors.As(err, &rej) || errors.Is(err, policy.ErrRejected) || errors.Is(err, ca.ErrLint) {
		if code, _ := status(err); code < 500 {
			return refusalPolicy
		}
	}
	switch code, _ := status(err); {
	case code == http.StatusServiceUnavailable:
		return refusalUnavailable
	case code == http.StatusTooManyRequests:
		return refusalRateLimited
	case code == http.StatusUnauthorized:
		return refusalUnauthorized
	case code == http.StatusForbidden:
		return refusalForbidden
	case code == http.StatusNotFound:
		return refusalNotFound
	case code == http.StatusConflict:
		return refusalConflict
	case code >= 400 && code < 500:
		return refusalInvalid
	}
	return refusalError
}

// refuse counts a refused enrollment for template and answers it.
func (a *Server) refuse(w http.ResponseWriter, r *http.Request, template string, err error) {
	a.refused(template, err)
	a.fail(w, r, err)
}

// authorizeCredential applies the template's credential rule (policy.Template.
// AuthorizeCredential) to an enrollment authenticated by a client certificate; an enrollment
// with a code (cert nil) passes.
func (a *Server) authorizeCredential(ctx context.Context, cert *store.Certificate, template string) error {
	if cert == nil {
		return nil
	}
	t, err := a.svc.Template(template)
	if err != nil {
		return err
	}
	cred := policy.Credential{Template: cert.Template, Role: cert.Role}
	if cred.Role == "" && cert.Email != "" {
		var newer []store.Certificate
		err := a.db.View(ctx, func(tx store.Tx) error {
			var err error
			newer, err = tx.ListCertificates(store.Filter{Email: cert.Email, Template: template})
			return err
		})
		if err != nil {
			return fmt.Errorf("look up the certificates of the presented certificate's mailbox: %w", err)
		}
		for _, c := range newer {
			if c.Serial != cert.Serial && c.State != store.StateFailed && c.CreatedAt.After(cert.CreatedAt) {
				cred.Superseded = c.Serial
				break
			}
		}
	}
	return t.AuthorizeCredential(cred)
}

// intermediateSuites are the TLS 1.2 cipher suites of Mozilla's "intermediate" configuration:
// ECDHE key exchange with AES-GCM or ChaCha20-Poly1305, nothing with CBC, SHA-1 MACs or RSA
// key transport. TLS 1.3 suites are not configurable in Go and are all AEAD.
var intermediateSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}
