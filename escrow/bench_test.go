package escrow

import (
	"context"
	"crypto"
	"crypto/rand"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/cms"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/policy"
)

// BenchmarkEnrollArchived measures archiving enrollments (envelope opened with the software
// transport key, key sealed 2-of-3, three-step issuance with group commit, ECDSA P-256 CA) with
// many concurrent clients. The clients' work (keys, CSRs, envelopes, codes) is done before the
// timer starts.
//
//	go test -run '^$' -bench EnrollArchived -benchtime 2000x ./escrow/
func BenchmarkEnrollArchived(b *testing.B) {
	env := newTestService(b)
	env.signer.mu.Lock()
	env.signer.observe = nil // the invariant check costs a View per signature
	env.signer.mu.Unlock()
	ctx := context.Background()

	type input struct {
		who      Enrollee
		req      EnrollRequest
		envelope []byte
	}
	ins := make([]input, b.N)
	codes := make([]store.Code, b.N)
	for i := range ins {
		raw := make([]byte, codeBytes)
		if _, err := rand.Read(raw); err != nil {
			b.Fatal(err)
		}
		secret := codeEncoding.EncodeToString(raw)
		mailbox := fmt.Sprintf("bench%d@example.org", i)
		codes[i] = store.Code{ID: secret[:codeIDLen], Email: mailbox, Template: policy.TemplateSMIMEEncryption,
			Hash: hashCode(secret), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
		key := newP256(b)
		ins[i] = input{
			who:      Enrollee{Mailbox: mailbox, Code: &codes[i]},
			req:      EnrollRequest{Template: policy.TemplateSMIMEEncryption, CSR: newCSR(b, key, mailbox)},
			envelope: envelope(b, key, env.transport, cms.AuthEnvelopedAESGCM, crypto.SHA256),
		}
	}
	err := env.svc.Store.Update(ctx, func(tx store.Tx) error {
		for _, c := range codes {
			if err := tx.InsertCode(c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatalf("insert codes: %v", err)
	}
	before := env.svc.Store.Stats()
	var next, failed atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			in := ins[next.Add(1)-1]
			if _, err := env.svc.EnrollArchived(ctx, in.who, in.req, in.envelope); err != nil {
				failed.Add(1)
				b.Errorf("EnrollArchived(%s): %v", in.who.Mailbox, err)
			}
		}
	})
	b.StopTimer()
	if failed.Load() == 0 {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enrollments/s")
		after := env.svc.Store.Stats()
		b.ReportMetric(float64(after.Updates-before.Updates)/float64(max(1, after.Commits-before.Commits)), "updates/commit")
	}
}
