package escrow

import (
	"context"
	"database/sql"
	"encoding/asn1"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// pfxMACIterations reads the MAC iteration count of a PKCS#12 file (RFC 7292: PFX ::=
// SEQUENCE { version, authSafe, macData SEQUENCE { mac, macSalt, iterations INTEGER DEFAULT 1 } }).
func pfxMACIterations(t *testing.T, der []byte) int {
	t.Helper()
	var pfx struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  struct {
			Mac        asn1.RawValue
			MacSalt    []byte
			Iterations int `asn1:"optional,default:1"`
		} `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(der, &pfx); err != nil {
		t.Fatalf("parse PKCS#12: %v", err)
	}
	return pfx.MacData.Iterations
}

// TestLegacyPFXIterations: a --legacy PKCS#12 (3DES, SHA-1 MAC, for old clients) derives its MAC
// key and its encryption keys with at least 2,048 iterations, as OpenSSL's own legacy output
// does, not 1.
func TestLegacyPFXIterations(t *testing.T) {
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approve(t, 0, id)
	r.approve(t, 1, id)
	got, err := r.svc.Fetch(context.Background(), r.officer, id, true)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	pfx := got.Files[0].PFX
	if n := pfxMACIterations(t, pfx); n < 2048 {
		t.Errorf("legacy PKCS#12 MAC iterations %d, want at least 2048", n)
	}
	if _, _, _, err := pkcs12.DecodeChain(pfx, got.Password); err != nil {
		t.Fatalf("decode the legacy PKCS#12: %v", err)
	}

	// OpenSSL, a real consumer, reads every iteration count of the file.
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("openssl missing and $CI is set")
		}
		t.Skip("openssl not installed")
	}
	file := filepath.Join(t.TempDir(), "legacy.p12")
	if err := os.WriteFile(file, pfx, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "pkcs12", "-info", "-legacy", "-noout", "-in", file, "-passin", "pass:"+got.Password).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl pkcs12 -info -legacy: %v\n%s", err, out)
	}
	mac := regexp.MustCompile(`MAC: sha1, Iteration (\d+)`).FindSubmatch(out)
	if mac == nil {
		t.Fatalf("openssl shows no SHA-1 MAC:\n%s", out)
	}
	all := regexp.MustCompile(`Iteration (\d+)`).FindAllSubmatch(out, -1)
	if len(all) < 3 { // the MAC, the certificates' bag, the key's bag
		t.Fatalf("openssl shows %d iteration counts, want the MAC's and both bags':\n%s", len(all), out)
	}
	for _, m := range all {
		if n, _ := strconv.Atoi(string(m[1])); n < 2048 {
			t.Errorf("openssl: iteration count %d in the legacy PKCS#12, want at least 2048:\n%s", n, out)
		}
	}
}

// TestApprovalLimitSurvivesRestart: the KRA approval rate limit is kept in the store, so a KRA
// locked out after repeated refused approvals stays locked out when the appliance restarts
// (a new Service on the same database), until the window has passed.
func TestApprovalLimitSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	kra := r.kraPrincipal(t, 0)
	shares, sig := r.approval(t, 0, id)
	bad := append([]byte(nil), sig...)
	bad[len(bad)-1] ^= 1
	for i := range approvalFailures {
		if _, err := r.svc.SubmitApproval(ctx, kra, id, shares, bad); !errors.Is(err, ErrBadApproval) {
			t.Fatalf("refused approval %d: %v, want ErrBadApproval", i+1, err)
		}
	}
	if _, err := r.svc.SubmitApproval(ctx, kra, id, shares, sig); !errors.Is(err, ErrTooManyFailures) {
		t.Fatalf("approval after %d refusals: %v, want ErrTooManyFailures", approvalFailures, err)
	}

	restarted := &Service{Store: r.svc.Store, Issuer: r.svc.Issuer, Templates: r.svc.Templates, Transport: r.svc.Transport,
		RecoveryKeys: r.svc.RecoveryKeys, Now: r.svc.Now}
	if _, err := restarted.SubmitApproval(ctx, kra, id, shares, sig); !errors.Is(err, ErrTooManyFailures) {
		t.Fatalf("approval after a restart: %v, want ErrTooManyFailures", err)
	}
	// Another KRA is not affected.
	s1, sig1 := r.approval(t, 1, id)
	if _, err := restarted.SubmitApproval(ctx, r.kraPrincipal(t, 1), id, s1, sig1); err != nil {
		t.Fatalf("another KRA's approval: %v", err)
	}
	r.clock.Set(t0.Add(approvalWindow + time.Minute))
	defer r.clock.Set(t0)
	if _, err := restarted.SubmitApproval(ctx, kra, id, shares, sig); err != nil {
		t.Fatalf("approval once the window has passed: %v", err)
	}
	if _, err := restarted.Fetch(ctx, r.officer, id, false); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
}

// TestApprovalRetriedIsNotCounted: a KRA that sends its approval again (its answer was lost:
// the appliance restarted, or the network dropped, after the approval was stored) is told it
// approved already (ErrAlreadyApproved, a 409), and the retries do not count towards its
// lock-out: the KRA can still approve another request afterwards.
func TestApprovalRetriedIsNotCounted(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	kra := r.kraPrincipal(t, 0)
	shares, sig := r.approval(t, 0, id)
	if _, err := r.svc.SubmitApproval(ctx, kra, id, shares, sig); err != nil {
		t.Fatalf("SubmitApproval: %v", err)
	}
	for i := range approvalFailures + 1 {
		if _, err := r.svc.SubmitApproval(ctx, kra, id, shares, sig); !errors.Is(err, ErrAlreadyApproved) {
			t.Fatalf("the same approval again (%d): %v, want ErrAlreadyApproved", i+1, err)
		}
	}
	other, err := r.svc.RequestRecovery(ctx, r.officer, r.serial, "", "another", time.Hour)
	if err != nil {
		t.Fatalf("RequestRecovery: %v", err)
	}
	r.approve(t, 0, other.ID)
}

// TestApprovalAuditFaultNotCounted: an approval the appliance cannot record in its audit
// trail (audit.ErrAppend, a fault of the appliance) is refused, but not counted against the
// KRA: once the trail takes entries again, the same approval goes through instead of meeting
// ErrTooManyFailures.
func TestApprovalAuditFaultNotCounted(t *testing.T) {
	ctx := context.Background()
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	kra := r.kraPrincipal(t, 0)
	shares, sig := r.approval(t, 0, id)
	raw, err := sql.Open("sqlite", "file:"+r.svc.Store.(*sqlite.DB).Path()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// Only the approval's own entry fails: the refusals can still be recorded (and counted).
	if _, err := raw.Exec(`CREATE TRIGGER approval_off BEFORE INSERT ON audit WHEN NEW.kind = 'approval' BEGIN SELECT RAISE(ABORT, 'audit disabled'); END`); err != nil {
		t.Fatal(err)
	}
	for i := range approvalFailures + 1 {
		if _, err := r.svc.SubmitApproval(ctx, kra, id, shares, sig); !errors.Is(err, audit.ErrAppend) {
			t.Fatalf("approval %d with the trail refusing it: %v, want audit.ErrAppend", i+1, err)
		}
	}
	if _, err := raw.Exec(`DROP TRIGGER approval_off`); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.SubmitApproval(ctx, kra, id, shares, sig); err != nil {
		t.Fatalf("the same approval once the trail takes entries again: %v, want it accepted", err)
	}
}
