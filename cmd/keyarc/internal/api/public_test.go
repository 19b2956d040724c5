package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// publicEnv is a Server reduced to what the public listener uses: a real SQLite store, a CA
// with a software key, and a CRL publisher on them.
type publicEnv struct {
	a   *Server
	db  *sqlite.DB
	pub *escrow.CRLPublisher
	srv *httptest.Server
}

func newPublicEnv(t *testing.T, ocsp http.Handler) *publicEnv {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "keyarc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.SelfSignedRoot(key, pkix.Name{CommonName: "public test CA"}, time.Now().Add(-time.Hour), 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.New(key, root)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	a := &Server{db: db, caCert: root, log: log, metrics: NewMetrics(prometheus.NewRegistry(), "test"), ocsp: ocsp}
	a.crls = newCRLCache(db, log)
	pub := &escrow.CRLPublisher{Store: db, Issuer: iss, OnPublish: a.crls.put}
	srv := httptest.NewServer(a.publicRoutes())
	t.Cleanup(srv.Close)
	return &publicEnv{a: a, db: db, pub: pub, srv: srv}
}

func (e *publicEnv) do(t *testing.T, method, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestPublicCRL(t *testing.T) {
	e := newPublicEnv(t, nil)
	ctx := context.Background()

	// Before the first CRL: 503 (the appliance has not published yet), never a 4xx.
	resp, _ := e.do(t, "GET", ca.CRLPath)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("before the first CRL: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	c1, err := e.pub.Publish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := e.do(t, "GET", ca.CRLPath)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/pkix-crl" {
		t.Errorf("Content-Type %q", ct)
	}
	if !bytes.Equal(body, c1.DER) {
		t.Fatal("the body is not the stored CRL")
	}
	if _, err := x509.ParseRevocationList(body); err != nil {
		t.Fatalf("body: %v", err)
	}
	etag, lm, cc := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified"), resp.Header.Get("Cache-Control")
	if etag != `"crl-1"` {
		t.Errorf("ETag %q, want \"crl-1\"", etag)
	}
	if lm != c1.ThisUpdate.UTC().Format(http.TimeFormat) {
		t.Errorf("Last-Modified %q, want thisUpdate %s", lm, c1.ThisUpdate)
	}
	maxAge := -1
	for _, d := range strings.Split(cc, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(d), "max-age="); ok {
			maxAge, _ = strconv.Atoi(v)
		}
	}
	if maxAge <= 0 || maxAge > int(crlMaxAge/time.Second) || !strings.Contains(cc, "public") {
		t.Errorf("Cache-Control %q: want public and 0 < max-age <= %v", cc, crlMaxAge)
	}

	// HEAD: the headers, no body.
	resp, body = e.do(t, "HEAD", ca.CRLPath)
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("ETag") != etag ||
		resp.Header.Get("Content-Length") != strconv.Itoa(len(c1.DER)) {
		t.Errorf("HEAD: %d, %d body bytes, ETag %q, Content-Length %q", resp.StatusCode, len(body), resp.Header.Get("ETag"), resp.Header.Get("Content-Length"))
	}
	// Conditional requests.
	for _, h := range [][]string{{"If-None-Match", etag}, {"If-None-Match", `"other", ` + etag}, {"If-Modified-Since", lm}} {
		resp, body = e.do(t, "GET", ca.CRLPath, h...)
		if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("%s: %s: %d, %d bytes; want 304", h[0], h[1], resp.StatusCode, len(body))
		}
	}
	if resp, _ = e.do(t, "GET", ca.CRLPath, "If-None-Match", `"crl-0"`); resp.StatusCode != http.StatusOK {
		t.Errorf("If-None-Match of an older CRL: %d, want 200", resp.StatusCode)
	}

	// A revocation, a new CRL: served at once (the publisher hands it to the cache), with its
	// own ETag; the old ETag now gets the new CRL.
	now := time.Now()
	if err := e.db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertCertificate(store.Certificate{Serial: "abcdef", Template: "smime", Email: "a@example.com", State: store.StateRevoked,
			DER: []byte{0x30, 0x00}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), RevokedAt: now.Add(-time.Minute), RevocationReason: store.ReasonKeyCompromise})
	}); err != nil {
		t.Fatal(err)
	}
	c2, err := e.pub.Publish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, body = e.do(t, "GET", ca.CRLPath, "If-None-Match", etag)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") != `"crl-2"` || !bytes.Equal(body, c2.DER) {
		t.Fatalf("after a new CRL: %d, ETag %q", resp.StatusCode, resp.Header.Get("ETag"))
	}
	rl, err := x509.ParseRevocationList(body)
	if err != nil || len(rl.RevokedCertificateEntries) != 1 || rl.RevokedCertificateEntries[0].SerialNumber.Text(16) != "abcdef" {
		t.Fatalf("new CRL: %v, %v", err, rl)
	}

	// Other methods: 405 with Allow.
	resp, _ = e.do(t, "POST", ca.CRLPath)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestPublicCRLStorageAway: the CRL is served from memory, not read per request: with the
// store closed (a storage fault), the cached CRL is still served, even when it is time to
// compare it with the store again. Without anything cached, the fault is a 503.
func TestPublicCRLStorageAway(t *testing.T) {
	e := newPublicEnv(t, nil)
	c, err := e.pub.Publish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, stale := range []bool{false, true} {
		if stale {
			e.a.crls.mu.Lock()
			e.a.crls.checked = time.Time{}
			e.a.crls.mu.Unlock()
		}
		resp, body := e.do(t, "GET", ca.CRLPath)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, c.DER) {
			t.Fatalf("store closed (recheck due %v): %d", stale, resp.StatusCode)
		}
	}
	e.a.crls = newCRLCache(e.db, e.a.log)
	if resp, _ := e.do(t, "GET", ca.CRLPath); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("store closed, nothing cached: %d, want 503", resp.StatusCode)
	}
}

func TestPublicCACert(t *testing.T) {
	e := newPublicEnv(t, nil)
	resp, body := e.do(t, "GET", ca.CACertPath)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/pkix-cert" || !bytes.Equal(body, e.a.caCert.Raw) {
		t.Fatalf("GET %s: %d %q", ca.CACertPath, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp.Header.Get("ETag") == "" || resp.Header.Get("Cache-Control") == "" {
		t.Errorf("headers: %v", resp.Header)
	}
	resp, _ = e.do(t, "GET", ca.CACertPath, "If-None-Match", resp.Header.Get("ETag"))
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", resp.StatusCode)
	}
	for _, p := range []string{"/", "/crl/", "/crl/ca.pem", "/ca.pem", "/readyz", "/.well-known/est/cacerts"} {
		if resp, _ := e.do(t, "GET", p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
}

func TestPublicOCSPDelegation(t *testing.T) {
	e := newPublicEnv(t, nil)
	if resp, _ := e.do(t, "GET", "/ocsp/MEMwQTA"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("no OCSP handler: %d, want 404", resp.StatusCode)
	}
	var got []string
	e = newPublicEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/ocsp-response")
		io.WriteString(w, "ocsp")
	}))
	for _, m := range []struct{ method, path string }{{"POST", "/ocsp"}, {"GET", "/ocsp/MEMwQTA"}, {"POST", "/ocsp/"}} {
		resp, body := e.do(t, m.method, m.path)
		if resp.StatusCode != http.StatusOK || string(body) != "ocsp" {
			t.Errorf("%s %s: %d %q", m.method, m.path, resp.StatusCode, body)
		}
	}
	if len(got) != 3 {
		t.Fatalf("the OCSP handler saw %v", got)
	}
	// Each answer is counted once, by route and status code, in keyarc_http_requests_total.
	e.do(t, "GET", ca.CACertPath)
	e.do(t, "GET", "/nothing-here")
	e.do(t, "PUT", ca.CACertPath)
	for _, c := range []struct {
		route, code string
		want        float64
	}{{"public:/ocsp", "200", 3}, {"public:" + ca.CACertPath, "200", 1}, {"public:" + ca.CACertPath, "405", 1}, {"public:unmatched", "404", 1}} {
		var m dto.Metric
		e.a.metrics.requests.WithLabelValues(c.route, c.code).(prometheus.Metric).Write(&m)
		if got := m.GetCounter().GetValue(); got != c.want {
			t.Errorf("keyarc_http_requests_total{route=%q,code=%q} = %v, want %v", c.route, c.code, got, c.want)
		}
	}
}

// TestCRLAlerts: promtool's rule tests show the CRL alerts firing on the series the appliance
// exports: nextUpdate within two days, repeated build failures, no CRL after start; and quiet
// on a healthy appliance (a daily CRL, 7 days of validity).
func TestCRLAlerts(t *testing.T) {
	abs := alertRulesForTests(t)
	const day = 86400
	cases := []struct {
		alert, series, values, at string
		fires                     bool
	}{
		// 50 hours left and going down (no new CRL): under 2 days after 2 hours, firing 10
		// minutes later.
		{"KeyarcCRLNextUpdateSoon", `keyarc_crl_next_update_remaining_seconds{instance="k1"}`, "180000-60x200", "140m", true},
		{"KeyarcCRLNextUpdateSoon", `keyarc_crl_next_update_remaining_seconds{instance="k1"}`, "180000-60x200", "125m", false},
		// A healthy appliance: 6 days and more left.
		{"KeyarcCRLNextUpdateSoon", `keyarc_crl_next_update_remaining_seconds{instance="k1"}`, fmt.Sprintf("%d-60x200", 7*day), "140m", false},
		{"KeyarcCRLBuildFailures", `keyarc_crl_build_failures_total{instance="k1"}`, "0 1 2 3 4 5 6", "6m", true},
		{"KeyarcCRLBuildFailures", `keyarc_crl_build_failures_total{instance="k1"}`, "0 1 1 1 1 1 1", "6m", false},
		{"KeyarcCRLMissing", `up{job="keyarc",instance="k1"}`, "1x30", "20m", true},
	}
	var tests strings.Builder
	for _, c := range cases {
		exp := " []"
		if c.fires {
			sev := "warning"
			if c.alert == "KeyarcCRLNextUpdateSoon" {
				sev = "critical"
			}
			exp = "\n          - exp_labels: {severity: " + sev + ", instance: k1"
			if c.alert == "KeyarcCRLMissing" {
				exp += ", job: keyarc"
			}
			exp += "}"
		}
		interval := "1m"
		fmt.Fprintf(&tests, `  - interval: %s
    input_series:
      - series: '%s'
        values: '%s'
    alert_rule_test:
      - eval_time: %s
        alertname: %s
        exp_alerts:%s
`, interval, c.series, c.values, c.at, c.alert, exp)
	}
	// An appliance with a CRL is not "missing" one.
	fmt.Fprintf(&tests, `  - interval: 1m
    input_series:
      - series: 'up{job="keyarc",instance="k1"}'
        values: '1x30'
      - series: 'keyarc_crl_number{job="keyarc",instance="k1"}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: KeyarcCRLMissing
        exp_alerts: []
`)
	file := filepath.Join(t.TempDir(), "crl_alerts_test.yml")
	if err := os.WriteFile(file, []byte("rule_files: ['"+abs+"']\nevaluation_interval: 1m\ntests:\n"+tests.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("promtool", "test", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestCRLAndRevocationMetrics: the series the alerts and dashboards read.
func TestCRLAndRevocationMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, "test")
	gather := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			for _, x := range mf.GetMetric() {
				k := mf.GetName()
				for _, l := range x.GetLabel() {
					k += "," + l.GetName() + "=" + l.GetValue()
				}
				if x.Gauge != nil {
					out[k] = x.GetGauge().GetValue()
				} else if x.Counter != nil {
					out[k] = x.GetCounter().GetValue()
				}
			}
		}
		return out
	}
	if _, ok := gather()["keyarc_crl_number"]; ok {
		t.Fatal("keyarc_crl_number before any CRL")
	}
	this := time.Now().Add(-time.Hour).Truncate(time.Second)
	m.CRLCurrent(7, this, this.Add(7*24*time.Hour))
	m.CRLCurrent(6, this.Add(-time.Hour), this) // an older one reported late is ignored
	m.CRLFailed()
	m.Revoked("keyCompromise")
	m.Revoked("keyCompromise")
	m.Revoked("reason 42")
	g := gather()
	for k, want := range map[string]float64{
		"keyarc_crl_number":                             7,
		"keyarc_crl_this_update_timestamp_seconds":      float64(this.Unix()),
		"keyarc_crl_next_update_timestamp_seconds":      float64(this.Add(7 * 24 * time.Hour).Unix()),
		"keyarc_crl_build_failures_total":               1,
		"keyarc_revocations_total,reason=keyCompromise": 2,
		"keyarc_revocations_total,reason=superseded":    0,
		"keyarc_revocations_total,reason=other":         1,
	} {
		if got, ok := g[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	if age := g["keyarc_crl_age_seconds"]; age < 3600 || age > 3700 {
		t.Errorf("keyarc_crl_age_seconds = %v, want about 3600", age)
	}
	if left := g["keyarc_crl_next_update_remaining_seconds"]; left < 6*86400 || left > 7*86400 {
		t.Errorf("keyarc_crl_next_update_remaining_seconds = %v", left)
	}
}
