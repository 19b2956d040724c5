package issue

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyarc/keyarc/escrow/store"
)

// errDisk is what the store returns when the disk refuses a transaction.
var errDisk = fmt.Errorf("%w: disk I/O error", store.ErrUnavailable)

// withCode gives r a fresh enrollment code for its mailbox and returns the code's ID.
func (e *env) withCode(tb testing.TB, r *Request, id string) {
	tb.Helper()
	now := time.Now()
	err := e.db.Update(context.Background(), func(tx store.Tx) error {
		return tx.InsertCode(store.Code{ID: id, Email: r.Mailbox, Template: e.tmpl.Name, Hash: []byte("h"),
			CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	})
	if err != nil {
		tb.Fatal(err)
	}
	r.CodeID = id
}

// states reads a certificate's state, its record's state and whether its code is used.
func (e *env) states(tb testing.TB, serial, recordID, codeID string) (cert, rec string, used bool) {
	tb.Helper()
	err := e.db.View(context.Background(), func(tx store.Tx) error {
		c, err := tx.GetCertificate(serial)
		if err != nil {
			return err
		}
		cert = c.State
		code, err := tx.GetCode(codeID)
		if err != nil {
			return err
		}
		used = code.UsedAt != nil
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return cert, e.recordState(tb, recordID), used
}

// TestIssueFinishFault: when the storage refuses an item's last transaction, the item gets
// ErrUnavailable and no certificate. With UndoOnFault (a single enrollment, whose enrollee is
// told to retry) the signed but unreturned certificate is marked failed, its record abandoned
// and its code released at once; without it (a bulk job, whose next pass takes the item again)
// everything stays pending, as before.
func TestIssueFinishFault(t *testing.T) {
	for _, tc := range []struct {
		name        string
		undoOnFault bool
		wantCert    string
		wantRecord  string
		wantUsed    bool
	}{
		{name: "single enrollment", undoOnFault: true, wantCert: store.StateFailed, wantRecord: "abandoned", wantUsed: false},
		{name: "bulk", undoOnFault: false, wantCert: store.StatePending, wantRecord: store.StatePending, wantUsed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.p.UndoOnFault = tc.undoOnFault
			r := e.request(t, 0, 1)
			e.withCode(t, &r, "CODE0001")
			r.Finish = func(store.Tx, *x509.Certificate) error { return errDisk }
			res := e.p.Issue(context.Background(), []Request{r}, 1, nil)[0]
			if !errors.Is(res.Err, store.ErrUnavailable) {
				t.Fatalf("Issue: %v, want ErrUnavailable", res.Err)
			}
			if res.Certificate != nil {
				t.Fatal("a certificate was returned without its finish")
			}
			cert, rec, used := e.states(t, store.FormatSerial(r.Serial), r.Record.ID, r.CodeID)
			if cert != tc.wantCert || rec != tc.wantRecord || used != tc.wantUsed {
				t.Errorf("after the fault: certificate %s, record %s, code used %v; want %s, %s, %v",
					cert, rec, used, tc.wantCert, tc.wantRecord, tc.wantUsed)
			}
			if cert == store.StateFailed {
				// Signed, never delivered: kept on record, not lost.
				err := e.db.View(context.Background(), func(tx store.Tx) error {
					c, err := tx.GetCertificate(store.FormatSerial(r.Serial))
					if err != nil {
						return err
					}
					if _, err := x509.ParseCertificate(c.DER); err != nil {
						t.Errorf("the failed row does not keep the signed certificate: %v", err)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// waitIdle waits until the undoer holds nothing.
func waitIdle(tb testing.TB, u *Undoer) {
	tb.Helper()
	for deadline := time.Now().Add(10 * time.Second); u.Len() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("the undoer still holds %d undos", u.Len())
		}
	}
}

// pending leaves one issuance pending with its code used, as a finish refused by the storage
// leaves it without UndoOnFault, and returns its request.
func (e *env) pending(tb testing.TB, i int) Request {
	tb.Helper()
	r := e.request(tb, i, 1)
	e.withCode(tb, &r, fmt.Sprintf("CODE%04d", i))
	r.Finish = func(store.Tx, *x509.Certificate) error { return errDisk }
	if res := e.p.Issue(context.Background(), []Request{r}, 1, nil)[0]; !errors.Is(res.Err, store.ErrUnavailable) {
		tb.Fatalf("Issue: %v, want ErrUnavailable", res.Err)
	}
	return r
}

// TestUndoerRetries: an undo the storage refuses is retried until the storage answers, then the
// certificate is failed, the record abandoned and the code free again; an issued certificate
// handed to the undoer (its finish committed after all) is left issued.
func TestUndoerRetries(t *testing.T) {
	e := newEnv(t)
	var refusals atomic.Int32
	u := &Undoer{Store: e.db, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond}
	u.update = func(ctx context.Context, fn func(store.Tx) error) error {
		if refusals.Add(1) <= 3 {
			return errDisk
		}
		return e.db.Update(ctx, fn)
	}
	r := e.pending(t, 0)
	done := e.request(t, 1, 1)
	okRes := e.p.Issue(context.Background(), []Request{done}, 1, nil)[0]
	if okRes.Err != nil {
		t.Fatal(okRes.Err)
	}
	if !u.Defer(store.FormatSerial(r.Serial), nil, errDisk) || !u.Defer(okRes.Serial, okRes.Certificate, errDisk) {
		t.Fatal("Defer refused with an empty backlog")
	}
	u.Defer(store.FormatSerial(r.Serial), nil, errDisk) // twice: held once
	waitIdle(t, u)
	if n := refusals.Load(); n < 4 {
		t.Errorf("%d attempts, want the 3 refused and one that went through", n)
	}
	cert, rec, used := e.states(t, store.FormatSerial(r.Serial), r.Record.ID, r.CodeID)
	if cert != store.StateFailed || rec != "abandoned" || used {
		t.Errorf("after the deferred undo: certificate %s, record %s, code used %v; want failed, abandoned, free", cert, rec, used)
	}
	if st := e.recordState(t, okRes.RecordID); st != store.StateActive {
		t.Errorf("the issued certificate's record is %s after a deferred undo, want active", st)
	}
}

// TestUndoerBounded: the backlog holds at most Max undos; the rest are left to the start-up
// sweep. After the store is closed, the undoer gives up and its goroutine ends.
func TestUndoerBounded(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	u := &Undoer{Store: e.db, Max: 2, MinWait: time.Millisecond, MaxWait: time.Millisecond}
	u.update = func(ctx context.Context, fn func(store.Tx) error) error {
		select {
		case <-release:
			return e.db.Update(ctx, fn)
		default:
			return errDisk
		}
	}
	var serials []string
	for i := range 3 {
		serials = append(serials, store.FormatSerial(e.pending(t, i).Serial))
	}
	for i, s := range serials {
		if got, want := u.Defer(s, nil, errDisk), i < 2; got != want {
			t.Errorf("Defer of undo %d with Max 2: %v, want %v", i, got, want)
		}
	}
	if n := u.Len(); n != 2 {
		t.Errorf("backlog %d, want 2", n)
	}
	if !u.Holds(serials[0]) || u.Holds(serials[2]) {
		t.Errorf("Holds: %v %v, want the first undo held and the refused one not", u.Holds(serials[0]), u.Holds(serials[2]))
	}
	e.db.Close()
	close(release)
	waitIdle(t, u)
}
