package escrow

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/record"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

func TestEnrollArchived(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	p256 := func(tb testing.TB) crypto.Signer { return newP256(tb) }
	tests := []struct {
		name      string
		key       func(testing.TB) crypto.Signer
		content   cms.Content
		hash      crypto.Hash
		shareHash crypto.Hash // Service.ShareOAEPHash
		wantKU    x509.KeyUsage
	}{
		{name: "P-256 CBC OAEP-SHA1", key: p256, content: cms.EnvelopedAESCBC, hash: crypto.SHA1, wantKU: x509.KeyUsageKeyAgreement},
		{name: "P-256 CBC OAEP-SHA256", key: p256, content: cms.EnvelopedAESCBC, hash: crypto.SHA256, wantKU: x509.KeyUsageKeyAgreement},
		{name: "P-256 GCM OAEP-SHA1", key: p256, content: cms.AuthEnvelopedAESGCM, hash: crypto.SHA1, wantKU: x509.KeyUsageKeyAgreement},
		{name: "P-256 GCM OAEP-SHA256", key: p256, content: cms.AuthEnvelopedAESGCM, hash: crypto.SHA256, wantKU: x509.KeyUsageKeyAgreement},
		{name: "P-384 GCM OAEP-SHA256", content: cms.AuthEnvelopedAESGCM, hash: crypto.SHA256, wantKU: x509.KeyUsageKeyAgreement,
			key: func(tb testing.TB) crypto.Signer {
				k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
				if err != nil {
					tb.Fatal(err)
				}
				return k
			}},
		{name: "RSA-2048 CBC OAEP-SHA256", content: cms.EnvelopedAESCBC, hash: crypto.SHA256, wantKU: x509.KeyUsageKeyEncipherment,
			key: func(tb testing.TB) crypto.Signer { return rsaKey(tb, keySubject) }},
		{name: "shares with OAEP-SHA256", key: p256, content: cms.AuthEnvelopedAESGCM, hash: crypto.SHA256, shareHash: crypto.SHA256,
			wantKU: x509.KeyUsageKeyAgreement},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env.svc.ShareOAEPHash = tt.shareHash
			defer func() { env.svc.ShareOAEPHash = 0 }()
			who := env.enrollee(t, fmt.Sprintf("arch%d@example.org", i), policy.TemplateSMIMEEncryption)
			key := tt.key(t)
			issued, err := env.svc.EnrollArchived(ctx, who,
				EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: newCSR(t, key, who.Mailbox)},
				envelope(t, key, env.transport, tt.content, tt.hash))
			if err != nil {
				t.Fatalf("EnrollArchived: %v", err)
			}
			env.assertArchived(t, issued, pkcs8Of(t, key))
			c := issued.Certificate
			if c.KeyUsage != tt.wantKU {
				t.Errorf("key usage %v, want %v", c.KeyUsage, tt.wantKU)
			}
			if !publicKeysEqual(c.PublicKey, key.Public()) {
				t.Errorf("certificate key is not the CSR's")
			}
			if err := c.CheckSignatureFrom(env.svc.Issuer.Certificate()); err != nil {
				t.Errorf("certificate not signed by the CA: %v", err)
			}
			rec := env.record(t, issued.RecordID)
			if rec.Epoch != 1 || rec.Email != who.Mailbox {
				t.Errorf("record epoch %d, email %s; want 1, %s", rec.Epoch, rec.Email, who.Mailbox)
			}
			r, err := record.Parse(rec.Blob)
			if err != nil {
				t.Fatal(err)
			}
			wantShare := tt.shareHash
			if wantShare == 0 {
				wantShare = crypto.SHA1
			}
			if r.Header.OAEPHash != wantShare {
				t.Errorf("share OAEP hash %v, want %v", r.Header.OAEPHash, wantShare)
			}
			if err := env.codeErr(t, who); !errors.Is(err, ErrCodeUsed) {
				t.Errorf("code after enrollment: err %v, want ErrCodeUsed", err)
			}
			_, err = env.svc.EnrollArchived(ctx, who,
				EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: newCSR(t, key, who.Mailbox)},
				envelope(t, key, env.transport, tt.content, tt.hash))
			if !errors.Is(err, ErrCodeUsed) {
				t.Errorf("second EnrollArchived with the code: err %v, want ErrCodeUsed", err)
			}
			if recs := env.records(t, who.Mailbox); len(recs) != 1 {
				t.Errorf("%d records for %s, want 1", len(recs), who.Mailbox)
			}
		})
	}
}

// archInput is the request of one archiving enrollment.
type archInput struct {
	csr      *x509.CertificateRequest
	envelope []byte
}

// goodArchInput is a correct smime-encryption request for mailbox.
func goodArchInput(tb testing.TB, env *testEnv, mailbox string) (archInput, []byte) {
	key := newP256(tb)
	return archInput{csr: newCSR(tb, key, mailbox), envelope: envelope(tb, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256)},
		pkcs8Of(tb, key)
}

func TestEnrollArchivedRefused(t *testing.T) {
	shared := newTestService(t)
	ctx := context.Background()
	good := func(tb testing.TB, env *testEnv, m string) archInput { in, _ := goodArchInput(tb, env, m); return in }
	tests := []struct {
		name     string
		template string // of the code and the request; smime-encryption when empty
		bare     bool   // a fresh service without KRAs or recovery set
		build    func(tb testing.TB, env *testEnv, mailbox string) archInput
		enroll   bool                              // call Enroll (no envelope) instead of EnrollArchived
		setup    func(env *testEnv)                // before the call
		fix      func(tb testing.TB, env *testEnv) // after it, before the good enrollment
		wantErr  error
	}{
		{name: "key not the pair of the CSR", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				other := newP256(tb)
				return archInput{csr: newCSR(tb, newP256(tb), m), envelope: envelope(tb, other, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256)}
			}},
		{name: "RSA key not the pair of an EC CSR", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				return archInput{csr: newCSR(tb, newP256(tb), m), envelope: envelope(tb, rsaKey(tb, keySubject), env.transport, cms.EnvelopedAESCBC, crypto.SHA1)}
			}},
		{name: "corrupted GCM envelope", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				in := good(tb, env, m)
				in.envelope[len(in.envelope)-40] ^= 0x01
				return in
			}},
		{name: "corrupted CBC envelope", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				key := newP256(tb)
				e := envelope(tb, key, env.transport, cms.EnvelopedAESCBC, crypto.SHA256)
				e[len(e)-100] ^= 0x80
				return archInput{csr: newCSR(tb, key, m), envelope: e}
			}},
		{name: "corrupted wrapped key", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				in := good(tb, env, m)
				in.envelope[len(in.envelope)/3] ^= 0x01
				return in
			}},
		{name: "truncated envelope", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				in := good(tb, env, m)
				in.envelope = in.envelope[:len(in.envelope)-7]
				return in
			}},
		{name: "not CMS", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				in := good(tb, env, m)
				in.envelope = []byte("-----BEGIN PKCS7-----")
				return in
			}},
		{name: "no envelope", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				in := good(tb, env, m)
				in.envelope = nil
				return in
			}},
		{name: "envelope holds no PKCS#8", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				in := good(tb, env, m)
				e, err := cms.Encrypt([]byte("not a key"), env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256)
				if err != nil {
					tb.Fatal(err)
				}
				in.envelope = e
				return in
			}},
		{name: "envelope encrypted to another certificate", wantErr: ErrInvalidRequest,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				key := newP256(tb)
				return archInput{csr: newCSR(tb, key, m), envelope: envelope(tb, key, env.kras[0].cert, cms.AuthEnvelopedAESGCM, crypto.SHA256)}
			}},
		{name: "refused CSR", wantErr: policy.ErrRejected,
			build: func(tb testing.TB, env *testEnv, m string) archInput {
				key := newP256(tb)
				return archInput{csr: newCSR(tb, key, m, withEmails("mallory@example.org")),
					envelope: envelope(tb, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256)}
			}},
		{name: "archival on smime-signature", template: policy.TemplateSMIMESignature, build: good, wantErr: ErrInvalidRequest},
		{name: "Enroll without envelope on smime-encryption", enroll: true, build: good, wantErr: ErrInvalidRequest},
		{name: "no transport key", build: good, wantErr: ErrNoRecoverySet,
			setup: func(env *testEnv) { env.svc.Transport = nil },
			fix: func(tb testing.TB, env *testEnv) {
				env.svc.Transport = &Transport{Cert: env.transport, Key: rsaKey(tb, keyTransport)}
			}},
		{name: "no recovery set", bare: true, build: good, wantErr: ErrNoRecoverySet,
			fix: func(tb testing.TB, env *testEnv) {
				var serials []string
				for i := range 3 {
					serials = append(serials, env.addKRA(tb, fmt.Sprintf("kra-%d", i), rsaKey(tb, keyKRA0+i)).serial)
				}
				if _, err := env.svc.SetRecoverySet(context.Background(), 2, serials, "admin"); err != nil {
					tb.Fatalf("SetRecoverySet: %v", err)
				}
			}},
		{name: "expired KRA certificate", build: good, wantErr: ErrNoRecoverySet,
			setup: func(env *testEnv) { env.clock.Set(env.kras[1].cert.NotAfter.Add(time.Second)) },
			fix:   func(_ testing.TB, env *testEnv) { env.clock.Set(t0) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := shared
			if tt.bare {
				env = newBareService(t)
			}
			template := tt.template
			if template == "" {
				template = policy.TemplateSMIMEEncryption
			}
			who := env.enrollee(t, fmt.Sprintf("refused%d@example.org", i), template)
			in := tt.build(t, env, who.Mailbox)
			if tt.setup != nil {
				tt.setup(env)
			}
			req := EnrollRequest{Template: template, CSR: in.csr}
			var (
				issued *Issued
				err    error
			)
			if tt.enroll {
				issued, err = env.svc.Enroll(ctx, who, req)
			} else {
				issued, err = env.svc.EnrollArchived(ctx, who, req, in.envelope)
			}
			if tt.fix != nil {
				tt.fix(t, env)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			t.Logf("refused: %v", err)
			if issued != nil {
				t.Errorf("a certificate was returned with error %v", err)
			}
			if rows := env.certs(t, store.Filter{Email: who.Mailbox}); len(rows) != 0 {
				t.Errorf("refused enrollment left %d certificate row(s), first in state %s", len(rows), rows[0].State)
			}
			if recs := env.records(t, who.Mailbox); len(recs) != 0 {
				t.Errorf("refused enrollment left %d record(s), first in state %s", len(recs), recs[0].State)
			}
			env.assertNothingLeft(t, who)

			// The same code still enrolls a correct request.
			if template == policy.TemplateSMIMESignature {
				issued, err = env.svc.Enroll(ctx, who, EnrollRequest{Template: template, CSR: goodCSR(t, who.Mailbox)})
				if err != nil {
					t.Fatalf("Enroll after the refusal: %v", err)
				}
				checkSignatureCert(t, env, who, issued)
				return
			}
			in, pkcs8 := goodArchInput(t, env, who.Mailbox)
			issued, err = env.svc.EnrollArchived(ctx, who, EnrollRequest{Template: template, CSR: in.csr}, in.envelope)
			if err != nil {
				t.Fatalf("EnrollArchived after the refusal: %v", err)
			}
			env.assertArchived(t, issued, pkcs8)
		})
	}
}

var errSignerDown = errors.New("test: token removed")

// TestIssueFailureUndone: when signing (step 2) or storing the certificate (step 3) fails, the
// row ends failed, the record abandoned and the code usable again.
// TestIssueSurvivesCancelAfterSigning: a caller that goes away while the CA signs does not
// make the CA throw the signed certificate away: it is stored, its record active.
func TestIssueSurvivesCancelAfterSigning(t *testing.T) {
	env := newTestService(t)
	who := env.enrollee(t, "gone@example.org", policy.TemplateSMIMEEncryption)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env.signer.set(func() error { cancel(); return nil }, false)
	defer env.signer.set(nil, false)
	in, _ := goodArchInput(t, env, who.Mailbox)
	issued, err := env.svc.EnrollArchived(ctx, who, EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: in.csr}, in.envelope)
	if err != nil {
		t.Fatalf("EnrollArchived: %v", err)
	}
	rows := env.certs(t, store.Filter{Email: who.Mailbox})
	if len(rows) != 1 || rows[0].State != store.StateIssued || rows[0].Serial != issued.Serial {
		t.Fatalf("rows %+v, want the one issued certificate", rows)
	}
}

func TestIssueFailureUndone(t *testing.T) {
	env := newTestService(t)
	tests := []struct {
		name    string
		archive bool
		// before runs in the signer; it may cancel the enrollment's context.
		before  func(cancel context.CancelFunc) error
		corrupt bool
		wantErr error
	}{
		{name: "signer error", archive: true, before: func(context.CancelFunc) error { return errSignerDown }, wantErr: errSignerDown},
		{name: "bad signature", archive: true, corrupt: true, wantErr: ca.ErrSelfCheck},
		{name: "signer error without archival", before: func(context.CancelFunc) error { return errSignerDown }, wantErr: errSignerDown},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			template := policy.TemplateSMIMESignature
			if tt.archive {
				template = policy.TemplateSMIMEEncryption
			}
			who := env.enrollee(t, fmt.Sprintf("fail%d@example.org", i), template)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var before func() error
			if tt.before != nil {
				before = func() error { return tt.before(cancel) }
			}
			env.signer.set(before, tt.corrupt)
			in, pkcs8 := goodArchInput(t, env, who.Mailbox)
			var (
				issued *Issued
				err    error
			)
			if tt.archive {
				issued, err = env.svc.EnrollArchived(ctx, who, EnrollRequest{Template: template, CSR: in.csr}, in.envelope)
			} else {
				issued, err = env.svc.Enroll(ctx, who, EnrollRequest{Template: template, CSR: in.csr})
			}
			env.signer.set(nil, false)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if issued != nil {
				t.Errorf("a certificate was returned with error %v", err)
			}
			rows := env.certs(t, store.Filter{Email: who.Mailbox})
			if !tt.archive {
				// Without a record to commit first, nothing is reserved: a failed signature
				// leaves no row at all.
				if len(rows) != 0 {
					t.Fatalf("%d certificate rows after a failed signature without archival, want none", len(rows))
				}
			} else if len(rows) != 1 {
				t.Fatalf("%d certificate rows, want the one failed row", len(rows))
			}
			if tt.archive {
				row := rows[0]
				if row.State != store.StateFailed || row.DER != nil {
					t.Errorf("row state %s with %d bytes of DER, want failed without DER", row.State, len(row.DER))
				}
				if row.RecordID == "" {
					t.Fatalf("failed archiving row has no record ID")
				}
				if rec := env.record(t, row.RecordID); rec.State != store.StateAbandoned {
					t.Errorf("record %s is %s, want abandoned", rec.ID, rec.State)
				}
				env.mu.Lock()
				o := env.seen[row.Serial]
				env.mu.Unlock()
				if o.recordState != store.StatePending || o.recordID != row.RecordID {
					t.Errorf("at signing the record was %q (%q), want pending (%q)", o.recordState, o.recordID, row.RecordID)
				}
			}
			env.assertNothingLeft(t, who)

			// The code works again.
			if tt.archive {
				issued, err = env.svc.EnrollArchived(context.Background(), who, EnrollRequest{Template: template, CSR: in.csr}, in.envelope)
				if err != nil {
					t.Fatalf("EnrollArchived after the failure: %v", err)
				}
				env.assertArchived(t, issued, pkcs8)
			} else {
				issued, err = env.svc.Enroll(context.Background(), who, EnrollRequest{Template: template, CSR: in.csr})
				if err != nil {
					t.Fatalf("Enroll after the failure: %v", err)
				}
				checkSignatureCert(t, env, who, issued)
			}
			if got := env.certs(t, store.Filter{Email: who.Mailbox, State: store.StateIssued}); len(got) != 1 {
				t.Errorf("%d issued rows after the retry, want 1", len(got))
			}
		})
	}
}

// TestRecordCommittedBeforeSigning runs archiving enrollments concurrently and checks, for
// each, that the CA signer saw its record committed and pending.
func TestRecordCommittedBeforeSigning(t *testing.T) {
	const n = 12
	env := newTestService(t)
	type input struct {
		who   Enrollee
		in    archInput
		pkcs8 []byte
	}
	ins := make([]input, n)
	for i := range ins {
		who := env.enrollee(t, fmt.Sprintf("inv%d@example.org", i), policy.TemplateSMIMEEncryption)
		in, pkcs8 := goodArchInput(t, env, who.Mailbox)
		ins[i] = input{who, in, pkcs8}
	}
	out := make([]*Issued, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range ins {
		wg.Go(func() {
			out[i], errs[i] = env.svc.EnrollArchived(context.Background(), ins[i].who,
				EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: ins[i].in.csr}, ins[i].in.envelope)
		})
	}
	wg.Wait()
	for i := range out {
		if errs[i] != nil {
			t.Errorf("enrollment %d: %v", i, errs[i])
			continue
		}
		env.assertArchived(t, out[i], ins[i].pkcs8)
	}
}

func TestSweep(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()

	// A finished enrollment, which the sweep must not touch.
	done, _ := env.enrollArchived(t, "done@example.org")

	// A crash right after step 1: claimed code, pending row, pending record, as issue() leaves them.
	who := env.enrollee(t, "crashed@example.org", policy.TemplateSMIMEEncryption)
	serial, err := ca.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	serialHex := store.FormatSerial(serial)
	rs, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := env.svc.sealRecord(rs, env.svc.issuerName(), serial.Bytes(), spki, pkcs8Of(t, key))
	if err != nil {
		t.Fatal(err)
	}
	err = env.svc.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.ClaimCode(who.Code.ID, t0); err != nil {
			return err
		}
		if err := tx.InsertCertificate(store.Certificate{Serial: serialHex, Template: policy.TemplateSMIMEEncryption,
			Email: who.Mailbox, Subject: "CN=" + who.Mailbox, State: store.StatePending, CreatedAt: t0,
			CodeID: who.Code.ID, RecordID: rec.ID}); err != nil {
			return err
		}
		return tx.InsertRecord(store.Record{ID: rec.ID, Serial: serialHex, Email: who.Mailbox, Epoch: rec.Epoch,
			Blob: rec.Blob, State: store.StatePending, CreatedAt: t0})
	})
	if err != nil {
		t.Fatalf("simulate step 1: %v", err)
	}
	if err := env.codeErr(t, who); !errors.Is(err, ErrCodeUsed) {
		t.Fatalf("claimed code: err %v, want ErrCodeUsed", err)
	}

	steps := []struct {
		name      string
		before    time.Time
		want      int
		wantState string // of the crashed row afterwards
		wantErr   error
	}{
		{name: "zero time", before: time.Time{}, wantState: store.StatePending, wantErr: store.ErrInvalid},
		{name: "not yet old enough", before: t0, wantState: store.StatePending},
		{name: "later", before: t0.Add(10 * time.Minute), want: 1, wantState: store.StateFailed},
		{name: "again", before: t0.Add(20 * time.Minute), want: 0, wantState: store.StateFailed},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			n, err := env.svc.Sweep(ctx, st.before)
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("Sweep: err %v, want %v", err, st.wantErr)
			}
			if n != st.want {
				t.Errorf("Sweep swept %d, want %d", n, st.want)
			}
			if got := env.certificate(t, serialHex).State; got != st.wantState {
				t.Errorf("crashed row is %s, want %s", got, st.wantState)
			}
		})
	}
	if got := env.record(t, rec.ID).State; got != store.StateAbandoned {
		t.Errorf("crashed record is %s, want abandoned", got)
	}
	if err := env.codeErr(t, who); err != nil {
		t.Errorf("code after the sweep: %v, want usable", err)
	}
	if got := env.certificate(t, done.Serial).State; got != store.StateIssued {
		t.Errorf("finished certificate is %s after the sweep", got)
	}
	if got := env.record(t, done.RecordID).State; got != store.StateActive {
		t.Errorf("finished record is %s after the sweep", got)
	}

	// The freed code enrolls.
	in, pkcs8 := goodArchInput(t, env, who.Mailbox)
	issued, err := env.svc.EnrollArchived(ctx, who, EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: in.csr}, in.envelope)
	if err != nil {
		t.Fatalf("EnrollArchived with the swept code: %v", err)
	}
	env.assertArchived(t, issued, pkcs8)
}

func TestServerKeygen(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	tests := []struct {
		name     string
		template string
		key      func(testing.TB) crypto.Signer
		csrOpts  []csrOpt
		wantErr  error
	}{
		{name: "P-256", template: policy.TemplateSMIMEEncryption, key: func(tb testing.TB) crypto.Signer { return newP256(tb) }},
		{name: "P-384", template: policy.TemplateSMIMEEncryption, key: func(tb testing.TB) crypto.Signer {
			k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			if err != nil {
				tb.Fatal(err)
			}
			return k
		}},
		{name: "RSA-2048", template: policy.TemplateSMIMEEncryption, key: func(tb testing.TB) crypto.Signer { return rsaKey(tb, keySubject) }},
		{name: "smime-signature", template: policy.TemplateSMIMESignature, key: func(tb testing.TB) crypto.Signer { return newP256(tb) },
			wantErr: ErrInvalidRequest},
		{name: "refused CSR", template: policy.TemplateSMIMEEncryption, key: func(tb testing.TB) crypto.Signer { return newP256(tb) },
			csrOpts: []csrOpt{withExtension(basicConstraintsCA(t))}, wantErr: policy.ErrRejected},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			who := env.enrollee(t, fmt.Sprintf("keygen%d@example.org", i), tt.template)
			csrKey := tt.key(t)
			issued, pkcs8, err := env.svc.ServerKeygen(ctx, who, EnrollRequest{Template: tt.template, CSR: newCSR(t, csrKey, who.Mailbox, tt.csrOpts...)})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ServerKeygen: err %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if issued != nil || pkcs8 != nil {
					t.Errorf("ServerKeygen returned a result with error %v", err)
				}
				env.assertNothingLeft(t, who)
				return
			}
			priv, err := x509.ParsePKCS8PrivateKey(pkcs8)
			if err != nil {
				t.Fatalf("returned PKCS#8: %v", err)
			}
			signer, ok := priv.(crypto.Signer)
			if !ok {
				t.Fatalf("returned key is %T", priv)
			}
			if !publicKeysEqual(signer.Public(), issued.Certificate.PublicKey) {
				t.Errorf("returned key is not the pair of the certificate")
			}
			if publicKeysEqual(csrKey.Public(), issued.Certificate.PublicKey) {
				t.Errorf("certificate certifies the CSR's key, not a generated one")
			}
			if fmt.Sprintf("%T", signer.Public()) != fmt.Sprintf("%T", csrKey.Public()) {
				t.Errorf("generated %T for a CSR with %T", signer.Public(), csrKey.Public())
			}
			env.assertArchived(t, issued, pkcs8)
			if err := env.codeErr(t, who); !errors.Is(err, ErrCodeUsed) {
				t.Errorf("code after enrollment: err %v, want ErrCodeUsed", err)
			}
		})
	}
}

func TestIssueArchivedKey(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		mailbox  string
		template string
		key      crypto.Signer // the key archived
		pub      crypto.PublicKey
		wantErr  error
	}{
		{name: "P-256", mailbox: "bulk0@Example.org", template: policy.TemplateSMIMEEncryption},
		{name: "not archiving", mailbox: "bulk1@example.org", template: policy.TemplateSMIMESignature, wantErr: ErrInvalidRequest},
		{name: "unknown template", mailbox: "bulk2@example.org", template: "nope", wantErr: policy.ErrUnknownTemplate},
		{name: "bad mailbox", mailbox: "bulk3", template: policy.TemplateSMIMEEncryption, wantErr: ErrInvalidRequest},
		{name: "key not the pair", mailbox: "bulk4@example.org", template: policy.TemplateSMIMEEncryption,
			pub: newP256(t).Public(), wantErr: ErrInvalidRequest},
		{name: "weak key", mailbox: "bulk5@example.org", template: policy.TemplateSMIMEEncryption, key: rsa1024, wantErr: policy.ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key
			if key == nil {
				key = newP256(t)
			}
			pub := tt.pub
			if pub == nil {
				pub = key.Public()
			}
			pkcs8 := pkcs8Of(t, key)
			issued, err := env.svc.IssueArchivedKey(ctx, tt.mailbox, tt.template, pub, pkcs8)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("IssueArchivedKey: err %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if rows := env.certs(t, store.Filter{Email: tt.mailbox}); len(rows) != 0 {
					t.Errorf("refusal left %d certificate rows", len(rows))
				}
				return
			}
			env.assertArchived(t, issued, pkcs8)
			if got := issued.Certificate.EmailAddresses; len(got) != 1 || got[0] != "bulk0@example.org" {
				t.Errorf("certificate names %v, want the normalised mailbox", got)
			}
		})
	}
}

// foreignCert issues, from a CA of its own, a certificate for mailbox and key, as another CA
// did before the migration to keyarc.
func foreignCert(tb testing.TB, serial int64, mailbox string, pub crypto.PublicKey) *x509.Certificate {
	tb.Helper()
	caKey := newP256(tb)
	root, err := ca.SelfSignedRoot(caKey, pkix.Name{CommonName: "old CA"}, t0.Add(-48*time.Hour), 10*365*24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: mailbox},
		NotBefore: t0.Add(-24 * time.Hour), NotAfter: t0.Add(300 * 24 * time.Hour),
		EmailAddresses: []string{mailbox}, KeyUsage: x509.KeyUsageKeyAgreement,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	if mailbox == "" {
		tmpl.EmailAddresses = nil
		tmpl.Subject.CommonName = "no mailbox"
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, pub, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func TestImportArchived(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	key := newP256(t)
	imported := foreignCert(t, 4242, "old@example.org", key.Public())
	tests := []struct {
		name    string
		cert    *x509.Certificate
		pkcs8   []byte
		wantErr error
	}{
		{name: "ok", cert: imported, pkcs8: pkcs8Of(t, key)},
		{name: "again", cert: imported, pkcs8: pkcs8Of(t, key), wantErr: ErrInvalidRequest},
		{name: "key not the pair", cert: foreignCert(t, 4243, "old2@example.org", newP256(t).Public()), pkcs8: pkcs8Of(t, key),
			wantErr: ErrInvalidRequest},
		{name: "no mailbox", cert: foreignCert(t, 4244, "", key.Public()), pkcs8: pkcs8Of(t, key), wantErr: ErrInvalidRequest},
		{name: "not PKCS#8", cert: foreignCert(t, 4245, "old3@example.org", key.Public()), pkcs8: []byte("junk"),
			wantErr: ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := env.svc.ImportArchived(ctx, tt.cert, tt.pkcs8)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ImportArchived: err %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			serial := store.FormatSerial(tt.cert.SerialNumber)
			row := env.certificate(t, serial)
			if row.Template != TemplateImport || row.State != store.StateIssued || row.RecordID != id || row.Email != "old@example.org" {
				t.Errorf("row: template %s, state %s, record %q, email %s", row.Template, row.State, row.RecordID, row.Email)
			}
			rec := env.record(t, id)
			if rec.State != store.StateActive || rec.Serial != serial {
				t.Errorf("record: state %s, serial %s", rec.State, rec.Serial)
			}
			r, err := record.Parse(rec.Blob)
			if err != nil {
				t.Fatal(err)
			}
			if r.Header.Issuer != fmt.Sprintf("%x", tt.cert.AuthorityKeyId) || r.Header.SPKIHash != sha256.Sum256(tt.cert.RawSubjectPublicKeyInfo) {
				t.Errorf("header issuer %q, want the old CA's key ID %x", r.Header.Issuer, tt.cert.AuthorityKeyId)
			}
			got, err := env.openRecord(t, rec.Blob, 0, 2)
			if err != nil || !bytes.Equal(got, tt.pkcs8) {
				t.Errorf("open with two KRAs: err %v, same key %v", err, bytes.Equal(got, tt.pkcs8))
			}
		})
	}
}

// TestSealedRecordFingerprint: the fingerprint a sealed record carries into the audit entry is
// the key's PublicKeyFingerprint, for an issuance and for an import.
func TestSealedRecordFingerprint(t *testing.T) {
	env := newTestService(t)
	rs, err := env.svc.CurrentRecoverySet(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	key := newP256(t)
	serial, err := ca.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := env.svc.SealForIssue(rs, serial, key.Public(), pkcs8Of(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if want := PublicKeyFingerprint(key.Public()); rec.Fingerprint != want {
		t.Errorf("issue: fingerprint %q, want %q", rec.Fingerprint, want)
	}
	cert, err := x509.ParseCertificate(env.svc.Issuer.Certificate().Raw)
	if err != nil {
		t.Fatal(err)
	}
	other := *cert
	other.PublicKey = key.Public()
	other.RawSubjectPublicKeyInfo, _ = x509.MarshalPKIXPublicKey(key.Public())
	rec, err = env.svc.SealForImport(rs, &other, pkcs8Of(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if want := PublicKeyFingerprint(key.Public()); rec.Fingerprint != want {
		t.Errorf("import: fingerprint %q, want %q", rec.Fingerprint, want)
	}
}

// TestCommitImports: a batch of imports is stored whole, with its bookkeeping and one audit
// entry that lists every item; a batch with one bad item stores nothing.
func TestCommitImports(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rs, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	item := func(serial int64, mailbox string) ImportItem {
		key := newP256(t)
		cert := foreignCert(t, serial, mailbox, key.Public())
		rec, err := env.svc.SealForImport(rs, cert, pkcs8Of(t, key))
		if err != nil {
			t.Fatal(err)
		}
		return ImportItem{Cert: cert, Mailbox: mailbox, Record: rec}
	}
	lastAudit := func() store.AuditEntry {
		var e *store.AuditEntry
		err := env.svc.Store.View(ctx, func(tx store.Tx) (err error) {
			e, err = tx.LastAudit()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return *e
	}

	batch := []ImportItem{item(5001, "a@example.org"), item(5002, "b@example.org"), item(5003, "c@example.org")}
	extraRan := false
	err = env.svc.CommitImports(ctx, "job j1", batch, func(tx store.Tx) error {
		extraRan = true
		return nil
	})
	if err != nil || !extraRan {
		t.Fatalf("CommitImports: %v (extra ran: %v)", err, extraRan)
	}
	e := lastAudit()
	var d audit.Details
	if err := json.Unmarshal([]byte(e.Details), &d); err != nil {
		t.Fatal(err)
	}
	if e.Kind != string(audit.KindArchive) || e.Subject != "job j1" || d.Count != 3 || d.Template != TemplateImport || d.Epoch != rs.Epoch {
		t.Fatalf("audit entry: kind %s subject %q details %s", e.Kind, e.Subject, e.Details)
	}
	for i, it := range batch {
		serial := store.FormatSerial(it.Cert.SerialNumber)
		row := env.certificate(t, serial)
		rec := env.record(t, it.Record.ID)
		if row.State != store.StateIssued || row.RecordID != it.Record.ID || rec.State != store.StateActive || rec.Serial != serial {
			t.Errorf("item %d: certificate %s record %q; record %s serial %s", i, row.State, row.RecordID, rec.State, rec.Serial)
		}
		if d.Serials[i] != serial || d.Mailboxes[i] != it.Mailbox || d.Records[i] != it.Record.ID ||
			d.Fingerprint[i] != PublicKeyFingerprint(it.Cert.PublicKey) {
			t.Errorf("audit lists, item %d: %s %s %s %s", i, d.Serials[i], d.Mailboxes[i], d.Records[i], d.Fingerprint[i])
		}
	}

	// A serial already archived spoils its batch: nothing of it is stored.
	fresh := item(5004, "d@example.org")
	again := item(5002, "b@example.org")
	err = env.svc.CommitImports(ctx, "job j2", []ImportItem{fresh, again}, nil)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("batch with an archived serial: err %v, want a conflict", err)
	}
	if got := lastAudit(); got.Seq != e.Seq {
		t.Errorf("audit entry %d (%s) written for a refused batch", got.Seq, got.Subject)
	}
	err = env.svc.Store.View(ctx, func(tx store.Tx) error {
		_, err := tx.GetCertificate(store.FormatSerial(fresh.Cert.SerialNumber))
		return err
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("certificate of the refused batch: %v, want not found", err)
	}
}

// TestIssueReservedBatch: a batch of reserved issuances costs two commits; an item whose
// reservation is refused fails alone (the others are issued one by one), and an item that fails
// after signing is undone while the rest are issued, each with its record committed first.
func TestIssueReservedBatch(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	rs, err := env.svc.CurrentRecoverySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := env.svc.Templates[policy.TemplateSMIMEEncryption]
	type item struct {
		req   ReservedIssue
		pkcs8 []byte
	}
	var finished sync.Map
	mk := func(mailbox string) item {
		key := newP256(t)
		serial, err := ca.NewSerial()
		if err != nil {
			t.Fatal(err)
		}
		p8 := pkcs8Of(t, key)
		rec, err := env.svc.SealForIssue(rs, serial, key.Public(), p8)
		if err != nil {
			t.Fatal(err)
		}
		return item{pkcs8: p8, req: ReservedIssue{Template: tmpl, Pub: key.Public(), Mailbox: mailbox, Serial: serial, Record: rec,
			Finish: func(tx store.Tx, cert *x509.Certificate) error {
				finished.Store(mailbox, cert.SerialNumber.String())
				return nil
			}}}
	}
	run := func(items []item) []BatchResult {
		reqs := make([]ReservedIssue, len(items))
		for i, it := range items {
			reqs[i] = it.req
		}
		return env.svc.IssueReservedBatch(ctx, reqs, 4)
	}

	t.Run("clean batch", func(t *testing.T) {
		items := []item{mk("b0@example.org"), mk("b1@example.org"), mk("b2@example.org"), mk("b3@example.org")}
		before := env.svc.Store.Stats().Commits
		out := run(items)
		if commits := env.svc.Store.Stats().Commits - before; commits != 2 {
			t.Errorf("%d commits for a batch of %d, want 2", commits, len(items))
		}
		for i, res := range out {
			if res.Err != nil {
				t.Fatalf("item %d: %v", i, res.Err)
			}
			env.assertArchived(t, res.Issued, items[i].pkcs8)
			if _, ok := finished.Load(items[i].req.Mailbox); !ok {
				t.Errorf("item %d: Finish did not run", i)
			}
		}
	})

	t.Run("refused reservation and failed signing", func(t *testing.T) {
		items := []item{mk("c0@example.org"), mk("c1@example.org"), mk("c2@example.org"), mk("c3@example.org")}
		errTaken := errors.New("item already done")
		items[1].req.Reserve = func(store.Tx, string) error { return errTaken }
		errPrepare := errors.New("cannot build the results")
		items[2].req.Prepare = func(*x509.Certificate) error { return errPrepare }
		out := run(items)
		for i, res := range out {
			switch i {
			case 1:
				if !errors.Is(res.Err, ErrReserved) || !errors.Is(res.Err, errTaken) {
					t.Errorf("refused item: %v, want ErrReserved", res.Err)
				}
				assertNoCertificate(t, env, items[i].req.Serial)
			case 2:
				if !errors.Is(res.Err, errPrepare) {
					t.Errorf("failed item: %v, want its Prepare error", res.Err)
				}
				serial := store.FormatSerial(items[i].req.Serial)
				if row := env.certificate(t, serial); row.State != store.StateFailed {
					t.Errorf("failed item's certificate is %s, want failed", row.State)
				}
				if rec := env.record(t, items[i].req.Record.ID); rec.State != store.StateAbandoned {
					t.Errorf("failed item's record is %s, want abandoned", rec.State)
				}
			default:
				if res.Err != nil {
					t.Fatalf("item %d: %v", i, res.Err)
				}
				env.assertArchived(t, res.Issued, items[i].pkcs8)
			}
		}
	})
}

func assertNoCertificate(tb testing.TB, env *testEnv, serial *big.Int) {
	tb.Helper()
	err := env.svc.Store.View(context.Background(), func(tx store.Tx) error {
		_, err := tx.GetCertificate(store.FormatSerial(serial))
		return err
	})
	if !errors.Is(err, store.ErrNotFound) {
		tb.Errorf("certificate %x: %v, want none", serial, err)
	}
}

// TestImportFingerprintIsCanonical: for every kind of key a certificate can carry into an
// import, the hash of the certificate's own SPKI bytes is the key's PublicKeyFingerprint.
func TestImportFingerprintIsCanonical(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for i, key := range []crypto.Signer{newP256(t), p384, p521, rsaKey(t, keySubject), ed} {
		cert := foreignCert(t, int64(6000+i), fmt.Sprintf("k%d@example.org", i), key.Public())
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		if got, want := hex.EncodeToString(sum[:]), PublicKeyFingerprint(cert.PublicKey); got != want {
			t.Errorf("%T: SPKI hash %s, PublicKeyFingerprint %s", key, got, want)
		}
	}
}

// TestServerKeygenRSASizes: the appliance generates RSA keys of the usual sizes only; a
// request whose key is larger is refused before any key is made (16384 bits would cost
// minutes of CPU, past every client's patience), naming the sizes it makes.
func TestServerKeygenRSASizes(t *testing.T) {
	for _, bits := range []int{2047, 2049, 4097, 8192, 16384} {
		pub := &rsa.PublicKey{N: new(big.Int).SetBit(big.NewInt(1), bits-1, 1), E: 65537}
		if k, err := generateLike(pub); !errors.Is(err, ErrInvalidRequest) || k != nil || !strings.Contains(err.Error(), "2048, 3072 or 4096") {
			t.Errorf("%d bits: %v, want ErrInvalidRequest naming the sizes made", bits, err)
		}
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBit(big.NewInt(1), 2047, 1), E: 65537}
	k, err := generateLike(pub)
	if err != nil {
		t.Fatal(err)
	}
	if got := k.Public().(*rsa.PublicKey).N.BitLen(); got != 2048 {
		t.Fatalf("generated %d bits for a 2048-bit request", got)
	}
}
