package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"runtime"
	"sort"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// Counters reads what a backend can count of its own work so far (statements, round trips,
// the database server's CPU, pages written), by name; the per-certificate benchmarks report
// each one's growth divided by the certificates stored.
type Counters func() map[string]float64

// BenchEnrollPerCert is the store's work for one EST enrollment, as the storm makes it: eight
// callers at once, each certificate one Update that claims its code and stores the certificate
// issued (InsertCertificateClaiming) and appends its audit entry (escrow/issue's
// IssueSigned); then the OCSP pre-signer's passes over what is due (pages of 512 read in a
// View, stored 512 to an Update), so that every certificate ends with its response stored. It
// reports the process's CPU per certificate and, per certificate, every counter of counters
// (nil: none).
func BenchEnrollPerCert(b *testing.B, s store.Store, counters Counters) {
	ctx := context.Background()
	ders := benchDERs(b, 1024)
	codes := benchCodes(b, s, b.N)
	now := bench0.Add(time.Hour)
	m := startMeasure(counters)
	eightCallers(b, func(i int64) error {
		_, err := benchEnroll(ctx, s, i, ders, codes[i], now)
		return err
	})
	benchPresign(b, s, now)
	b.StopTimer()
	m.report(b, b.N)
}

// BenchESTPerCert is [BenchEnrollPerCert] with the rest of the store's work of an EST
// enrollment as a node serves it: before the Update, one View reads the enrollee's code (the
// authentication) and looks for the request's key among the compromised (the check before
// signing), in one statement (GetCodeCheckingKey); after it, the OCSP pre-signer reads the
// new certificates' statuses in a View, 64 to a View (presign's SignSerials), and stores
// their responses in an Update; its next pass indexes them. The appliance does the
// pre-signer's part once issuance pauses, after the storm; it is counted here all the same, as
// part of what a certificate costs the store.
func BenchESTPerCert(b *testing.B, s store.Store, counters Counters) {
	ctx := context.Background()
	ders := benchDERs(b, 1024)
	keyIDs := make([]string, len(ders))
	for k, der := range ders {
		var err error
		if keyIDs[k], err = store.KeyID(der); err != nil {
			b.Fatal(err)
		}
	}
	codes := benchCodes(b, s, b.N)
	now := bench0.Add(time.Hour)
	serials := make(chan string, b.N)
	m := startMeasure(counters)
	eightCallers(b, func(i int64) error {
		if err := s.View(ctx, func(tx store.Tx) error {
			_, _, err := tx.GetCodeCheckingKey(codes[i], keyIDs[i%int64(len(keyIDs))])
			return err
		}); err != nil {
			return err
		}
		serial, err := benchEnroll(ctx, s, i, ders, codes[i], now)
		if err == nil {
			serials <- serial
		}
		return err
	})
	close(serials)
	der := make([]byte, 1100)
	var page []string
	flush := func() {
		var rs []store.OCSPResponse
		if err := s.View(ctx, func(tx store.Tx) error {
			sts, err := tx.CertificateStatuses(page)
			rs = rs[:0]
			for _, st := range sts {
				rs = append(rs, store.OCSPResponse{Serial: st.Serial, DER: der, ThisUpdate: now, NextUpdate: now.Add(7 * 24 * time.Hour)})
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) }); err != nil {
			b.Fatal(err)
		}
		page = page[:0]
	}
	for sn := range serials {
		if page = append(page, sn); len(page) == 64 {
			flush()
		}
	}
	if len(page) > 0 {
		flush()
	}
	benchIndex(b, s) // the pre-signer's next pass over everything due
	b.StopTimer()
	m.report(b, b.N)
}

// BenchCodeView is the read that authenticates an EST enrollee: a View of one statement, the
// enrollee's code, made by eight callers at once as the storm's clients do. It reports the
// process's CPU per View and, per View, every counter of counters (nil: none).
func BenchCodeView(b *testing.B, s store.Store, counters Counters) {
	ctx := context.Background()
	codes := benchCodes(b, s, 4096)
	m := startMeasure(counters)
	eightCallers(b, func(i int64) error {
		return s.View(ctx, func(tx store.Tx) error {
			_, err := tx.GetCode(codes[i%int64(len(codes))])
			return err
		})
	})
	b.StopTimer()
	m.reportPer(b, b.N, "view")
}

// BenchImportPerCert is the store's work for one item of a bulk import job, as the job's
// committer makes it: 512 items to an Update (the epoch read, the certificates issued, their
// active records, one audit entry for the batch, the items done), then the OCSP pre-signer's
// pass as in [BenchEnrollPerCert], which finds nothing due: another CA's certificates get no
// response of this CA.
func BenchImportPerCert(b *testing.B, s store.Store, counters Counters) {
	ctx := context.Background()
	ders := benchDERs(b, 1024)
	var epoch uint32
	if err := s.Update(ctx, func(tx store.Tx) (err error) {
		epoch, err = tx.InsertRecoverySet(store.RecoverySet{KRASerials: []string{"0a", "0b", "0c"}, Quorum: 2, CreatedBy: "bench"})
		if err != nil {
			return err
		}
		return tx.InsertJob(store.Job{ID: "job", Kind: "import", Template: "import", SubmittedBy: "bench", State: "running",
			Input: "bench", CreatedAt: bench0})
	}); err != nil {
		b.Fatal(err)
	}
	blob := make([]byte, 1700) // about a sealed RSA-2048 key for two KRAs
	now := bench0.Add(time.Hour)
	m := startMeasure(counters)
	b.ResetTimer()
	const perUpdate = 512
	for from := 0; from < b.N; from += perUpdate {
		n := min(perUpdate, b.N-from)
		certs := make([]store.Certificate, n)
		recs := make([]store.Record, n)
		done := make([]store.DoneItem, n)
		for k := range n {
			i := from + k
			serial, id := benchSerial(uint64(i)), fmt.Sprintf("rec-%08d", i)
			mailbox := fmt.Sprintf("user%d@example.com", i)
			fp := sha256.Sum256([]byte(id))
			certs[k] = store.Certificate{Serial: serial, Template: "import", Email: mailbox, Subject: "CN=user",
				State: store.StateIssued, DER: ders[i%len(ders)], NotBefore: bench0, NotAfter: bench0.AddDate(1, 0, 0),
				CreatedAt: now, RecordID: id}
			recs[k] = store.Record{ID: id, Serial: serial, Email: mailbox, Epoch: epoch, Blob: blob, State: store.StateActive,
				CreatedAt: now, Fingerprint: hex.EncodeToString(fp[:])}
			done[k] = store.DoneItem{Seq: i, Serial: serial, RecordID: id}
		}
		err := s.Update(ctx, func(tx store.Tx) error {
			if cur, err := tx.CurrentEpoch(); err != nil || cur != epoch {
				return fmt.Errorf("epoch %d: %v", cur, err)
			}
			if err := tx.InsertCertificates(certs); err != nil {
				return err
			}
			if err := tx.InsertRecords(recs); err != nil {
				return err
			}
			if err := benchAudit(tx, now, "job"); err != nil {
				return err
			}
			return tx.InsertJobItemsDone("job", done)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	benchPresign(b, s, now)
	b.StopTimer()
	m.report(b, b.N)
}

// benchAudit appends an entry after the head, as escrow/audit does.
func benchAudit(tx store.Tx, now time.Time, subject string) error {
	seq, prev, err := tx.AuditHead()
	if err != nil {
		return err
	}
	if prev == nil {
		prev = make([]byte, 32)
	}
	h := sha256.New()
	h.Write(prev)
	binary.Write(h, binary.BigEndian, seq+1)
	h.Write([]byte(subject))
	return tx.InsertAudit(store.AuditEntry{Seq: seq + 1, At: now, Kind: "enroll", Actor: "bench", Subject: subject,
		Details: `{"template":"smime-signature","serial":"` + subject + `"}`, Prev: prev, Hash: h.Sum(nil)})
}

// benchIndex indexes the new certificates for the OCSP due list and the look-up by key, 4,096
// to an Update, as the pre-signer's passes do first.
func benchIndex(b *testing.B, s store.Store) {
	if err := store.IndexAllNew(context.Background(), s, 4096); err != nil {
		b.Fatal(err)
	}
}

// benchPresign signs nothing but stores a response for every certificate due, as the
// pre-signer's passes do: the new certificates indexed 4,096 to an Update, then pages of 512
// read in a View, each stored in one Update.
func benchPresign(b *testing.B, s store.Store, now time.Time) {
	ctx := context.Background()
	benchIndex(b, s)
	der := make([]byte, 1100) // about a signed OCSP response of a P-256 responder, its certificate included
	for {
		var due []store.CertStatus
		if err := s.View(ctx, func(tx store.Tx) (err error) {
			due, err = tx.OCSPDue(now, now.Add(-72*time.Hour), "", 512)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		if len(due) == 0 {
			return
		}
		rs := make([]store.OCSPResponse, len(due))
		for i, st := range due {
			rs[i] = store.OCSPResponse{Serial: st.Serial, DER: der, ThisUpdate: now, NextUpdate: now.Add(7 * 24 * time.Hour),
				Revoked: st.Revoked, Reason: st.Reason}
		}
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.UpsertOCSPResponses(rs) }); err != nil {
			b.Fatal(err)
		}
	}
}

// benchCodes stores n enrollment codes, 256 to an Update, and returns their IDs.
func benchCodes(b *testing.B, s store.Store, n int) []string {
	b.Helper()
	codes := make([]string, n)
	for i := range codes {
		codes[i] = fmt.Sprintf("code-%08d", i)
	}
	for from := 0; from < n; from += 256 {
		if err := s.Update(context.Background(), func(tx store.Tx) error {
			for _, id := range codes[from:min(from+256, n)] {
				if err := tx.InsertCode(store.Code{ID: id, Email: "alice@example.com", Template: "smime-signature",
					Hash: []byte("hash"), CreatedAt: bench0, ExpiresAt: bench0.AddDate(1, 0, 0)}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	return codes
}

// benchEnroll is the Update of the i-th EST enrollment: the code claimed with the certificate
// stored, and the audit entry. It returns the certificate's serial.
func benchEnroll(ctx context.Context, s store.Store, i int64, ders [][]byte, code string, now time.Time) (string, error) {
	row := store.Certificate{Serial: benchSerial(uint64(i)), Template: "smime-signature",
		Email: fmt.Sprintf("user%d@example.com", i%4096), Subject: "CN=user", State: store.StateIssued,
		DER: ders[i%int64(len(ders))], NotBefore: bench0, NotAfter: bench0.AddDate(1, 0, 0), CreatedAt: now,
		CodeID: code}
	return row.Serial, s.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificateClaiming(row, now); err != nil {
			return err
		}
		return benchAudit(tx, now, row.Serial)
	})
}

// benchSerial is a serial shaped as the CA makes them (escrow/ca.NewSerial): the issuing
// second and its fraction in 2^-24 s, then 72 random bits; the certificates are spread 1,000
// to a second, as a storm issues them.
func benchSerial(i uint64) string {
	h := sha256.Sum256(binary.BigEndian.AppendUint64(nil, i))
	frac := (i % 1000) << 24 / 1000
	return fmt.Sprintf("%08x%06x", uint32(bench0.Unix())+uint32(i/1000), frac) + hex.EncodeToString(h[:9])
}

// benchDERs makes n P-256 certificates of distinct keys, so that their key identities differ.
func benchDERs(b *testing.B, n int) [][]byte {
	b.Helper()
	ca, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	out := make([][]byte, n)
	for i := range out {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "user"},
			NotBefore: bench0, NotAfter: bench0.AddDate(1, 0, 0), EmailAddresses: []string{"user@example.com"}}
		if out[i], err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, ca); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// measure holds the process's CPU time and the counters at the start of a benchmark.
type measure struct {
	cpu      time.Duration
	counters Counters
	at       map[string]float64
}

func startMeasure(c Counters) *measure {
	m := &measure{cpu: processCPU(), counters: c}
	if c != nil {
		m.at = c()
	}
	return m
}

// eightCallers resets b's timer and calls fn with 0 to b.N-1 from about eight goroutines (on
// two cores, as the storm's eight clients), each index once; the first error fails b.
func eightCallers(b *testing.B, fn func(i int64) error) {
	var next atomic.Int64
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := fn(next.Add(1) - 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// report reports the CPU and the counters' growth per certificate.
func (m *measure) report(b *testing.B, certs int) { m.reportPer(b, certs, "cert") }

// reportPer reports the CPU and the counters' growth per one of n things called unit.
func (m *measure) reportPer(b *testing.B, n int, unit string) {
	b.ReportMetric(float64((processCPU()-m.cpu).Microseconds())/float64(n), "cpu-µs/"+unit)
	if m.counters == nil {
		return
	}
	now := m.counters()
	names := make([]string, 0, len(now))
	for k := range now {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		b.ReportMetric((now[k]-m.at[k])/float64(n), k+"/"+unit)
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
