package bulk

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/store"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

func submit(tb testing.TB, env *testEnv, file []byte) *Status {
	tb.Helper()
	st, err := env.mgr.Submit(context.Background(), bytes.NewReader(file), "admin")
	if err != nil {
		tb.Fatalf("Submit: %v", err)
	}
	return st
}

func wantStates(tb testing.TB, res map[int]Result, total int, failed ...int) {
	tb.Helper()
	if len(res) != total {
		tb.Fatalf("%d results, want %d", len(res), total)
	}
	bad := map[int]bool{}
	for _, f := range failed {
		bad[f] = true
	}
	for seq := 1; seq <= total; seq++ {
		r, ok := res[seq]
		if !ok {
			tb.Fatalf("no result for item %d", seq)
		}
		want := store.ItemDone
		if bad[seq] {
			want = store.ItemFailed
		}
		if r.State != want {
			tb.Fatalf("item %d: %s (%s), want %s", seq, r.State, r.Error, want)
		}
		if want == store.ItemFailed && r.Error == "" {
			tb.Fatalf("item %d failed without a reason", seq)
		}
	}
}

func TestEnrollJob(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		var items []any
		for i := range 20 {
			items = append(items, env.enrollItem(t, strings.Repeat("u", 1+i%3)+string(rune('a'+i))+"@example.org"))
		}
		// Bad items: a CSR for another mailbox, a key that is not the CSR's, an envelope to
		// another certificate, garbage.
		other := env.enrollItem(t, "mallory@example.org")
		other.Email = "victim@example.org"
		items[3] = other
		swapped := env.enrollItem(t, "swap@example.org")
		swapped.EncryptedKey = items[0].(Item).EncryptedKey
		items[7] = swapped
		items[11] = `{"email":"x@example.org","csr":"AAAA","encrypted_key":"AAAA"}`
		items[15] = `not json`
		st := submit(t, env, jobFile(t, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
		if st.Total != 20 || st.State != store.JobQueued {
			t.Fatalf("submitted: %+v", st)
		}
		st = env.runUntilDone(t, st.ID)
		if st.Done != 16 || st.Failed != 4 || st.State != store.JobDone {
			t.Fatalf("final status %+v, want 16 done, 4 failed", st)
		}
		res := env.results(t, st.ID)
		wantStates(t, res, 20, 4, 8, 12, 16)
		certs := env.checkInvariant(t, res)
		if got := certs[1].EmailAddresses; len(got) != 1 || got[0] != "ua@example.org" {
			t.Fatalf("item 1 certificate for %v", got)
		}
		// The CMS failure does not say more than the envelope error.
		if !strings.Contains(res[8].Error, "not the pair") {
			t.Errorf("item 8 reason %q", res[8].Error)
		}
		if err := env.mgr.Passwords(context.Background(), st.ID, &bytes.Buffer{}); !errors.Is(err, ErrReleased) {
			t.Fatalf("Passwords of an enroll job: %v, want ErrReleased", err)
		}
	})
}

func TestKeygenJob(t *testing.T) {
	backends(t, func(t *testing.T, env *testEnv) {
		items := []any{
			Item{Email: "a@example.org"},
			Item{Email: "b@example.org", Key: "rsa2048"},
			Item{Email: "not a mailbox"},
			Item{Email: "d@example.org", Key: "p384"},
			Item{Email: "e@example.org", Key: "ed25519"},
		}
		st := submit(t, env, jobFile(t, Header{Kind: KindKeygen, Template: "smime-encryption", Key: "p256"}, items...))
		// Passwords are not released before the end.
		if err := env.mgr.Passwords(context.Background(), st.ID, &bytes.Buffer{}); !errors.Is(err, ErrNotDone) {
			t.Fatalf("Passwords before the end: %v, want ErrNotDone", err)
		}
		st = env.runUntilDone(t, st.ID)
		res := env.results(t, st.ID)
		wantStates(t, res, 5, 3, 5)
		certs := env.checkInvariant(t, res)
		var pw bytes.Buffer
		if err := env.mgr.Passwords(context.Background(), st.ID, &pw); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(resultsText(t, env, st.ID), "password") {
			t.Fatal("results mention a password")
		}
		dec := json.NewDecoder(&pw)
		n := 0
		for dec.More() {
			var p Password
			if err := dec.Decode(&p); err != nil {
				t.Fatal(err)
			}
			n++
			der, _ := base64.StdEncoding.DecodeString(res[p.Seq].PKCS12)
			key, cert, _, err := pkcs12.DecodeChain(der, p.Password)
			if err != nil {
				t.Fatalf("item %d: PKCS#12 does not open with its password: %v", p.Seq, err)
			}
			if !cert.Equal(certs[p.Seq]) || p.Serial != res[p.Seq].Serial {
				t.Fatalf("item %d: PKCS#12 holds another certificate", p.Seq)
			}
			k8, _ := x509.MarshalPKCS8PrivateKey(key)
			if err := escrow.CheckKeyPair(k8, cert.PublicKey); err != nil {
				t.Fatal(err)
			}
			if p.Seq == 2 {
				if _, ok := key.(*rsa.PrivateKey); !ok {
					t.Fatalf("item 2 key is %T, want RSA", key)
				}
			}
		}
		if n != 3 {
			t.Fatalf("%d passwords, want 3", n)
		}
		// Once only.
		if err := env.mgr.Passwords(context.Background(), st.ID, &bytes.Buffer{}); !errors.Is(err, ErrReleased) {
			t.Fatalf("second Passwords: %v, want ErrReleased", err)
		}
	})
}

func resultsText(t *testing.T, env *testEnv, id string) string {
	var b bytes.Buffer
	if err := env.mgr.Results(context.Background(), id, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestImportJob(t *testing.T) {
	env := newEnv(t)
	old := newOtherCA(t)
	var items []any
	for i := range 20 {
		k := p256(t)
		c := old.issue(t, k.Public(), string(rune('a'+i))+"@example.org")
		switch i {
		case 5: // key of another certificate
			items = append(items, Item{Certificate: b64(c.Raw), Key: b64(pkcs8(t, p256(t)))})
		case 9: // PKCS#12
			items = append(items, Item{PKCS12: b64(p12(t, k, c, "pw")), Password: "pw"})
		case 13: // the same certificate twice: the second fails
			items = append(items, items[12])
		default:
			items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(t, k))})
		}
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindImport}, items...))
	st = env.runUntilDone(t, st.ID)
	res := env.results(t, st.ID)
	// Items 13 and 14 are the same certificate: whichever is committed first wins.
	dup := 14
	if res[13].State == store.ItemFailed {
		dup = 13
	}
	wantStates(t, res, 20, 6, dup)
	certs := env.checkInvariant(t, res)
	if len(certs) != 18 {
		t.Fatalf("%d certificates", len(certs))
	}
}

// TestResume: a job interrupted after some items (some of them reserved, never issued, as a
// crash leaves them) resumes without issuing any item twice.
func TestResume(t *testing.T) {
	env := newEnv(t)
	var items []any
	for i := range 30 {
		items = append(items, Item{Email: "user" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "@example.org"})
	}
	st := submit(t, env, jobFile(t, Header{Kind: KindKeygen, Template: "smime-encryption", Key: "p256"}, items...))
	// Simulate a crash: item 1 reserved with a pending certificate (never signed).
	ctx := context.Background()
	err := env.db.Update(ctx, func(tx store.Tx) error {
		if err := tx.StartJob(st.ID, env.mgr.now()); err != nil {
			return err
		}
		if err := tx.InsertCertificate(store.Certificate{Serial: "0abc", Template: "smime-encryption", Email: "usera@example.org"}); err != nil {
			return err
		}
		return tx.ReserveJobItem(st.ID, 1, "0abc", "")
	})
	if err != nil {
		t.Fatal(err)
	}
	// Restart: the sweep fails the pending certificate; the job redoes item 1.
	if _, err := env.svc.Sweep(ctx, env.mgr.now().Add(1)); err != nil {
		t.Fatal(err)
	}
	st = env.runUntilDone(t, st.ID)
	if st.Done != 30 {
		t.Fatalf("status %+v", st)
	}
	res := env.results(t, st.ID)
	wantStates(t, res, 30)
	env.checkInvariant(t, res)
	if res[1].Serial == "0abc" {
		t.Fatal("item 1 kept its failed reservation")
	}
	// Running the job's items again changes nothing: each seq has its outcome.
	err = env.db.Update(ctx, func(tx store.Tx) error { return tx.ReserveJobItem(st.ID, 2, "0def", "") })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("reserving a done item: %v, want ErrConflict", err)
	}
}

func TestSubmitRefusals(t *testing.T) {
	env := newEnv(t)
	tests := []struct {
		name    string
		file    string
		wantErr error
	}{
		{"no items", `{"kind":"import"}` + "\n", ErrFormat},
		{"unknown template", `{"kind":"enroll","template":"nope"}` + "\n{}\n", nil},
		{"signature template", `{"kind":"enroll","template":"smime-signature"}` + "\n{}\n", escrow.ErrInvalidRequest},
		{"manual template", `{"kind":"keygen","template":"kra"}` + "\n{}\n", escrow.ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := env.mgr.Submit(context.Background(), strings.NewReader(tt.file), "admin")
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
	// Nothing is left behind.
	files, _ := os.ReadDir(env.mgr.Dir)
	if len(files) != 0 {
		t.Fatalf("%d job files left after refusals", len(files))
	}
}
