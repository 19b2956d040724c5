package bulk

import (
	"strconv"
	"testing"
)

// BenchmarkImportJob runs an import job of b.N items through the whole pipeline with a real
// SQLite file and reports items per second.
func BenchmarkImportJob(b *testing.B) {
	env := newEnv(b)
	old := newOtherCA(b)
	items := make([]any, 0, b.N)
	for i := range b.N {
		// A key of its own per item: a key belongs to one mailbox, and the archive refuses
		// one key for two mailboxes.
		k := p256(b)
		c := old.issue(b, k.Public(), "user"+strconv.Itoa(i)+"@example.org")
		items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(b, k))})
	}
	file := jobFile(b, Header{Kind: KindImport}, items...)
	b.ResetTimer()
	st := submit(b, env, file)
	st = env.runUntilDone(b, st.ID)
	b.StopTimer()
	if st.Done != b.N {
		b.Fatalf("done %d of %d", st.Done, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// BenchmarkEnrollJob runs an enroll job of b.N items (P-256 keys in envelopes to the transport
// certificate, a software CA key) through the whole pipeline with a real SQLite file and
// reports items per second.
func BenchmarkEnrollJob(b *testing.B) {
	env := newEnv(b)
	items := make([]any, 0, b.N)
	for i := range b.N {
		items = append(items, env.enrollItem(b, "user"+strconv.Itoa(i)+"@example.org"))
	}
	file := jobFile(b, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...)
	b.ResetTimer()
	st := submit(b, env, file)
	st = env.runUntilDone(b, st.ID)
	b.StopTimer()
	if st.Done != b.N {
		b.Fatalf("done %d of %d", st.Done, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}
