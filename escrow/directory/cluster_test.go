package directory_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyarc/keyarc/escrow"
	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/directory"
	"github.com/keyarc/keyarc/escrow/directory/ldaptest"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
)

// node is one appliance node of a cluster test: its own handle on the shared PostgreSQL
// database, its leader lease, and its publisher.
type node struct {
	db     store.Store
	leader *escrow.Leader
	pub    *directory.Publisher
	reg    *prometheus.Registry
	stop   func()
}

// TestPublisherCluster: two nodes share one PostgreSQL database; only the leader publishes,
// and when it stops, the other takes the lease over and goes on from the shared cursor.
func TestPublisherCluster(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	e := &env{t: t, issuer: newIssuer(t, "keyarc test CA"), ldap: ldaptest.Start(t), logs: &syncBuffer{}}
	e.dir = e.openDir(ldaptest.Password)
	start := func(name string) *node {
		db, err := postgres.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		n := &node{db: db, leader: &escrow.Leader{Store: db, Node: name, TTL: 2 * time.Second}}
		n.pub = &directory.Publisher{Store: db, Dir: e.openDir(ldaptest.Password), Cursor: directory.StoreCursor{Store: db, Name: directory.CursorName},
			CA: e.issuer.Certificate(), Leads: n.leader.Leads, Interval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(e.logs, nil)).With("node", name)}
		n.reg = prometheus.NewRegistry()
		if err := n.pub.Register(n.reg); err != nil {
			t.Fatal(err)
		}
		if err := n.leader.Try(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { n.leader.Run(ctx) })
		wg.Go(func() { n.pub.Run(ctx) })
		n.stop = func() { cancel(); wg.Wait() }
		t.Cleanup(n.stop)
		return n
	}
	a := start("node-a")
	b := start("node-b")
	if !a.leader.Leads() || b.leader.Leads() {
		t.Fatalf("node-a leads %v, node-b leads %v; want node-a alone", a.leader.Leads(), b.leader.Leads())
	}
	e.db = a.db
	first := e.issue(e.issuer, ldaptest.Alice, x509.KeyUsageKeyAgreement, audit.KindArchive)
	waitPublished(t, e, ldaptest.Alice, first)

	a.stop() // gives the lease up
	e.db = b.db
	second := e.issue(e.issuer, ldaptest.Bob, x509.KeyUsageKeyAgreement, audit.KindArchive)
	waitPublished(t, e, ldaptest.Bob, second)
	if !b.leader.Leads() {
		t.Fatal("node-b published without leading")
	}
	// The cursor moves once the batch is applied: wait for it to reach the trail's head.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pos, head int64
		if err := b.db.View(context.Background(), func(tx store.Tx) error {
			var err error
			if pos, err = tx.Cursor(directory.CursorName); err != nil {
				return err
			}
			head, _, err = tx.AuditHead()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if pos == head {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shared cursor is at %d after 30s, the trail at %d", pos, head)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Each certificate was published once, by the node leading at the time: node-b went on
	// from node-a's cursor instead of applying the trail again.
	for _, n := range []*node{a, b} {
		e.reg = n.reg
		if ok := e.count(directory.OpPublish, directory.OutcomeOK); ok != 1 {
			t.Errorf("%s published %v certificates; want 1", n.leader.Node, ok)
		}
	}
}

func waitPublished(t *testing.T, e *env, mail string, c *x509.Certificate) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !holds(e.published(mail), c) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's certificate is not published after 30s\n%s", mail, e.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
