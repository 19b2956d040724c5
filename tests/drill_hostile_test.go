package tests

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// do sends one request as the KRA and returns the status and the body.
func (k *testKRA) do(t *testing.T, method, path string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, k.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := k.client.Do(req)
	if err != nil {
		t.Fatalf("%s %.80s: %v", method, path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

// TestDrillHostile: the drill routes under a hostile client and a failing appliance token, with
// the real binary, its token behind `p11-kit server`, and kra1 acting with its dev token.
// Drill IDs that are not one, bodies that are not a proof and the wrong methods are refused
// as the client's errors, with short messages; a KRA cannot stack drills of its own; a
// proof sent while the appliance's token is gone is a 503 that leaves nothing behind (the
// drill open, no refusal audited or counted against the KRA), so is one sent while the
// database refuses its writes (strace injects ENOSPC), and the same proof passes once the
// faults are gone, once.
func TestDrillHostile(t *testing.T) {
	tokRequireP11kit(t)
	state := devState(t)
	socket := filepath.Join(t.TempDir(), "p11.sock")
	server := p11kitServer(t, state, socket)
	setTokenModule(t, state, tokP11kitClient)
	a := serveWith(t, state, []string{"P11_KIT_SERVER_ADDRESS=unix:path=" + socket}, "")
	as := func(who string, args ...string) []string {
		return append(args, "--state", state, "--server", a.url, "--as", who)
	}
	var opened []drillShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "open", "--kra", "kra1", "--json")...)), &opened); err != nil || len(opened) != 1 {
		t.Fatalf("open kra1's drill: %v %+v", err, opened)
	}
	id := opened[0].ID
	kra := openKRA(t, state, a, "kra1")
	proof := kra.proof(t, id)

	// Not a drill ID: the client's error (400), not echoed back.
	huge := strings.Repeat("a", 20000)
	for _, bad := range []string{"..%2F..%2Fkeyarc.db", huge, "ZZZZZZZZZZZZZZZZ", id + "0", strings.ToUpper(id)} {
		for _, m := range []string{"GET", "POST"} {
			path, body := "/api/v1/drills/"+bad, []byte(nil)
			if m == "POST" {
				path, body = path+"/proof", proof.body
			}
			if code, msg := kra.do(t, m, path, body); code != http.StatusBadRequest || len(msg) > 300 || !strings.Contains(msg, "not a drill ID") {
				t.Errorf("%s %.60s: %d %.300s; want 400 saying it is not a drill ID, short", m, path, code, msg)
			}
		}
	}
	// The CLI refuses them itself, before a path is built from them.
	for _, bad := range []string{"../../healthz", id + "?open=1"} {
		if _, stderr, err := keyarcResult(as("kra1", "kra", "drill", "--drill", bad)...); err == nil || !strings.Contains(stderr, "takes a drill ID") {
			t.Errorf("keyarc kra drill --drill %q: %v %s; want a usage error naming the drill ID's form", bad, err, stderr)
		}
	}
	// Bodies that are not a proof; methods the routes do not take.
	for _, tt := range []struct {
		name, method, path string
		body               []byte
		want               int
	}{
		{"truncated JSON", "POST", "/api/v1/drills/" + id + "/proof", []byte(`{"shares":[`), http.StatusBadRequest},
		{"an unknown field", "POST", "/api/v1/drills/" + id + "/proof", []byte(`{"shares":[],"signature":"","admin":true}`), http.StatusBadRequest},
		{"two JSON values", "POST", "/api/v1/drills/" + id + "/proof", append(append([]byte{}, proof.body...), proof.body...), http.StatusBadRequest},
		{"a share not base64", "POST", "/api/v1/drills/" + id + "/proof", []byte(`{"shares":[{"epoch":1,"share":"%%%"}],"signature":"AA=="}`), http.StatusBadRequest},
		{"300 KiB", "POST", "/api/v1/drills/" + id + "/proof", bytes.Repeat([]byte(" "), 300<<10), http.StatusRequestEntityTooLarge},
		{"GET the proof route", "GET", "/api/v1/drills/" + id + "/proof", nil, http.StatusMethodNotAllowed},
		{"POST a drill", "POST", "/api/v1/drills/" + id, []byte(`{}`), http.StatusMethodNotAllowed},
		{"DELETE a drill", "DELETE", "/api/v1/drills/" + id, nil, http.StatusMethodNotAllowed},
		{"open=maybe", "GET", "/api/v1/drills?open=maybe", nil, http.StatusBadRequest},
		// A KRA with an open drill opens no other: each is a key in the appliance token.
		{"a second drill of its own", "POST", "/api/v1/drills", []byte(`{}`), http.StatusConflict},
	} {
		if code, msg := kra.do(t, tt.method, tt.path, tt.body); code != tt.want {
			t.Errorf("%s: %d %.300s; want %d", tt.name, code, msg, tt.want)
		}
	}

	// The appliance's token goes away while kra1 answers: a 503, and nothing happens.
	db := openDBFile(t, state)
	refusals := func() int {
		return queryInt(t, db, `SELECT count(*) FROM audit WHERE kind IN ('drill-refused', 'approval-refused', 'drill-proof')`) +
			queryInt(t, db, `SELECT count(*) FROM approval_failures`)
	}
	if n := refusals(); n != 0 {
		t.Fatalf("%d refusals before the fault (the bodies above are refused before the engine)", n)
	}
	syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
	server.Wait()
	if code, msg := kra.submit(t, id, proof); code != http.StatusServiceUnavailable {
		t.Fatalf("the proof with the appliance token gone: %d %s; want 503", code, msg)
	}
	if n := refusals(); n != 0 {
		t.Errorf("the proof refused for the token's fault left %d refusals, failures or proofs", n)
	}
	var listed []drillShown
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "list", "--json")...)), &listed); err != nil || len(listed) != 1 || listed[0].State != "open" {
		t.Fatalf("the drill after the fault: %v %+v; want it open", err, listed)
	}
	p11kitServer(t, state, socket)
	deadline := time.Now().Add(30 * time.Second)
	for getStatus(t, a, "/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("the appliance did not come back with its token")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Now the database refuses its writes (ENOSPC) while kra1 answers: a 503, and nothing
	// happens either.
	if _, err := exec.LookPath("strace"); err == nil {
		tr := startStrace(t, a, "-e", "trace=pwrite64", "-e", "inject=pwrite64:error=ENOSPC")
		if code, msg := kra.submit(t, id, proof); code != http.StatusServiceUnavailable {
			t.Errorf("the proof with the disk full: %d %s; want 503", code, msg)
		}
		tr.Process.Signal(os.Interrupt) // detach: the fault clears
		tr.Wait()
		if n := refusals(); n != 0 {
			t.Errorf("the proof refused for the storage's fault left %d refusals, failures or proofs", n)
		}
	} else if os.Getenv("CI") != "" {
		t.Fatal("strace is required in CI")
	}
	if code, msg := kra.submit(t, id, proof); code != http.StatusOK {
		t.Fatalf("the same proof with the token and the disk back: %d %s", code, msg)
	}
	if code, msg := kra.submit(t, id, proof); code != http.StatusConflict {
		t.Errorf("the proof again: %d %s; want 409", code, msg)
	}
	// The proven drill is listed with open=0 (all drills), not with open=1.
	for q, want := range map[string]int{"?open=0": 1, "?open=false": 1, "?open=1": 0, "": 1} {
		code, msg := kra.do(t, "GET", "/api/v1/drills"+q, nil)
		var got []drillShown
		if err := json.Unmarshal([]byte(msg), &got); code != http.StatusOK || err != nil || len(got) != want {
			t.Errorf("GET /api/v1/drills%s: %d %.300s; want %d drill", q, code, msg, want)
		}
	}
	if strings.Contains(a.logs.String(), huge[:100]) {
		t.Error("the malformed drill ID reached the log")
	}
	// A refused proof is a refused recovery step in the metrics too (the alert on repeated
	// refusals sums them), beside its audit entry.
	opened = nil
	if err := json.Unmarshal([]byte(keyarc(t, as("admin", "admin", "drill", "open", "--kra", "kra1", "--json")...)), &opened); err != nil || len(opened) != 1 {
		t.Fatalf("open kra1's second drill: %v %+v", err, opened)
	}
	if code, msg := kra.submit(t, opened[0].ID, proof); code != http.StatusBadRequest {
		t.Fatalf("the first drill's proof for the second: %d %s; want 400", code, msg)
	}
	if v := metricValue(t, a, `keyarc_recovery_approvals_total{result="bad-drill-proof"}`); v != 1 {
		t.Errorf(`keyarc_recovery_approvals_total{result="bad-drill-proof"} = %v after one refused proof, want 1`, v)
	}
}
