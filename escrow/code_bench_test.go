package escrow

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/keyarc/keyarc/policy"
)

// BenchmarkAuthenticateEnroll measures one code enrollment as the API makes it (authenticate
// with the code, then enroll for a template that archives nothing, software P-256 CA): "fresh"
// keeps the record AuthenticateEnrollee read for the check before signing, "reread" reads the
// code again there, as an Enrollee that did not come from AuthenticateEnrollee does.
//
//	go test -run '^$' -bench AuthenticateEnroll -benchtime 2000x ./escrow/
func BenchmarkAuthenticateEnroll(b *testing.B) {
	for _, fresh := range []bool{true, false} {
		name := map[bool]string{true: "fresh", false: "reread"}[fresh]
		b.Run(name, func(b *testing.B) {
			env := newTestService(b)
			env.signer.mu.Lock()
			env.signer.observe = nil
			env.signer.mu.Unlock()
			ctx := context.Background()
			type input struct {
				mailbox, secret string
				req             EnrollRequest
			}
			ins := make([]input, b.N)
			for i := range ins {
				mailbox := fmt.Sprintf("bench%d@example.org", i)
				c, err := env.svc.CreateCode(ctx, mailbox, policy.TemplateSMIMESignature, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				ins[i] = input{mailbox, c.Secret, EnrollRequest{Template: policy.TemplateSMIMESignature, CSR: goodCSR(b, mailbox)}}
			}
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for i := range b.N {
				in := ins[i]
				pub := in.req.CSR.PublicKey
				if !fresh {
					pub = nil
				}
				who, err := env.svc.AuthenticateEnrollee(ctx, in.mailbox, in.secret, pub)
				if err != nil {
					b.Fatal(err)
				}
				if !fresh {
					who.codeRead = time.Time{}
				}
				if _, err := env.svc.Enroll(ctx, who, in.req); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
