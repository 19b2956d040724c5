package bulk

import (
	"context"
	"flag"
	"os"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// The job benchmarks run a job of b.N items through the whole pipeline and report items per
// second and this process's CPU per item; on PostgreSQL (a durable server of pgtest's: fsync
// and synchronous_commit on) also the server's CPU per item and the statements and round trips
// the store sent per item. Run them with a fixed count, as the bench does:
//
//	go test -run '^$' -bench 'ImportJob|EnrollJob' -benchtime 3000x ./escrow/bulk/
//
// -jobcpuprofile FILE writes a CPU profile of the job's run alone (go test's -cpuprofile also
// covers making the keys and the job file).
var jobCPUProfile = flag.String("jobcpuprofile", "", "write a CPU profile of the benchmarked job's run to this file")

// BenchmarkImportJob runs an import job (P-256 keys) with a real SQLite file.
func BenchmarkImportJob(b *testing.B) { benchImportJob(b, newEnv(b), nil) }

// BenchmarkImportJobPostgres is BenchmarkImportJob on PostgreSQL.
func BenchmarkImportJobPostgres(b *testing.B) {
	env, c := pgBenchEnv(b)
	benchImportJob(b, env, c)
}

// BenchmarkEnrollJob runs an enroll job (P-256 keys in envelopes to the transport certificate,
// a software CA key) with a real SQLite file.
func BenchmarkEnrollJob(b *testing.B) { benchEnrollJob(b, newEnv(b), nil) }

// BenchmarkEnrollJobPostgres is BenchmarkEnrollJob on PostgreSQL.
func BenchmarkEnrollJobPostgres(b *testing.B) {
	env, c := pgBenchEnv(b)
	benchEnrollJob(b, env, c)
}

func benchImportJob(b *testing.B, env *testEnv, c counters) {
	old := newOtherCA(b)
	items := make([]any, 0, b.N)
	for i := range b.N {
		// A key of its own per item: a key belongs to one mailbox, and the archive refuses
		// one key for two mailboxes.
		k := p256(b)
		c := old.issue(b, k.Public(), "user"+strconv.Itoa(i)+"@example.org")
		items = append(items, Item{Certificate: pemOf("CERTIFICATE", c.Raw), Key: pemOf("PRIVATE KEY", pkcs8(b, k))})
	}
	runBenchJob(b, env, c, jobFile(b, Header{Kind: KindImport}, items...))
}

func benchEnrollJob(b *testing.B, env *testEnv, c counters) {
	items := make([]any, 0, b.N)
	for i := range b.N {
		items = append(items, env.enrollItem(b, "user"+strconv.Itoa(i)+"@example.org"))
	}
	runBenchJob(b, env, c, jobFile(b, Header{Kind: KindEnroll, Template: "smime-encryption"}, items...))
}

// counters reads what a backend counts of its own work (nil: nothing).
type counters func() map[string]float64

func runBenchJob(b *testing.B, env *testEnv, c counters, file []byte) {
	var at map[string]float64
	if c != nil {
		at = c()
	}
	if *jobCPUProfile != "" {
		f, err := os.Create(*jobCPUProfile)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	cpu := processCPU()
	b.ResetTimer()
	st := submit(b, env, file)
	st = env.runUntilDone(b, st.ID)
	b.StopTimer()
	if *jobCPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if st.Done != b.N {
		b.Fatalf("done %d of %d", st.Done, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
	b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/item")
	if c != nil {
		for k, v := range c() {
			b.ReportMetric((v-at[k])/float64(b.N), k+"/item")
		}
	}
}

// pgBenchEnv is an env on a fresh database of a durable PostgreSQL server, with the counters
// of the store's statements and round trips and of the server's CPU.
func pgBenchEnv(b *testing.B) (*testEnv, counters) {
	srv := pgtest.Start(b)
	srv.Durable(b)
	url := srv.NewDatabase(b)
	env := newEnvOn(b, func(tb testing.TB) store.Store {
		db, err := postgres.Open(context.Background(), url)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { db.Close() })
		return db
	})
	return env, func() map[string]float64 {
		stmts, trips := postgres.Wire()
		return map[string]float64{"statements": float64(stmts), "trips": float64(trips), "writer-busy-µs": float64(postgres.WriterBusy().Microseconds()),
			"server-cpu-µs": float64(srv.CPU().Microseconds())}
	}
}

// processCPU is the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
