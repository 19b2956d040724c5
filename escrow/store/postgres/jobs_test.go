package postgres

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// TestJobItemsWithoutSavepoint: a job item's reservation and finish each take one statement
// in one round trip, with no savepoint around it; a reservation of an item already present
// gives ErrConflict, of an unknown job ErrNotFound, a second finish ErrConflict, and neither
// costs the function its other writes: it goes on and commits them.
func TestJobItemsWithoutSavepoint(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	err := db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertJob(store.Job{ID: "j", Kind: "enroll", Template: "t", SubmittedBy: "a", Input: "f"})
	})
	if err != nil {
		t.Fatal(err)
	}
	// one runs a write and reports the statements and round trips it took.
	one := func(write func() error) (stmts, trips int64, err error) {
		s, r := Wire()
		err = write()
		s2, r2 := Wire()
		return s2 - s, r2 - r, err
	}
	err = db.Update(ctx, func(tx store.Tx) error {
		if err := insertCode("c1", "a@example.com")(tx); err != nil { // opens the transaction
			return err
		}
		for _, step := range []struct {
			name    string
			write   func() error
			wantErr error
		}{
			{"reserve", func() error { return tx.ReserveJobItem("j", 1, "0a", "r1") }, nil},
			{"reserve again", func() error { return tx.ReserveJobItem("j", 1, "0b", "r2") }, store.ErrConflict},
			{"reserve for no job", func() error { return tx.ReserveJobItem("nojob", 1, "0c", "") }, store.ErrNotFound},
			{"finish", func() error { return tx.FinishJobItem("j", 1, []byte("p12"), []byte("pw")) }, nil},
			{"finish again", func() error { return tx.FinishJobItem("j", 1, nil, nil) }, store.ErrConflict},
			{"reserve a done item", func() error { return tx.ReserveJobItem("j", 1, "0d", "") }, store.ErrConflict},
		} {
			stmts, trips, err := one(step.write)
			if !errors.Is(err, step.wantErr) || (step.wantErr == nil) != (err == nil) {
				return fmt.Errorf("%s: %v, want %v", step.name, err, step.wantErr)
			}
			if err == nil && (stmts != 1 || trips != 1) {
				t.Errorf("%s: %d statements in %d round trips, want 1 in 1 (no savepoint)", step.name, stmts, trips)
			}
		}
		return insertCode("c2", "a@example.com")(tx) // the function goes on
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(ctx, func(tx store.Tx) error {
		for _, id := range []string{"c1", "c2"} {
			if _, err := tx.GetCode(id); err != nil {
				return fmt.Errorf("code %s: %w", id, err)
			}
		}
		return tx.JobItems("j", 0, 0, func(it store.JobItem) error {
			if it.Seq != 1 || it.State != store.ItemDone || it.Serial != "a" || it.RecordID != "r1" || string(it.PKCS12) != "p12" {
				t.Errorf("item %+v, want item 1 done with serial a, record r1 and its PKCS#12", it)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCertificateHashesOfOwnWrites: the hashes of the certificates a function stored issued
// (signed after their reservation, or stored issued at once) come without a round trip, and
// are those of the stored DER; a serial the function did not store is read as before.
func TestCertificateHashesOfOwnWrites(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := func(serial, state string, der []byte) store.Certificate {
		return store.Certificate{Serial: serial, Template: "t", Email: "a@example.com", Subject: "CN=a", State: state,
			DER: der, NotBefore: at, NotAfter: at.AddDate(1, 0, 0), CreatedAt: at}
	}
	hash := func(der []byte) string { s := sha256.Sum256(der); return hex.EncodeToString(s[:]) }
	err := db.Update(ctx, func(tx store.Tx) error { return tx.InsertCertificate(cert("0a", store.StateIssued, []byte("other"))) })
	if err != nil {
		t.Fatal(err)
	}
	var got, mixed []string
	var trips int64
	err = db.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertCertificates([]store.Certificate{cert("0b", store.StatePending, nil), cert("0c", store.StateIssued, []byte("c"))}); err != nil {
			return err
		}
		if err := tx.SetCertificateIssued("0x0B", []byte("b"), at, at.AddDate(1, 0, 0)); err != nil {
			return err
		}
		_, before := Wire()
		var err error
		if got, err = tx.CertificateHashes([]string{"0b", "0C", "00:0b"}); err != nil {
			return err
		}
		_, after := Wire()
		trips = after - before
		mixed, err = tx.CertificateHashes([]string{"0b", "0a", "0d"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{hash([]byte("b")), hash([]byte("c")), hash([]byte("b"))}; !slices.Equal(got, want) || trips != 0 {
		t.Errorf("hashes of the function's certificates %v in %d round trips, want %v in 0", got, trips, want)
	}
	if want := []string{hash([]byte("b")), hash([]byte("other")), ""}; !slices.Equal(mixed, want) {
		t.Errorf("hashes with serials the function did not store: %v, want %v", mixed, want)
	}
	var stored []string
	if err := db.View(ctx, func(tx store.Tx) (err error) { stored, err = tx.CertificateHashes([]string{"0b", "0c"}); return err }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(stored, got[:2]) {
		t.Errorf("stored hashes %v, the function's %v", stored, got[:2])
	}
}

// TestReserveJobItems: a batch of items is reserved in one statement and one round trip, all
// or none: an item already present (or listed twice) gives ErrConflict, an unknown job
// ErrNotFound, and no item of the batch is reserved; the function goes on.
func TestReserveJobItems(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	err := db.Update(ctx, func(tx store.Tx) error {
		return tx.InsertJob(store.Job{ID: "j", Kind: "enroll", Template: "t", SubmittedBy: "a", Input: "f"})
	})
	if err != nil {
		t.Fatal(err)
	}
	items := func(seqs ...int) []store.DoneItem {
		var out []store.DoneItem
		for _, s := range seqs {
			out = append(out, store.DoneItem{Seq: s, Serial: fmt.Sprintf("0x%X", 0xa00+s), RecordID: fmt.Sprint("r", s)})
		}
		return out
	}
	var trips int64
	err = db.Update(ctx, func(tx store.Tx) error {
		r, ok := tx.(interface {
			ReserveJobItems(string, []store.DoneItem) error
		})
		if !ok {
			return fmt.Errorf("the writer's Tx %T has no ReserveJobItems", tx)
		}
		if err := insertCode("c1", "a@example.com")(tx); err != nil {
			return err
		}
		_, before := Wire()
		if err := r.ReserveJobItems("j", items(1, 2, 3)); err != nil {
			return err
		}
		_, after := Wire()
		trips = after - before
		for _, bad := range []struct {
			job     string
			items   []store.DoneItem
			wantErr error
		}{
			{"j", items(4, 3, 5), store.ErrConflict},
			{"j", items(6, 6), store.ErrConflict},
			{"nojob", items(7), store.ErrNotFound},
		} {
			if err := r.ReserveJobItems(bad.job, bad.items); !errors.Is(err, bad.wantErr) {
				return fmt.Errorf("reserve %v of job %s: %v, want %v", bad.items, bad.job, err, bad.wantErr)
			}
		}
		return insertCode("c2", "a@example.com")(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	if trips != 1 {
		t.Errorf("3 items reserved in %d round trips, want 1", trips)
	}
	var got []string
	err = db.View(ctx, func(tx store.Tx) error {
		if _, err := tx.GetCode("c2"); err != nil {
			return err
		}
		return tx.JobItems("j", 0, 0, func(it store.JobItem) error {
			got = append(got, fmt.Sprintf("%d %s %s %s", it.Seq, it.State, it.Serial, it.RecordID))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1 reserved a01 r1", "2 reserved a02 r2", "3 reserved a03 r3"}; !slices.Equal(got, want) {
		t.Errorf("items %q, want %q", got, want)
	}
}

// TestFinishJobItems: a batch of reserved items is finished in one statement and one round
// trip, with each item's results, all or none: an item that is not reserved (or listed twice)
// gives ErrConflict and no item of the batch is finished; the function goes on.
func TestFinishJobItems(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	err := db.Update(ctx, func(tx store.Tx) error {
		if err := tx.InsertJob(store.Job{ID: "j", Kind: "keygen", Template: "t", SubmittedBy: "a", Input: "f"}); err != nil {
			return err
		}
		for seq := 1; seq <= 4; seq++ {
			if err := tx.ReserveJobItem("j", seq, fmt.Sprintf("%x", 0xb0+seq), ""); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	type finisher interface {
		FinishJobItems(jobID string, seqs []int, pkcs12s, passwords [][]byte) error
	}
	var trips int64
	err = db.Update(ctx, func(tx store.Tx) error {
		f, ok := tx.(finisher)
		if !ok {
			return fmt.Errorf("the writer's Tx %T has no FinishJobItems", tx)
		}
		if err := insertCode("c1", "a@example.com")(tx); err != nil {
			return err
		}
		for _, bad := range []struct {
			seqs    []int
			wantErr error
		}{
			{[]int{3, 9}, store.ErrConflict},
			{[]int{3, 3}, store.ErrConflict},
		} {
			n := len(bad.seqs)
			if err := f.FinishJobItems("j", bad.seqs, make([][]byte, n), make([][]byte, n)); !errors.Is(err, bad.wantErr) {
				return fmt.Errorf("finish %v: %v, want %v", bad.seqs, err, bad.wantErr)
			}
		}
		_, before := Wire()
		if err := f.FinishJobItems("j", []int{1, 2}, [][]byte{[]byte("p1"), nil}, [][]byte{[]byte("w1"), {}}); err != nil {
			return err
		}
		_, after := Wire()
		trips = after - before
		if err := f.FinishJobItems("j", []int{2, 3}, make([][]byte, 2), make([][]byte, 2)); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("finish 2 again with 3: %v, want ErrConflict", err)
		}
		return insertCode("c2", "a@example.com")(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	if trips != 1 {
		t.Errorf("2 items finished in %d round trips, want 1", trips)
	}
	var got []string
	err = db.View(ctx, func(tx store.Tx) error {
		if _, err := tx.GetCode("c2"); err != nil {
			return err
		}
		return tx.JobItems("j", 0, 0, func(it store.JobItem) error {
			got = append(got, fmt.Sprintf("%d %s %q %q", it.Seq, it.State, it.PKCS12, it.Password))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`1 done "p1" "w1"`, `2 done "" ""`, `3 reserved "" ""`, `4 reserved "" ""`}
	if !slices.Equal(got, want) {
		t.Errorf("items %q, want %q", got, want)
	}
}

// TestSetCertificatesIssued: the signed certificates of a batch are stored and their records
// activated in one statement and one round trip, all or none: a certificate that is not
// pending (or listed twice), or a record that is abandoned, unknown or listed twice, gives
// ErrConflict and nothing of the batch is stored; the function goes on. Each certificate stored
// is due for its first OCSP response, and an active record may be activated again.
func TestSetCertificatesIssued(t *testing.T) {
	db, _ := openTest(t, pgtest.Start(t))
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	err := db.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.InsertRecoverySet(store.RecoverySet{KRASerials: []string{"0a"}, Quorum: 1, CreatedBy: "t"}); err != nil {
			return err
		}
		for i := 1; i <= 5; i++ {
			serial, id := fmt.Sprintf("%x", 0xc0+i), fmt.Sprintf("r%d", i)
			if err := tx.InsertCertificate(store.Certificate{Serial: serial, Template: "t", Email: "a@example.com", RecordID: id}); err != nil {
				return err
			}
			state := store.StatePending
			switch i {
			case 4:
				state = store.StateActive
			case 5:
				state = store.StateAbandoned
			}
			if err := tx.InsertRecord(store.Record{ID: id, Serial: serial, Email: "a@example.com", Epoch: 1, Blob: []byte{1},
				State: state}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	type issuer interface {
		SetCertificatesIssued(serials []string, ders [][]byte, notBefores, notAfters []time.Time, recordIDs []string) error
	}
	batch := func(items ...int) (serials []string, ders [][]byte, nbs, nas []time.Time, records []string) {
		for _, i := range items {
			serials, records = append(serials, fmt.Sprintf("%x", 0xc0+i)), append(records, fmt.Sprintf("r%d", i))
			ders = append(ders, []byte{0x30, byte(i)})
			nbs, nas = append(nbs, at), append(nas, at.Add(time.Hour))
		}
		return
	}
	var trips int64
	err = db.Update(ctx, func(tx store.Tx) error {
		is, ok := tx.(issuer)
		if !ok {
			return fmt.Errorf("the writer's Tx %T has no SetCertificatesIssued", tx)
		}
		if err := insertCode("c1", "a@example.com")(tx); err != nil {
			return err
		}
		for _, bad := range []struct {
			name    string
			items   []int
			records []string // instead of the items' own
		}{
			{"an abandoned record", []int{1, 5}, nil},
			{"listed twice", []int{1, 1}, nil},
			{"a record listed twice", []int{1, 2}, []string{"r1", "r1"}},
			{"an unknown record", []int{1, 2}, []string{"r1", "r9"}},
		} {
			serials, ders, nbs, nas, records := batch(bad.items...)
			if bad.records != nil {
				records = bad.records
			}
			if err := is.SetCertificatesIssued(serials, ders, nbs, nas, records); !errors.Is(err, store.ErrConflict) {
				return fmt.Errorf("%s: %v, want ErrConflict", bad.name, err)
			}
		}
		_, before := Wire()
		if err := is.SetCertificatesIssued(batch(1, 2, 4)); err != nil {
			return err
		}
		_, after := Wire()
		trips = after - before
		if err := is.SetCertificatesIssued(batch(2, 3)); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("2 again with 3: %v, want ErrConflict", err)
		}
		return insertCode("c2", "a@example.com")(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	if trips != 1 {
		t.Errorf("3 certificates stored in %d round trips, want 1", trips)
	}
	var got []string
	err = db.View(ctx, func(tx store.Tx) error {
		if _, err := tx.GetCode("c2"); err != nil {
			return err
		}
		for i := 1; i <= 5; i++ {
			c, err := tx.GetCertificate(fmt.Sprintf("%x", 0xc0+i))
			if err != nil {
				return err
			}
			r, err := tx.GetRecord(fmt.Sprintf("r%d", i))
			if err != nil {
				return err
			}
			got = append(got, fmt.Sprintf("%s %s %x %s", c.Serial, c.State, c.DER, r.State))
		}
		due, err := tx.OCSPDue(at, at, "", 10)
		for _, d := range due {
			got = append(got, "due "+d.Serial)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"c1 issued 3001 active", "c2 issued 3002 active", "c3 pending  pending", "c4 issued 3004 active",
		"c5 pending  abandoned", "due c1", "due c2", "due c4"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
