package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/wire"
	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/check"
	"github.com/keyarc/keyarc/escrow/store"
)

// TestLoginThrottleMailboxChecksFirst: a mailbox over its limit is reported by mailboxLimited
// (for a failed attempt) but not by the source pre-check, so a valid code from a fresh source
// is checked; limited counts nothing.
func TestLoginThrottleMailboxChecksFirst(t *testing.T) {
	l, clk := testThrottle(100, 3)
	for i := range 3 {
		l.failed(fmt.Sprintf("192.0.2.%d", i+1), "victim@example.org")
	}
	if w := l.limited("198.51.100.7", ""); w != 0 {
		t.Errorf("a fresh source is refused before its code is checked: %v", w)
	}
	if w := l.mailboxLimited("victim@example.org"); w != time.Minute {
		t.Errorf("mailboxLimited after the limit: %v, want the window (1m)", w)
	}
	if w := l.mailboxLimited("other@example.org"); w != 0 {
		t.Errorf("another mailbox is limited: %v", w)
	}
	// Asking counts nothing: the window ends with no summary owed by the fresh source.
	l.limited("198.51.100.7", "victim@example.org")
	clk.t = clk.t.Add(2 * time.Minute)
	for _, s := range l.expire(false) {
		if s.source == "198.51.100.7" {
			t.Errorf("limited counted a request: %+v", s)
		}
	}
	if w := l.mailboxLimited("victim@example.org"); w != 0 {
		t.Errorf("after the window: %v", w)
	}
}

// TestLoginWriterMailbox: a 401 for a mailbox over its limit goes out as 429 with Retry-After
// and without the handler's body or challenge; other answers pass.
func TestLoginWriterMailbox(t *testing.T) {
	a := &Server{}
	for _, tc := range []struct {
		name     string
		code     int
		wait     time.Duration
		wantCode int
	}{
		{"refused, over the limit", http.StatusUnauthorized, 30 * time.Second, http.StatusTooManyRequests},
		{"refused, under the limit", http.StatusUnauthorized, 0, http.StatusUnauthorized},
		{"accepted, over the limit", http.StatusOK, 30 * time.Second, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			r := httptest.NewRequest("POST", "/api/v1/enroll", nil)
			lw := &loginWriter{ResponseWriter: rec, code: http.StatusOK,
				mailboxWait: func() time.Duration { return tc.wait },
				answer:      func(w http.ResponseWriter, d time.Duration) { a.throttled(w, r, d) }}
			lw.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			lw.WriteHeader(tc.code)
			lw.Write([]byte(`{"error":"handler body"}`))
			if rec.Code != tc.wantCode {
				t.Fatalf("status %d, want %d", rec.Code, tc.wantCode)
			}
			if lw.code != tc.code {
				t.Errorf("the handler's status is remembered as %d, want %d", lw.code, tc.code)
			}
			if tc.wantCode == http.StatusTooManyRequests {
				if rec.Header().Get("Retry-After") != "30" || rec.Header().Get("WWW-Authenticate") != "" {
					t.Errorf("headers %v, want Retry-After 30 and no challenge", rec.Header())
				}
				if strings.Contains(rec.Body.String(), "handler body") || !strings.Contains(rec.Body.String(), "retry after 30 seconds") {
					t.Errorf("body %q", rec.Body.String())
				}
			}
		})
	}
}

// TestStatusIntegrity: an archive that fails its consistency check is the appliance's fault:
// 500 naming the class, never a 409 the client would take for its own conflict.
func TestStatusIntegrity(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"record mismatch", fmt.Errorf("escrow: recover: %w: record r1", escrow.ErrRecordMismatch)},
		{"integrity", fmt.Errorf("%w (%w): %w", escrow.ErrIntegrity, escrow.ErrRecordMismatch, check.ErrInconsistent)},
		{"inconsistent row", fmt.Errorf("%w: %w", escrow.ErrIntegrity, check.ErrInconsistent)},
		{"check alone", fmt.Errorf("escrow: %w", check.ErrInconsistent)},
		{"under a client error", fmt.Errorf("%w: %w", escrow.ErrInvalidRequest, check.ErrInconsistent)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := status(tc.err)
			if code != http.StatusInternalServerError || !strings.Contains(msg, "the archive failed its consistency check for this certificate") ||
				!strings.HasSuffix(msg, "; an administrator must run keyarc check") {
				t.Errorf("status = %d %q, want 500 naming the class like %q", code, msg, integrityMessage)
			}
		})
	}
	if code, _ := status(escrow.ErrKeyArchivedElsewhere); code != http.StatusConflict {
		t.Errorf("a key archived for another mailbox: %d, want 409", code)
	}
}

// TestDecodeJSONWords: the API's JSON decoder names the field and the expected type, never a
// Go struct or type name.
func TestDecodeJSONWords(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"number for string", `{"serial": 12}`, "field serial must be a string"},
		{"string for number", `{"quorum": "two"}`, "field quorum must be a whole number"},
		{"unknown field", `{"serial": "1", "colour": "blue"}`, "unknown field colour"},
		{"syntax", `{"serial": `, "ends before"},
		{"not JSON", `serial=1`, "not valid JSON"},
		{"array", `[1]`, "must be a JSON object"},
		{"list of strings", `{"kras": "a"}`, "field kras must be a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v struct {
				Serial string   `json:"serial"`
				Quorum int      `json:"quorum"`
				KRAs   []string `json:"kras"`
			}
			r := httptest.NewRequest("POST", "/api/v1/x", strings.NewReader(tc.body))
			err := decodeJSON(httptest.NewRecorder(), r, &v)
			if !errors.Is(err, escrow.ErrInvalidRequest) {
				t.Fatalf("decodeJSON: %v, want ErrInvalidRequest", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q does not say %q", err, tc.want)
			}
			for _, goName := range []string{"Go struct", "Go value", "struct {", "int", "[]string", "json:"} {
				if strings.Contains(strings.TrimPrefix(err.Error(), "escrow: "), goName) && !strings.Contains(tc.want, goName) {
					t.Errorf("%q shows %q", err, goName)
				}
			}
			var je *json.UnmarshalTypeError
			_ = errors.As(err, &je) // the decoder's error stays reachable
		})
	}
	if wire.DecodeError(nil) != nil {
		t.Error("DecodeError(nil) is not nil")
	}
}

// TestParseCSRWords: a body that is not a CSR is named as such, without the ASN.1 decoder's
// struct dump.
func TestParseCSRWords(t *testing.T) {
	for _, tc := range []struct {
		name, in string
	}{
		{"certificate-shaped", "MAMCAQE="}, // SEQUENCE { INTEGER 1 }
		{"garbage", "AAAA"},
		{"PEM of something else", "-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQE=\n-----END CERTIFICATE REQUEST-----\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseCSRField("csr", tc.in)
			if !errors.Is(err, escrow.ErrInvalidRequest) {
				t.Fatalf("parseCSRField: %v, want ErrInvalidRequest", err)
			}
			if !strings.Contains(err.Error(), "csr: not a PKCS#10 certificate request (DER or PEM)") {
				t.Errorf("%q", err)
			}
			if strings.Contains(err.Error(), "class:") || strings.Contains(err.Error(), "asn1") || strings.Contains(err.Error(), "tags") {
				t.Errorf("%q shows the ASN.1 decoder's reason", err)
			}
		})
	}
}

// TestOnlyParams: a query parameter the call does not read is a 400 naming it.
func TestOnlyParams(t *testing.T) {
	for _, tc := range []struct {
		name, query string
		wantErr     error
		want        string
	}{
		{"known", "from=1&limit=5", nil, ""},
		{"none", "", nil, ""},
		{"unknown", "after=abc", escrow.ErrInvalidRequest, `"after"`},
		{"twice", "from=1&from=2", escrow.ErrInvalidRequest, "from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			err := onlyParams(q, "from", "limit")
			if !errors.Is(err, tc.wantErr) || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("onlyParams(%q) = %v, want %v naming %s", tc.query, err, tc.wantErr, tc.want)
			}
		})
	}
}

// TestStorageHealth: a storage fault keeps readiness refused for storageFaultHold, or until a
// commit succeeds; a failed commit counted by the store is a fault too.
func TestStorageHealth(t *testing.T) {
	var h storageHealth
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if h.recent(t0, store.Stats{}) {
		t.Fatal("a fault before any was seen")
	}
	h.fault(t0, store.Stats{Commits: 5})
	if !h.recent(t0.Add(time.Second), store.Stats{Commits: 5}) {
		t.Error("the fault is not recent a second later")
	}
	if h.recent(t0.Add(time.Second), store.Stats{Commits: 6}) {
		t.Error("a commit after the fault does not clear it")
	}
	if h.recent(t0.Add(storageFaultHold+time.Second), store.Stats{Commits: 5}) {
		t.Error("the fault outlives its hold")
	}
	t1 := t0.Add(time.Minute)
	if !h.recent(t1, store.Stats{Commits: 5, CommitErrors: 1}) {
		t.Error("a failed commit is not a fault")
	}
	if !h.recent(t1.Add(time.Second), store.Stats{Commits: 5, CommitErrors: 1}) {
		t.Error("the failed commit's fault does not hold")
	}
}

// TestStatusKRALockout: the KRA approval lock-out says how long, and fail sets Retry-After.
func TestStatusKRALockout(t *testing.T) {
	code, msg := status(escrow.ErrTooManyFailures)
	if code != http.StatusTooManyRequests || !strings.Contains(msg, "retry after 900 seconds") {
		t.Errorf("status = %d %q, want 429 saying how long", code, msg)
	}
	a := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	rec := httptest.NewRecorder()
	a.fail(rec, httptest.NewRequest("POST", "/api/v1/recoveries/x/approvals", nil), fmt.Errorf("escrow: approve: %w", escrow.ErrTooManyFailures))
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "900" {
		t.Errorf("fail: %d, Retry-After %q; want 429 and 900", rec.Code, rec.Header().Get("Retry-After"))
	}
}
